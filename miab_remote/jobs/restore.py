"""`restore`: a box's state tree from its backups (or an old box's, for a move), then deploy, then check.

On the laptop first, before the box is contacted: [backup] and its password, the old box's repository
(`--from OLD`: its inventory, or its newest record in hosts/.archive/, and its secrets), the user of
`--user`, and the services to stop (derived from the box's recipes, see state_services). Then on the box
(remote/backup.py): `restore` closes port 25, stops those services, restores into a new folder, fixes
owners, swaps it into place and journals that; the deploy job converges the box on the restored tree
(nothing is regenerated: keys, certificates and databases come from the backup); `restore-finish` opens
port 25 and starts the timer again; `check` says whether all works. A run interrupted anywhere is finished
by running the same command again (the box's journal says where it was). Credentials reach the box on
stdin only: the old repository's for `--from`, never on a command line.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miab_remote import names
from miab_remote.checks.result import Check
from miab_remote.engine.converge import DeployOptions, HostRun, build
from miab_remote.engine.resources import Directory, File, Resource, Service
from miab_remote.errors import HostError, InputError
from miab_remote.fleet import secrets
from miab_remote.fleet.model import Host
from miab_remote.fleet.problems import InventoryError, display_path
from miab_remote.fleet.schema import validate
from miab_remote.fleet.store import ARCHIVE_DIR, Inventory
from miab_remote.jobs import check as check_job
from miab_remote.jobs import deploy as deploy_job
from miab_remote.jobs import recovery
from miab_remote.jobs.backup import Report, ready, run_program
from miab_remote.mail import backup, layout
from miab_remote.profiles import assumed_profile
from miab_remote.transport.ssh import Transport

NOTHING = "nothing was changed"
_ARCHIVED = r"\.(\d{8}T\d{6}Z)(?:-(\d+))?\.toml"


@dataclass(frozen=True)
class RestoreOptions:
    snapshot: str = "latest"
    from_name: str | None = None  # the old box whose backups are restored (a move)
    force: bool = False  # restore over a box that holds mail already
    user: str | None = None  # one mailbox only, into a Restored-DATE folder; no deploy
    connect_timeout: float = 10.0


@dataclass
class RestoreRun:
    """What a restore did: its result on the box, the deploy after it and the checks (values, no printing)."""

    name: str
    result: dict[str, Any] = field(default_factory=dict)
    deploy: HostRun | None = None
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    def as_dict(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "deploy": None if self.deploy is None else self.deploy.as_dict(),
            "checks": [c.as_dict() for c in self.checks],
            "notes": self.notes,
        }


# -- on the laptop, before the box ---------------------------------------------------------------------------------
def state_services(host: Host, inventory_root: Path) -> list[str]:
    """The units to stop while the state tree is replaced: every running Service of each of the box's recipes
    that uses the state tree (declares a file or folder in it, or renders a file that names it). The box's
    own recipes say it, so a recipe added later is covered by itself; those that keep the box reachable and
    safe (ssh, the firewall, DNS) use no state and keep running."""
    profile = assumed_profile(host.os)
    units: list[str] = []
    for recipe in host.recipes:
        resources, rendered = build(dataclasses.replace(host, recipes=(recipe,)), profile, inventory_root)
        if _uses_state(resources, rendered):
            units += [r.name for r in resources if isinstance(r, Service) and r.running]
    return list(dict.fromkeys(units))


def _uses_state(resources: Sequence[Resource], rendered: dict[str, bytes]) -> bool:
    """A file or folder in the state tree, or a rendered file naming it that is not a program run on demand
    (nsd's zones-rebuild names the DKIM key it reads, as the zone commands do; nsd itself reads no state)."""
    tree = layout.STATE
    inside = any(
        isinstance(r, File | Directory) and (r.path == tree or r.path.startswith(tree + "/")) for r in resources
    )
    programs = {r.path for r in resources if isinstance(r, File) and r.mode & 0o111}
    return inside or any(tree.encode() in content for path, content in rendered.items() if path not in programs)


def source_host(inv: Inventory, name: str) -> tuple[Host, str]:
    """The old box of `--from`: its inventory, or else its newest archived record; and where it was read."""
    path = inv.path_for(name)
    if path.is_file():
        return inv.load(name), display_path(path)
    folder = inv.root / ARCHIVE_DIR
    pattern = re.compile(re.escape(name) + _ARCHIVED)
    found = sorted(
        (m.group(1), int(m.group(2) or 1), p)
        for p in (folder.iterdir() if folder.is_dir() else ())
        if (m := pattern.fullmatch(p.name))
    )
    if not found:
        raise InputError(
            f"--from {name}: no inventory {display_path(path)} and no archived record of it in "
            f"{display_path(folder)}; {NOTHING}"
        )
    archived = found[-1][2]
    try:
        # Read as the box's own file (its stem is its name; a relative ca_file is relative to hosts/).
        return validate(archived.read_text(encoding="utf-8"), path), display_path(archived)
    except InventoryError as e:
        raise InputError(f"--from {name}: its archived record {display_path(archived)}: {e}") from None


def old_repository(host: Host, old: Host, where: str) -> dict[str, Any] | None:
    """The old box's repository credentials for the box's stdin; None when it is this box's own one."""
    if old.backup is None:
        raise InputError(f"--from {old.name}: {where} has no [backup]: where were its backups? {NOTHING}")
    if secrets.get(old.name, secrets.BACKUP_PASSWORD) is None:
        raise InputError(
            f"--from {old.name}: its repository password is not stored (in {display_path(secrets.path_for(old.name))}"
            f"; its recovery sheet has it); {NOTHING}"
        )
    try:
        theirs = backup.credentials(old)
    except InputError as e:
        raise InputError(f"--from {old.name} (its secrets are needed): {e}") from None
    if theirs == backup.credentials(host):
        return None
    if old.backup.kind == "sftp":
        # The box holds its own sftp key and known host only: another box's would have to be sent too.
        raise InputError(
            f"--from {old.name}: its sftp repository is not this box's; restoring another box's sftp repository "
            f"is not supported: give {host.name} the same target first (`miab-remote backup-target set {host.name} "
            f"--target {old.backup.target} --host-key ...`, and the old key in its secrets); {NOTHING}"
        )
    return theirs


def restored_folder(today: datetime.date | None = None) -> str:
    return f"Restored-{(today or datetime.datetime.now(datetime.UTC).date()).isoformat()}"


# -- the whole restore ---------------------------------------------------------------------------------------------
def restore(
    inv: Inventory,
    name: str,
    opts: RestoreOptions,
    report: Report,
    on_phase: Callable[[str], None] = lambda _line: None,
) -> RestoreRun:
    """Restore `name`; each finished phase told to `on_phase`. Bad input (exit 2) before the box is
    contacted; the box's refusal (it holds mail) is a Refused (exit 2, nothing done); a failure after
    the swap names the command that finishes the restore."""
    host = ready(inv.load(name))
    snapshot_host, credentials = name, None
    if opts.from_name is not None and opts.from_name != name:
        old, where = source_host(inv, opts.from_name)
        credentials = old_repository(host, old, where)
        snapshot_host = old.name
    run = RestoreRun(name)
    if opts.user is not None:
        return _restore_user(host, snapshot_host, credentials, opts, report, on_phase, run)
    services = state_services(host, inv.root)
    payload = {
        "command": "restore",
        "snapshot": opts.snapshot,
        "host": snapshot_host,
        "force": opts.force,
        "services": services,
        "credentials": credentials,
    }
    report(name, "connecting")
    with Transport(host.target, connect_timeout=opts.connect_timeout) as t:
        run.result = run_program(t, host, payload, report)
    run.notes += [str(n) for n in run.result.get("notes") or []]
    on_phase(
        f"{name}: restored snapshot {str(run.result.get('snapshot', '?'))[:8]} of {snapshot_host} "
        f"({run.result.get('files', '?')} files; port 25 closed and {', '.join(services) or 'no service'} stopped "
        f"meanwhile); the box's former tree is kept at {run.result.get('before') or '(none)'}"
    )
    again = f"run `miab-remote restore {name}{_from_flag(opts)}` again to finish: port 25 stays closed until then"
    run.deploy = deploy_job.deploy(inv, [name], DeployOptions(connect_timeout=opts.connect_timeout), report)[name]
    if run.deploy.error:
        raise HostError(f"{name}: the deploy after the restore failed: {run.deploy.error}; {again}")
    on_phase(f"{name}: deployed on the restored tree ({run.deploy.changed} changed)")
    try:
        with Transport(host.target, connect_timeout=opts.connect_timeout) as t:
            run_program(t, host, {"command": "restore-finish"}, report)
    except HostError as e:
        raise HostError(f"{e}; {again}") from None
    on_phase(f"{name}: port 25 open again, backups timer started")
    secrets.put(name, secrets.BACKUP_SINCE, recovery.now_text())  # this box's own backups are due from now
    report(name, "checking")
    run.checks = check_job.check_hosts([inv.load(name)])[name]
    on_phase(f"{name}: checked: {len(run.failed_checks)} of {len(run.checks)} checks failed")
    return run


def _from_flag(opts: RestoreOptions) -> str:
    return f" --from {opts.from_name}" if opts.from_name else ""


def _restore_user(
    host: Host,
    snapshot_host: str,
    credentials: dict[str, Any] | None,
    opts: RestoreOptions,
    report: Report,
    on_phase: Callable[[str], None],
    run: RestoreRun,
) -> RestoreRun:
    """One mailbox's folders from a snapshot into `Restored-DATE` folders of its live mailbox; no deploy."""
    assert opts.user is not None
    if problem := names.email_problem(opts.user):
        raise InputError(f"--user: {problem}; {NOTHING}")
    email = names.normal_email(opts.user)
    if email not in {u.email for u in host.users}:
        listing = f"`miab-remote user list {host.name}`"
        raise InputError(f"--user {opts.user}: not a user of {host.name} ({listing}); {NOTHING}")
    payload: dict[str, Any] = {
        "command": "restore-user",
        "snapshot": opts.snapshot,
        "host": snapshot_host,
        "email": email,
        "folder": restored_folder(),
    }
    if credentials is not None:
        raise InputError(
            f"--user with --from {snapshot_host}: one mailbox is restored from the box's own repository only; "
            f"restore the whole box from {snapshot_host}'s, or set {host.name}'s target to it first; {NOTHING}"
        )
    report(host.name, "connecting")
    with Transport(host.target, connect_timeout=opts.connect_timeout) as t:
        run.result = run_program(t, host, payload, report)
    on_phase(
        f"{host.name}: {run.result.get('messages', '?')} messages of {email} restored into the folder "
        f"{run.result.get('folder', '?')} of that mailbox (services kept running)"
    )
    return run
