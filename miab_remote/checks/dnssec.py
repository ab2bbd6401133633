"""`check`'s DNSSEC: for each zone, the chain of trust from the DS (made from the key file on the box, as
`dns` prints it) down to the records mail depends on, asked of the box's nameserver; and whether the
parent (the registrar, as a resolver sees it) publishes that DS: yes, missing (a warning: the zone is then
simply not validated) or not matching (a failure: validating resolvers reject the domain)."""

from __future__ import annotations

import time

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset

from miab_remote.checks.result import Check, warn
from miab_remote.errors import MiabError
from miab_remote.fleet.dnsrules import DNSSEC_ALGORITHMS, dkim_name, zone_for
from miab_remote.fleet.model import Host
from miab_remote.mail import dnszones
from miab_remote.mail.dnssec import ZoneKey, keys_from_box

TIMEOUT = 5.0
# The timer signs again when fewer than 14 days remain: under 10 means it has failed for four days.
EXPIRY_WARNING = 10 * 86400


class ChainBroken(Exception):
    """Where the chain of trust breaks: the RRset and why."""


def _answer(server: str, name: str, rtype: str) -> tuple[dns.rrset.RRset | None, dns.rrset.RRset | None]:
    """An RRset and its RRSIGs from the box's nameserver (asked with the DO bit, over TCP: keys are big)."""
    q = dns.message.make_query(name, rtype, want_dnssec=True)
    r = dns.query.tcp(q, server, timeout=TIMEOUT)
    owner, rdtype = dns.name.from_text(name), dns.rdatatype.from_text(rtype)
    rrset = r.get_rrset(r.answer, owner, dns.rdataclass.IN, rdtype)
    sigs = r.get_rrset(r.answer, owner, dns.rdataclass.IN, dns.rdatatype.RRSIG, rdtype)
    return rrset, sigs


def signed_names(host: Host, zone: str) -> list[tuple[str, str]]:
    """The RRsets of a zone that `check` validates: its SOA, each mail domain's MX and DKIM key, every TLSA
    and SSHFP (the hostname's: what DANE and SSH clients trust only when it validates)."""
    names = [(zone, "SOA")]
    zones = dnszones.zones_of(host)
    for domain in sorted({d.lower() for d in host.domains}):
        if zone_for(domain, zones) == zone:
            names += [(domain, "MX"), (dkim_name(domain), "TXT")]
    records = dnszones.records(host)[zone]
    names += list(dict.fromkeys((r.name, r.type) for r in records if r.type in ("TLSA", "SSHFP")))
    return names


def validate_chain(server: str, zone: str, key: ZoneKey, names: list[tuple[str, str]]) -> float:
    """Validate the zone from `key` (the DS's key) down to `names`; the first signature expiry (epoch
    seconds). Raises ChainBroken naming the RRset that does not validate."""
    origin = dns.name.from_text(zone)
    dnskeys, sigs = _answer(server, zone, "DNSKEY")
    if dnskeys is None or key.dnskey not in dnskeys:
        raise ChainBroken(f"the nameserver does not publish the key of the DS (key tag {key.as_dict()['keytag']})")
    expiry = []
    for (name, rtype), (rrset, rrsigs, keys) in [
        ((zone, "DNSKEY"), (dnskeys, sigs, [key.dnskey])),
        *(((n, t), (*_answer(server, n, t), list(dnskeys))) for n, t in names),
    ]:
        if rrset is None:
            raise ChainBroken(f"{name} {rtype}: no answer")
        if rrsigs is None:
            raise ChainBroken(f"{name} {rtype} is not signed")
        try:
            dns.dnssec.validate(rrset, rrsigs, {origin: dns.rrset.from_rdata_list(origin, dnskeys.ttl, keys)})
        except dns.exception.ValidationFailure as e:
            raise ChainBroken(f"{name} {rtype} does not validate: {e}") from None
        expiry += [sig.expiration for sig in rrsigs]
    return float(min(expiry))


def chain_check(host: Host, server: str, zone: str, key: ZoneKey, now: float) -> Check:
    label = f"DNSSEC {zone}"
    names = signed_names(host, zone)
    fix = f"miab-remote deploy {host.name}"
    try:
        expiry = validate_chain(server, zone, key, names)
    except ChainBroken as e:
        return Check(label, False, f"the chain from the DS breaks: {e}", fix)
    except (dns.exception.DNSException, OSError) as e:
        return Check(label, False, f"the box's nameserver ({server}) did not answer: {e}", fix)
    days = (expiry - now) / 86400
    algorithm = DNSSEC_ALGORITHMS.get(key.dnskey.algorithm, str(key.dnskey.algorithm))
    shown = ", ".join(dict.fromkeys(t for _, t in names))
    detail = (
        f"key tag {key.as_dict()['keytag']} ({algorithm}): DNSKEY, {shown} validate; signatures {days:.0f} more days"
    )
    if expiry - now < EXPIRY_WARNING:
        return warn(label, detail + ": the re-signing timer is failing", "journalctl -u miab-zones-resign on the box")
    return Check(label, True, detail)


def parent_check(host: Host, zone: str, key: ZoneKey, resolver: dns.resolver.Resolver) -> Check:
    """Whether the registrar publishes the DS, asked of `resolver` (the world's DNS as the provider sees it:
    checks/outside.world_resolver)."""
    label = f"DNSSEC DS {zone} at the registrar"
    fix = f"enter the DS that `miab-remote dns {host.name}` prints at the registrar of {zone}"
    try:
        published = list(resolver.resolve(zone, "DS"))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return warn(label, "missing: the registrar publishes no DS, so resolvers do not validate the zone", fix)
    except dns.exception.DNSException as e:
        return warn(label, f"could not ask for the DS: {e}", fix)
    origin = dns.name.from_text(zone)
    for ds in published:
        try:
            if dns.dnssec.make_ds(origin, key.dnskey, ds.digest_type) == ds:
                return Check(label, True, f"yes: {ds.to_text()}")
        except dns.exception.UnsupportedAlgorithm:
            continue
    shown = "; ".join(ds.to_text() for ds in published)[:160]
    return Check(
        label,
        False,
        f"does not match: the registrar publishes {shown}, the box signs with {key.ds.to_text()}; "
        "validating resolvers reject the domain",
        f"replace the DS at the registrar of {zone} with the one `miab-remote dns {host.name}` prints",
    )


def dnssec_checks(host: Host, server: str, parent: dns.resolver.Resolver) -> list[Check]:
    """Each zone's chain from its DS down, and whether its parent has the DS (dns = "nsd" only)."""
    try:
        keys = keys_from_box(host)
    except MiabError as e:
        return [Check("DNSSEC keys", False, f"could not read the zones' keys from the box: {e}")]
    now = time.time()
    out: list[Check] = []
    for zone in dnszones.zones_of(host):
        if zone not in keys:
            out.append(Check(f"DNSSEC {zone}", False, "the zone has no key yet", f"miab-remote deploy {host.name}"))
            continue
        out.append(chain_check(host, server, zone, keys[zone], now))
        out.append(parent_check(host, zone, keys[zone], parent))
    return out
