"""Keeping a box's secrets out of what the operator sees: errors, the whys of actions and diffs.

Whatever text the engine shows goes through a SecretMask, which replaces every known secret value with
MASK, so a password hash never ends up on a terminal, in a log or in a saved report."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from urllib.parse import quote

from miab_remote.fleet import secrets
from miab_remote.fleet.model import Host
from miab_remote.mail import secondary

MASK = "********"


class SecretMask:
    """Replaces every known secret value in text shown to the operator (longest first, so a secret that
    contains another is masked whole); values shorter than 4 characters are too common to mask."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, MASK)
        return text


def secret_mask_for(host: Host) -> SecretMask:
    """The mask of a box's secrets the laptop knows: its users' password hashes, and every secret the
    laptop's store holds for it (the relay password, the backup's password and credentials, the TSIG keys of
    its own and its primaries' zone transfers), also as they
    appear in a URL (percent-encoded: the REST login in the backup's repository string) and, for a key,
    line by line."""
    stored = [v for k, v in secrets.read_all(host.name).items() if k not in secrets.NOT_SECRET]
    stored += secondary.foreign_secrets(host)  # the TSIG keys of the boxes whose zones it copies
    return SecretMask([*(u.password_hash for u in host.users), *(form for v in stored for form in _forms(v))])


def _forms(value: str) -> Iterator[str]:
    yield value
    yield quote(value, safe="")
    lines = value.strip().splitlines()
    if len(lines) > 1:
        yield from (line for line in lines if len(line) >= 16 and not line.startswith("-----"))
