"""The fingerprints the clouds' APIs give an SSH public key, computed here (libcloud's own is wrong for
ed25519: it strips the 7 characters of "ssh-rsa" from every key line before decoding)."""

from __future__ import annotations

import base64
import hashlib

from miab_remote.transport.sshkeys import parse_public_line


def md5_hex(line: str) -> str:
    """DigitalOcean's (and EC2's for imported RSA keys): MD5 of the key blob, colon-separated hex."""
    _, blob = parse_public_line(line)
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def sha256_base64(line: str) -> str:
    """EC2's for imported ed25519 keys: the SHA-256 of the blob in base64, as OpenSSH prints it (with padding)."""
    _, blob = parse_public_line(line)
    return base64.b64encode(hashlib.sha256(blob).digest()).decode()


def same_key(a: str, b: str) -> bool:
    """Whether two public key lines hold the same key (comments aside)."""
    return parse_public_line(a) == parse_public_line(b)
