"""The first connection to a new server: wait until its port 22 answers, and accept it only if the host key
it presents is exactly the one handed to it in its user data. The handshake alone is done (no
authentication, nothing sent): a server presenting any other key is refused at once, never retried, since a
key that is not ours means someone else's sshd (or the image's, before cloud-init ran) answered."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import paramiko

from miab_remote.transport.sshkeys import fingerprint, parse_public_line

POLL = 1.0  # seconds between tries while the server boots


class KeyRefused(Exception):
    """The server answered with another key (`offered` is its `type base64` line, or a reason)."""

    def __init__(self, offered: str) -> None:
        super().__init__(offered)
        self.offered = offered


def _offered_key(address: str, port: int, key_type: str, timeout: float) -> paramiko.PKey | None:
    """The server's key of `key_type`, None while it does not answer SSH yet; KeyRefused if it has none."""
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError:
        return None
    t = paramiko.Transport(sock)
    t.get_security_options().key_types = [key_type]
    try:
        t.start_client(timeout=timeout)
        return t.get_remote_server_key()
    except paramiko.SSHException as e:
        if "host key" in str(e).lower():  # negotiation: it offers no key of our type
            raise KeyRefused(f"no {key_type} host key at all ({e})") from None
        return None  # still starting (banner, reset)
    except (OSError, EOFError):
        return None
    finally:
        t.close()


def wait_for_key(address: str, expected: str, deadline: float, say: Callable[[str], None], port: int = 22) -> None:
    """Return once `address:port` presents the host key `expected` ("ssh-ed25519 AAAA... comment").
    KeyRefused for any other key; TimeoutError when nothing answered SSH before `deadline` (monotonic)."""
    key_type, blob = parse_public_line(expected)
    started = time.monotonic()
    said = -1.0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{address}:{port} did not answer SSH")
        key = _offered_key(address, port, key_type, min(10.0, max(left, 1.0)))
        if key is not None:
            if key.asbytes() != blob:
                raise KeyRefused(f"{key.get_name()} {key.get_base64()} ({fingerprint(key.get_name(), key.asbytes())})")
            return
        waited = time.monotonic() - started
        if waited - said >= 10:
            say(f"waiting for SSH on {address} ({waited:.0f} s)")
            said = waited
        time.sleep(min(POLL, max(deadline - time.monotonic(), 0)))
