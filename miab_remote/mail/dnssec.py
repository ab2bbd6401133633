"""Each zone's DNSSEC key as the box holds it: the DS and DNSKEY the registrar needs (`dns`), the trust
anchor `check` validates the zones from, what the local provider's resolver publishes as the parent's DS.

The keys are made on the box (remote/zone_build.py, ldns-keygen) and only their public halves are read,
over pinned SSH: the DS comes from the key file, not from what the box's nameserver answers, so a
nameserver serving something else shows as a broken chain in `check` instead of being believed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

import dns.dnssec
import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.ANY.DS import DS

from miab_remote.fleet.dnsrules import DNSSEC_ALGORITHMS
from miab_remote.fleet.model import Host
from miab_remote.mail import dnszones, layout
from miab_remote.transport.ssh import Transport

DIGEST = "SHA256"  # DS digest type 2: what every registrar takes


@dataclass(frozen=True)
class ZoneKey:
    """One zone's signing key (a CSK: flags 257) and the DS record that points at it."""

    zone: str
    dnskey: DNSKEY

    @property
    def ds(self) -> DS:
        return dns.dnssec.make_ds(dns.name.from_text(self.zone), self.dnskey, DIGEST)

    def as_dict(self) -> dict[str, Any]:
        return {
            "keytag": dns.dnssec.key_id(self.dnskey),
            "algorithm": self.dnskey.algorithm,
            "algorithm_name": DNSSEC_ALGORITHMS.get(self.dnskey.algorithm, str(self.dnskey.algorithm)),
            "ds": self.ds.to_text(),
            "dnskey": self.dnskey.to_text(),
        }


def parse_key_files(text: str, zones: list[str], algorithm: int) -> dict[str, ZoneKey]:
    """The key of each zone for `algorithm` from what `zone-build --keys` prints: the .key file (OWNER [TTL]
    IN DNSKEY ...) of the key the builder signs each zone with, which it alone picks (zone_build.key_base)."""
    keys: dict[str, ZoneKey] = {}
    for line in text.splitlines():
        fields = line.split(";", 1)[0].split()
        if "DNSKEY" not in fields:
            continue
        owner = fields[0].rstrip(".").lower()
        try:
            rd = dns.rdata.from_text(
                dns.rdataclass.IN, dns.rdatatype.DNSKEY, " ".join(fields[fields.index("DNSKEY") + 1 :])
            )
        except dns.exception.DNSException:
            continue
        assert isinstance(rd, DNSKEY)
        if owner in zones and rd.algorithm == algorithm and owner not in keys:
            keys[owner] = ZoneKey(owner, rd)
    return keys


def keys_from_box(host: Host, timeout: float = 10.0) -> dict[str, ZoneKey]:
    """zone -> its key for the box's [dns] dnssec_algorithm, read from the state tree over pinned SSH; a zone
    without one (not deployed since) is missing."""
    zones, algorithm = dnszones.zones_of(host), host.dns.dnssec_algorithm
    argv = ["python3", layout.ZONE_BUILDER, "--keys", str(algorithm), layout.DNSSEC_KEYS, *zones]
    with Transport(host.target, connect_timeout=timeout) as t:
        res = t.exec(f"test ! -e {layout.ZONE_BUILDER} || {shlex.join(argv)}", idle_timeout=timeout)
    return parse_key_files(res.stdout.decode(errors="replace"), zones, algorithm)
