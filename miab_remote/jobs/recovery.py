"""A box's backup password and its recovery sheet, made on the laptop at deploy, before any box is built.

The repository's password is made here (never on the box) by the first deploy of a box with [backup], and
stored in the secrets store; the recovery sheet (`<config dir>/recovery/NAME.txt`, 0600) holds everything a
restore needs without this tool or this laptop: the repository with its credentials, the password, the CA,
and the commands. It is written again whenever what it says changes (another target, new credentials), and
the operator is told each time to keep a copy offline: a laptop that is the only copy is lost with it.
A dry run makes and writes nothing: it renders with a stand-in and says what would be made.
"""

from __future__ import annotations

import datetime
import secrets as random
import shlex
from pathlib import Path

from miab_remote.fleet import configdir, secrets
from miab_remote.fleet.model import Host
from miab_remote.fleet.problems import display_path
from miab_remote.mail import backup

OFFLINE = "print it or copy it offline now: the laptop must not be the only copy"


def sheet_path(name: str) -> Path:
    secrets.path_for(name)  # the same check of the name: it can never leave the folder
    return configdir.config_dir() / "recovery" / f"{name}.txt"


def sheet_text(host: Host) -> str:
    """The recovery sheet: what restores the box's backups by hand, with restic alone."""
    b = backup.backup_of(host)
    repository = backup.repository_text(host).strip()
    env = backup.env_text(host)
    ca = backup.ca_pem(host)
    flags = "--cacert ca.pem " if ca else ""
    sftp = backup.sftp_command(b)
    if sftp:
        flags += f"-o sftp.command={shlex.quote(sftp.replace(backup.CONFIG_DIR + '/', ''))} "
    exports = "".join(f"  export {line}\n" for line in env.splitlines())
    lines = [
        f"miab-remote recovery sheet of {host.name}",
        "KEEP THIS OFFLINE (printed, or on a medium kept away from this laptop). Anyone with it can read",
        "every message of the box; without it, nobody (not you either) can restore its backups.",
        "",
        f"box:        {host.name}",
        f"repository: {repository}",
        f"password:   {backup.password(host)}",
        *([f"environment (s3 credentials):\n{env.rstrip()}"] if env else []),
        *([f"sftp key (id_ed25519, for {backup.sftp_parts(b)[0]}@{backup.sftp_parts(b)[1]}):\n"
           f"{(backup.sftp_key(host) or '').rstrip()}", f"known_hosts:\n{(backup.known_hosts(host) or '').rstrip()}"]
          if b.kind == "sftp" else []),
        *([f"CA (save as ca.pem):\n{ca.rstrip()}"] if ca else []),
        "",
        "Restore onto a new box with this tool (its inventory and secrets are on the laptop):",
        f"  miab-remote create {host.name} ...; miab-remote deploy {host.name}; miab-remote restore {host.name}",
        "",
        "By hand, with restic only (on the new box, as root):",
        "  printf '%s\\n' 'REPOSITORY' > repository; printf '%s\\n' 'PASSWORD' > password; chmod 600 *",
        *([exports.rstrip()] if exports else []),
        f"  restic --repository-file repository --password-file password {flags}snapshots --host {host.name}",
        f"  restic --repository-file repository --password-file password {flags}restore latest --host {host.name} "
        "--target /",
        "  (then fix owners: restic restores them by number; `miab-remote restore` maps them by name)",
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def prepare(host: Host, dry_run: bool) -> list[str]:
    """Before a deploy's builds: the password made (or, in a dry run, a stand-in said to be made) and the
    sheet written when it is new or says something else now. The notes of the deploy."""
    if host.backup is None:
        return []
    name = host.name
    path = sheet_path(name)
    if secrets.get(name, secrets.BACKUP_PASSWORD) is None:
        backup.check_credentials(host)  # a missing one is bad input before anything is made
        if dry_run:
            backup.use_stand_in(name)
            return [f"a new repository password would be made, and the recovery sheet {display_path(path)} written"]
        secrets.put_new(name, secrets.BACKUP_PASSWORD, random.token_urlsafe(32))
        secrets.put_new(name, secrets.BACKUP_SINCE, now_text())
    return refresh(host, dry_run)


def refresh(host: Host, dry_run: bool = False) -> list[str]:
    """Write the sheet again when what it says changed (target, credentials); the note that says so."""
    if host.backup is None or secrets.get(host.name, secrets.BACKUP_PASSWORD) is None:
        return []
    path = sheet_path(host.name)
    text = sheet_text(host)
    if configdir.read_private(path, f"the recovery sheet of {host.name}") == text:
        return []
    if dry_run:
        return [f"the recovery sheet {display_path(path)} would be written again (what it says changed)"]
    configdir.write_private(path, text)
    return [f"recovery sheet written to {display_path(path)} (0600): {OFFLINE}"]


def now_text() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
