"""Nightly restic backups of the state tree ([backup]): Debian's restic, the repository's credentials as
root-only files outside the state tree, the program (remote/backup.py, also run by the laptop's `backup`
and `restore` commands) and a daily timer. Last of the recipes: it only reads what the others made.

Without [backup], nothing but the clean-up of an earlier one: its timer disabled and its credentials gone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from miab_remote.api import Command, Directory, File, Package, RecipeContext, Resource, Service, backup, layout, script

UNITS = "/etc/systemd/system"
SERVICE = "miab-backup.service"
TIMER = "miab-backup.timer"
# Where the program keeps its status (mail/backup.STATUS) and the marks of the repositories initialised.
VAR = "/var/lib/miab-remote/backup"
# restic; sqlite3 for the consistent copies of the databases; nftables for the restore's closed port 25.
PACKAGES = ("restic", "sqlite3", "nftables")
# Packages that another built-in recipe declares as well (a package is declared once in a box's plan).
ALSO_DECLARED_BY = {"sqlite3": "webmail", "nftables": "hardening"}


def resources(ctx: RecipeContext) -> Iterator[Resource]:
    host = ctx.host
    if host.backup is None:
        yield from _forget()
        return
    for name in PACKAGES:
        if ALSO_DECLARED_BY.get(name) not in host.recipes:
            yield Package(name)
    folder = backup.CONFIG_DIR
    yield Directory(folder.rsplit("/", 1)[0], mode=0o755)
    yield Directory(folder, mode=0o700)
    secret_files = {
        "repository": backup.repository_text(host),
        "password": backup.password(host) + "\n",
        "env": backup.env_text(host),
    }
    if (key := backup.sftp_key(host)) is not None:
        secret_files["id_ed25519"] = key if key.endswith("\n") else key + "\n"
    for name, content in secret_files.items():
        yield File(f"{folder}/{name}", content=content, mode=0o600, secret=True)
    if (known := backup.known_hosts(host)) is not None:
        yield File(f"{folder}/known_hosts", content=known, mode=0o600)
    if (ca := backup.ca_pem(host)) is not None:
        yield File(f"{folder}/ca.pem", content=ca, mode=0o600)
    yield File(f"{folder}/settings.json", content=backup.settings_text(host), mode=0o600)
    yield File(backup.PROGRAM, content=script("backup"), mode=0o755)
    yield Directory(VAR.rsplit("/", 1)[0], mode=0o755)
    yield Directory(VAR, mode=0o755)
    context = {"program": backup.PROGRAM, "state": layout.STATE}
    yield File(f"{UNITS}/{SERVICE}", context=context, notify=("command:backup-daemon-reload",))
    yield File(f"{UNITS}/{TIMER}", notify=("command:backup-daemon-reload", f"service:{TIMER}"))
    yield Command("backup-daemon-reload", run="systemctl daemon-reload", on_notify=True)
    yield Service(TIMER)
    # A moved box reuses its repository (init finds it); a new target is initialised once (its own mark).
    mark = f"{VAR}/initialised-{hashlib.sha256(host.backup.target.encode()).hexdigest()[:12]}"
    yield Command(
        "backup-init", run=f"rm -f {VAR}/initialised-* && {backup.PROGRAM} init && touch {mark}", creates=mark
    )


def _forget() -> Iterator[Resource]:
    """An earlier [backup]'s timer stopped and disabled, its units, credentials and marks removed."""
    timer, unit = f"{UNITS}/{TIMER}", f"{UNITS}/{SERVICE}"
    yield Command(
        "forget-backup",
        run=(
            f"if test -e {timer}; then systemctl disable --now {TIMER}; fi; "
            f"rm -rf -- {backup.CONFIG_DIR} {timer} {unit} {VAR}/initialised-*; systemctl daemon-reload"
        ),
        unless=f"! test -e {timer} && ! test -e {backup.CONFIG_DIR}",
    )

