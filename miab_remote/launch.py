"""The `miab-remote` entry point: starts what can start before the CLI's imports, then runs the CLI."""

from __future__ import annotations

import os
import sys


def main() -> int:
    from miab_remote.mail import passwords

    passwords.hash_early(sys.argv[1:])  # `user add/password --password-stdin`: bcrypt overlaps the imports
    from miab_remote.cli import main as cli_main

    code = cli_main()
    quick_exit(code)
    return code


def quick_exit(code: int) -> None:
    """End the process now that the command is done: its files are written and closed, its connections
    closed, its threads finished or daemons. The interpreter's own teardown (freeing every module of
    paramiko, cryptography, rich, jinja2...) costs 40-60 ms that the operator would wait for after the
    result is printed. Returns (and lets Python exit as usual) if the output cannot be flushed."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        return
    os._exit(code)
