"""The operator's SSH key: the one `create` authorises on a new box and the inventory records."""

from __future__ import annotations

import os
from pathlib import Path

from miab_remote.errors import InputError
from miab_remote.fsutil import atomic_write
from miab_remote.transport.sshkeys import generate_ed25519, parse_public_line

CANDIDATES = ("id_ed25519", "id_ecdsa", "id_rsa")


def own_key_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "miab-remote" / "id_ed25519"


def resolve(identity_file: str | None) -> tuple[Path, str]:
    """(private key path, public key line): the given key, else ~/.ssh's usual keys, else a key of our own
    (generated once, 0600), so a newcomer without any key can still create a box."""
    if identity_file:
        path = Path(identity_file).expanduser()
        pub = path.with_name(path.name + ".pub")
        if not path.is_file() or not pub.is_file():
            raise InputError(f"--identity-file {identity_file}: need both {path} and {pub}")
        line = pub.read_text().strip()
        parse_public_line(line)
        return path, line
    for name in CANDIDATES:
        path = Path.home() / ".ssh" / name
        pub = path.with_name(name + ".pub")
        if path.is_file() and pub.is_file():
            return path, pub.read_text().strip()
    path = own_key_path()
    pub = path.with_name(path.name + ".pub")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pair = generate_ed25519("miab-remote operator")
        atomic_write(path, pair.private_openssh, 0o600)
        atomic_write(pub, (pair.public_line + "\n").encode(), 0o644)
    return path, pub.read_text().strip()
