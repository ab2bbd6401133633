"""`miab-remote user ...` and `miab-remote alias ...`: a box's mail users and aliases (miab_remote.jobs.accounts
holds the path every change follows)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import tomlkit
from rich.table import Table

from miab_remote.cli.commands import summary
from miab_remote.cli.common import inventory_of, refuse_password_argument
from miab_remote.cli.output import Progress, plural, stderr_console, stdout_console
from miab_remote.engine.converge import HostRun, Report
from miab_remote.errors import InputError, MiabError
from miab_remote.fleet.model import Host, MailUser
from miab_remote.fleet.problems import display_path
from miab_remote.fleet.store import Inventory
from miab_remote.jobs import accounts as jobs
from miab_remote.mail import accounts


def _on_box(args: argparse.Namespace) -> jobs.OnBox:
    """Run a push or purge with the live progress display; an escaped error is reported like a failed run."""

    def run(job: Callable[[Report], HostRun]) -> HostRun:
        progress = Progress([args.name], verbose=args.verbose)
        with progress.running():
            try:
                return job(progress)
            except MiabError as e:
                return HostRun(args.name, failed=1, error=str(e))

    return run


def _change(inv: Inventory, args: argparse.Namespace, edit: jobs.Edit) -> HostRun | None:
    return jobs.change(inv, args.name, edit, not args.no_push, _on_box(args))


def _report(inv: Inventory, args: argparse.Namespace, what: str, run: HostRun | None, notes: list[str]) -> int:
    """One line saying what happened (and where the box stands), then any notes; 1 if the push failed."""
    name = args.name
    where = display_path(inv.path_for(name))
    if run is not None and run.error:
        err = stderr_console()
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
        password_hash = jobs.hashing(email, args.password_stdin, pool)

        def edit(host: Host, doc: tomlkit.TOMLDocument) -> None:
            accounts.check_new_user(host, email)
            accounts.add_user(doc, MailUser(email, password_hash.result(), quota))

        run = _change(inv, args, edit)
    notes = jobs.user_added_notes(host, email)
    return _report(inv, args, f"added user {email}" + (f" (quota {quota})" if quota else ""), run, notes)


def cmd_user_password(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    host = inv.load(args.name)
    email = accounts.check_user(host, accounts.address(args.email)).email
    with ThreadPoolExecutor(max_workers=1) as pool:
        password_hash = jobs.hashing(email, args.password_stdin, pool)

        def edit(host: Host, doc: tomlkit.TOMLDocument) -> None:
            accounts.check_user(host, email)
            accounts.set_password_hash(doc, email, password_hash.result())

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
    notes = jobs.user_removed_notes(host, email, args.purge)
    code = _report(inv, args, f"removed user {email}", run, notes)
    if code and args.purge:
        stderr_console().print(
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
    run = jobs.purge(inv, args.name, email, _on_box(args))
    if run is None:
        stderr_console().print(
            f"{args.name}: {email} was added again meanwhile; its mailbox was kept on the box",
            markup=False,
            style="red",
        )
        return 1
    if run.error:
        stderr_console().print(
            f"{args.name}: the mailbox of {email} was NOT deleted: {run.error}", markup=False, style="red"
        )
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
    notes = jobs.alias_added_notes(host, source, alias)
    return _report(inv, args, f"added alias {source} -> {', '.join(alias.destinations)}", run, notes)


def cmd_alias_remove(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    host = inv.load(args.name)
    source = accounts.check_alias(host, accounts.alias_source(args.source)).source

    def edit(host: Host, doc: tomlkit.TOMLDocument) -> None:
        accounts.check_alias(host, source)
        accounts.remove_alias(doc, source)

    run = _change(inv, args, edit)
    notes = jobs.alias_removed_notes(host, source)
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
        p = group.add_parser(verb, parents=[common], help=text, description=text, allow_abbrev=False)
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
        refuse_password_argument(p)

    user = sub.add_parser("user", parents=[common], help=summary("user"))
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

    alias = sub.add_parser("alias", parents=[common], help=summary("alias"))
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
