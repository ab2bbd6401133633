"""Setting, showing and removing where a box's backups go: its [backup] table in the inventory and the
target's credentials in the laptop's secrets store, never the one in the other.

Every value is checked, and every box's new inventory validated, before a credential is asked for, so a typo
costs no typing and changes nothing. An sftp target gets an ed25519 key made here (once: the target's
authorized_keys keeps working), whose public line the operator adds there. The change reaches the box with
`deploy`; the recovery sheet is written again here when the box has a password already.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Table

from miab_remote.errors import InputError
from miab_remote.fleet import rules, secrets
from miab_remote.fleet.model import Backup
from miab_remote.fleet.problems import display_path
from miab_remote.fleet.schema import validate
from miab_remote.fleet.store import Inventory
from miab_remote.fleet.syntax import read_document
from miab_remote.jobs import recovery
from miab_remote.jobs.relay import inventory_path
from miab_remote.mail import backup, relay
from miab_remote.transport import sshkeys

NOTHING = "nothing was changed"
DEFAULT_KEEP = {"daily": 7, "weekly": 5, "monthly": 12}


@dataclass(frozen=True)
class TargetChange:
    """What `backup-target set` was told; None: keep the box's current value (a new [backup] needs target)."""

    target: str | None = None
    keep: dict[str, int | None] = field(default_factory=dict)  # daily/weekly/monthly -> count, None: keep
    append_only: bool | None = None
    ca_file: Path | None = None  # as given, relative to the current folder
    system_cas: bool = False
    host_key: str | None = None


@dataclass(frozen=True)
class Credential:
    """One value the target's kind needs, asked for (hidden) or read as one line of stdin, in this order."""

    secret: str
    prompt: str
    # An empty answer: no login at all (a REST server without auth); then what follows is not asked.
    empty_means_none: bool = False
    confirm: bool = False  # asked twice on a terminal


CREDENTIALS: dict[str, tuple[Credential, ...]] = {
    "rest": (
        Credential(secrets.BACKUP_REST_USER, "REST server user (empty: a server without login)", empty_means_none=True),
        Credential(secrets.BACKUP_REST_PASSWORD, "REST server password", confirm=True),
    ),
    "s3": (
        Credential(secrets.BACKUP_S3_ACCESS_KEY_ID, "S3 access key id"),
        Credential(secrets.BACKUP_S3_SECRET_ACCESS_KEY, "S3 secret access key", confirm=True),
    ),
    "sftp": (),
    "local": (),
}


@dataclass(frozen=True)
class Checked:
    """The boxes' edited inventories, validated in memory, and the kind of credentials to ask for."""

    docs: dict[str, tomlkit.TOMLDocument]
    credentials: tuple[Credential, ...]  # empty when --target was not given: the stored ones stay


def check_set(inv: Inventory, names: list[str], change: TargetChange) -> Checked:
    """Each box's inventory with the change made, validated: bad input before anything is asked or written."""
    found = [
        f"{flag}: {problem}"
        for flag, problem in (
            ("--target", change.target is not None and rules.backup_target_problem(change.target)),
            *((f"--keep-{k}", v is not None and rules.backup_keep_problem(v)) for k, v in change.keep.items()),
        )
        if problem
    ]
    if found:
        raise InputError("; ".join(found) + f"; {NOTHING}")
    if change.ca_file is not None and change.system_cas:
        raise InputError(f"--ca-file and --system-cas contradict each other; {NOTHING}")
    if change.ca_file is not None:
        relay.read_ca(change.ca_file, f"--ca-file {change.ca_file}", backup.TARGET)
    docs: dict[str, tomlkit.TOMLDocument] = {}
    for name in dict.fromkeys(names):
        path = inv.path_for(name)
        doc = read_document(inv.load_text(name), path)
        if change.target is None and not isinstance(doc.get("backup"), dict):
            raise InputError(f"{name} has no [backup] yet: give --target; {NOTHING}")
        edit(doc, change, inv.root)
        validate(doc.as_string(), path)  # an InventoryError names the file, line and field
        docs[name] = doc
    kind = None if change.target is None else rules.backup_kind(change.target)
    return Checked(docs, CREDENTIALS[kind] if kind else ())


def check_values(credentials: tuple[Credential, ...], values: dict[str, str | None]) -> dict[str, str | None]:
    """The answers as stored: each checked (never shown); after an empty `empty_means_none`, all None."""
    out: dict[str, str | None] = {}
    none = False
    for c in credentials:
        value = None if none else values.get(c.secret)
        if c.empty_means_none and not value:
            none = True
            value = None
        elif value is None and not none:
            raise InputError(f"no {c.prompt} given; {NOTHING}")
        if value is not None:
            backup.check_credential(c.prompt, value)
        out[c.secret] = value
    return out


def set_target(
    inv: Inventory, checked: Checked, change: TargetChange, values: dict[str, str | None]
) -> tuple[list[str], list[str]]:
    """Store the credentials, then write each box's [backup] (under its lock, checked again): a line per box,
    and notes (the sftp key's public line, the recovery sheet written again)."""
    answers = check_values(checked.credentials, values) if change.target is not None else {}
    lines: list[str] = []
    notes: list[str] = []
    for name in checked.docs:
        if change.target is not None:
            kind = rules.backup_kind(change.target)
            others = {s: None for k, names in secrets.BACKUP_CREDENTIALS.items() if k != kind for s in names}
            secrets.put_many(name, {**others, **answers})
            if kind == "sftp":
                notes.append(sftp_key_note(name))
        with inv.edit(name) as doc:
            edit(doc, change, inv.root)
        host = inv.load(name)
        b = host.backup
        assert b is not None
        lines.append(f"{name}: backups to {b.target} ({describe(b)}) in {display_path(inv.path_for(name))}")
        notes += recovery.refresh(host)
    return lines, notes


def sftp_key_note(name: str) -> str:
    """The box's sftp key (made now if it has none): the line the target's authorized_keys needs."""
    stored = secrets.get(name, secrets.BACKUP_SFTP_KEY)
    if stored is None:
        pair = sshkeys.generate_ed25519(f"miab-backup@{name}")
        stored = secrets.put_new(name, secrets.BACKUP_SFTP_KEY, pair.private_openssh.decode())
    public = sshkeys.public_line_of_private(stored, f"miab-backup@{name}")
    return f"{name}: add this line to the sftp target's ~/.ssh/authorized_keys: {public}"


def describe(b: Backup) -> str:
    keep = f"keep {b.keep_daily} daily, {b.keep_weekly} weekly, {b.keep_monthly} monthly"
    parts = ["append-only: never forgets" if b.append_only else keep]
    if b.ca_file:
        parts.append(f"certificate checked against {display_path(b.ca_file)} only")
    return "; ".join(parts)


def show(inv: Inventory, name: str, recovery_sheet: bool = False) -> dict[str, Any]:
    """A box's backup target as the operator may see it: no credential, only which are stored; with
    `recovery_sheet`, the sheet itself (which holds them all: for printing)."""
    host = inv.load(name)
    stored = secrets.read_all(name)
    b = host.backup
    out: dict[str, Any] = {
        "backup": None,
        "password_stored": secrets.BACKUP_PASSWORD in stored,
        "backups_since": stored.get(secrets.BACKUP_SINCE),
        "credentials_stored": sorted(n for names in secrets.BACKUP_CREDENTIALS.values() for n in names if n in stored),
        "recovery_sheet": display_path(recovery.sheet_path(name)) if recovery.sheet_path(name).exists() else None,
    }
    if b is not None:
        out["backup"] = {
            "target": b.target,
            "kind": b.kind,
            "keep": {"daily": b.keep_daily, "weekly": b.keep_weekly, "monthly": b.keep_monthly},
            "append_only": b.append_only,
            "verified_against": display_path(b.ca_file) if b.ca_file else None,
            "host_key": b.host_key,
        }
    if b is not None and b.kind == "sftp" and secrets.BACKUP_SFTP_KEY in stored:
        out["sftp_public_key"] = sshkeys.public_line_of_private(stored[secrets.BACKUP_SFTP_KEY], f"miab-backup@{name}")
    if recovery_sheet:
        if b is None or secrets.BACKUP_PASSWORD not in stored:
            raise InputError(f"{name} has no recovery sheet yet: its first deploy with [backup] makes it")
        out["sheet"] = recovery.sheet_text(host)
    return out


def remove(inv: Inventory, names: list[str]) -> list[str]:
    """Drop [backup] and forget the target's credentials; the repository's password and recovery sheet stay
    (the backups already made remain restorable with them). A line per box."""
    names = list(dict.fromkeys(names))
    for name in names:
        if inv.load(name).backup is None:
            raise InputError(f"{name} has no [backup] to remove; {NOTHING}")
    lines = []
    every = {s: None for kind_names in secrets.BACKUP_CREDENTIALS.values() for s in kind_names}
    for name in names:
        with inv.edit(name) as doc:
            doc.pop("backup", None)
        secrets.put_many(name, dict(every))
        lines.append(
            f"{name}: [backup] removed from {display_path(inv.path_for(name))}, the target's credentials forgotten; "
            "the repository's password and the recovery sheet are kept (the backups made stay restorable)"
        )
    return lines


def check_password_store(inv: Inventory, name: str) -> None:
    """`backup-target password`: only for a box with [backup] whose password this laptop does not hold (a new
    laptop, or a box restored from another's repository): a stored one is never replaced, since the
    repository would no longer open with it."""
    host = inv.load(name)
    if host.backup is None:
        raise InputError(f"{name} has no [backup]: set its target first (`miab-remote backup-target set`); {NOTHING}")
    if secrets.get(name, secrets.BACKUP_PASSWORD) is not None:
        raise InputError(
            f"{name}: a repository password is stored already (in {display_path(secrets.path_for(name))}); it is "
            f"never replaced, since the repository opens with it only; {NOTHING}"
        )


def store_password(inv: Inventory, name: str, password: str) -> list[str]:
    """Store the repository password of a recovery sheet (checked as check_password_store says); the lines
    to show. Backups count as due from now (`check`)."""
    check_password_store(inv, name)
    backup.check_credential("repository password", password)
    secrets.put_new(name, secrets.BACKUP_PASSWORD, password)
    secrets.put_new(name, secrets.BACKUP_SINCE, recovery.now_text())
    host = inv.load(name)
    return [
        f"{name}: repository password stored in {display_path(secrets.path_for(name))}",
        *recovery.refresh(host),
    ]


def deploy_note(names: list[str]) -> str:
    return (
        f"run `miab-remote deploy {' '.join(dict.fromkeys(names))}` to apply it: the box's backup files and timer "
        "change only with a deploy"
    )


def edit(doc: tomlkit.TOMLDocument, change: TargetChange, root: Path) -> None:
    """Make the change in a box's document, keeping the operator's comments in an existing [backup]."""
    table = doc.get("backup")
    if not isinstance(table, Table):
        doc.pop("backup", None)
        table = tomlkit.table()
        table.add(tomlkit.comment("Where the nightly backups go (`miab-remote backup-target set`); the target's"))
        table.add(tomlkit.comment("credentials and the repository's password are in your secrets store, never here."))
        doc["backup"] = table
    if change.target is not None:
        table["target"] = change.target
        kind = rules.backup_kind(change.target)
        if kind != "sftp":
            table.pop("host_key", None)
        if kind not in ("rest", "s3"):
            table.pop("ca_file", None)
    if any(v is not None for v in change.keep.values()):
        current = table.get("keep")
        keep = dict(current) if isinstance(current, dict) else dict(DEFAULT_KEEP)
        keep.update({k: v for k, v in change.keep.items() if v is not None})
        inline = tomlkit.inline_table()
        inline.update({k: keep.get(k, 0) for k in DEFAULT_KEEP})
        table["keep"] = inline
    if change.append_only is not None:
        table["append_only"] = change.append_only
    if change.ca_file is not None:
        table["ca_file"] = inventory_path(change.ca_file, root)
    elif change.system_cas:
        table.pop("ca_file", None)
    if change.host_key is not None:
        table["host_key"] = change.host_key.strip()
