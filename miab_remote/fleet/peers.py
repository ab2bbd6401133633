"""Boxes that are each other's secondary nameservers ([dns] secondaries): the checks one inventory file
cannot make alone, made against the folder it is in, and who serves whose zones.

A box's `secondaries` name other inventories of its folder (the inventory folder is the fleet). Each must
exist, serve DNS itself (Host.serves_dns: its nsd is what serves the copy), not serve one of the primary's
zones as its own (nsd cannot hold a zone twice), and serve no zone inside one of the primary's or around
one (the primary's zone would then answer for the secondary's nameserver names without delegating them:
no glue, and under DNSSEC a signed denial of them). A problem is the primary's: `file:line:
dns.secondaries[i]: ...`, exit 2 before any box is touched. The other way round, `primaries_of` reads every
inventory of the folder that names the box, so a deploy of the secondary knows every zone it must copy.
Its copied zones are built and pushed under `secondary_lock`, so the last push is always the last built.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from miab_remote import fsutil
from miab_remote.fleet.dnsrules import zones_for
from miab_remote.fleet.model import Host
from miab_remote.fleet.positions import line_map
from miab_remote.fleet.problems import InventoryError, Problem
from miab_remote.fleet.store import Inventory

ACCEPTED = 'accepted: another box of this folder with dns = "nsd", its zones apart from this box\'s'


def folder_of(host: Host) -> Inventory:
    """The inventory folder a box's file is in: the fleet its peers come from."""
    return Inventory(host.path.parent)


SECONDARY_LOCK_TIMEOUT = 900.0  # a push may wait for the secondary's own first deploy


@contextlib.contextmanager
def secondary_lock(inventory: Inventory, name: str) -> Iterator[None]:
    """Held from the build of the zones a secondary copies to their apply on it: by each primary's push and by
    the secondary's own deploy. Without it, two primaries' deploys (or one and the secondary's) could build
    the secondary's nsd.conf in one order and apply it in the other, leaving an older list of zones served."""
    path = inventory.root / f".{name}.secondary.lock"
    with fsutil.file_lock(path, timeout=SECONDARY_LOCK_TIMEOUT, what=f"the zones {name} serves as a secondary"):
        yield


def zones_of(host: Host) -> list[str]:
    return zones_for(host.hostname, host.domains)


def secondaries_of(host: Host, inventory: Inventory | None = None) -> list[Host]:
    """The boxes that serve `host`'s zones as secondaries, in the inventory's order, each checked."""
    if not host.dns.secondaries:
        return []
    inv = inventory or folder_of(host)
    known = set(inv.names())
    mine = set(zones_of(host))
    problems: list[tuple[int, str]] = []
    out: list[Host] = []
    for index, name in enumerate(host.dns.secondaries):
        if name not in known:
            others = ", ".join(sorted(known - {host.name})) or "none"
            problems.append((index, f"{name!r} is not a box of this inventory folder (known: {others}); {ACCEPTED}"))
            continue
        peer = inv.load(name)
        if not peer.serves_dns:
            why = 'its options dns = "external"' if peer.options["dns"] == "external" else "no nsd recipe"
            problems.append((index, f"{name!r} runs no nameserver ({why}); {ACCEPTED}"))
            continue
        if both := sorted(mine & set(zones_of(peer))):
            why = f"{name!r} serves {', '.join(both)} itself, and nsd holds a zone once"
            problems.append((index, f"{why}; {ACCEPTED}"))
            continue
        if nested := nested_zones(mine, zones_of(peer)):
            inner, outer = nested
            why = f"{name!r} serves {inner}, inside {outer} (whose NS would name servers it does not delegate)"
            problems.append((index, f"{why}; {ACCEPTED}"))
            continue
        out.append(peer)
    if problems:
        raise _error(host, inv, problems)
    return out


def nested_zones(mine: list[str] | set[str], theirs: list[str]) -> tuple[str, str] | None:
    """A zone of one set inside a zone of the other (inner, outer), or None when they are apart."""
    for a, b in [(x, y) for x in theirs for y in mine] + [(y, x) for x in theirs for y in mine]:
        if a != b and a.endswith("." + b):
            return a, b
    return None


def primaries_of(host: Host, inventory: Inventory | None = None) -> list[Host]:
    """Every box of the folder whose [dns] secondaries name `host` (sorted by name), each of them checked as
    its own deploy checks it; two primaries of one zone are refused."""
    if host.options["dns"] == "external":
        return []
    inv = inventory or folder_of(host)
    out: list[Host] = []
    owner: dict[str, str] = {}
    for name in inv.names():
        if name == host.name or host.hostname not in inv.load_text(name):
            continue  # a cheap look first: only a file that names this box can list it
        peer = inv.load(name)
        if host.hostname not in peer.dns.secondaries:
            continue
        secondaries_of(peer, inv)  # its own problems first (this box serving one of its zones among them)
        for zone in zones_of(peer):
            if zone in owner:
                why = (
                    f"{host.name!r} already copies {zone} from {owner[zone]}, which lists it too, and a "
                    "secondary copies a zone from one primary"
                )
                accepted = f"accepted: {host.name} as the secondary of one of {owner[zone]} and {peer.name}"
                raise _error(peer, inv, [(peer.dns.secondaries.index(host.hostname), f"{why}; {accepted}")])
            owner[zone] = peer.name
        out.append(peer)
    return out


def _error(host: Host, inv: Inventory, problems: list[tuple[int, str]]) -> InventoryError:
    lines = line_map(inv.load_text(host.name))
    out = [Problem(lines.get(("dns", "secondaries", i), 1), f"dns.secondaries[{i}]", m) for i, m in problems]
    return InventoryError(host.path, out)
