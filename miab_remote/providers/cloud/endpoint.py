"""A cloud API's address when it is not the provider's own: an API-compatible cloud, or a test's stand-in.

`--endpoint URL` or the provider's environment variable; the address a box was made through is recorded in
its [node] table, so its destroy goes to the same API. Credentials travel in every request, so plain http
is accepted only to this machine (a stand-in on loopback), never across a network."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from miab_remote.errors import InputError


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    secure: bool

    @property
    def url(self) -> str:
        scheme = "https" if self.secure else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse(url: str, what: str) -> Endpoint:
    """`https://HOST[:PORT]`, or `http://` to a loopback address; InputError naming `what` otherwise."""
    accepted = "accepted: https://HOST[:PORT], or http://127.0.0.1:PORT for a stand-in on this machine"
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise InputError(f"{what}: {url!r} is not a URL ({e}); {accepted}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"{what}: {url!r} is not an http(s) URL; {accepted}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise InputError(f"{what}: {url!r} has more than a scheme, host and port; {accepted}")
    secure = parts.scheme == "https"
    if not secure and not _loopback(parts.hostname):
        raise InputError(f"{what}: {url!r} would send the API credentials unencrypted across a network; {accepted}")
    return Endpoint(parts.hostname, port or (443 if secure else 80), secure)
