"""A systemd service: running or stopped, enabled or not, unmasked when its recipe needs it, reloaded or
restarted (after its validator) when a file that notifies it changed or the box's journal owes it that."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from miab_remote.engine.kinds.base import PENDING, Context, Kind, PushContext
from miab_remote.engine.kinds.file import File
from miab_remote.engine.plans import PlanError
from miab_remote.remote import wire


@dataclass(frozen=True)
class Service:
    """A systemd service. Files that notify it are checked by `validator` (run as root) before it is
    reloaded (`reload=True`) or restarted, at most once per run, at the point where it is declared."""

    name: str
    running: bool = True
    enabled: bool = True
    reload: bool = False
    validator: str | None = None
    # The service our own SSH access goes through (sshd): before it is reloaded, a second connection must
    # prove that key login works, and after it, a fresh connection must still get in, so that a deploy
    # never locks the operator out.
    carries_access: bool = False
    # Notifiers (ids) whose change a reload does not apply, so they restart it even with reload=True: nsd
    # reloads its zone files on SIGHUP, but reads nsd.conf (a new zone, a key) only when it starts. Owed
    # from an interrupted run, such a service is restarted too (which change it was is not known).
    restart_on: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"service:{self.name}"


class ServiceKind(Kind[Service]):
    resource = Service
    ops = ("service",)

    def refuses_notification(self, r: Service) -> str | None:
        return None

    def reacts(self, r: Service) -> bool:
        return r.running

    def probe(self, r: Service, rendered: Mapping[str, bytes], want_content: bool, spec: wire.ProbeSpec) -> None:
        spec["services"].append(r.name)

    def plan(self, r: Service, ctx: Context) -> None:
        # A unit that a package being installed, or a File of the recipes, brings may not exist yet.
        unit = unit_path(r.name)
        coming = bool(ctx.installing) or any(isinstance(f, File) and f.path == unit for f in ctx.resources)
        fact = ctx.facts.get("services", {}).get(r.name)
        by = ctx.changed_notifiers(r.id)
        owed = r.id in ctx.pending and r.running
        load = fact.get("load") if fact is not None else None
        # A masked unit exists but cannot start: unmask it when its recipe wants it running or enabled.
        unmask = load == "masked" and (r.running or r.enabled)
        known = load in ("loaded", "masked")
        if not known and not coming:
            raise PlanError(
                f"service {r.name} does not exist on the box (no systemd unit) and no package installs it"
            )
        active = known and fact is not None and fact.get("active") == "active"
        enabled = (
            known
            and fact is not None
            and fact.get("enabled") in ("enabled", "static", "alias", "indirect", "generated")
        )
        todo = []
        restart: Literal["reload", "restart"] | None = None
        validator: str | None = None
        rollback: list[str] = []
        settles: list[str] = []
        if unmask:
            todo.append("unmask (it was masked; its recipe needs it " + ("running)" if r.running else "enabled)"))
        if by or owed:
            files = {res.id: res.path for res in ctx.resources if isinstance(res, File)}
            validator = r.validator
            rollback = [files[n] for n in by if n in files]
            if r.running:
                config = bool(r.restart_on) and (owed or any(n in r.restart_on for n in by))
                restart = "reload" if r.reload and active and not config else "restart"
                settles = [r.id]
                causes = ([f"changed: {', '.join(by)}"] if by else []) + ([PENDING] if owed else [])
                todo.append(f"{restart} ({'; '.join(causes)})")
        if owed:
            ctx.out.resumed.append(r.id)
        if r.running and not active and not (by or owed):
            todo.append("start" if known else "start if not running after package install")
        if not r.running and active:
            todo.append("stop")
        if r.enabled != enabled or not known:
            if not known:
                todo.append("enable if needed after package install")
            elif unmask and r.enabled:
                todo.append("enable if needed once unmasked")
            elif r.enabled != enabled:
                todo.append("enable" if r.enabled else "disable")
        if todo:
            why = f"{r.name}: " + "; ".join(todo)
            ctx.act(r.id, _action(r, why, restart, validator, rollback, unmask, settles))
        else:
            state = "running" if active else "stopped"
            ctx.skip(r.id, f"{state}, {'enabled' if enabled else 'disabled'}, no notifying change")

    def push(self, r: Service, ctx: PushContext, by: list[int]) -> wire.Action:
        files = [
            n.path for n in ctx.resources if isinstance(n, File) and n.id in ctx.members and r.id in n.notify
        ]
        config = any(n in ctx.members for n in r.restart_on)  # the box runs it only if a notifier changed
        verb: Literal["reload", "restart"] = "reload" if r.reload and not config else "restart"
        item = _action(r, f"{verb} {r.name}", verb, r.validator, files, False, [r.id])
        item["if_changed"] = by
        return item


def unit_path(service: str) -> str:
    """Where a recipe that ships its own systemd unit puts it."""
    return f"/etc/systemd/system/{service if '.' in service else service + '.service'}"


def _action(
    r: Service,
    why: str,
    restart: Literal["reload", "restart"] | None,
    validator: str | None,
    rollback: list[str],
    unmask: bool,
    settles: list[str],
) -> wire.ServiceAction:
    return wire.ServiceAction(
        resource=r.id,
        op="service",
        why=why,
        name=r.name,
        running=r.running,
        enabled=r.enabled,
        restart=restart,
        validator=validator,
        rollback=rollback,
        unmask=unmask,
        carries_access=r.carries_access,
        settles=settles,
    )
