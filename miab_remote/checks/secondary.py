"""`check` of a box with [dns] secondaries: does each secondary serve each of its zones, as it serves them?

Asked of both nameservers directly (their published addresses), the way a resolver that picks the
secondary would: the secondary must answer authoritatively (aa) with the primary's SOA serial. A secondary
that does not serve the zone is a failure (resolvers that ask it get nothing); one a serial behind is a
warning (a transfer not done yet: NOTIFY is on its way, or the primary refuses it).
"""

from __future__ import annotations

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from miab_remote.checks.result import Check, warn
from miab_remote.fleet import peers
from miab_remote.fleet.model import Host
from miab_remote.mail import dnszones


def soa_serial(server: str, zone: str, timeout: float = 5.0) -> int | None:
    """The zone's serial as `server` answers it with authority, or None (no answer, not authoritative)."""
    try:
        r = dns.query.udp(dns.message.make_query(zone, "SOA"), server, timeout=timeout)
    except (dns.exception.DNSException, OSError):
        return None
    if not r.flags & dns.flags.AA or r.rcode() != dns.rcode.NOERROR:
        return None
    soa = [rd for rrset in r.answer if rrset.rdtype == dns.rdatatype.SOA for rd in rrset]
    return int(soa[0].serial) if soa else None


def _address(host: Host) -> str | None:
    v4, v6 = dnszones.addresses(host)
    return v4 or v6


def secondary_checks(host: Host) -> list[Check]:
    """One item per secondary and zone (none for a box without secondaries)."""
    out: list[Check] = []
    primary = _address(host)
    for peer in peers.secondaries_of(host):
        server = _address(peer)
        fix = f"miab-remote deploy {host.name} {peer.name}"
        for zone in dnszones.zones_of(host):
            name = f"DNS secondary {peer.name} {zone}"
            want = soa_serial(primary, zone) if primary else None
            got = soa_serial(server, zone) if server else None
            if got is None:
                out.append(Check(name, False, f"{peer.name} ({server}) does not serve {zone} with authority", fix))
            elif want is not None and got != want:
                out.append(warn(name, f"serial {got} there, {want} here: its copy is behind", fix))
            else:
                out.append(Check(name, True, f"serial {got}" + ("" if want is not None else " (this box: no answer)")))
    return out
