"""`miab-remote relay set|show|remove`: the smarthost a box sends all its outgoing mail through, for
servers whose provider blocks port 25 (miab_remote.jobs.relay does the work).

The password is never an argument (argv is visible to every user of the laptop, in `ps` and in shell
history): it is asked twice on the terminal without echo, or read as one line with --password-stdin."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from miab_remote.cli.commands import summary
from miab_remote.cli.common import inventory_of, refuse_password_argument
from miab_remote.cli.output import stdout_console
from miab_remote.jobs import relay as jobs
from miab_remote.mail import passwords, relay


def cmd_relay_set(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    change = jobs.RelayChange(
        host=args.host,
        port=args.port,
        user=args.user,
        ca_file=Path(args.ca_file) if args.ca_file is not None else None,
        system_cas=args.system_cas,
    )
    checked = jobs.check_set(inv, args.names, change)
    login = "the relay login" if len(checked) > 1 else f"the relay login of {next(iter(checked))}"
    password = passwords.read_new_password(login, args.password_stdin, check=relay.check_password)
    out = stdout_console()
    for line in jobs.set_relay(inv, checked, change, password):
        out.print(line, markup=False)
    out.print(f"  note: {jobs.deploy_note(list(checked))}", markup=False)
    return 0


def cmd_relay_show(args: argparse.Namespace) -> int:
    shown = jobs.show(inventory_of(args), args.name)
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    out = stdout_console()
    r = shown["relay"]
    if r is None:
        out.print(f"{args.name}: no relay; outgoing mail goes straight to each recipient's server", markup=False)
    else:
        out.print(
            f"{args.name}: all outgoing mail through {r['relayhost']} ({r['tls']}, certificate verified against "
            f"{r['verified_against']}), user {r['user']}",
            markup=False,
        )
    stored = "stored" if shown["password_stored"] else f"NOT stored (`miab-remote relay set {args.name}`)"
    if r is not None or shown["password_stored"]:
        out.print(f"  password: {stored}", markup=False)
    return 0


def cmd_relay_remove(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    out = stdout_console()
    for line in jobs.remove(inv, args.names):
        out.print(line, markup=False)
    out.print(
        f"  note: {jobs.deploy_note(args.names)}; postfix then delivers directly again (port 25 must be open)",
        markup=False,
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """The `relay` command group: set, show, remove."""
    group = sub.add_parser("relay", parents=[common], help=summary("relay"), description=summary("relay"))
    actions = group.add_subparsers(dest="relay_command", required=True, metavar="ACTION")

    text = "send all outgoing mail of boxes through a relay (asks for its password twice, hidden)"
    p = actions.add_parser("set", parents=[common], help=text, description=text, allow_abbrev=False)
    p.add_argument("names", nargs="+", metavar="NAME", help="the boxes (their inventory files are NAME.toml)")
    p.add_argument("--host", metavar="HOST", help="the relay's DNS name or IP address (its certificate names it)")
    p.add_argument("--port", type=int, metavar="PORT", help="587 (STARTTLS) or 465 (implicit TLS)")
    p.add_argument("--user", metavar="USER", help="the relay login's user name")
    p.add_argument(
        "--ca-file",
        metavar="PEM",
        help="trust only this CA for the relay's certificate (a private relay); default: the system's CAs",
    )
    p.add_argument("--system-cas", action="store_true", help="drop a ca_file: verify against the system's CAs again")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password as one line from stdin instead of asking twice on the terminal",
    )
    refuse_password_argument(p)
    p.set_defaults(func=cmd_relay_set)

    text = "show a box's relay (never its password; only whether one is stored)"
    p = actions.add_parser("show", parents=[common], help=text, description=text)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_relay_show)

    text = "send the boxes' mail directly again: remove [relay] and forget its password"
    p = actions.add_parser("remove", parents=[common], help=text, description=text)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_relay_remove)
