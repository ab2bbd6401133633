"""The `miab-remote` command: argparse only, one module per command group; the work is in miab_remote.jobs.

Exit codes: 0 all went well, 1 a host failed, 2 bad usage or bad input (nothing was changed).
Nothing in the package imports this; it imports the jobs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from miab_remote import __version__
from miab_remote.cli.commands import COMMANDS, command_word, summary
from miab_remote.errors import MiabError


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `argv`, only the group module of the command it names is imported, if any (the
    other commands are listed, from cli/commands.py, but not built: `--help` imports none)."""
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
    wanted = None if argv is None else command_word(list(argv))
    groups = {g for g, _ in COMMANDS.values()} if argv is None else {COMMANDS[wanted][0]} if wanted else set()
    built: set[str] = set()
    for command, (group, _help) in COMMANDS.items():
        if group not in groups:
            sub.add_parser(command, help=summary(command), add_help=False)  # listed in --help, never parsed
        elif group not in built:
            importlib.import_module(f"miab_remote.cli.{group}").add_parsers(sub, common)
            built.add(group)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    args.inventory = getattr(args, "inventory", None)
    args.verbose = getattr(args, "verbose", False)
    try:
        code: int = args.func(args)
        return code
    except MiabError as e:
        from miab_remote.cli.output import stderr_console

        stderr_console().print(f"miab-remote: {e}", markup=False, style="red")
        return e.exit_code
    except KeyboardInterrupt:
        return 130
