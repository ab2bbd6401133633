"""Boxes that are each other's secondary nameservers, as nsd needs it ([dns] secondaries, fleet/peers.py).

The primary's nsd sends NOTIFY to each secondary when a zone changes and allows a zone transfer (AXFR)
only to the secondaries' addresses, signed with its TSIG key (hmac-sha256); the secondary's nsd serves a
copy of each zone it fetches from the primary with that key, and accepts NOTIFY only from it. One key per
primary, made on the laptop by the first deploy that needs it (of the primary or of a secondary) and
kept in the primary's secrets store (fleet/secrets.py), never in an inventory; both boxes get it as a
secret file (KEY_FILE, 0640 root:nsd) that nsd.conf includes. The copy is what the primary's nsd serves,
whatever it holds (signatures too): nsd transfers the zone as it is.
"""

from __future__ import annotations

import base64
import secrets as random
from dataclasses import dataclass

from miab_remote.errors import InputError
from miab_remote.fleet import peers, secrets
from miab_remote.fleet.model import Host
from miab_remote.fleet.problems import display_path
from miab_remote.mail import dnszones

KEY_FILE = "/etc/nsd/miab-tsig.conf"
# Where a secondary's nsd writes the zones it copies: its own, apart from the zones the tool writes.
COPIES_DIR = "/var/lib/nsd/secondary"
# nsd's record of the serials it holds (its xfrdfile): with a copy's file missing, the secondary's nsd drops it at
# start (NSD_DROP_IN), or it would never transfer that zone again before the zone's refresh time.
XFRD_STATE = "/var/lib/nsd/xfrd.state"
# Seconds after a transfer until nsd writes the copy to COPIES_DIR (nsd's own default: an hour).
WRITE_AFTER = 30
NSD_DROP_IN = "/etc/systemd/system/nsd.service.d/miab-remote.conf"
ALGORITHM = "hmac-sha256"
# The tag of the secondary's files that a primary's deploy pushes to it (its nsd.conf and keys).
PUSH_TAG = "secondary"
_stand_ins: set[str] = set()
STAND_IN = base64.b64encode(b"stand-in: the first deploy makes the key").decode()


@dataclass(frozen=True)
class Copy:
    """A zone this box serves as a secondary: from which primary (its addresses), with which key."""

    zone: str
    primary: str
    addresses: tuple[str, ...]
    key: str


def key_name(primary: Host) -> str:
    """The TSIG key's name, the same on both boxes: named after the primary that owns it."""
    return f"miab-xfr.{primary.hostname}."


def addresses_of(host: Host, seen_from: Host) -> tuple[str, ...]:
    """The box's public addresses that its peer `seen_from` can reach: of an IP version both have (nsd
    listens on IPv6 only where the box has it, nsd.conf's do-ip6)."""
    mine, theirs = dnszones.addresses(host), dnszones.addresses(seen_from)
    return tuple(ip for ip, other in zip(mine, theirs, strict=True) if ip and other)


def new_secret() -> str:
    """32 random bytes, base64: an hmac-sha256 key as nsd and dnspython read it."""
    return base64.b64encode(random.token_bytes(32)).decode()


def secret_of(primary: Host) -> str:
    """The primary's TSIG secret (made by the first deploy; a dry run's stand-in until then)."""
    stored = secrets.get(primary.name, secrets.DNS_TSIG_SECRET)
    if stored is not None:
        return stored
    if primary.name in _stand_ins:
        return STAND_IN
    raise InputError(
        f"{primary.name} has [dns] secondaries but no TSIG key in {display_path(secrets.path_for(primary.name))}; "
        f"`miab-remote deploy {primary.name}` makes one: nothing was changed"
    )


def key_owners(host: Host) -> list[Host]:
    """The primaries whose key this box needs: itself when it has secondaries, and each box it copies from."""
    own = [host] if peers.secondaries_of(host) else []
    return own + peers.primaries_of(host)


def prepare(host: Host, dry_run: bool) -> list[str]:
    """Before a deploy's builds: each key the box needs made and stored (a dry run: a stand-in, said to be
    made). Two deploys at once make one key (secrets.put_new). The notes of the deploy."""
    notes = []
    for owner in key_owners(host):
        if secrets.get(owner.name, secrets.DNS_TSIG_SECRET) is not None:
            continue
        where = display_path(secrets.path_for(owner.name))
        if dry_run:
            _stand_ins.add(owner.name)
            notes.append(f"a TSIG key for {owner.name}'s zone transfers would be made and kept in {where}")
            continue
        secrets.put_new(owner.name, secrets.DNS_TSIG_SECRET, new_secret())
        notes.append(f"made a TSIG key for {owner.name}'s zone transfers, kept in {where}")
    return notes


def forget_stand_ins() -> None:
    _stand_ins.clear()


def foreign_secrets(host: Host) -> list[str]:
    """The keys of the primaries this box copies from: kept in their stores, but on this box too (masked)."""
    if not host.path.parent.is_dir():
        return []
    found = (secrets.get(p.name, secrets.DNS_TSIG_SECRET) for p in peers.primaries_of(host))
    return [s for s in found if s is not None]


def key_file(host: Host) -> str | None:
    """nsd's key clauses of every key the box uses (KEY_FILE), or None when it uses none."""
    owners = key_owners(host)
    if not owners:
        return None
    lines = ["# Managed by miab-remote: the TSIG keys of zone transfers between boxes. Secret."]
    for owner in owners:
        name, secret = key_name(owner), secret_of(owner)
        lines += ["key:", f'  name: "{name}"', f"  algorithm: {ALGORITHM}", f'  secret: "{secret}"']
    return "\n".join(lines) + "\n"


def transfers_to(host: Host) -> list[tuple[str, str]]:
    """(address, key name) of each secondary of this box: notified, and allowed to transfer its zones."""
    key = key_name(host)
    return [(ip, key) for peer in peers.secondaries_of(host) for ip in addresses_of(peer, host)]


def copies(host: Host) -> list[Copy]:
    """The zones this box serves as a secondary, sorted by zone."""
    out = [
        Copy(zone, p.name, addresses_of(p, host), key_name(p))
        for p in peers.primaries_of(host)
        for zone in peers.zones_of(p)
    ]
    return sorted(out, key=lambda c: c.zone)
