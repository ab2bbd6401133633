"""The `miab-remote` command: argparse only, one module per command group; the work is in miab_remote.jobs.

Exit codes: 0 all went well, 1 a host failed, 2 bad usage or bad input (nothing was changed).
Nothing in the package imports this; it imports the jobs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from miab_remote import __version__
from miab_remote.cli import accounts, bans, boxes, deploy, dns
from miab_remote.cli.output import stderr_console
from miab_remote.errors import MiabError


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
    for group in (boxes, deploy, accounts, bans, dns):
        group.add_parsers(sub, common)
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
        stderr_console().print(f"miab-remote: {e}", markup=False, style="red")
        return e.exit_code
    except KeyboardInterrupt:
        return 130
