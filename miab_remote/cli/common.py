"""What every command module shares: the inventory folder, confirmation, per-box reports, common flags."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from miab_remote.cli.output import Progress, stdout_console
from miab_remote.errors import InputError, MiabError
from miab_remote.fleet.store import Inventory
from miab_remote.jobs.parallel import in_parallel


def inventory_of(args: argparse.Namespace) -> Inventory:
    root = args.inventory or os.environ.get("MIAB_REMOTE_INVENTORY") or "hosts"
    return Inventory(Path(root))


def confirm(question: str, assume_yes: bool) -> None:
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise InputError(f"{question} needs confirmation: pass --yes (no terminal to ask on)")
    answer = input(f"{question} Type 'yes' to go on: ")
    if answer.strip() != "yes":
        raise InputError("not confirmed; nothing was changed")


def report_each(names: Sequence[str], job: Callable[[str], str], progress: Progress | None = None) -> int:
    """Run `job` per box in parallel; print its line or its error; exit 1 if any failed."""

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


def add_connect_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up on a box that does not answer SSH within this time (default 10)",
    )
