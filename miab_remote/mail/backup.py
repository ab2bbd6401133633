"""What a box's backup files say (the recipe recipes/backup.py renders them; the on-box program
remote/backup.py reads them), from its [backup] table and the laptop's secrets store (fleet/secrets.py).

The credentials live on the box in root-only files under CONFIG_DIR, which restic reads through
`--repository-file`, `--password-file` and the program's environment: never on a command line. restic
0.14 takes a REST server's login only in the repository URL, so `repository` holds it there,
percent-encoded. A credential that is missing is bad input naming the box, the secret and the command that
stores it, before any box is contacted.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any
from urllib.parse import quote, urlsplit

from miab_remote.errors import InputError
from miab_remote.fleet import rules, secrets
from miab_remote.fleet.model import Backup, Host
from miab_remote.fleet.problems import display_path
from miab_remote.mail import relay

CONFIG_DIR = "/etc/miab-remote/backup"
REPOSITORY_FILE = f"{CONFIG_DIR}/repository"
PASSWORD_FILE = f"{CONFIG_DIR}/password"
ENV_FILE = f"{CONFIG_DIR}/env"
KEY_FILE = f"{CONFIG_DIR}/id_ed25519"
KNOWN_HOSTS_FILE = f"{CONFIG_DIR}/known_hosts"
CA_FILE = f"{CONFIG_DIR}/ca.pem"
SETTINGS_FILE = f"{CONFIG_DIR}/settings.json"
PROGRAM = "/usr/local/sbin/miab-backup"
STATUS = "/var/lib/miab-remote/backup/status.json"
RESTORE_JOURNAL = "/var/lib/miab-remote/restore.json"  # a restore under way (remote/backup.py JOURNAL)
MAX_CREDENTIAL = 1024
TARGET = "the backup target"

# Set by a dry run of deploy for a box that has no password yet: rendered instead, never stored.
_stand_ins: dict[str, str] = {}
STAND_IN = "stand-in-for-the-password-the-first-deploy-makes"


def backup_of(host: Host) -> Backup:
    if host.backup is None:
        how = f"`miab-remote backup-target set {host.name} --target ...`"
        raise InputError(f"{host.name} has no [backup] table ({how}); nothing was changed")
    return host.backup


def set_command(host: Host) -> str:
    return f"`miab-remote backup-target set {host.name} --target {backup_of(host).target}`"


def check_credential(what: str, value: str) -> None:
    """Refuse a credential the box's files could not hold as it is (one line each); never shows it."""
    if not value:
        raise InputError(f"the {what} is empty; nothing was changed")
    if len(value) > MAX_CREDENTIAL:
        raise InputError(f"the {what} is longer than {MAX_CREDENTIAL} characters; nothing was changed")
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value) or value != value.strip():
        raise InputError(
            f"the {what} contains a control character, a line break or white space at an end (not shown); "
            "nothing was changed"
        )


def _secret(host: Host, name: str, what: str, *, required: bool = True) -> str | None:
    value = secrets.get(host.name, name)
    if value is None and required:
        raise InputError(
            f"{display_path(host.path)}: [backup] is set but no {what} ({name}) is stored for {host.name} (in "
            f"{display_path(secrets.path_for(host.name))}); store it with {set_command(host)}, or remove [backup] "
            f"with `miab-remote backup-target remove {host.name}`; nothing was changed"
        )
    return value


def password(host: Host) -> str:
    """The repository's password (made by the first deploy; a dry run's stand-in until then)."""
    backup_of(host)
    stored = secrets.get(host.name, secrets.BACKUP_PASSWORD)
    if stored is not None:
        return stored
    if host.name in _stand_ins:
        return _stand_ins[host.name]
    raise InputError(
        f"{host.name}: [backup] is set but its repository password is not stored (in "
        f"{display_path(secrets.path_for(host.name))}); `miab-remote deploy {host.name}` makes one, or, for a "
        "repository made before, restore its recovery sheet's password: nothing was changed"
    )


def use_stand_in(name: str, on: bool = True) -> None:
    """A dry run renders a box without a password yet with STAND_IN (and says a new one would be made)."""
    if on:
        _stand_ins[name] = STAND_IN
    else:
        _stand_ins.pop(name, None)


def rest_login(host: Host) -> tuple[str, str] | None:
    """A REST server's user and password, or None (a server without auth); half a login is bad input."""
    user = secrets.get(host.name, secrets.BACKUP_REST_USER)
    pw = secrets.get(host.name, secrets.BACKUP_REST_PASSWORD)
    if user is None and pw is None:
        return None
    if user is None or pw is None:
        missing = secrets.BACKUP_REST_USER if user is None else secrets.BACKUP_REST_PASSWORD
        _secret(host, missing, "REST login half")
    assert user is not None and pw is not None
    return user, pw


def with_login(target: str, login: tuple[str, str] | None) -> str:
    """`rest:https://USER:PASS@host:port/path`, each percent-encoded (restic reads the URL's user info)."""
    if login is None:
        return target
    split = urlsplit(target.removeprefix("rest:"))
    user, pw = (quote(part, safe="") for part in login)
    return "rest:" + split._replace(netloc=f"{user}:{pw}@{split.netloc}").geturl()


def repository_text(host: Host) -> str:
    """The `repository` file: restic's repository string, with the credentials it must carry (rest's)."""
    b = backup_of(host)
    if b.kind == "rest":
        return with_login(b.target, rest_login(host)) + "\n"
    return b.target + "\n"


def env_text(host: Host) -> str:
    """The `env` file: NAME=value lines the program gives restic (s3's keys); empty for other kinds."""
    b = backup_of(host)
    if b.kind != "s3":
        return ""
    key_id = _secret(host, secrets.BACKUP_S3_ACCESS_KEY_ID, "S3 access key id")
    secret = _secret(host, secrets.BACKUP_S3_SECRET_ACCESS_KEY, "S3 secret access key")
    return f"AWS_ACCESS_KEY_ID={key_id}\nAWS_SECRET_ACCESS_KEY={secret}\n"


def sftp_parts(b: Backup) -> tuple[str, str]:
    """(user, host) of an sftp target `sftp:USER@HOST:/PATH`."""
    login = b.target.removeprefix("sftp:").rsplit(":", 1)[0]
    user, _, host = login.partition("@")
    return user, host.strip("[]")


def sftp_key(host: Host) -> str | None:
    """The `id_ed25519` file of an sftp target (None for other kinds)."""
    if backup_of(host).kind != "sftp":
        return None
    key = _secret(host, secrets.BACKUP_SFTP_KEY, "sftp key")
    assert key is not None
    return key if key.endswith("\n") else key + "\n"


def known_hosts(host: Host) -> str | None:
    """The `known_hosts` file of an sftp target: its pinned host key (None for other kinds)."""
    b = backup_of(host)
    if b.kind != "sftp":
        return None
    assert b.host_key is not None  # the schema requires it for sftp
    return f"{sftp_parts(b)[1]} {b.host_key}\n"


def sftp_command(b: Backup) -> str | None:
    """How restic reaches an sftp target: the key and the pinned host key only, never a prompt."""
    if b.kind != "sftp":
        return None
    user, target = sftp_parts(b)
    return (
        f"ssh -i {KEY_FILE} -o IdentitiesOnly=yes -o UserKnownHostsFile={KNOWN_HOSTS_FILE} "
        f"-o StrictHostKeyChecking=yes -o BatchMode=yes {user}@{target} -s sftp"
    )


def ca_pem(host: Host) -> str | None:
    """The `ca.pem` file (rest/s3 with ca_file): the only CA the target's certificate is checked against."""
    b = backup_of(host)
    if b.ca_file is None:
        return None
    return relay.read_ca(b.ca_file, f"{display_path(host.path)}: backup.ca_file: {display_path(b.ca_file)}", TARGET)


def settings(host: Host) -> dict[str, Any]:
    """`settings.json` (no secret): what the program needs besides the credentials."""
    b = backup_of(host)
    return {
        "host": host.name,
        "kind": b.kind,
        "keep": {"daily": b.keep_daily, "weekly": b.keep_weekly, "monthly": b.keep_monthly},
        "append_only": b.append_only,
        "state": rules.STATE_TREE,
        "sftp_command": sftp_command(b),
        "ca_file": CA_FILE if b.ca_file is not None else None,
    }


def settings_text(host: Host) -> str:
    return json.dumps(settings(host), indent=2, sort_keys=True) + "\n"


def check_credentials(host: Host) -> None:
    """Bad input when a credential the box's files need is not stored (or a CA file is bad)."""
    repository_text(host)
    env_text(host)
    sftp_key(host)
    ca_pem(host)


def credentials(host: Host) -> dict[str, Any]:
    """What `restore --from OLD` sends the box on stdin for another box's repository (design's `credentials`)."""
    return {"repository": repository_text(host), "password": password(host), "env": env_text(host), "ca": ca_pem(host)}


def stored_secret_names(kind: str) -> tuple[str, ...]:
    return secrets.BACKUP_CREDENTIALS[kind]
