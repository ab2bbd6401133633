"""`miab-remote user ...` and `miab-remote alias ...`: a box's mail users and aliases.

Every change follows one path: check all input against the inventory (exit 2, nothing touched), read the
password if any (before any lock, so a slow typist blocks nobody), then under the box's inventory lock
check again, edit the file and push the accounts to the box, so two operators' pushes never cross.
A failed push leaves the inventory updated; `miab-remote deploy NAME` brings the box in line later.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import tomlkit
from rich.console import Console
from rich.table import Table

from miab_remote import accounts, mailmaps, passwords
from miab_remote.cli import check_builds, early_transport, inventory_of
from miab_remote.deploy import HostRun, purge_mailbox, push_accounts
from miab_remote.errors import InputError, MiabError
from miab_remote.inventory import Inventory, display_path
from miab_remote.model import Host, MailUser
from miab_remote.output import Progress, plural, stdout_console

Edit = Callable[[Host, tomlkit.TOMLDocument], None]


# -- the shared path of every change ---------------------------------------------------------------------------
def _change(inv: Inventory, args: argparse.Namespace, edit: Edit) -> HostRun | None:
    """Under the box's lock: re-check and edit (via `edit`, which raises InputError to write nothing), then
    push unless --no-push. The push result, or None when not pushed.

    The SSH connection for the push opens first, in the background, so that it overlaps the checks, the
    password's bcrypt (hashed in a thread by the caller; `edit` waits for it) and the edit."""
    if args.no_push:
        transport = None
    else:
        host = inv.load(args.name)
        transport = early_transport(host)
        # A failed recipe or template is bad input, found before the inventory changes.
        try:
            check_builds(inv, host)
        except BaseException:
            if transport is not None:
                transport.close()
            raise
    try:
        with inv.lock(args.name):
            with inv.edit(args.name, locked=True) as doc:
                # Checked again under the lock: another operator may have changed the file since the first check.
                edit(inv.load(args.name), doc)
            if args.no_push:
                return None
            return _run_on_box(args, lambda progress: push_accounts(inv, args.name, progress, transport))
    finally:
        if transport is not None:
            transport.close()


def _hashing(email: str, from_stdin: bool, pool: ThreadPoolExecutor) -> Future[str]:
    """Read the new password now, and hash it (bcrypt, ~0.2 s, which releases the GIL) in `pool` meanwhile;
    the clear text goes no further than the hashing. With --password-stdin, the entry point started that
    before the CLI's imports (passwords.hash_early)."""
    if from_stdin and (early := passwords.take_early()) is not None:
        return early
    return pool.submit(passwords.hash_password, passwords.read_new_password(email, from_stdin))


def _run_on_box(args: argparse.Namespace, job: Callable[[Progress], HostRun]) -> HostRun:
    """Run a push or purge with the live progress display; an escaped error is reported like a failed run."""
    progress = Progress([args.name], verbose=args.verbose)
    with progress.running():
        try:
            return job(progress)
        except MiabError as e:
            return HostRun(args.name, failed=1, error=str(e))


def _stderr() -> Console:
    """Errors for the operator, unwrapped (soft_wrap) so a long message stays one line in a log."""
    return Console(stderr=True, highlight=False, soft_wrap=True, no_color="NO_COLOR" in os.environ or None)


def _report(inv: Inventory, args: argparse.Namespace, what: str, run: HostRun | None, notes: list[str]) -> int:
    """One line saying what happened (and where the box stands), then any notes; 1 if the push failed."""
    name = args.name
    where = display_path(inv.path_for(name))
    if run is not None and run.error:
        err = _stderr()
        err.print(
            f"{name}: {what}: {where} WAS updated, but the box was NOT: {run.error}\n"
            f"  `miab-remote deploy {name}` will bring the box in line with the inventory.",
            markup=False,
            style="red",
        )
        for note in notes:
            err.print(f"  note: {note}", markup=False)
        return 1
    if run is None:
        state = f"{where} updated; not pushed (--no-push): `miab-remote deploy {name}` applies it"
    else:
        trips = plural(run.round_trips, "round trip")
        state = f"{where} and the box updated ({run.changed} changed, {trips}, {run.seconds:.2f} s)"
    out = stdout_console()
    out.print(f"{name}: {what}; {state}", markup=False)
    for note in [*notes, *(run.notes if run is not None else [])]:
        out.print(f"  note: {note}", markup=False)
    return 0


# -- user ------------------------------------------------------------------------------------------------------
def cmd_user_add(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    host = inv.load(args.name)
    email = accounts.new_address(args.email)
    quota = accounts.quota(args.quota) if args.quota is not None else None
    accounts.check_new_user(host, email)
    with ThreadPoolExecutor(max_workers=1) as pool:
        hashing = _hashing(email, args.password_stdin, pool)

        def edit(host: Host, doc: tomlkit.TOMLDocument) -> None:
            accounts.check_new_user(host, email)
            accounts.add_user(doc, MailUser(email, hashing.result(), quota))

        run = _change(inv, args, edit)
    notes = []
    if not host.users and not host.options.get("admin_email"):
        notes.append(
            f"system mail and postmaster@, abuse@ and hostmaster@ of {', '.join(host.domains)} go to {email} "
            "(automatic, unless [options] admin_email or an alias says otherwise)"
        )
    return _report(inv, args, f"added user {email}" + (f" (quota {quota})" if quota else ""), run, notes)


def cmd_user_password(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    host = inv.load(args.name)
    email = accounts.check_user(host, accounts.address(args.email)).email
    with ThreadPoolExecutor(max_workers=1) as pool:
        hashing = _hashing(email, args.password_stdin, pool)

        def edit(host: Host, doc: tomlkit.TOMLDocument) -> None:
            accounts.check_user(host, email)
            accounts.set_password_hash(doc, email, hashing.result())

        run = _change(inv, args, edit)
    return _report(inv, args, f"changed the password of {email}", run, [])


def cmd_user_remove(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    host = inv.load(args.name)
    email = accounts.check_user(host, accounts.address(args.email)).email
    if args.yes and not args.purge:
        raise InputError("--yes only goes with --purge; nothing was changed")
    if args.purge and args.no_push:
        raise InputError(
            "--purge needs the push: the box must stop delivering to the mailbox before it is deleted; "
            "drop --no-push; nothing was changed"
        )
    if args.purge and not args.yes and not sys.stdin.isatty():
        raise InputError(
            f"--purge deletes the mailbox of {email} and needs confirmation: pass --yes "
            "(no terminal to ask on); nothing was changed"
        )

    def edit(host: Host, doc: tomlkit.TOMLDocument) -> None:
        accounts.check_user(host, email)
        accounts.remove_user(doc, email)

    run = _change(inv, args, edit)
    notes = []
    if sources := accounts.aliases_to(host, email):
        notes.append(f"these aliases still deliver to {email}: {', '.join(sources)}")
    if mailmaps.admin_email(host) == email and accounts.automatic_aliases(host):
        after = host.users[1].email if len(host.users) > 1 else "nobody (no users left)"
        notes.append(f"system mail and the automatic postmaster@, abuse@ and hostmaster@ now go to {after}")
    if not args.purge:
        notes.append(f"the mailbox of {email} is kept on the box, with its mail")
    code = _report(inv, args, f"removed user {email}", run, notes)
    if code and args.purge:
        _stderr().print(
            f"  The mailbox of {email} was NOT deleted: the box still has the user.", markup=False, style="red"
        )
    if code or not args.purge:
        return code
    return _purge(inv, args, email)


def _purge(inv: Inventory, args: argparse.Namespace, email: str) -> int:
    """Delete a removed user's mailbox, once confirmed. The lock is not held while asking (a person may
    take long), but is taken again for the purge, so a mailbox re-added meanwhile is never deleted."""
    out = stdout_console()
    if not args.yes:
        try:
            answer = input(
                f"Delete the mailbox of {email} on {args.name}, with all its mail? This cannot be undone. "
                "Type 'yes' to go on: "
            )
        except EOFError:
            answer = ""
        if answer.strip() != "yes":
            out.print(f"{args.name}: not confirmed; the mailbox of {email} was kept on the box", markup=False)
            return 0
    with inv.lock(args.name):
        if accounts.find_user(inv.load(args.name), email) is not None:
            _stderr().print(
                f"{args.name}: {email} was added again meanwhile; its mailbox was kept on the box",
                markup=False,
                style="red",
            )
            return 1
        run = _run_on_box(args, lambda progress: purge_mailbox(inv, args.name, email, progress))
    if run.error:
        _stderr().print(f"{args.name}: the mailbox of {email} was NOT deleted: {run.error}", markup=False, style="red")
        return 1
    out.print(f"{args.name}: deleted the mailbox of {email}", markup=False)
    for note in run.notes:
        out.print(f"  note: {note}", markup=False)
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    host = inventory_of(args).load(args.name)
    if args.json:  # never the password hashes
        print(json.dumps({"users": [{"email": u.email, "quota": u.quota} for u in host.users]}, indent=2))
        return 0
    table = Table("email", "quota", box=None)
    for u in host.users:
        table.add_row(u.email, u.quota or "-")
    stdout_console().print(table if host.users else f"no users on {host.name}")
    return 0


# -- alias -----------------------------------------------------------------------------------------------------
def cmd_alias_add(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    host = inv.load(args.name)
    source = accounts.alias_source(args.source)
    alias = accounts.check_new_alias(host, source, args.destinations)

    def edit(host: Host, doc: tomlkit.TOMLDocument) -> None:
        accounts.check_new_alias(host, source, list(alias.destinations))
        accounts.add_alias(doc, alias)

    run = _change(inv, args, edit)
    notes = []
    if accounts.is_automatic(host, source) and (admin := mailmaps.admin_email(host)):
        notes.append(f"replaces the automatic {source} (to {admin})")
    if lost := accounts.unreachable(host, alias):
        notes.append(f"no user or alias takes {', '.join(lost)} on {host.name}: mail sent there would bounce")
    return _report(inv, args, f"added alias {source} -> {', '.join(alias.destinations)}", run, notes)


def cmd_alias_remove(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    host = inv.load(args.name)
    source = accounts.check_alias(host, accounts.alias_source(args.source)).source

    def edit(host: Host, doc: tomlkit.TOMLDocument) -> None:
        accounts.check_alias(host, source)
        accounts.remove_alias(doc, source)

    run = _change(inv, args, edit)
    notes = []
    if accounts.is_automatic(host, source) and (admin := mailmaps.admin_email(host)):
        notes.append(f"{source} goes to {admin} again (automatic)")
    return _report(inv, args, f"removed alias {source}", run, notes)


def cmd_alias_list(args: argparse.Namespace) -> int:
    host = inventory_of(args).load(args.name)
    listed = accounts.listed_aliases(host)
    if args.json:
        aliases = [{"source": a.source, "destinations": list(a.destinations), "automatic": a.automatic} for a in listed]
        print(json.dumps({"aliases": aliases}, indent=2))
        return 0
    table = Table("source", "destinations", "", box=None)
    for a in listed:
        table.add_row(a.source, ", ".join(a.destinations), "automatic" if a.automatic else "")
    stdout_console().print(table if listed else f"no aliases on {host.name}")
    return 0


# -- parsers ---------------------------------------------------------------------------------------------------
def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """The `user` and `alias` command groups, each with add / ... / list actions."""

    def action(
        group: argparse._SubParsersAction[argparse.ArgumentParser], verb: str, text: str
    ) -> argparse.ArgumentParser:
        p = group.add_parser(verb, parents=[common], help=text, description=text)
        p.add_argument("name", metavar="NAME", help="the box (its inventory file is NAME.toml)")
        return p

    def no_push(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--no-push",
            action="store_true",
            help="change only the inventory; `miab-remote deploy NAME` applies it to the box later",
        )

    def password_stdin(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password as one line from stdin instead of asking twice on the terminal",
        )

    user = sub.add_parser("user", parents=[common], help="add, re-password, remove and list a box's mail users")
    users = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")

    p = action(users, "add", "add a mailbox (asks for its password twice, hidden)")
    p.add_argument("email", metavar="EMAIL", help="the new address, in a domain the box hosts")
    p.add_argument("--quota", metavar="SIZE", help='mailbox size limit like "500M" or "2G", "0" for none')
    password_stdin(p)
    no_push(p)
    p.set_defaults(func=cmd_user_add)

    p = action(users, "password", "set a new password for a mailbox")
    p.add_argument("email", metavar="EMAIL")
    password_stdin(p)
    no_push(p)
    p.set_defaults(func=cmd_user_password)

    p = action(users, "remove", "remove a mailbox user; the mail stays on the box unless --purge")
    p.add_argument("email", metavar="EMAIL")
    p.add_argument("--purge", action="store_true", help="also delete the mailbox and its mail, after confirmation")
    p.add_argument("--yes", action="store_true", help="with --purge: do not ask for confirmation")
    no_push(p)
    p.set_defaults(func=cmd_user_remove)

    p = action(users, "list", "list the mail users (never their password hashes)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_user_list)

    alias = sub.add_parser("alias", parents=[common], help="add, remove and list a box's mail aliases")
    aliases = alias.add_subparsers(dest="alias_command", required=True, metavar="ACTION")

    p = action(aliases, "add", "forward an address (or '@domain', a catch-all) to one or more addresses")
    p.add_argument("source", metavar="SOURCE", help="an address in a hosted domain, or '@domain' for a catch-all")
    p.add_argument("destinations", nargs="+", metavar="DESTINATION", help="where to deliver, here or elsewhere")
    no_push(p)
    p.set_defaults(func=cmd_alias_add)

    p = action(aliases, "remove", "remove an alias")
    p.add_argument("source", metavar="SOURCE")
    no_push(p)
    p.set_defaults(func=cmd_alias_remove)

    p = action(aliases, "list", "list the aliases, including the automatic postmaster@, abuse@ and hostmaster@")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_alias_list)
