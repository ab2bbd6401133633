"""What a box's backup files say ([backup]): restic's repository string with the credentials its kind needs,
the environment restic gets, the settings the box's program (remote/backup.py) reads, the CA and the sftp
target's pinned host key. The secrets come from the laptop's secrets store (fleet/secrets.py).

The box side's minimal version (helper A, issue 12): the laptop side's module of the same names replaces it.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from miab_remote.errors import InputError
from miab_remote.fleet import secrets
from miab_remote.fleet.model import Backup, Host
from miab_remote.fleet.problems import display_path
from miab_remote.mail import layout, relay

CONFIG_DIR = "/etc/miab-remote/backup"
PROGRAM = "/usr/local/sbin/miab-backup"
STATUS = "/var/lib/miab-remote/backup/status.json"


def _backup(host: Host) -> Backup:
    assert host.backup is not None, "only for a box with [backup]"
    return host.backup


def _secret(host: Host, name: str, what: str) -> str:
    value = secrets.get(host.name, name)
    if value is None:
        raise InputError(
            f"{display_path(host.path)}: [backup] is set but {what} of {host.name} is not stored "
            f"(in {display_path(secrets.path_for(host.name))}); set it with `miab-remote backup-target set {host.name}`"
        )
    return value


def password(host: Host) -> str:
    """The repository's password (made on the laptop by the first deploy with [backup])."""
    return _secret(host, secrets.BACKUP_PASSWORD, "the repository password")


def repository_text(host: Host) -> str:
    """restic's repository string; a REST target's login goes into its URL, percent-encoded (restic 0.14 reads
    it nowhere else)."""
    b = _backup(host)
    target = b.target
    if b.kind == "rest":
        user = secrets.get(host.name, secrets.BACKUP_REST_USER)
        word = secrets.get(host.name, secrets.BACKUP_REST_PASSWORD)
        if user is not None:
            scheme, _, rest = target[len("rest:") :].partition("://")
            login = urllib.parse.quote(user, safe="") + (":" + urllib.parse.quote(word, safe="") if word else "")
            target = f"rest:{scheme}://{login}@{rest}"
    return target + "\n"


def env_text(host: Host) -> str:
    """`NAME=value` lines for restic's environment (an S3 target's keys); empty for the other kinds."""
    if _backup(host).kind != "s3":
        return ""
    key = _secret(host, secrets.BACKUP_S3_ACCESS_KEY_ID, "the S3 access key id")
    secret = _secret(host, secrets.BACKUP_S3_SECRET_ACCESS_KEY, "the S3 secret access key")
    return f"AWS_ACCESS_KEY_ID={key}\nAWS_SECRET_ACCESS_KEY={secret}\n"


def _sftp_parts(b: Backup) -> tuple[str, str]:
    """(user@host, host) of `sftp:user@host:/path`."""
    login = b.target[len("sftp:") :].split(":", 1)[0]
    return login, login.rpartition("@")[2]


def settings(host: Host) -> dict[str, Any]:
    b = _backup(host)
    command = None
    if b.kind == "sftp":
        login, _ = _sftp_parts(b)
        command = (
            f"ssh -i {CONFIG_DIR}/id_ed25519 -o UserKnownHostsFile={CONFIG_DIR}/known_hosts "
            f"-o StrictHostKeyChecking=yes {login} -s sftp"
        )
    return {
        "host": host.name,
        "kind": b.kind,
        "keep": {"daily": b.keep_daily, "weekly": b.keep_weekly, "monthly": b.keep_monthly},
        "append_only": b.append_only,
        "state": layout.STATE,
        "sftp_command": command,
    }


def ca_pem(host: Host) -> str | None:
    b = _backup(host)
    if b.ca_file is None:
        return None
    return relay.read_ca(b.ca_file, f"{display_path(host.path)}: backup.ca_file: {display_path(b.ca_file)}")


def known_hosts(host: Host) -> str | None:
    b = _backup(host)
    if b.kind != "sftp" or not b.host_key:
        return None
    return f"{_sftp_parts(b)[1]} {b.host_key.strip()}\n"


def sftp_key(host: Host) -> str | None:
    if _backup(host).kind != "sftp":
        return None
    return _secret(host, secrets.BACKUP_SFTP_KEY, "the sftp key")
