"""Converging one box: probe once, plan on the laptop, apply once (the changed files' content inline).

A no-op deploy costs one round trip (the probe). A deploy that changes something costs two: the probe and
the apply script, which gets the changed files' bytes on its stdin after its spec (remote/wire.py) and
stages them on the box's tmpfs, readable by root only. If another deploy changed the box between our
probe and our apply, the apply refuses to touch anything ("stale") and we probe and plan again.

The engine is pure on the laptop side: it takes a loaded Host, writes nothing on the laptop and knows no
provider; it returns what it learned (HostRun.os: the OS the probe found). jobs/deploy.py records that.
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from miab_remote.engine.diffing import plan_diff
from miab_remote.engine.planner import Plan, command_action, plan, probe_spec, push_wire
from miab_remote.engine.recipes import RecipeContext, load_resources, render_files
from miab_remote.engine.redact import SecretMask, secret_mask_for
from miab_remote.engine.resources import Resource
from miab_remote.engine.templates import TemplateSet
from miab_remote.errors import HostError, InputError, MiabError
from miab_remote.fleet.model import Host
from miab_remote.mail.layout import mailbox_dir
from miab_remote.profiles import OSProfile, assumed_profile, profile_by_id, profile_for_os_release
from miab_remote.remote import wire
from miab_remote.transport.ssh import Transport
from miab_remote.transport.target import SSHTarget

RESUME = "left pending by an interrupted run"


@dataclass(frozen=True)
class DeployOptions:
    dry_run: bool = False
    diff: bool = False
    lock_timeout: float = 300.0
    connect_timeout: float = 10.0


@dataclass
class ActionReport:
    resource: str
    why: str
    status: str  # planned | changed | unchanged | failed | skipped

    def as_dict(self) -> dict[str, str]:
        return {"resource": self.resource, "why": self.why, "status": self.status}


@dataclass
class HostRun:
    name: str
    changed: int = 0
    failed: int = 0
    round_trips: int = 0
    seconds: float = 0.0
    os: str | None = None
    actions: list[ActionReport] = field(default_factory=list)
    unchanged: list[tuple[str, str]] = field(default_factory=list)
    diff: str = ""
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "failed": self.failed,
            "round_trips": self.round_trips,
            "seconds": round(self.seconds, 3),
            "os": self.os,
            "error": self.error,
            "actions": [a.as_dict() for a in self.actions],
            "unchanged": [{"resource": r, "why": w} for r, w in self.unchanged],
            "notes": self.notes,
        }


# Told what a host's run is doing now: (host name, message). Not cli.output.Progress: any callable will do.
Report = Callable[[str, str], None]


def build(
    host: Host, profile: OSProfile, inventory_root: Path, tag: str | None = None
) -> tuple[list[Resource], dict[str, bytes]]:
    """The box's resources and its files' rendered bytes (with `tag`: only the files tagged so)."""
    resources = load_resources(host, profile, inventory_root)
    templates = TemplateSet(inventory_root / "templates", profile.template_variants)
    ctx = RecipeContext(host, profile)
    return resources, render_files(resources, ctx.template_vars(), templates, tag)


@dataclass(frozen=True)
class Build:
    """A box's resources and rendered files for one OS profile, built once and reused by its converge."""

    profile: OSProfile
    resources: list[Resource]
    rendered: dict[str, bytes]


def prepare(host: Host, inventory_root: Path, profile: OSProfile | None = None) -> Build:
    """Build a box on the laptop (for the os its inventory records unless `profile` says): a failed recipe
    or template is bad input (exit 2, one line naming the file), found before any box is contacted."""
    profile = profile or assumed_profile(host.os)
    return Build(profile, *build(host, profile, inventory_root))


def converge(
    host: Host,
    built: Build,
    inventory_root: Path,
    opts: DeployOptions,
    report: Report,
    transport: Transport | None = None,
) -> HostRun:
    """Converge one box to `built`; every failure ends up in the returned HostRun, never as an exception.

    A box the probe finds on another supported system than `built` assumed is built again for it (from the
    operator's recipes and templates under `inventory_root`); HostRun.os says what the probe found.
    `transport`: a connection to the box the caller opened (or is opening) already."""
    name = host.name

    def job(host: Host, transport: Transport, run: HostRun) -> None:
        mask = secret_mask_for(host)
        report(name, "connecting")
        transport.connect()
        current = built
        for _attempt in range(4):
            report(name, "reading facts")
            facts = transport.run_json("probe", probe_spec(current.resources, current.rendered, opts.diff))
            detected = profile_for_os_release(facts["os_release"], name)
            run.os = detected.id
            if detected.id != current.profile.id:
                current = prepare(host, inventory_root, detected)
                continue
            the_plan = plan(current.resources, current.rendered, facts)
            run.unchanged = [(s.resource, s.reason) for s in the_plan.unchanged]
            if opts.diff:
                run.diff = plan_diff(the_plan, facts, current.rendered, mask)
            if opts.dry_run or not the_plan.actions:
                if the_plan.resumed:
                    run.notes.append(f"{RESUME} (would finish): {', '.join(the_plan.resumed)}")
                run.actions = [ActionReport(a.resource, mask(a.why), "planned") for a in the_plan.actions]
                run.changed = len(the_plan.changed_resources) if opts.dry_run else 0
                return
            if _apply(transport, the_plan, current.rendered, opts, run, report, mask):
                return
            report(name, "the box changed since it was read; reading it again")
        raise HostError(f"{name}: the box kept changing under this deploy; is another tool writing to it?")

    return with_transport(host, job, opts.connect_timeout, transport)


def _apply(
    transport: Transport,
    the_plan: Plan,
    rendered: Mapping[str, bytes],
    opts: DeployOptions,
    run: HostRun,
    report: Report,
    mask: SecretMask,
) -> bool:
    """Apply the plan, the changed files' content inline; False when the box changed since the probe
    (nothing was touched then)."""
    actions = [a.wire for a in the_plan.actions]
    access = any(a["op"] == "service" and a["carries_access"] for a in actions)
    if access:
        report(run.name, "proving key login over a second connection before touching sshd")
        _prove_login(transport.target, opts.connect_timeout, run, "before changing sshd: nothing was changed")
    done = _run_apply(transport, actions, rendered, opts.lock_timeout, run, report, mask)
    if done and access:
        _prove_login(transport.target, opts.connect_timeout, run, "after changing sshd: the old session is still open")
    return done


def _prove_login(target: SSHTarget, timeout: float, run: HostRun, when: str) -> None:
    """Open a fresh pinned connection with the operator's key and run `true` through it (and sudo)."""
    with Transport(target, connect_timeout=timeout) as probe:
        try:
            res = probe.exec("true", idle_timeout=timeout)
        except MiabError as e:
            raise HostError(f"{target.name}: key login over a new connection failed {when}: {e}") from None
        finally:
            run.round_trips += probe.round_trips
        if res.exit_code != 0:
            raise HostError(f"{target.name}: key login over a new connection failed {when}: exit {res.exit_code}")


def _run_apply(
    transport: Transport,
    actions: list[wire.Action],
    content: Mapping[str, bytes],
    lock_timeout: float,
    run: HostRun,
    report: Report,
    mask: SecretMask,
) -> bool:
    """Run the apply script over `actions` (with the content of the files they carry), following its
    events; False if the box was stale."""
    name = run.name
    reports = [ActionReport(a["resource"], mask(a["why"]), "skipped") for a in actions]
    state: dict[str, Any] = {"error": None, "stale": None, "lock": None, "pending": []}

    def on_line(line: bytes) -> None:
        try:
            event = cast(wire.Event, json.loads(line))
        except ValueError:
            return
        kind = event.get("event")
        if kind == "start":
            i = event["index"]
            report(name, f"[{i + 1}/{len(actions)}] {reports[i].why}")
        elif kind == "done":
            reports[event["index"]].status = "changed" if event["changed"] else "unchanged"
        elif kind == "fail":
            if "index" in event:
                reports[event["index"]].status = "failed"
                state["error"] = f"{actions[event['index']]['resource']}: {mask(event['error'])}"
            else:
                state["error"] = mask(event["error"])
        elif kind == "note":  # a command's line for the operator (wire.NOTE_PREFIX)
            run.notes.append(mask(event["text"]))
        elif kind == "stale":
            state["stale"] = event["path"]
        elif kind == "pending":
            state["pending"] = event["ids"]
        elif kind == "lock":
            state["lock"] = event
            if event["state"] == "waiting":
                report(name, "waiting: another deploy holds this box's lock")

    carried = wire.carried(actions)
    if carried:
        report(name, f"sending {len(carried)} changed file(s) with the apply")
    spec = wire.ApplySpec(stage=_private_stage(), lock_timeout=lock_timeout, actions=actions)
    res = transport.run_script("apply", wire.encode_apply(spec, content), on_line=on_line)
    lock = state["lock"]
    if lock and lock["state"] == "acquired":
        run.notes.append(f"waited {lock['seconds']} s for another deploy on this box")
    if res.exit_code == wire.STALE:
        run.notes.append(f"{state['stale']} changed between reading and applying; planned again")
        return False
    if res.exit_code == wire.LOCK_TIMEOUT:
        raise HostError(
            f"{name}: another deploy held this box's lock for more than {lock_timeout:.0f} s; nothing was changed"
        )
    run.actions = reports
    run.changed = len({r.resource for r in reports if r.status == "changed"})
    run.notes += _resume_notes(state["pending"], actions, reports)
    if res.exit_code != 0:
        detail = state["error"] or mask(res.stderr.decode(errors="replace").strip()[-2000:])
        raise HostError(f"{name}: {detail}")
    return True


def _resume_notes(pending: list[str], actions: list[wire.Action], reports: list[ActionReport]) -> list[str]:
    """What of the box's journal (notifications an interrupted run could not deliver) this run delivered."""
    done = {
        t
        for a, r in zip(actions, reports, strict=True)
        if r.status in ("changed", "unchanged")
        for t in cast(list[str], a.get("settles", []))
    }
    finished = [p for p in pending if p in done]
    left = [p for p in pending if p not in done]
    notes = [f"{RESUME}, finished now: {', '.join(finished)}"] if finished else []
    if left:
        notes.append(f"{RESUME}, still to do (the next deploy does it): {', '.join(left)}")
    return notes


def push_accounts(host: Host, inventory_root: Path, report: Report, transport: Transport | None = None) -> HostRun:
    """Push only what users and aliases change (maps, password file), in one round trip; only those files
    are rendered (4 of the box's 41).

    Call it while holding the box's inventory lock, so that a push never sends an older inventory after a
    newer one. The box compares and replaces under its deploy lock; unchanged files are not touched.
    `transport`: a connection opened (or opening) before the edit, which changes no [ssh] setting.
    """
    return push_tagged(host, inventory_root, report, "accounts", "users and aliases", transport)


def push_tagged(
    host: Host, inventory_root: Path, report: Report, tag: str, what: str, transport: Transport | None = None
) -> HostRun:
    """Push only the files tagged `tag` (and reload what they notify), in one round trip without a probe:
    the accounts of `user`/`alias`, or ("secondary") the zones a box serves for its primaries."""
    name = host.name

    def job(host: Host, transport: Transport, run: HostRun) -> None:
        profile = profile_by_id(host.os) if host.os else None
        if profile is None:
            raise HostError(f"{name}: never deployed (no os recorded); run `miab-remote deploy {name}` first")
        resources, rendered = build(host, profile, inventory_root, tag)
        actions = push_wire(resources, rendered, tag)
        if not actions:
            run.notes.append(f"no recipe of this box renders {what}: nothing to push")
            return
        report(name, f"pushing {what}")
        _run_apply(transport, actions, rendered, 300.0, run, report, secret_mask_for(host))

    return with_transport(host, job, transport=transport)


def purge_mailbox(host: Host, email: str, report: Report) -> HostRun:
    """Delete a removed user's mailbox on the box (after the operator confirmed)."""
    name = host.name

    def job(host: Host, transport: Transport, run: HostRun) -> None:
        if any(u.email.lower() == email.lower() for u in host.users):
            raise InputError(f"{email} is still a user of {name}; remove it first")
        path = mailbox_dir(email)
        quoted = shlex.quote(path)
        delete = command_action(
            f"mailbox:{email}", f"delete {path}", f"rm -rf -- {quoted}", unless=f"! test -e {quoted}"
        )
        report(name, f"deleting {path}")
        _run_apply(transport, [delete], {}, 300.0, run, report, secret_mask_for(host))

    return with_transport(host, job)


def _private_stage() -> str:
    # The box stages the content a run carries on tmpfs, in a folder of its own readable by root only.
    return f"{wire.STAGE_ROOT}/{uuid.uuid4().hex[:12]}"


def with_transport(
    host: Host,
    job: Callable[[Host, Transport, HostRun], None],
    connect_timeout: float = 10.0,
    transport: Transport | None = None,
) -> HostRun:
    """Run `job` over one pinned connection (`transport`, or a new one); every failure ends up in the
    returned HostRun. The connection is closed at the end either way."""
    run = HostRun(host.name)
    start = time.monotonic()
    try:
        if transport is None:
            transport = Transport(host.target, connect_timeout=connect_timeout)
        job(host, transport, run)
    except MiabError as e:
        run.error = str(e)
        run.failed += 1
    finally:
        if transport is not None:
            run.round_trips += transport.round_trips
            transport.close()
        run.seconds = time.monotonic() - start
    return run

