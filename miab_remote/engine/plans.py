"""What a plan is made of: its actions (typed wire items with a `why`), its skips (with their reason) and
the notifications it resumes. The kinds (engine/kinds/) fill it in, the converge and the diff read it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from miab_remote.errors import InputError
from miab_remote.remote import wire


class PlanError(InputError):
    """The box is in a state the plan cannot handle safely (e.g. a directory where a file belongs)."""


@dataclass(frozen=True)
class Action:
    """One step of a plan: the typed wire item the box's apply script carries out as it is."""

    wire: wire.Action

    @property
    def resource(self) -> str:
        return self.wire["resource"]

    @property
    def op(self) -> str:
        return self.wire["op"]

    @property
    def why(self) -> str:
        return self.wire["why"]


@dataclass(frozen=True)
class Skip:
    resource: str
    reason: str


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    unchanged: list[Skip] = field(default_factory=list)
    # Notifications left pending on the box by an interrupted run, which this plan delivers.
    resumed: list[str] = field(default_factory=list)

    @property
    def changed_resources(self) -> list[str]:
        return list(dict.fromkeys(a.resource for a in self.actions if a.op != "apt_update"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
