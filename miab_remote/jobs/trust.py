"""Deliberately (re-)pinning a box's SSH host keys: read what it offers, pin what the operator chose."""

from __future__ import annotations

from miab_remote.errors import InputError, MiabError
from miab_remote.fleet.model import Host
from miab_remote.fleet.problems import display_path
from miab_remote.fleet.store import Inventory
from miab_remote.transport.ssh import fetch_host_keys, route
from miab_remote.transport.sshkeys import fingerprint


def offered_keys(host: Host) -> dict[str, str]:
    """The keys the box offers: fingerprint -> `type base64` line. Nothing is sent but the handshake."""
    way = route(host.target)
    if way.jumps:
        raise InputError(
            f"{host.name}: trust does not read keys through a jump host ({', '.join(way.jumps)}); read the box's "
            f"key out of band and put it in host_keys of {display_path(host.path)}"
        )
    keys = fetch_host_keys(way.hostname, way.port)
    if not keys:
        raise MiabError(f"{host.name}: the server offered no host key we can use")
    return {fingerprint(k.get_name(), k.asbytes()): f"{k.get_name()} {k.get_base64()}" for k in keys}


def choose(host: Host, offered: dict[str, str], wanted: str) -> list[str]:
    """The offered key with fingerprint `wanted` (with or without its `SHA256:` prefix), or InputError."""
    chosen = [line for fp, line in offered.items() if fp.split()[-1] == wanted.split()[-1]]
    if not chosen:
        raise InputError(f"{host.name}: no offered key has fingerprint {wanted}; nothing pinned")
    return chosen


def pin(inv: Inventory, host: Host, lines: list[str]) -> None:
    """Replace the box's pinned keys by `lines`."""
    with inv.edit(host.name) as doc:
        doc["host_keys"] = [f"{line} {host.name}" for line in lines]
