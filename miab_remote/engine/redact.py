"""Keeping a box's secrets out of what the operator sees: errors, the whys of actions and diffs.

Whatever text the engine shows goes through a SecretMask, which replaces every known secret value with
MASK, so a password hash never ends up on a terminal, in a log or in a saved report."""

from __future__ import annotations

from collections.abc import Iterable

from miab_remote.fleet import secrets
from miab_remote.fleet.model import Host

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
    laptop's store holds for it (the relay password)."""
    return SecretMask([*(u.password_hash for u in host.users), *secrets.read_all(host.name).values()])
