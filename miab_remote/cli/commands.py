"""Each command's group module and one-line help. The top-level parser is built from this table alone, so
`miab-remote --help` imports no command, and a command imports only its own group's module (and what that
needs): `user add` never loads the modules of `create`, `check` or `dns`."""

from __future__ import annotations

# command -> (module in miab_remote.cli, help); a group's commands are contiguous, in the order --help shows.
COMMANDS: dict[str, tuple[str, str]] = {
    "create": ("boxes", "make a new box and write its inventory"),
    "destroy": ("boxes", "stop and remove boxes made by create"),
    "hosts": ("boxes", "list the boxes in the inventory"),
    "trust": ("boxes", "deliberately (re-)pin a box's SSH host key"),
    "deploy": ("deploy", "converge boxes to their recipes (in parallel)"),
    "user": ("accounts", "add, re-password, remove and list a box's mail users"),
    "alias": ("accounts", "add, remove and list a box's mail aliases"),
    "relay": ("relay", "send a box's outgoing mail through a smarthost (port 25 blocked): set, show, remove"),
    "backup": ("backup", "back boxes up now (in parallel, with progress): a restic snapshot each"),
    "backups": ("backup", "list a box's backups (snapshots: id, time, size, files)"),
    "restore": ("backup", "restore a box from its backups (or an old box's: a move), then deploy and check it"),
    "backup-target": ("backup", "where a box's nightly encrypted backups go: set, show, remove"),
    "bans": ("bans", "list the addresses fail2ban bans on boxes, per jail"),
    "unban": ("bans", "lift fail2ban's ban of an address on a box (in every jail, or one)"),
    "dns": ("dns", "what to set at the registrar, or at another DNS host"),
    "check": ("dns", "verify that boxes work (DNS, ports, TLS, SSH, services, firewall, disk, updates)"),
}


def summary(command: str) -> str:
    return COMMANDS[command][1]


def command_word(argv: list[str]) -> str | None:
    """The command `argv` names (its first word that is not an option of the top-level parser), or None."""
    words = iter(argv)
    for word in words:
        if word == "--inventory":
            next(words, None)  # its value
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None
