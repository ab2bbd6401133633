"""`miab-remote create`, `destroy`, `hosts` and `trust`: the boxes themselves and their pinned keys."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from miab_remote import providers
from miab_remote.cli.commands import summary
from miab_remote.cli.common import confirm, inventory_of, report_each
from miab_remote.cli.output import Progress, stdout_console
from miab_remote.fleet import operator_key
from miab_remote.jobs import create, destroy, hosts, trust
from miab_remote.providers.base import CreateOptions


def cmd_create(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    options = CreateOptions(
        region=args.region,
        size=args.size,
        endpoint=args.endpoint,
        on_key_mismatch=args.on_host_key_mismatch,
        elastic_ip=args.elastic_ip,
        timeout=args.timeout,
    )
    # every argument, before anything is made
    provider = create.check_new_boxes(inv, args.names, args.provider, args.image, options)
    key_path, key_line = operator_key.resolve(args.identity_file)
    provider.validate_config()
    provider.check_requirements()
    out = stdout_console()
    for line in create.finish_interrupted(inv, args.names):
        out.print(line, markup=False)
    provider.preflight(args.names, args.image)
    progress = Progress(args.names, verbose=True)
    return report_each(
        args.names,
        lambda name: create.create_box(
            inv, provider, name, key_path, key_line, lambda msg: progress(name, msg), args.image
        ),
        progress,
    )


def cmd_destroy(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    provider_of = {name: destroy.check_destroyable(inv, name) for name in args.names}  # all before any is touched
    confirm(f"Destroy {', '.join(args.names)} and everything on it?", args.yes, expect=" ".join(args.names))
    return report_each(args.names, lambda name: destroy.destroy_box(inv, provider_of[name], name, args.keep_inventory))


def cmd_hosts(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    rows = hosts.summaries(inv)
    if args.json:
        print(json.dumps({"hosts": rows}, indent=2))
        return 0
    table = Table("box", "address", "provider", "os", "domains", "users", "aliases", "admin", box=None)
    for name, h in rows.items():
        table.add_row(
            name,
            h["address"] if h["box"] else "no box",
            h["provider"] or "-",
            h["os"] or "-",
            " ".join(h["domains"]),
            str(h["users"]),
            str(h["aliases"]),
            h["admin_email"] or "-",
        )
    stdout_console().print(table if rows else f"no boxes in {inv.root}/")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    host = inv.load(args.name)
    offered = trust.offered_keys(host)
    out = stdout_console()
    for fp in offered:
        out.print(f"{host.name} offers {fp}", markup=False)
    if args.fingerprint:
        chosen = trust.choose(host, offered, args.fingerprint)
    else:
        confirm("Pin these keys (check them out of band first)?", args.yes)
        chosen = list(offered.values())
    trust.pin(inv, host, chosen)
    out.print(f"{host.name}: pinned {len(chosen)} key(s) in {inv.path_for(host.name)}", markup=False)
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("create", parents=[common], help=summary("create"))
    p.add_argument("--provider", required=True, choices=providers.names())
    p.add_argument(
        "--image",
        metavar="OS",
        help="the system the box runs: an OS profile id such as debian-13 or debian-12, or the cloud's name for "
        "that image (default: the newest the provider offers)",
    )
    p.add_argument("--region", help="cloud: where the server runs (default: the provider's, e.g. fra1)")
    p.add_argument("--size", help="cloud: the server's size (default: the smallest with 1 GiB of memory)")
    p.add_argument(
        "--endpoint",
        metavar="URL",
        help="cloud: the API's address, for an API-compatible cloud or a stand-in (default: the provider's own; "
        "or MIAB_REMOTE_<PROVIDER>_ENDPOINT)",
    )
    p.add_argument(
        "--on-host-key-mismatch",
        choices=("destroy", "keep"),
        default="destroy",
        help="cloud: what to do with a new server whose SSH presents another host key than the one it was "
        "given (default: destroy it; keep: record it unpinned for you to look at)",
    )
    p.add_argument("--elastic-ip", action="store_true", help="ec2: give the box an Elastic IP")
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="cloud: give up (and destroy the server) if SSH does not answer with its key within this time "
        "(default 600)",
    )
    p.add_argument("--identity-file", metavar="PATH", help="operator SSH key to authorise (default: ~/.ssh/id_*)")
    p.add_argument("names", nargs="+", metavar="NAME", help="the box's FQDN, e.g. box1.example.org")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("destroy", parents=[common], help=summary("destroy"))
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--keep-inventory",
        action="store_true",
        help="leave hosts/NAME.toml in place (default: it moves to hosts/.archive/NAME.TIMESTAMP.toml)",
    )
    p.set_defaults(func=cmd_destroy)

    p = sub.add_parser("hosts", parents=[common], help=summary("hosts"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_hosts)

    p = sub.add_parser("trust", parents=[common], help=summary("trust"))
    p.add_argument("name", metavar="NAME")
    p.add_argument("--fingerprint", metavar="SHA256:...", help="pin only the key with this fingerprint")
    p.add_argument("--yes", action="store_true", help="pin every offered key without asking")
    p.set_defaults(func=cmd_trust)
