"""The `miab-remote` entry point: starts what can start before the CLI's imports, then runs the CLI."""

from __future__ import annotations

import sys


def main() -> int:
    from miab_remote.mail import passwords

    passwords.hash_early(sys.argv[1:])  # `user add/password --password-stdin`: bcrypt overlaps the imports
    from miab_remote.cli import main as cli_main

    return cli_main()
