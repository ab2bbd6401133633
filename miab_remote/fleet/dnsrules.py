"""The DNS rules the inventory checks: which zones a box serves, the names its mail system publishes and
needs, and what an operator's extra record ([[dns.records]]) may be. mail/dnszones.py builds the zones
from the same rules."""

from __future__ import annotations

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tokenizer

EXTRA_TYPES: tuple[str, ...] = ("A", "AAAA", "CNAME", "TXT", "MX", "SRV", "CAA", "TLSA", "NS", "SSHFP")

# The DNSSEC algorithms a box may sign with ([dns] dnssec_algorithm): number -> mnemonic (RFC 8624's
# recommended ones that ldns signs with; 13 is the default, the smallest and the most widely validated).
DNSSEC_ALGORITHMS: dict[int, str] = {13: "ECDSAP256SHA256", 8: "RSASHA256", 14: "ECDSAP384SHA384", 15: "ED25519"}

# The selector of the box's DKIM key: its file on the box (mail/layout.py) and its TXT name in DNS.
DKIM_SELECTOR = "mail"
# Names under each mail domain where mail clients fetch their settings from the box (webmail's nginx
# answers them, and they are in the box's certificate).
CLIENT_SETUP_LABELS: tuple[str, ...] = ("autoconfig", "autodiscover")
# RFC 6186/8314 service records under each mail domain that lead mail clients to the box: (label, port);
# port 0 publishes that the service is not offered (plain IMAP).
MAIL_SERVICES: tuple[tuple[str, int], ...] = (
    ("_submission._tcp", 587),
    ("_submissions._tcp", 465),
    ("_imaps._tcp", 993),
    ("_imap._tcp", 0),
)


def dnssec_algorithm(value: object) -> tuple[int | None, str | None]:
    """([dns] dnssec_algorithm as its number, None) or (None, what is wrong with it and what is accepted):
    a number or its mnemonic (any case)."""
    for number, mnemonic in DNSSEC_ALGORITHMS.items():
        if (isinstance(value, int) and not isinstance(value, bool) and value == number) or (
            isinstance(value, str) and value.strip().upper() in (mnemonic, str(number))
        ):
            return number, None
    accepted = ", ".join(f"{n} ({m})" for n, m in DNSSEC_ALGORITHMS.items())
    return None, f"{value!r} is not a DNSSEC algorithm the box signs with; accepted: {accepted}, as number or name"


def zones_for(hostname: str, domains: tuple[str, ...]) -> list[str]:
    """The zones a box serves: hosted domains and the hostname, minus names inside another of them.
    From the two inventory fields they depend on: the validator has no Host yet (dnszones.zones_of has)."""
    names = {d.lower() for d in domains} | {hostname.lower()}
    return sorted(n for n in names if not any(n != z and n.endswith("." + z) for z in names))


def zone_for(name: str, zones: list[str]) -> str | None:
    """The most specific zone that contains `name`."""
    name = name.lower().rstrip(".")
    inside = [z for z in zones if name == z or name.endswith("." + z)]
    return max(inside, key=len) if inside else None


def nameserver_names(hostname: str) -> list[str]:
    """ns1 and ns2 of the hostname: the zones' NS records and the glue the registrar holds point at them."""
    return [f"ns{i}.{hostname.lower()}" for i in (1, 2)]


def dkim_name(domain: str) -> str:
    return f"{DKIM_SELECTOR}._domainkey.{domain.lower()}"


def dmarc_name(domain: str) -> str:
    return f"_dmarc.{domain.lower()}"


def mail_names(hostname: str, domains: tuple[str, ...]) -> dict[str, str]:
    """Every name the mail system publishes and needs, with what it is there for. A CNAME at one of them
    would take the place of the box's own records there (a CNAME cannot live beside other data), so an
    operator's CNAME is refused at these names and accepted elsewhere (like www)."""
    hostname = hostname.lower()
    out: dict[str, str] = {}
    for domain in sorted({d.lower() for d in domains}):
        out.setdefault(domain, "a mail domain (its MX, SPF and, as a zone's apex, SOA and NS)")
    out.setdefault(hostname, "the box's hostname (its address, HELO name and the mail servers' name)")
    for zone in zones_for(hostname, domains):
        out.setdefault(zone, "a zone's apex (its SOA and NS)")
    for ns in nameserver_names(hostname):
        out.setdefault(ns, "a nameserver name (the glue the registrar holds points at it)")
    for domain in sorted({d.lower() for d in domains}):
        for label in CLIENT_SETUP_LABELS:
            out.setdefault(f"{label}.{domain}", "mail clients' autoconfiguration (the box serves it)")
        out.setdefault(dkim_name(domain), "the box's DKIM key")
        out.setdefault(dmarc_name(domain), "the domain's DMARC policy")
        for label, _port in MAIL_SERVICES:
            out.setdefault(f"{label}.{domain}", "mail clients' server discovery (RFC 6186 SRV)")
    return out


def cname_problem(name: str, rtype: str, needed: dict[str, str] | None) -> str | None:
    """Why an operator's record may not be a CNAME at `name` (None when it may). `needed`: mail_names()
    (None when unknown because of a problem reported already)."""
    name = name.lower().rstrip(".")
    if rtype.upper() != "CNAME" or needed is None or name not in needed:
        return None
    return (
        f"a CNAME is not accepted at {name!r}, {needed[name]}: it would replace every record the box "
        "publishes there; accepted: a CNAME at a name the mail system does not use (like www.DOMAIN), or here "
        "a record of another type (it replaces the generated record of its type)"
    )


def shared_name_problem(name: str, rtype: str, earlier: list[tuple[str, str]]) -> str | None:
    """Why an operator's record clashes with the operator's earlier ones at the same name: a CNAME must be
    the only record at its name. `earlier`: (where, type) of the earlier records at `name`."""
    for where, other in earlier:
        if "CNAME" in (rtype.upper(), other.upper()):
            return (
                f"{name.lower().rstrip('.')!r} already has a record in {where} ({other.upper()}); a CNAME cannot "
                "share its name with any other record: keep the CNAME alone at its name, or drop it"
            )
    return None


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.*")


def record_problem(
    name: str, rtype: str, value: str, zones: list[str] | None = None, needed: dict[str, str] | None = None
) -> tuple[str, str] | None:
    """(field, problem) for an operator's extra record, or None when it is plain DNS data of a box's zone.

    The record goes into a zone file line by line, so a name or value is refused unless dnspython parses
    it whole and writes it back the same: no control characters or newlines (a second record, a
    `$ORIGIN`), no zone-file comments that would drop the rest, no escapes in names. `zones`: the box's
    zones, `needed`: its mail_names() (None when they are unknown because of a problem reported already).
    """
    if rtype.upper() not in EXTRA_TYPES:
        return "type", f"{rtype!r} is not accepted; accepted: {', '.join(EXTRA_TYPES)}"
    if problem := _name_problem(name, zones):
        return "name", problem
    if problem := _value_problem(rtype.upper(), value):
        return "value", problem
    if problem := cname_problem(name, rtype, needed):
        return "type", problem
    return None


def _name_problem(name: str, zones: list[str] | None) -> str | None:
    accepted = "letters, digits, '-' and '_' in labels joined by dots, '*' as a whole first label"
    bad = sorted({c for c in name if c not in _NAME_CHARS})
    if bad:
        return f"{name!r} is not a DNS name: {', '.join(repr(c) for c in bad)} not accepted; accepted: {accepted}"
    try:
        parsed = dns.name.from_text(name, origin=dns.name.root)
    except dns.exception.DNSException as e:
        return f"{name!r} is not a DNS name: {e}"
    labels = parsed.to_text(omit_final_dot=True).split(".")
    wildcard_misplaced = any("*" in label for label in labels[1:]) or ("*" in labels[0] and labels[0] != "*")
    if ".".join(labels).lower() != name.rstrip(".").lower() or wildcard_misplaced:
        return f"{name!r} is not a DNS name; accepted: {accepted}"
    if len(parsed.labels) < 3:  # at least two labels plus the root
        return f"{name!r} must be an absolute name inside one of the box's zones, like 'www.example.org'"
    if zones is not None and zone_for(name, zones) is None:
        return f"{name!r} is in none of the box's zones; its zones: {', '.join(zones)}"
    return None


def _value_problem(rtype: str, value: str) -> str | None:
    control = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
    if control is not None:
        return (
            f"{value!r} contains the control character {control!r}; a record's value is one line of zone-file "
            "data (for TXT, several quoted strings on one line)"
        )
    if value.lstrip().startswith("$"):
        return f"{value!r} starts like a zone-file directive ($ORIGIN, $INCLUDE, $TTL); quote it if it is TXT data"
    try:
        tokens = dns.tokenizer.Tokenizer(value)
        while not (token := tokens.get(want_comment=True)).is_eof():
            if token.is_comment():
                return f"{value!r} has a ';' outside quotes, which starts a zone-file comment; quote it"
        rd = dns.rdata.from_text(
            dns.rdataclass.IN, dns.rdatatype.from_text(rtype), value, origin=dns.name.root, relativize=False
        )
        again = dns.rdata.from_text(dns.rdataclass.IN, rd.rdtype, rd.to_text(), origin=dns.name.root, relativize=False)
    except (dns.exception.DNSException, ValueError) as e:
        return f"{value!r} is not valid {rtype} data: {e}"
    if again != rd:
        return f"{value!r} does not read back as the same {rtype} data; write it as {rd.to_text()!r}"
    return None
