"""Planning is pure: (resources, rendered files, facts) in, actions out. Nothing here touches a box.

Each resource either yields actions (with a `why` an operator can read) or a `Skip` that says why nothing
needs doing; how is its kind's business (engine/kinds/, one module a kind), and this module names no kind.
What crosses kinds is here: the recipe checks of ids and notifications, and the notifications resolved,
so a dry run shows exactly what a real run would do, including the restart that a changed file will
cause. A notification an interrupted run could not deliver is in the box's journal (facts["pending"]) and
is delivered now, even when no file changed; one owed to nothing declared is forgotten.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from miab_remote.engine.kinds import KINDS, kind_of
from miab_remote.engine.kinds.base import Context, PushContext
from miab_remote.engine.kinds.command import command_action
from miab_remote.engine.kinds.file import file_action
from miab_remote.engine.kinds.package import APT_LISTS_MAX_AGE
from miab_remote.engine.plans import Action, Plan, PlanError, Skip, sha256
from miab_remote.engine.resources import Resource
from miab_remote.errors import InputError
from miab_remote.remote import wire

__all__ = [
    "APT_LISTS_MAX_AGE",
    "Action",
    "Plan",
    "PlanError",
    "Skip",
    "check_resources",
    "command_action",
    "file_action",
    "plan",
    "probe_spec",
    "push_wire",
    "sha256",
]


def check_resources(resources: Sequence[Resource]) -> None:
    """Recipe sanity: unique ids, each kind's own rules, notify targets that exist, come later and react."""
    position: dict[str, int] = {}
    for i, r in enumerate(resources):
        if r.id in position:
            raise InputError(f"recipe error: {r.id} is declared twice")
        position[r.id] = i
    for i, r in enumerate(resources):
        kind_of(r).check(r)
        for target in getattr(r, "notify", ()):
            if target not in position:
                raise InputError(f"recipe error: {r.id} notifies {target}, which no recipe declares")
            if position[target] < i:
                raise InputError(f"recipe error: {r.id} notifies {target}, declared before it; declare it after")
            tr = resources[position[target]]
            if refused := kind_of(tr).refuses_notification(tr):
                raise InputError(f"recipe error: {r.id} notifies {target}{refused}")


def _reacting(resources: Sequence[Resource]) -> set[str]:
    """Notify targets that react: the box journals them before their notifier changes anything."""
    return {r.id for r in resources if kind_of(r).reacts(r)}


def probe_spec(resources: Sequence[Resource], rendered: Mapping[str, bytes], want_content: bool) -> wire.ProbeSpec:
    """What the single probe must read for these resources: each kind adds what it compares."""
    spec = wire.ProbeSpec(files=[], want_content={}, packages=[], services=[], users=[], groups=[], guards={})
    for r in resources:
        kind_of(r).probe(r, rendered, want_content, spec)
    return spec


def plan(resources: Sequence[Resource], rendered: Mapping[str, bytes], facts: Mapping[str, Any]) -> Plan:
    """Decide what to do. `rendered` maps each File path to its desired bytes."""
    check_resources(resources)
    notifiers: dict[str, list[str]] = {}
    for r in resources:
        for target in getattr(r, "notify", ()):
            notifiers.setdefault(target, []).append(r.id)
    ctx = Context(
        resources=resources,
        rendered=rendered,
        facts=facts,
        out=Plan(),
        notifiers=notifiers,
        reacting=_reacting(resources),
        pending={str(k) for k in facts.get("pending", {})},
    )
    for kind in KINDS:
        kind.begin(ctx)
    for r in resources:
        kind_of(r).plan(r, ctx)
    out = ctx.out
    if stray := sorted(ctx.pending - set(out.resumed)):
        # Owed to something no recipe declares anymore (or a service now meant to be stopped): drop it.
        why = "forget pending " + ", ".join(stray) + " (nothing declared reacts)"
        out.actions.append(Action(wire.ForgetAction(resource="pending", op="forget", why=why, settles=stray)))
    return out


def push_wire(resources: Sequence[Resource], rendered: Mapping[str, bytes], tag: str) -> list[wire.Action]:
    """The wire items of a targeted push, made without a probe: the resources tagged `tag` (the files of
    the accounts, content carried), then what they notify, each marked to run only if a notifier really
    changed on the box. The box decides (under its lock) what differs, so one round trip is enough and
    nothing unchanged is touched."""
    check_resources(resources)
    members = {r.id for r in resources if kind_of(r).tagged(r, tag)}
    for r in resources:  # notify targets come after their notifiers, so one pass closes the set
        if r.id in members:
            members.update(getattr(r, "notify", ()))
    ctx = PushContext(resources, rendered, members, _reacting(resources))
    items: list[wire.Action] = []
    index: dict[str, int] = {}
    for r in resources:
        if r.id not in members:
            continue
        by = [index[n.id] for n in resources if n.id in index and r.id in getattr(n, "notify", ())]
        item = kind_of(r).push(r, ctx, by)
        if item is None:
            continue
        index[r.id] = len(items)
        items.append(item)
    return items
