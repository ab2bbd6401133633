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


class _RefusePassword(argparse.Action):
    """`--password VALUE` is refused without echoing VALUE (and never taken for --password-stdin)."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kwargs: object) -> None:
        parser.error(
            "a password is never taken from the command line (every user of this machine sees it in `ps`, and "
            "your shell history keeps it): leave it out to be asked, or pipe it in with --password-stdin; "
            "nothing was changed"
        )


def refuse_password_argument(p: argparse.ArgumentParser) -> None:
    """A command that reads a password: `--password X` gets one clear refusal that never shows X (argparse would
    otherwise take it for --password-stdin, or print X among the unrecognized arguments). Such a parser is
    made with allow_abbrev=False, so no prefix of an option is taken for it either."""
    p.add_argument("--password", nargs="?", action=_RefusePassword, help=argparse.SUPPRESS)


def confirm(question: str, assume_yes: bool, expect: str = "yes") -> None:
    """Ask on the terminal; go on only if the operator types `expect` (e.g. the names of what is destroyed)."""
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise InputError(f"{question} needs confirmation: pass --yes (no terminal to ask on)")
    answer = input(f"{question} Type {expect if expect != 'yes' else repr(expect)} to go on: ")
    if answer.split() != expect.split():
        raise InputError("not confirmed; nothing was changed")


def report_each(names: Sequence[str], job: Callable[[str], str], progress: Progress | None = None) -> int:
    """Run `job` per box in parallel; print its line or its error. Exit 0 if all succeeded, 2 if every box
    that failed was refused as bad input (nothing changed there, e.g. a cloud's quota), else 1."""

    def safe(name: str) -> tuple[int, str]:
        try:
            return 0, job(name)
        except MiabError as e:
            return e.exit_code, f"{name}: FAILED: {e}"

    if progress is not None:
        with progress.running():
            results = in_parallel(names, safe)
    else:
        results = in_parallel(names, safe)
    out = stdout_console()
    for code, line in results.values():
        out.print(line, style=None if code == 0 else "red", markup=False)
    codes = {code for code, _ in results.values()} - {0}
    return 0 if not codes else 2 if codes == {2} else 1


def add_connect_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up on a box that does not answer SSH within this time (default 10)",
    )
