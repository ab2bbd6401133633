"""Each box's secrets on the laptop, kept out of its inventory: `<config dir>/secrets/NAME.toml`, one 0600
TOML file per box (folders 0700) holding named strings, such as `relay_password` (the outbound relay's
login) and the backup's: the restic repository's password and the target's credentials.

The inventory is the operator's record, shared and committed; these files are not. A file another user
could read is refused (configdir.read_private), every change replaces the whole file atomically under a
per-box lock (two commands setting different secrets of one box never lose either), and `destroy` leaves
the file alone: an archived inventory may be restored, and its secrets with it. Nothing here prints a
value; errors name the secret, never what it holds.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import tomlkit

from miab_remote import fsutil, names
from miab_remote.errors import InputError
from miab_remote.fleet import configdir
from miab_remote.fleet.problems import display_path

# The names the tool stores; a secret's name is a TOML bare key of lower-case words.
RELAY_PASSWORD = "relay_password"
# The restic repository's password, made on the laptop by the first deploy of a box with [backup]; and since
# when (UTC, ISO 8601) the box's backups are due: that deploy, or the last restore (a new box after a move):
# `check` allows a box 36 hours without a backup from then.
BACKUP_PASSWORD = "backup_password"
BACKUP_SINCE = "backup_since"
# A REST server's login (both optional: a server without auth), an S3 key pair (required), an sftp
# target's OpenSSH ed25519 private key (made on the laptop by `backup-target set`).
BACKUP_REST_USER = "backup_rest_user"
BACKUP_REST_PASSWORD = "backup_rest_password"
BACKUP_S3_ACCESS_KEY_ID = "backup_s3_access_key_id"
BACKUP_S3_SECRET_ACCESS_KEY = "backup_s3_secret_access_key"
BACKUP_SFTP_KEY = "backup_sftp_key"
# What a target kind keeps in the store (the password aside).
BACKUP_CREDENTIALS: dict[str, tuple[str, ...]] = {
    "rest": (BACKUP_REST_USER, BACKUP_REST_PASSWORD),
    "s3": (BACKUP_S3_ACCESS_KEY_ID, BACKUP_S3_SECRET_ACCESS_KEY),
    "sftp": (BACKUP_SFTP_KEY,),
    "local": (),
}
# A box's TSIG key (base64, hmac-sha256) for the zone transfers to its [dns] secondaries, made by the first
# deploy that needs it; its secondaries get it too (mail/secondary.py).
DNS_TSIG_SECRET = "dns_tsig_secret"
# Kept beside the secrets but no secret: never masked (a time would mask every text that names it).
NOT_SECRET: tuple[str, ...] = (BACKUP_SINCE,)
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def folder() -> Path:
    """Where the boxes' secret files are: `secrets/` in the tool's private folder."""
    return configdir.config_dir() / "secrets"


def path_for(box: str) -> Path:
    """The secret file of one box (named after its FQDN, so a name can never leave the folder)."""
    if not isinstance(box, str) or len(box) > 253 or not names.HOST_NAME_RE.fullmatch(box):
        raise InputError(f"{box!r} is not a box name: expected the box's FQDN, like box1.example.org")
    return folder() / f"{box}.toml"


def get(box: str, name: str) -> str | None:
    """The secret `name` of `box`, or None when it has none."""
    return read_all(box).get(_checked(name))


def read_all(box: str) -> dict[str, str]:
    """Every secret of `box` (name -> value); empty when it has none."""
    path = path_for(box)
    text = configdir.read_private(path, f"the secrets of {box}")
    if text is None:
        return {}
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{display_path(path)}: not a secrets file (TOML: {e}); fix or remove it") from None
    bad = [k for k, v in data.items() if not isinstance(v, str) or not _NAME_RE.fullmatch(k)]
    if bad:
        raise InputError(
            f'{display_path(path)}: {", ".join(sorted(bad))}: not a secret; accepted: name = "value" lines, '
            "a name of lower-case letters, digits and '_'"
        )
    return dict(data)


def put(box: str, name: str, value: str) -> None:
    """Set (or replace) the secret `name` of `box`."""
    _checked(name)
    if not isinstance(value, str) or not value:
        raise InputError(f"the secret {name} of {box} is empty; nothing was changed")
    with _changing(box) as secrets:
        secrets[name] = value


def put_new(box: str, name: str, value: str) -> str:
    """Set the secret `name` of `box` unless it has one; the value it has then (two deploys at once make
    one password, not two)."""
    _checked(name)
    if not isinstance(value, str) or not value:
        raise InputError(f"the secret {name} of {box} is empty; nothing was changed")
    with _changing(box) as secrets:
        return secrets.setdefault(name, value)


def put_many(box: str, values: dict[str, str | None]) -> None:
    """Set several secrets of `box` at once (None: forget that one), in one write under its lock."""
    for name, value in values.items():
        _checked(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise InputError(f"the secret {name} of {box} is empty; nothing was changed")
    with _changing(box) as secrets:
        for name, value in values.items():
            if value is None:
                secrets.pop(name, None)
            else:
                secrets[name] = value


def remove(box: str, name: str) -> bool:
    """Forget the secret `name` of `box`; whether it had one. A box left with none loses its file."""
    _checked(name)
    with _changing(box) as secrets:
        return secrets.pop(name, None) is not None


@contextmanager
def _changing(box: str) -> Iterator[dict[str, str]]:
    """The box's secrets to change in place, under its lock; written (atomically, 0600) when the block ends."""
    path = path_for(box)
    _private_folders(path.parent)
    with fsutil.file_lock(path.parent / f".{box}.toml.lock", what=display_path(path)):
        secrets = read_all(box)
        before = dict(secrets)
        yield secrets
        if secrets == before:
            return
        if not secrets:
            path.unlink(missing_ok=True)
            fsutil.fsync_dir(path.parent)
            return
        doc = tomlkit.document()
        doc.add(tomlkit.comment(f"miab-remote: the secrets of {box}; never in its inventory. Keep this file 0600."))
        for key in sorted(secrets):
            doc[key] = secrets[key]
        configdir.write_private(path, doc.as_string())


def _private_folders(secrets_folder: Path) -> None:
    """The tool's folder and its secrets folder, each made 0700 (mkdir's parents would get the umask's mode)."""
    secrets_folder.parent.parent.mkdir(parents=True, exist_ok=True)  # ~/.config: the operator's own
    for made in (secrets_folder.parent, secrets_folder):
        try:
            made.mkdir(mode=0o700)
        except FileExistsError:
            continue
        made.chmod(0o700)  # mkdir's mode is masked by the umask


def _checked(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise InputError(f"{name!r} is not a secret's name; accepted: lower-case letters, digits and '_'")
    return name
