"""The DNS rules the inventory checks: which zones a box serves, and what an operator's extra record
([[dns.records]]) may be. mail/dnszones.py builds the zones from the same rules."""

from __future__ import annotations

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tokenizer

EXTRA_TYPES: tuple[str, ...] = ("A", "AAAA", "CNAME", "TXT", "MX", "SRV", "CAA", "TLSA", "NS", "SSHFP")


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


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.*")


def record_problem(name: str, rtype: str, value: str, zones: list[str] | None = None) -> tuple[str, str] | None:
    """(field, problem) for an operator's extra record, or None when it is plain DNS data of a box's zone.

    The record goes into a zone file line by line, so a name or value is refused unless dnspython parses
    it whole and writes it back the same: no control characters or newlines (a second record, a
    `$ORIGIN`), no zone-file comments that would drop the rest, no escapes in names. `zones`: the box's
    zones (None when they are unknown because of a problem reported already).
    """
    if rtype.upper() not in EXTRA_TYPES:
        return "type", f"{rtype!r} is not accepted; accepted: {', '.join(EXTRA_TYPES)}"
    if problem := _name_problem(name, zones):
        return "name", problem
    if problem := _value_problem(rtype.upper(), value):
        return "value", problem
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
