"""The `miab-remote` command: one subcommand per job; every job over several hosts runs them in parallel.

Exit codes: 0 all went well, 1 a host failed, 2 bad usage or bad input (nothing was changed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import tomlkit
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from miab_remote import __version__, mailmaps
from miab_remote.deploy import DeployOptions, HostRun, deploy_host
from miab_remote.errors import InputError, MiabError, ProviderError
from miab_remote.inventory import Inventory, display_path
from miab_remote.model import Host
from miab_remote.names import fqdn_problem
from miab_remote.output import Progress, plural, stdout_console
from miab_remote.ssh import Transport

T = TypeVar("T")
PROVIDERS = ("local",)
PLANNED_PROVIDERS = ("digitalocean", "linode", "vultr", "ec2")


def inventory_of(args: argparse.Namespace) -> Inventory:
    root = args.inventory or os.environ.get("MIAB_REMOTE_INVENTORY") or "hosts"
    return Inventory(Path(root))


def in_parallel(names: Sequence[str], job: Callable[[str], T]) -> dict[str, T]:
    """Run `job` for each host at once; results keep the order the operator gave."""
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(names)))) as pool:
        futures = {n: pool.submit(job, n) for n in names}
        return {n: futures[n].result() for n in names}


def confirm(question: str, assume_yes: bool) -> None:
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise InputError(f"{question} needs confirmation: pass --yes (no terminal to ask on)")
    answer = input(f"{question} Type 'yes' to go on: ")
    if answer.strip() != "yes":
        raise InputError("not confirmed; nothing was changed")


# -- deploy ------------------------------------------------------------------------------------------------
def cmd_deploy(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    names = inv.names() if args.all else args.names
    if not names:
        raise InputError("name at least one box, or --all")
    hosts = {n: inv.load(n) for n in names}
    # The connections open in the background while the laptop checks (and builds) every box; a box whose
    # check fails is bad input (exit 2) and its connection is closed unused: nothing was sent.
    early = {n: early_transport(h, args.connect_timeout) for n, h in hosts.items()}
    try:
        for n in names:  # every name, recipe and template is checked before any box is touched
            check_builds(inv, hosts[n])
    except BaseException:
        for t in early.values():
            if t is not None:
                t.close()
        raise
    opts = DeployOptions(
        dry_run=args.dry_run, diff=args.diff, lock_timeout=args.lock_timeout, connect_timeout=args.connect_timeout
    )
    progress = Progress(names, verbose=args.verbose)
    with progress.running():
        runs = in_parallel(names, lambda n: deploy_host(inv, n, opts, progress, early[n]))
    if args.json:
        print(json.dumps({"hosts": {n: r.as_dict() for n, r in runs.items()}}, indent=2))
    else:
        print_runs(runs, args)
    return 1 if any(r.failed for r in runs.values()) else 0


def early_transport(host: Host, connect_timeout: float = 10.0) -> Transport | None:
    """A connection to the box, opening in a thread (it overlaps the laptop's own work); None if it cannot
    be made (the job then fails with the reason, as it always did)."""
    try:
        transport = Transport(host, connect_timeout=connect_timeout)
    except MiabError:
        return None
    transport.start_connecting()
    return transport


def check_builds(inv: Inventory, host: Host) -> None:
    """Load every recipe and render every template of a box on the laptop, so that a failed recipe or
    template is bad input (exit 2, one line naming the file) before any box is contacted; and so is a way
    to the box that cannot be pinned (a jump host without jump_host_keys, a ProxyCommand)."""
    from miab_remote.deploy import build
    from miab_remote.profiles import DEBIAN_12, profile_by_id
    from miab_remote.ssh import route

    route(host)
    build(host, (profile_by_id(host.os) if host.os else None) or DEBIAN_12, inv.root)


def print_runs(runs: dict[str, HostRun], args: argparse.Namespace) -> None:
    out = stdout_console()
    for name, run in runs.items():
        verb = "would change" if args.dry_run else "changed"
        head = (
            f"{run.changed} {verb}, {run.failed} failed, {plural(run.round_trips, 'round trip')}, {run.seconds:.1f} s"
        )
        if run.error:
            out.print(f"[bold red]{name}: FAILED[/] ({head})")
        else:
            out.print(f"[bold green]{name}: ok[/] ({head})")
        for a in run.actions:
            style = {"changed": "yellow", "failed": "red", "planned": "cyan"}.get(a.status, "dim")
            out.print(f"  [{style}]{a.status:9}[/] {escape(a.resource)}: {escape(a.why)}")
        if args.verbose:
            for resource, why in run.unchanged:
                out.print(f"  [dim]ok        {escape(resource)}: {escape(why)}[/]")
        for note in run.notes:
            out.print(f"  note: {note}", markup=False)
        if run.error:
            out.print(f"  [red]error:[/] {escape(run.error)}")
        if run.diff:
            for line in run.diff.splitlines():
                colour = "green" if line.startswith("+") else "red" if line.startswith("-") else None
                out.print(line, style=colour, markup=False)


# -- create / destroy -----------------------------------------------------------------------------------------
def cmd_create(args: argparse.Namespace) -> int:
    from miab_remote import inventory as inventory_mod
    from miab_remote import operator_key

    if args.provider in PLANNED_PROVIDERS:
        raise InputError(f"--provider {args.provider} is not available yet; available: {', '.join(PROVIDERS)}")
    from miab_remote.providers import local

    inv = inventory_of(args)
    check_new_boxes(inv, args.names)  # every argument is checked before anything is made
    key_path, key_line = operator_key.resolve(args.identity_file)
    local.LocalConfig.from_env().validate()
    local.check_requirements()
    progress = Progress(args.names, verbose=True)

    def record(doc: tomlkit.TOMLDocument, box: local.CreatedBox) -> None:
        doc["address"] = box.address
        doc["host_keys"] = [box.host_key_public]
        doc["provider"] = "local"
        doc["os"] = box.os
        if box.resolvers:
            if "options" not in doc:
                doc["options"] = tomlkit.table()
            doc["options"]["resolvers"] = list(box.resolvers)

    def write_inventory(name: str, box: local.CreatedBox) -> str:
        if inv.path_for(name).exists():
            with inv.edit(name) as doc:
                record(doc, box)
            return f"{name}: created at {box.address}; kept the existing inventory {inv.path_for(name)} (re-pinned)"
        doc = inventory_mod.new_document(
            name,
            box.address,
            provider="local",
            host_keys=[box.host_key_public],
            os=box.os,
            identity_file=str(key_path),
        )
        record(doc, box)
        inv.create(name, doc)
        return f"{name}: created at {box.address}; inventory {inv.path_for(name)}"

    def one(name: str) -> str:
        box = local.create(name, key_line, progress=lambda msg: progress(name, msg))
        try:
            return write_inventory(name, box)
        except BaseException as e:
            # A box without its inventory would be an orphan nobody can reach (no pinned key): undo it.
            progress(name, "the inventory could not be written: destroying the new box")
            why = str(e) or type(e).__name__
            try:
                local.destroy(name)
            except Exception as cleanup:
                raise ProviderError(
                    f"the inventory could not be written ({why}), and destroying the new box failed too "
                    f"({cleanup}); run `miab-remote destroy {name}`"
                ) from e
            if not isinstance(e, Exception):
                raise
            raise ProviderError(f"the inventory could not be written ({why}); the new box was destroyed") from e

    return report_each(args.names, one, progress)


def check_new_boxes(inv: Inventory, names: Sequence[str]) -> None:
    """`create`'s arguments: each name is a box name as the inventory wants it (a lower-case FQDN: the
    inventory's hostname rule, and the local provider's 64 characters), given once, and an existing
    inventory of that name is valid and is a local box's (create re-pins it)."""
    from miab_remote.providers import local

    seen: set[str] = set()
    for name in names:
        if problem := fqdn_problem(name, "a box name", "box1.example.org"):
            raise InputError(f"{problem}; nothing was made")
        local.check_name(name)
        if name in seen:
            raise InputError(f"{name} is given twice; nothing was made")
        seen.add(name)
        path = inv.path_for(name)
        if path.exists():
            provider = inv.load(name).provider
            if provider not in (None, "local"):
                raise InputError(
                    f"{display_path(path)} is the inventory of a {provider} box; a local box of the same name "
                    "would take over its record; nothing was made"
                )
    if inv.root.exists() and not inv.root.is_dir():
        raise InputError(f"the inventory folder {display_path(inv.root)} is not a folder; nothing was made")


def report_each(names: Sequence[str], job: Callable[[str], str], progress: Progress | None = None) -> int:
    """Run `job` per host in parallel; print its line or its error; exit 1 if any failed."""

    def safe(name: str) -> tuple[bool, str]:
        try:
            return True, job(name)
        except MiabError as e:
            return False, f"{name}: FAILED: {e}"

    if progress is not None:
        with progress.running():
            results = in_parallel(names, safe)
    else:
        results = in_parallel(names, safe)
    out = stdout_console()
    for ok, line in results.values():
        out.print(line, style=None if ok else "red", markup=False)
    return 0 if all(ok for ok, _ in results.values()) else 1


def cmd_destroy(args: argparse.Namespace) -> int:
    from miab_remote.providers import local

    inv = inventory_of(args)
    for name in args.names:  # every box is checked before any is touched
        check_destroyable(inv, name)
    confirm(f"Destroy {', '.join(args.names)} and everything on it?", args.yes)

    def one(name: str) -> str:
        removed = local.destroy(name)
        if inv.path_for(name).exists():
            if args.keep_inventory:
                removed.append(f"kept its inventory {display_path(inv.path_for(name))}")
            else:
                removed.append(f"its inventory is kept as {display_path(inv.archive(name))}")
        return f"{name}: destroyed ({'; '.join(removed) or 'nothing was left'})"

    return report_each(args.names, one)


def check_destroyable(inv: Inventory, name: str) -> None:
    """Refuse (exit 2, nothing touched) a box this tool cannot destroy: its inventory names no provider
    (the operator made the server) or one without a destroy. Without an inventory, the local provider
    still cleans up what a box of that name left behind."""
    path = inv.path_for(name)
    if not path.exists():
        return
    provider = inv.load(name).provider
    if provider == "local":
        return
    if provider is None or provider == "manual":
        made = "names no provider" if provider is None else 'says provider = "manual"'
        raise InputError(
            f"{name}: not destroyed: {display_path(path)} {made}, so miab-remote did not make this box and cannot "
            "remove it; nothing was touched. Remove the server yourself, then move its inventory away"
        )
    raise InputError(
        f"{name}: not destroyed: destroy for provider {provider!r} is not available yet; nothing was touched. "
        f"Remove the server at {provider}, then move {display_path(path)} away"
    )


# -- hosts / trust ------------------------------------------------------------------------------------------
def cmd_hosts(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    hosts = [inv.load(n) for n in inv.names()]
    if args.json:
        print(
            json.dumps(
                {
                    "hosts": {
                        h.name: {
                            "address": h.address,
                            "provider": h.provider,
                            "os": h.os,
                            "domains": list(h.domains),
                            "users": len(h.users),
                            "aliases": len(h.aliases),
                            "admin_email": mailmaps.admin_email(h),
                        }
                        for h in hosts
                    }
                },
                indent=2,
            )
        )
        return 0
    table = Table("box", "address", "provider", "os", "domains", "users", "aliases", "admin", box=None)
    for h in hosts:
        table.add_row(
            h.name,
            h.address,
            h.provider or "-",
            h.os or "-",
            " ".join(h.domains),
            str(len(h.users)),
            str(len(h.aliases)),
            mailmaps.admin_email(h) or "-",
        )
    stdout_console().print(table if hosts else f"no boxes in {inv.root}/")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    from miab_remote.ssh import fetch_host_keys, route
    from miab_remote.sshkeys import fingerprint

    inv = inventory_of(args)
    host = inv.load(args.name)
    way = route(host)
    if way.jumps:
        raise InputError(
            f"{host.name}: trust does not read keys through a jump host ({', '.join(way.jumps)}); read the box's "
            f"key out of band and put it in host_keys of {display_path(host.path)}"
        )
    keys = fetch_host_keys(way.hostname, way.port)
    if not keys:
        raise MiabError(f"{host.name}: the server offered no host key we can use")
    offered = {fingerprint(k.get_name(), k.asbytes()): f"{k.get_name()} {k.get_base64()}" for k in keys}
    out = stdout_console()
    for fp in offered:
        out.print(f"{host.name} offers {fp}", markup=False)
    if args.fingerprint:
        chosen = [line for fp, line in offered.items() if fp.split()[-1] == args.fingerprint.split()[-1]]
        if not chosen:
            raise InputError(f"{host.name}: no offered key has fingerprint {args.fingerprint}; nothing pinned")
    else:
        confirm("Pin these keys (check them out of band first)?", args.yes)
        chosen = list(offered.values())
    with inv.edit(host.name) as doc:
        doc["host_keys"] = [f"{line} {host.name}" for line in chosen]
    out.print(f"{host.name}: pinned {len(chosen)} key(s) in {inv.path_for(host.name)}", markup=False)
    return 0


# -- parser -------------------------------------------------------------------------------------------------
def add_connect_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up on a box that does not answer SSH within this time (default 10)",
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--inventory",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="inventory folder (default ./hosts, or $MIAB_REMOTE_INVENTORY)",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show each step and every unchanged resource with its reason",
    )
    parser = argparse.ArgumentParser(
        prog="miab-remote",
        parents=[common],
        description="A mail server in a box, deployed agentless over SSH from your laptop.",
    )
    parser.add_argument("--version", action="version", version=f"miab-remote {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("create", parents=[common], help="make a new box and write its inventory")
    p.add_argument("--provider", required=True, choices=PROVIDERS + PLANNED_PROVIDERS)
    p.add_argument("--identity-file", metavar="PATH", help="operator SSH key to authorise (default: ~/.ssh/id_*)")
    p.add_argument("names", nargs="+", metavar="NAME", help="the box's FQDN, e.g. box1.example.org")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("deploy", parents=[common], help="converge boxes to their recipes (in parallel)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--all", action="store_true", help="every box in the inventory")
    p.add_argument("--dry-run", action="store_true", help="plan and show, change nothing")
    p.add_argument("--diff", action="store_true", help="show unified diffs of changed files (secrets masked)")
    p.add_argument("--json", action="store_true", help="print one JSON object with per-host results")
    p.add_argument(
        "--lock-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for another deploy on the same box (default 300)",
    )
    add_connect_timeout(p)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("destroy", parents=[common], help="stop and remove boxes made by create")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--keep-inventory",
        action="store_true",
        help="leave hosts/NAME.toml in place (default: it moves to hosts/.archive/NAME.TIMESTAMP.toml)",
    )
    p.set_defaults(func=cmd_destroy)

    p = sub.add_parser("hosts", parents=[common], help="list the boxes in the inventory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_hosts)

    p = sub.add_parser("trust", parents=[common], help="deliberately (re-)pin a box's SSH host key")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--fingerprint", metavar="SHA256:...", help="pin only the key with this fingerprint")
    p.add_argument("--yes", action="store_true", help="pin every offered key without asking")
    p.set_defaults(func=cmd_trust)

    from miab_remote import cli_accounts, cli_dns  # they import this module: loaded here, not at the top

    cli_accounts.add_parsers(sub, common)
    from miab_remote import cli_boxops  # bans, unban

    cli_boxops.add_parsers(sub, common)
    cli_dns.add_parsers(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.inventory = getattr(args, "inventory", None)
    args.verbose = getattr(args, "verbose", False)
    try:
        code: int = args.func(args)
        return code
    except MiabError as e:
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"miab-remote: {e}", markup=False, style="red")
        return e.exit_code
    except KeyboardInterrupt:
        return 130
