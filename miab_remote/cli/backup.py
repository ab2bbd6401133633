"""`miab-remote backup`, `backups`, `restore` and `backup-target set|show|remove`: nightly encrypted restic
backups of a box's state tree, and restoring them onto a new box (miab_remote.jobs.backup, .restore and
.backup_target do the work).

A credential is never an argument (argv is visible to every user of the laptop, in `ps` and in shell
history): it is asked on the terminal without echo, or read one per line with --credentials-stdin."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from miab_remote.cli.commands import summary
from miab_remote.cli.common import add_connect_timeout, inventory_of, refuse_password_argument
from miab_remote.cli.output import Progress, stdout_console
from miab_remote.errors import InputError
from miab_remote.jobs import backup as jobs
from miab_remote.jobs import backup_target as targets
from miab_remote.jobs import restore as restoring
from miab_remote.mail import backup, passwords


# -- backup, backups ------------------------------------------------------------------------------------------
def cmd_backup(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    progress = Progress(args.names, verbose=args.verbose)
    with progress.running():
        runs = jobs.backup_now(inv, args.names, progress, args.connect_timeout)
    if args.json:
        print(json.dumps({"hosts": {n: r.as_dict() for n, r in runs.items()}}, indent=2))
    else:
        out = stdout_console()
        for run in runs.values():
            out.print(run.line(), style="red" if run.error else None, markup=False)
    codes = {r.exit_code for r in runs.values()} - {0}
    return 0 if not codes else 2 if codes == {2} else 1


def cmd_backups(args: argparse.Namespace) -> int:
    progress = Progress([args.name], verbose=args.verbose)
    with progress.running():
        listed = jobs.snapshots(inventory_of(args), args.name, progress, args.connect_timeout)
    if args.json:
        print(json.dumps({"snapshots": listed}, indent=2))
        return 0
    out = stdout_console()
    if not listed:
        out.print(f"{args.name}: no snapshots yet (`miab-remote backup {args.name}` makes one now)", markup=False)
    for s in listed:
        size = jobs.size(s["bytes"]) if isinstance(s.get("bytes"), int) else "?"
        files = s.get("files") if s.get("files") is not None else "?"
        out.print(f"{s.get('short_id') or str(s.get('id', '?'))[:8]}  {s.get('time', '?')}  {size}  {files} files",
                  markup=False)  # fmt: skip
    return 0


# -- restore --------------------------------------------------------------------------------------------------
def cmd_restore(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    opts = restoring.RestoreOptions(
        snapshot=args.snapshot,
        from_name=args.from_name,
        force=args.force,
        user=args.user,
        connect_timeout=args.connect_timeout,
    )
    out = stdout_console()
    progress = Progress([args.name], verbose=args.verbose)

    def phase(line: str) -> None:
        if not args.json:
            out.print(line, markup=False)

    with progress.running():
        run = restoring.restore(inv, args.name, opts, progress, phase)
    if args.json:
        print(json.dumps({"hosts": {args.name: run.as_dict()}}, indent=2))
        return 1 if run.failed_checks else 0
    for note in run.notes:
        out.print(f"  note: {note}", markup=False)
    for c in run.failed_checks:
        out.print(f"  check failed: {c.name}: {c.detail}" + (f" (fix: {c.fix})" if c.fix else ""), style="red",
                  markup=False)  # fmt: skip
    return 1 if run.failed_checks else 0


# -- backup-target --------------------------------------------------------------------------------------------
def read_credentials(credentials: tuple[targets.Credential, ...], from_stdin: bool) -> dict[str, str | None]:
    """Each credential from a hidden prompt (a secret twice), or one per line of stdin, in order; an empty
    first answer where it means "no login" ends the questions."""
    if not credentials:
        return {}
    if not from_stdin and not sys.stdin.isatty():
        raise InputError(
            "no terminal to ask for the target's credentials on; pipe them in with --credentials-stdin (one per "
            "line: " + ", then ".join(c.prompt for c in credentials) + "); nothing was changed"
        )
    values: dict[str, str | None] = {}
    for c in credentials:
        if from_stdin:
            line = sys.stdin.readline()
            value = line[:-1] if line.endswith("\n") else line
            value = value[:-1] if value.endswith("\r") else value
        else:
            try:
                value = getpass.getpass(f"{c.prompt}: ")
                if c.confirm and getpass.getpass(f"{c.prompt} (again): ") != value:
                    raise InputError(f"the two answers for the {c.prompt} do not match; nothing was changed")
            except EOFError:
                raise InputError(f"no {c.prompt} entered; nothing was changed") from None
        values[c.secret] = value or None
        if c.empty_means_none and not value:
            break
    return values


def cmd_target_set(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    change = targets.TargetChange(
        target=args.target,
        keep={"daily": args.keep_daily, "weekly": args.keep_weekly, "monthly": args.keep_monthly},
        append_only=args.append_only,
        ca_file=Path(args.ca_file) if args.ca_file is not None else None,
        system_cas=args.system_cas,
        host_key=args.host_key,
    )
    checked = targets.check_set(inv, args.names, change)  # everything checked before anything is asked
    values = read_credentials(checked.credentials, args.credentials_stdin)
    lines, notes = targets.set_target(inv, checked, change, values)
    out = stdout_console()
    for line in lines:
        out.print(line, markup=False)
    for note in [*notes, targets.deploy_note(list(checked.docs))]:
        out.print(f"  note: {note}", markup=False)
    return 0


def cmd_target_show(args: argparse.Namespace) -> int:
    shown = targets.show(inventory_of(args), args.name, recovery_sheet=args.recovery_sheet)
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    if args.recovery_sheet:
        print(shown["sheet"], end="")
        return 0
    out = stdout_console()
    b = shown["backup"]
    if b is None:
        out.print(f"{args.name}: no backups ([backup] not set)", markup=False)
    else:
        keep = b["keep"]
        policy = "append-only: never forgets" if b["append_only"] else (
            f"keeps {keep['daily']} daily, {keep['weekly']} weekly, {keep['monthly']} monthly")  # fmt: skip
        against = f", certificate checked against {b['verified_against']} only" if b["verified_against"] else ""
        out.print(f"{args.name}: backups to {b['target']} ({policy}{against})", markup=False)
    stored = ", ".join(shown["credentials_stored"]) or "none"
    out.print(f"  credentials stored: {stored}", markup=False)
    made = f" (backups due since {shown['backups_since']})" if shown["backups_since"] else ""
    password = "stored" + made if shown["password_stored"] else "not made yet (the first deploy makes it)"
    out.print(f"  repository password: {password}", markup=False)
    if shown["recovery_sheet"]:
        out.print(f"  recovery sheet: {shown['recovery_sheet']} (keep a copy offline)", markup=False)
    if shown.get("sftp_public_key"):
        out.print(f"  sftp key for the target's authorized_keys: {shown['sftp_public_key']}", markup=False)
    return 0


def cmd_target_remove(args: argparse.Namespace) -> int:
    out = stdout_console()
    for line in targets.remove(inventory_of(args), args.names):
        out.print(line, markup=False)
    out.print(f"  note: {targets.deploy_note(args.names)}", markup=False)
    return 0


def cmd_target_password(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    targets.check_password_store(inv, args.name)  # before the password is asked for
    password = passwords.read_new_password(
        f"the repository password of {args.name}", args.password_stdin,
        check=lambda value: backup.check_credential("repository password", value),
    )  # fmt: skip
    out = stdout_console()
    for line in targets.store_password(inv, args.name, password):
        out.print(line, markup=False)
    out.print(f"  note: {targets.deploy_note([args.name])}", markup=False)
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """The backup commands: backup, backups, restore, backup-target (set, show, remove)."""
    p = sub.add_parser("backup", parents=[common], help=summary("backup"), description=summary("backup"))
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print one JSON object with per-box results")
    add_connect_timeout(p)
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("backups", parents=[common], help=summary("backups"), description=summary("backups"))
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true")
    add_connect_timeout(p)
    p.set_defaults(func=cmd_backups)

    p = sub.add_parser("restore", parents=[common], help=summary("restore"), description=summary("restore"))
    p.add_argument("name", metavar="NAME")
    p.add_argument("--snapshot", default="latest", metavar="ID", help="the snapshot to restore (default: latest)")
    p.add_argument("--from", dest="from_name", metavar="OLDNAME", help="restore another (old) box's backups: a move")
    p.add_argument("--force", action="store_true", help="restore even though the box holds mail already")
    p.add_argument("--user", metavar="EMAIL", help="restore one mailbox only, into a Restored-DATE folder of it")
    p.add_argument("--json", action="store_true")
    add_connect_timeout(p)
    p.set_defaults(func=cmd_restore)

    group = sub.add_parser(
        "backup-target", parents=[common], help=summary("backup-target"), description=summary("backup-target")
    )
    actions = group.add_subparsers(dest="backup_target_command", required=True, metavar="ACTION")
    text = "set where boxes' backups go (asks for the target's credentials, hidden)"
    p = actions.add_parser("set", parents=[common], help=text, description=text, allow_abbrev=False)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument(
        "--target",
        metavar="REPOSITORY",
        help="rest:https://HOST[:PORT]/PATH, s3:https://HOST[:PORT]/BUCKET[/PATH], sftp:USER@HOST:/PATH or local:/PATH",
    )
    for period in ("daily", "weekly", "monthly"):
        p.add_argument(f"--keep-{period}", type=int, metavar="N", help=f"{period} snapshots to keep (0..1000)")
    append = p.add_mutually_exclusive_group()
    append.add_argument("--append-only", dest="append_only", action="store_true", default=None,
                        help="the target refuses deletes: never forget or prune")  # fmt: skip
    append.add_argument("--no-append-only", dest="append_only", action="store_false", default=None,
                        help="forget by the keep policy")  # fmt: skip
    cas = p.add_mutually_exclusive_group()
    cas.add_argument("--ca-file", metavar="PEM", help="trust only this CA for the target's certificate (rest, s3)")
    cas.add_argument("--system-cas", action="store_true", help="drop a ca_file: the system's CAs again")
    p.add_argument("--host-key", metavar="LINE", help="an sftp target's SSH host key line (pinned)")
    p.add_argument(
        "--credentials-stdin",
        action="store_true",
        help="read the credentials one per line from stdin (rest: user, password; s3: key id, secret)",
    )
    refuse_password_argument(p)
    p.set_defaults(func=cmd_target_set)

    text = "show a box's backup target (never a credential; --recovery-sheet prints the sheet, which holds them)"
    p = actions.add_parser("show", parents=[common], help=text, description=text)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true")
    p.add_argument("--recovery-sheet", action="store_true", help="print the recovery sheet (to print it on paper)")
    p.set_defaults(func=cmd_target_show)

    text = "store the repository password of a recovery sheet (a new laptop); never replaces a stored one"
    p = actions.add_parser("password", parents=[common], help=text, description=text, allow_abbrev=False)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--password-stdin", action="store_true", help="read the password as one line from stdin")
    refuse_password_argument(p)
    p.set_defaults(func=cmd_target_password)

    text = "stop backing boxes up: remove [backup] and forget the target's credentials (the password stays)"
    p = actions.add_parser("remove", parents=[common], help=text, description=text)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_target_remove)
