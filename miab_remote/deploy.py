"""Converging one box: probe once, plan on the laptop, stage changed files in one SFTP session, apply once.

A no-op deploy costs one round trip (the probe). A deploy that changes something costs three: the probe,
the SFTP session and the apply script. If another deploy changed the box between our probe and our apply,
the apply refuses to touch anything ("stale") and we probe and plan again.
"""

from __future__ import annotations

import json
import shlex
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miab_remote import providers
from miab_remote.diffing import Masker, plan_diff
from miab_remote.errors import HostError, InputError, MiabError
from miab_remote.inventory import Inventory
from miab_remote.layout import mailbox_dir
from miab_remote.model import Host
from miab_remote.planner import Plan, plan, probe_spec, push_actions
from miab_remote.profiles import DEBIAN_12, OSProfile, profile_by_id, profile_for_os_release
from miab_remote.recipes import RecipeContext, load_resources, render_files
from miab_remote.resources import Resource
from miab_remote.ssh import Transport
from miab_remote.templates import TemplateSet

STALE = 75
LOCK_TIMEOUT = 3
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


Progress = Callable[[str, str], None]


def secrets_of(host: Host) -> Masker:
    return Masker(u.password_hash for u in host.users)


Built = tuple[list[Resource], dict[str, bytes]]
# The last build per (box, OS, inventory, tag) in this process, with what it was made from (the Host and the
# template files' names, sizes and mtimes): the CLI builds every box before it contacts any (a broken recipe
# or template is exit 2), and the deploy then needs the same build, which took ~25 ms.
_BUILT: dict[tuple[str, str, str, str | None], tuple[Host, tuple[Any, ...], Built]] = {}
_BUILT_LOCK = threading.Lock()


def build(host: Host, profile: OSProfile, inventory_root: Path, tag: str | None = None) -> Built:
    """The box's resources and its files' rendered bytes (with `tag`: only the files tagged so). Made again
    only when the Host (compared field by field) or a template file changed: the caller must not change
    what it returns."""
    templates = TemplateSet(inventory_root / "templates", profile.template_variants)
    key = (host.name, profile.id, str(inventory_root), tag)
    made_from = templates.snapshot()
    with _BUILT_LOCK:
        hit = _BUILT.get(key)
    if hit is not None and hit[0] == host and hit[1] == made_from:
        return hit[2]
    resources = load_resources(host, profile, inventory_root)
    ctx = RecipeContext(host, profile)
    built = resources, render_files(resources, ctx.template_vars(), templates, tag)
    with _BUILT_LOCK:
        _BUILT[key] = (host, made_from, built)
    return built


def deploy_host(
    inventory: Inventory, name: str, opts: DeployOptions, progress: Progress, transport: Transport | None = None
) -> HostRun:
    """Converge one box; every failure ends up in the returned HostRun, never as an exception.
    `transport`: a connection to it the caller opened (or is opening) already."""

    def job(host: Host, transport: Transport, run: HostRun) -> None:
        mask = secrets_of(host)
        progress(name, "connecting")
        transport.connect()
        profile = (profile_by_id(host.os) if host.os else None) or DEBIAN_12
        for _attempt in range(4):
            resources, rendered = build(host, profile, inventory.root)
            progress(name, "reading facts")
            facts = transport.run_json("probe", probe_spec(resources, rendered, opts.diff))
            detected = profile_for_os_release(facts["os_release"], name)
            run.os = detected.id
            if detected.id != host.os and not opts.dry_run:
                with inventory.edit(name) as doc:
                    doc["os"] = detected.id
                run.notes.append(f"recorded os = {detected.id!r} in the inventory")
                host = inventory.load(name)
            if detected.id != profile.id:
                profile = detected
                continue
            the_plan = plan(resources, rendered, facts)
            run.unchanged = [(s.resource, s.reason) for s in the_plan.unchanged]
            if opts.diff:
                run.diff = plan_diff(the_plan, facts, rendered, mask)
            if opts.dry_run or not the_plan.actions:
                if the_plan.resumed:
                    run.notes.append(f"{RESUME} (would finish): {', '.join(the_plan.resumed)}")
                run.actions = [ActionReport(a.resource, mask(a.why), "planned") for a in the_plan.actions]
                run.changed = len(the_plan.changed_resources) if opts.dry_run else 0
                if not opts.dry_run:
                    run.notes += providers.after_deploy(host)
                return
            if _apply(transport, the_plan, rendered, opts, run, progress, mask):
                run.notes += providers.after_deploy(host)
                return
            progress(name, "the box changed since it was read; reading it again")
        raise HostError(f"{name}: the box kept changing under this deploy; is another tool writing to it?")

    return with_transport(inventory, name, job, opts.connect_timeout, transport)


def _apply(
    transport: Transport,
    the_plan: Plan,
    rendered: dict[str, bytes],
    opts: DeployOptions,
    run: HostRun,
    progress: Progress,
    mask: Masker,
) -> bool:
    """Stage and apply; False when the box changed since the probe (nothing was touched then)."""
    wire: list[dict[str, Any]] = []
    staged: dict[str, bytes] = {}
    for i, action in enumerate(the_plan.actions):
        item = action.to_wire()
        if action.op == "file" and action.params["content"]:
            item["staged"] = f"f{i}"
            staged[item["staged"]] = rendered[action.params["path"]]
        wire.append(item)
    access = [a for a in the_plan.actions if a.op == "service" and a.params.get("carries_access")]
    if access:
        progress(run.name, "proving key login over a second connection before touching sshd")
        _prove_login(transport.host, opts.connect_timeout, run, "before changing sshd: nothing was changed")
    progress(run.name, f"staging {len(staged)} file(s)")
    with transport.sftp() as sftp:
        stage = f"{sftp.normalize('.')}/.miab-remote-stage-{uuid.uuid4().hex[:12]}"
        sftp.mkdir(stage, 0o700)
        for fname, data in staged.items():
            with sftp.open(f"{stage}/{fname}", "wb") as f:
                f.chmod(0o600)
                f.set_pipelined(True)
                f.write(data)
    done = _run_apply(transport, wire, stage, opts.lock_timeout, run, progress, mask)
    if done and access:
        _prove_login(transport.host, opts.connect_timeout, run, "after changing sshd: the old session is still open")
    return done


def _prove_login(host: Host, timeout: float, run: HostRun, when: str) -> None:
    """Open a fresh pinned connection with the operator's key and run `true` through it (and sudo)."""
    with Transport(host, connect_timeout=timeout) as probe:
        try:
            res = probe.exec("true", idle_timeout=timeout)
        except MiabError as e:
            raise HostError(f"{host.name}: key login over a new connection failed {when}: {e}") from None
        finally:
            run.round_trips += probe.round_trips
        if res.exit_code != 0:
            raise HostError(f"{host.name}: key login over a new connection failed {when}: exit {res.exit_code}")


def _run_apply(
    transport: Transport,
    wire: list[dict[str, Any]],
    stage: str,
    lock_timeout: float,
    run: HostRun,
    progress: Progress,
    mask: Masker,
) -> bool:
    """Run the apply script over `wire` actions, following its events; False if the box was stale."""
    name = run.name
    reports = [ActionReport(a["resource"], mask(a["why"]), "skipped") for a in wire]
    state: dict[str, Any] = {"error": None, "stale": None, "lock": None, "pending": []}

    def on_line(line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        kind = event.get("event")
        if kind == "start":
            i = event["index"]
            progress(name, f"[{i + 1}/{len(wire)}] {reports[i].why}")
        elif kind == "done":
            reports[event["index"]].status = "changed" if event["changed"] else "unchanged"
        elif kind == "fail":
            reports[event["index"]].status = "failed"
            state["error"] = f"{wire[event['index']]['resource']}: {mask(event['error'])}"
        elif kind == "stale":
            state["stale"] = event["path"]
        elif kind == "pending":
            state["pending"] = event["ids"]
        elif kind == "lock":
            state["lock"] = event
            if event["state"] == "waiting":
                progress(name, "waiting: another deploy holds this box's lock")

    res = transport.run_script(
        "apply", {"stage": stage, "lock_timeout": lock_timeout, "actions": wire}, on_line=on_line
    )
    lock = state["lock"]
    if lock and lock["state"] == "acquired":
        run.notes.append(f"waited {lock['seconds']} s for another deploy on this box")
    if res.exit_code == STALE:
        run.notes.append(f"{state['stale']} changed between reading and applying; planned again")
        return False
    if res.exit_code == LOCK_TIMEOUT:
        raise HostError(
            f"{name}: another deploy held this box's lock for more than {lock_timeout:.0f} s; nothing was changed"
        )
    run.actions = reports
    run.changed = len({r.resource for r in reports if r.status == "changed"})
    run.notes += _resume_notes(state["pending"], wire, reports)
    if res.exit_code != 0:
        detail = state["error"] or mask(res.stderr.decode(errors="replace").strip()[-2000:])
        raise HostError(f"{name}: {detail}")
    return True


def _resume_notes(pending: list[str], wire: list[dict[str, Any]], reports: list[ActionReport]) -> list[str]:
    """What of the box's journal (notifications an interrupted run could not deliver) this run delivered."""
    done = {
        t
        for a, r in zip(wire, reports, strict=True)
        if r.status in ("changed", "unchanged")
        for t in a.get("settles", [])
    }
    finished = [p for p in pending if p in done]
    left = [p for p in pending if p not in done]
    notes = [f"{RESUME}, finished now: {', '.join(finished)}"] if finished else []
    if left:
        notes.append(f"{RESUME}, still to do (the next deploy does it): {', '.join(left)}")
    return notes


def push_accounts(
    inventory: Inventory, name: str, progress: Progress, transport: Transport | None = None
) -> HostRun:
    """Push only what users and aliases change (maps, password file), in one round trip.

    Call it while holding `inventory.lock(name)`, so that a push never sends an older inventory after a
    newer one. The box compares and replaces under its deploy lock; unchanged files are not touched.
    `transport`: a connection to the box opened (or opening) before the edit, which changes no [ssh] setting.
    """

    def job(host: Host, transport: Transport, run: HostRun) -> None:
        profile = profile_by_id(host.os) if host.os else None
        if profile is None:
            raise HostError(f"{name}: never deployed (no os recorded); run `miab-remote deploy {name}` first")
        resources, rendered = build(host, profile, inventory.root, "accounts")
        wire = push_actions(resources, rendered, "accounts")
        if not wire:
            run.notes.append("no recipe of this box renders users or aliases: nothing to push")
            return
        progress(name, "pushing users and aliases")
        _run_apply(transport, wire, _private_stage(), 300.0, run, progress, secrets_of(host))

    return with_transport(inventory, name, job, transport=transport)


def purge_mailbox(inventory: Inventory, name: str, email: str, progress: Progress) -> HostRun:
    """Delete a removed user's mailbox on the box (after the operator confirmed)."""

    def job(host: Host, transport: Transport, run: HostRun) -> None:
        if any(u.email.lower() == email.lower() for u in host.users):
            raise InputError(f"{email} is still a user of {name}; remove it first")
        path = mailbox_dir(email)
        wire = [
            {
                "resource": f"mailbox:{email}",
                "op": "command",
                "why": f"delete {path}",
                "run": f"rm -rf -- {shlex.quote(path)}",
                "creates": None,
                "unless": f"! test -e {shlex.quote(path)}",
            }
        ]
        progress(name, f"deleting {path}")
        _run_apply(transport, wire, _private_stage(), 300.0, run, progress, secrets_of(host))

    return with_transport(inventory, name, job)


def _private_stage() -> str:
    # Pushes carry their content inline; the box stages it on tmpfs, readable by root only.
    return f"/run/miab-remote/push-{uuid.uuid4().hex[:12]}"


def with_transport(
    inventory: Inventory,
    name: str,
    job: Callable[[Host, Transport, HostRun], None],
    connect_timeout: float = 10.0,
    transport: Transport | None = None,
) -> HostRun:
    """Run `job` over one pinned connection (`transport`, or a new one); every failure ends up in the
    returned HostRun. The connection is closed at the end either way."""
    run = HostRun(name)
    start = time.monotonic()
    try:
        host = inventory.load(name)
        run.os = host.os
        if transport is None:
            transport = Transport(host, connect_timeout=connect_timeout)
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
