"""What every resource kind provides (`Kind`), and what its planning sees of the others (`Context`).

A kind's module holds its whole life cycle on the laptop: the dataclass a recipe declares, its own recipe
checks, what it asks the probe for, how it compares the facts, and the wire action (with its `why`) or
the `Skip` (with its reason) it yields. The box side is found by the op: apply.py runs the `Runner`
method named after each wire action's `op`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from miab_remote.engine.plans import Action, Plan, Skip
from miab_remote.remote import wire

PENDING = "pending from an interrupted run"


class Declared(Protocol):
    @property
    def id(self) -> str: ...


R = TypeVar("R")


@dataclass
class Context:
    """One plan in the making: the recipes' resources, the rendered files, the box's facts, and what the
    kinds decided so far that others react to (what changes, what notifies what, what is pending)."""

    resources: Sequence[Declared]
    rendered: Mapping[str, bytes]
    facts: Mapping[str, Any]
    out: Plan
    notifiers: dict[str, list[str]]  # target id -> the ids that notify it
    reacting: set[str]  # notify targets that react (journaled before their notifier changes)
    pending: set[str]  # ids the box's journal owes a notification
    changed: set[str] = field(default_factory=set)  # ids that change in this run
    # Packages this plan installs and removes (the package kind fills them in before the pass): a service
    # may come with a package being installed.
    installing: list[str] = field(default_factory=list)
    removing: list[str] = field(default_factory=list)
    once: set[str] = field(default_factory=set)  # steps made once per plan, at the first resource needing them

    def act(self, r_id: str, item: wire.Action) -> None:
        """Plan `item`, by which resource `r_id` changes."""
        self.out.actions.append(Action(item))
        self.changed.add(r_id)

    def skip(self, r_id: str, reason: str) -> None:
        self.out.unchanged.append(Skip(r_id, reason))

    def changed_notifiers(self, r_id: str) -> list[str]:
        """What notifies `r_id` and changes in this run (declared earlier, so already decided)."""
        return [n for n in self.notifiers.get(r_id, []) if n in self.changed]

    def reacting_targets(self, notify: Sequence[str]) -> list[str]:
        return [t for t in notify if t in self.reacting]


@dataclass(frozen=True)
class PushContext:
    """A targeted push (no probe): the resources, their rendered files, the ids pushed, those that react."""

    resources: Sequence[Declared]
    rendered: Mapping[str, bytes]
    members: set[str]
    reacting: set[str]


class Kind(ABC, Generic[R]):
    """One resource kind on the laptop; `resource` is its dataclass, `ops` the wire ops it yields."""

    resource: ClassVar[type]
    ops: ClassVar[tuple[str, ...]]

    def check(self, r: R) -> None:
        """Recipe errors of this kind alone (an InputError naming the resource)."""

    def refuses_notification(self, r: R) -> str | None:
        """Why a notification to `r` is a recipe error (appended to "X notifies r"), None when `r` reacts."""
        return "; only services and commands react"

    def reacts(self, r: R) -> bool:
        """Whether a notification to `r` is journaled on the box before its notifier changes anything."""
        return False

    def tagged(self, r: R, tag: str) -> bool:
        """Whether a push of `tag` (e.g. "accounts") carries `r`."""
        return False

    @abstractmethod
    def probe(self, r: R, rendered: Mapping[str, bytes], want_content: bool, spec: wire.ProbeSpec) -> None:
        """Add to `spec` the facts the probe must read for `r`."""

    def begin(self, ctx: Context) -> None:
        """Decide, before the pass over the resources, what others may react to (e.g. packages installed)."""

    @abstractmethod
    def plan(self, r: R, ctx: Context) -> None:
        """Compare `r` with its facts: `ctx.act(...)` with a wire action and its why, or `ctx.skip(...)`."""

    def push(self, r: R, ctx: PushContext, by: list[int]) -> wire.Action | None:
        """The wire item of `r` in a targeted push (`by`: the indices of the items notifying it), or None."""
        return None


def meta_changes(fact: Mapping[str, Any], mode: int, owner: str, group: str) -> list[str]:
    """A path's mode and owner as the box has them against the declared ones, as an operator reads them."""
    changes = []
    if fact.get("mode") != mode:
        changes.append(f"mode {fact.get('mode', 0):04o}->{mode:04o}")
    if fact.get("owner") != owner or fact.get("group") != group:
        changes.append(f"owner {fact.get('owner')}:{fact.get('group')}->{owner}:{group}")
    return changes
