"""`miab-remote bans NAME...` and `miab-remote unban NAME ADDRESS [--jail JAIL]`: fail2ban on a box.

Bans block only the ports of the jail that made them (see recipes/hardening.py), so an operator whose own
address was banned for failed mail logins can still reach the box over SSH and lift the ban.
"""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from miab_remote.cli.commands import summary
from miab_remote.cli.common import add_connect_timeout, inventory_of
from miab_remote.cli.output import Progress, plural, stdout_console
from miab_remote.jobs import bans
from miab_remote.jobs.parallel import in_parallel


def cmd_bans(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    hosts = {name: inv.load(name) for name in args.names}  # every name is checked before any box is reached
    progress = Progress(args.names, verbose=args.verbose)
    with progress.running():
        results = in_parallel(args.names, lambda n: bans.list_bans(hosts[n], progress, args.connect_timeout))
    failed = any(r.run.error for r in results.values())
    if args.json:
        shown = {n: {"jails": r.jails if not r.run.error else None, "error": r.run.error} for n, r in results.items()}
        print(json.dumps({"hosts": shown}, indent=2))
        return 1 if failed else 0
    out = stdout_console()
    for name, r in results.items():
        if r.run.error:
            out.print(f"{name}: FAILED: {r.run.error}", style="red", markup=False)
            continue
        count = sum(len(a) for a in r.jails.values())
        out.print(
            f"{name}: {count} banned {'address' if count == 1 else 'addresses'} in {plural(len(r.jails), 'jail')}",
            markup=False,
        )
        table = Table("jail", "banned", box=None, padding=(0, 2))
        for jail, addresses in r.jails.items():
            table.add_row(jail, " ".join(addresses) or "-")
        out.print(table)
    return 1 if failed else 0


def cmd_unban(args: argparse.Namespace) -> int:
    address = bans.check_address(args.address)  # bad input: exit 2 before anything is reached
    jail = bans.check_jail(args.jail) if args.jail is not None else None
    inv = inventory_of(args)
    host = inv.load(args.name)
    progress = Progress([args.name], verbose=args.verbose)
    with progress.running():
        result = bans.unban(host, address, jail, progress, args.connect_timeout)
    run = result.run
    out = stdout_console()
    if run.error:
        out.print(f"{args.name}: FAILED: {run.error}", style="red", markup=False)
        return 1
    head = f"{plural(run.round_trips, 'round trip')}, {run.seconds:.1f} s"
    if result.lifted:
        out.print(f"{args.name}: unbanned {address} ({', '.join(result.lifted)}; {head})", markup=False)
    else:
        out.print(f"{args.name}: nothing to do ({head})", markup=False)
    for note in run.notes:
        out.print(f"  note: {note}", markup=False)
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    text = summary("bans")
    p = sub.add_parser("bans", parents=[common], help=text, description=text)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--json", action="store_true", help='print {"hosts": {NAME: {"jails": {JAIL: [ADDRESS...]}}}}')
    add_connect_timeout(p)
    p.set_defaults(func=cmd_bans)

    text = summary("unban")
    p = sub.add_parser("unban", parents=[common], help=text, description=text)
    p.add_argument("name", metavar="NAME", help="the box")
    p.add_argument("address", metavar="ADDRESS", help="the banned IPv4 or IPv6 address")
    p.add_argument("--jail", metavar="JAIL", help="only this jail (e.g. dovecot, postfix-sasl, sshd)")
    add_connect_timeout(p)
    p.set_defaults(func=cmd_unban)
