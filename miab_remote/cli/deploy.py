"""`miab-remote deploy NAME...`: converge boxes to their recipes, in parallel, with a live display."""

from __future__ import annotations

import argparse
import json

from rich.markup import escape

from miab_remote.cli.commands import summary
from miab_remote.cli.common import add_connect_timeout, inventory_of
from miab_remote.cli.output import Progress, plural, stdout_console
from miab_remote.errors import InputError
from miab_remote.jobs.deploy import DeployOptions, HostRun, deploy


def cmd_deploy(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    names = inv.names() if args.all else args.names
    if not names:
        raise InputError("name at least one box, or --all")
    opts = DeployOptions(
        dry_run=args.dry_run, diff=args.diff, lock_timeout=args.lock_timeout, connect_timeout=args.connect_timeout
    )
    progress = Progress(names, verbose=args.verbose)
    with progress.running():
        runs = deploy(inv, names, opts, progress)  # every name, recipe and template is checked first
    if args.json:
        print(json.dumps({"hosts": {n: r.as_dict() for n, r in runs.items()}}, indent=2))
    else:
        print_runs(runs, args)
    return 1 if any(r.failed for r in runs.values()) else 0


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


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("deploy", parents=[common], help=summary("deploy"))
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
