"""SSH key material made on the laptop: a box's host key is generated here, so it is pinned before boot."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from miab_remote.errors import InputError


@dataclass(frozen=True)
class KeyPair:
    private_openssh: bytes
    public_line: str  # "ssh-ed25519 AAAA... comment"


def generate_ed25519(comment: str) -> KeyPair:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return KeyPair(private, f"{public.decode()} {comment}".strip())


def public_line_of_private(private_openssh: str, comment: str) -> str:
    """The public key line of an OpenSSH private key made by generate_ed25519 (for an authorized_keys)."""
    try:
        key = serialization.load_ssh_private_key(private_openssh.encode(), password=None)
    except ValueError:
        raise InputError("the stored key is not an OpenSSH private key (not shown)") from None
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{public.decode()} {comment}".strip()


def parse_public_line(line: str) -> tuple[str, bytes]:
    """Split "TYPE BASE64 [comment]" into (type, blob); raise InputError if it is not a public key."""
    parts = line.split()
    if len(parts) < 2:
        raise InputError(f"not an SSH public key: {line!r}")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise InputError(f"not an SSH public key (bad base64): {line!r}") from None
    # The blob starts with the key type as an SSH string; it must agree with the first word.
    if len(blob) < 4 or blob[4 : 4 + int.from_bytes(blob[:4], "big")].decode(errors="replace") != parts[0]:
        raise InputError(f"not an SSH public key (type does not match its data): {line!r}")
    # The key itself must be whole and valid (a truncated or altered key would never match the box's and
    # the box would be refused at every deploy, far from the mistake).
    try:
        serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except UnsupportedAlgorithm:
        raise InputError(f"not an SSH public key (unsupported key type {parts[0]!r}): {line!r}") from None
    except ValueError:
        raise InputError(f"not an SSH public key (its {parts[0]} key data is truncated or invalid): {line!r}") from None
    return parts[0], blob


def fingerprint(key_type: str, blob: bytes) -> str:
    """The OpenSSH SHA256 fingerprint, as `ssh-keygen -lf` prints it, prefixed by the key type."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"{key_type} SHA256:{digest}"


def fingerprint_line(line: str) -> str:
    return fingerprint(*parse_public_line(line))
