"""The outbound relay as postfix needs it: the next hop, the password table (from the laptop's secrets
store, fleet/secrets.py) and the CA the relay's certificate must chain to.

Postfix reads the password table as `texthash:` (no postmap, so no second copy in a .db file): the smtp
client opens it as root before it drops privileges, and a reload makes new clients read it again. The
file is the only place the password lives on the box (0600 root, a `secret` File: never in a diff, never
read back), and every message the tool shows masks it (engine/redact.py).
"""

from __future__ import annotations

import ipaddress
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from miab_remote.errors import InputError
from miab_remote.fleet import secrets
from miab_remote.fleet.model import Host, Relay
from miab_remote.fleet.problems import display_path

PASSWORD_TABLE = "/etc/postfix/relay_password"
CA_FILE = "/etc/postfix/relay_ca.pem"
# Debian's bundle of the system's CAs (the ca-certificates package).
SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"
MAX_PASSWORD = 512


@dataclass(frozen=True)
class PostfixRelay:
    """What main.cf says of the relay."""

    nexthop: str  # relayhost, also the password table's key
    ca_file: str  # the CAs the relay's certificate is verified against
    wrapper_mode: bool  # 465: TLS from the first byte, not STARTTLS


def nexthop(relay: Relay) -> str:
    """`[host]:port`, postfix's relayhost without an MX lookup (`[ipv6:...]` for an IPv6 address)."""
    try:
        address = ipaddress.ip_address(relay.host)
    except ValueError:
        return f"[{relay.host}]:{relay.port}"
    return f"[ipv6:{address}]:{relay.port}" if address.version == 6 else f"[{address}]:{relay.port}"


def postfix_settings(relay: Relay | None) -> PostfixRelay | None:
    if relay is None:
        return None
    return PostfixRelay(nexthop(relay), CA_FILE if relay.ca_file else SYSTEM_CAS, relay.port == 465)


def check_password(password: str) -> None:
    """Refuse a relay password postfix's table could not hold as it is; never shows it."""
    if not password:
        raise InputError("the relay password is empty; nothing was changed")
    if len(password) > MAX_PASSWORD:
        raise InputError(f"the relay password is longer than {MAX_PASSWORD} characters; nothing was changed")
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in password):
        raise InputError(
            "the relay password contains a control character or a line break (not shown); nothing was changed"
        )
    if password != password.rstrip():
        raise InputError(
            "the relay password ends with white space, which postfix's table would drop; nothing was changed"
        )


def password(host: Host) -> str:
    """The relay password of a box with [relay], from the secrets store; bad input when there is none."""
    value = secrets.get(host.name, secrets.RELAY_PASSWORD)
    if value is None:
        raise InputError(
            f"{display_path(host.path)}: [relay] is set but no relay password is stored for {host.name} "
            f"(in {display_path(secrets.path_for(host.name))}); store it with `miab-remote relay set {host.name}`, "
            "or remove [relay] with `miab-remote relay remove`; nothing was changed"
        )
    check_password(value)
    return value


def password_table(host: Host) -> str:
    """The texthash table: the next hop, then `user:password`."""
    assert host.relay is not None
    return f"{nexthop(host.relay)} {host.relay.user}:{password(host)}\n"


def ca_pem(host: Host) -> str:
    """The certificates of `[relay] ca_file` (see read_ca)."""
    assert host.relay is not None and host.relay.ca_file is not None
    path = host.relay.ca_file
    return read_ca(path, f"{display_path(host.path)}: relay.ca_file: {display_path(path)}")


def read_ca(path: Path, where: str, server: str = "the relay") -> str:
    """The certificates of a CA file, checked and written out again (the same bytes each time); bad input,
    named by `where`, when the file is missing, holds no certificate, or holds a private key (which is
    never sent to a box). `server`: whose certificate the CA signs (the relay's, a backup target's)."""
    accepted = f"expected a PEM file with the certificate of the CA that signs {server}'s certificate"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{where}: {e.strerror or e}; {accepted}") from None
    if b"PRIVATE KEY-----" in data:
        raise InputError(f"{where}: holds a private key, which is never copied to a box; {accepted} only")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise InputError(f"{where}: not a PEM certificate; {accepted}") from None
    return "".join(c.public_bytes(Encoding.PEM).decode("ascii") for c in certificates)
