"""A shell command run as root on the box, guarded (`creates`, `unless`) so that a converged box skips it,
or run when something that notifies it changed (`on_notify`) or the box's journal owes it a run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from miab_remote.engine.kinds.base import PENDING, Context, Kind, PushContext
from miab_remote.errors import InputError
from miab_remote.remote import wire


@dataclass(frozen=True)
class Command:
    """A shell command run as root, guarded so that a converged box skips it.

    `creates` skips it while that path exists; `unless` skips it while a read-only shell test exits 0
    (use one of the two). `on_notify` runs it whenever a resource that notifies it changed, and, with
    `creates` or `unless`, also when its guard says it is missing ("rebuild when the source changed or
    the output is gone").
    """

    name: str
    run: str
    creates: str | None = None
    unless: str | None = None
    on_notify: bool = False
    notify: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"command:{self.name}"


class CommandKind(Kind[Command]):
    resource = Command
    ops = ("command",)

    def check(self, r: Command) -> None:
        if not (r.creates or r.unless or r.on_notify):
            raise InputError(f"recipe error: {r.id} needs a guard (creates, unless or on_notify)")
        if r.creates and r.unless:
            raise InputError(f"recipe error: {r.id} has both creates and unless; use one")

    def refuses_notification(self, r: Command) -> str | None:
        return None if r.on_notify else ", which is not on_notify"

    def reacts(self, r: Command) -> bool:
        return True

    def probe(self, r: Command, rendered: Mapping[str, bytes], want_content: bool, spec: wire.ProbeSpec) -> None:
        if g := guard(r):
            spec["guards"][r.id] = g

    def plan(self, r: Command, ctx: Context) -> None:
        guarded = ctx.facts.get("guards", {}).get(r.id)
        notify = ctx.reacting_targets(r.notify)
        by = ctx.changed_notifiers(r.id) if r.on_notify else []
        owed = r.id in ctx.pending
        if by or owed:
            # Notified: runs whatever its guard says (the guard is for runs where nothing it depends on changed).
            causes = ([f"changed: {', '.join(by)}"] if by else []) + ([PENDING] if owed else [])
            why = f"run {r.name} ({'; '.join(causes)})"
            ctx.act(r.id, command_action(r.id, why, r.run, notify=notify, settles=[r.id]))
            if owed:
                ctx.out.resumed.append(r.id)
        elif not (r.creates or r.unless):
            ctx.skip(r.id, "not notified: nothing it depends on changed")
        elif guarded:
            why = f"{r.creates} exists" if r.creates else f"guard `{r.unless}` succeeded"
            ctx.skip(r.id, why + (", and nothing it depends on changed" if r.on_notify else ""))
        else:
            why = f"{r.creates} is missing" if r.creates else f"guard `{r.unless}` failed"
            # The box checks the guard again just before running: an earlier step may have satisfied it.
            ctx.act(r.id, command_action(r.id, f"run {r.name} ({why})", r.run, r.creates, r.unless, notify=notify))

    def push(self, r: Command, ctx: PushContext, by: list[int]) -> wire.Action:
        notify = [t for t in r.notify if t in ctx.members and t in ctx.reacting]
        item = command_action(r.id, f"run {r.name}", r.run, notify=notify, settles=[r.id])
        item["if_changed"] = by
        # Also run when its output is missing or out of date (e.g. a .db older than its text).
        item["guard"] = guard(r)
        return item


def guard(r: Command) -> wire.Guard:
    """The guard the box evaluates for a command: its `creates` path, else its `unless` test, else none."""
    if r.creates:
        return {"creates": r.creates}
    if r.unless:
        return {"unless": r.unless}
    return {}


def command_action(
    resource: str,
    why: str,
    run: str,
    creates: str | None = None,
    unless: str | None = None,
    notify: Sequence[str] = (),
    settles: Sequence[str] = (),
) -> wire.CommandAction:
    """The wire item that runs `run` as root on the box, unless `creates` exists or `unless` succeeds there."""
    return wire.CommandAction(
        resource=resource,
        op="command",
        why=why,
        run=run,
        creates=creates,
        unless=unless,
        notify=list(notify),
        settles=list(settles),
    )
