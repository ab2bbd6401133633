"""The DNS a box publishes, computed from its inventory (pure: the same inventory gives the same zones).

A box is authoritative for every mail domain it hosts and for its hostname's zone (when the hostname is
not inside a hosted domain). Each zone gets what good delivery needs: NS, A/AAAA, MX, SPF, DKIM, DMARC,
RFC 6186/8314 SRV records, a null MX and `v=spf1 -all` for the names that have an address but no mail,
plus the operator's extra records, which replace a generated record of the same name and type; an
operator's CNAME replaces every generated record at its name (a CNAME cannot live beside other data), and
is accepted only where the mail system needs nothing (fleet/dnsrules.py: mail_names).

The DKIM key is made on the box, so the laptop renders a zone *body* with a placeholder for it and without
a serial; the box fills both in (miab_remote/remote/zone_build.py) and bumps the serial only when the
body or the key changed, so a no-op deploy keeps the serial.

The hostname also gets DANE records (RFC 7672): TLSA `3 1 1` for the box's TLS ports, the SHA-256 of the
public key that every certificate of the box is made for (certbot reuses it: `--reuse-key`), so a renewal
leaves them valid. The key is on the box, so the TLSA data is a placeholder filled in there, like the DKIM
key. And SSHFP records (RFC 4255/6594) of the box's pinned host keys, made here from the inventory. Both
mean something only in a signed zone.

With [acme] the zones also carry TLS-RPT (RFC 8460) and CAA (RFC 8659) records, and MTA-STS (RFC 8461,
mail/mtasts.py): `mta-sts.DOMAIN`'s address, and `_mta-sts.DOMAIN`, which says a policy exists and so must
be published only while the box's certificate covers mta-sts.DOMAIN (else senders that try the policy fail
to fetch it). Only the box knows its certificate, so that record is a conditional line of the body
(`;@IF-CERT-COVERS NAME@ ` before it, a comment to any zone parser) that zone_build.py includes or drops.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import re
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.zone

from miab_remote.errors import InputError
from miab_remote.fleet.dnsrules import (
    CLIENT_SETUP_LABELS,
    MAIL_SERVICES,
    cname_problem,
    dkim_name,
    dmarc_name,
    mail_names,
    nameserver_names,
    zone_for,
    zones_for,
)
from miab_remote.fleet.model import Host
from miab_remote.mail import mailmaps, mtasts

TTL = 1800
SOA_TIMERS = "7200 3600 1209600 1800"  # refresh, retry, expire, negative TTL
SERIAL_PLACEHOLDER = "@SERIAL@"
DKIM_PLACEHOLDER = "@DKIM@"
# The TLSA data "3 1 1 <sha256 of the TLS key's SubjectPublicKeyInfo>", filled in on the box (zone_build.py).
TLSA_PLACEHOLDER = "@TLSA@"
# The ports whose TLS the hostname's TLSA records describe: SMTP (DANE for mail, RFC 7672), submissions,
# submission and IMAPS (RFC 7673's use for other services).
TLSA_PORTS: tuple[int, ...] = (25, 465, 587, 993)
# SSHFP: the key type numbers (RFC 4255, 6594, 7479) of the host key types a box can have; fingerprint type
# 2 is SHA-256.
SSHFP_ALGORITHMS = {"ssh-rsa": 1, "ssh-dss": 2, "ecdsa-sha2-nistp256": 3, "ecdsa-sha2-nistp384": 3,
                    "ecdsa-sha2-nistp521": 3, "ssh-ed25519": 4}  # fmt: skip
SPF = '"v=spf1 mx -all"'
SPF_HOSTNAME = '"v=spf1 a -all"'
# Names with an address that never send or receive mail (RFC 7505 null MX, and an SPF that allows no one),
# so nobody can send as them and nobody tries to deliver to them.
SPF_NONE = '"v=spf1 -all"'
NULL_MX = "0 ."
DMARC = '"v=DMARC1; p=quarantine;"'
TLSRPT_LABEL = "_smtp._tls"
# A zone-file line that starts so is published only while the box's certificate covers NAME (zone_build.py).
CONDITION = ";@IF-CERT-COVERS {}@ "
_CONDITION = re.compile(r"^;@IF-CERT-COVERS (\S+)@ ", re.M)


@dataclass(frozen=True)
class Record:
    name: str  # absolute, without the trailing dot
    type: str
    value: str  # rdata as in a zone file; names in it are absolute with a trailing dot
    ttl: int = TTL
    when_cert_covers: str | None = None  # published only while the box's certificate covers this name

    def relative_to(self, zone: str) -> str:
        if self.name == zone:
            return "@"
        return self.name[: -len(zone) - 1]


def zones_of(host: Host) -> list[str]:
    """The zones the box serves: hosted domains and the hostname, minus names inside another of them."""
    return zones_for(host.hostname, host.domains)


def zone_nameservers(host: Host) -> list[str]:
    """The NS names of every zone of the box: its own ns1/ns2, then those of each of its [dns] secondaries."""
    return [n for name in (host.hostname, *host.dns.secondaries) for n in nameserver_names(name)]


def addresses(host: Host) -> tuple[str | None, str | None]:
    """The box's public IPv4 and IPv6: the inventory's ipv4/ipv6, else `address` when it is an IP."""
    v4, v6 = host.ipv4, host.ipv6
    try:
        ip = ipaddress.ip_address(host.address)
    except ValueError:
        ip = None
    if v4 is None and ip is not None and ip.version == 4:
        v4 = str(ip)
    if v6 is None and ip is not None and ip.version == 6:
        v6 = str(ip)
    return v4, v6


def _address_records(name: str, v4: str | None, v6: str | None) -> list[Record]:
    out = []
    if v4:
        out.append(Record(name, "A", v4))
    if v6:
        out.append(Record(name, "AAAA", v6))
    return out


PLACEHOLDERS = (DKIM_PLACEHOLDER, TLSA_PLACEHOLDER)


def records(host: Host, dkim: str = DKIM_PLACEHOLDER, tlsa: str = TLSA_PLACEHOLDER) -> dict[str, list[Record]]:
    """Every record of every zone (SOA aside), in a stable order. `dkim` is the TXT rdata of the DKIM key,
    `tlsa` the TLSA data of the TLS key; each stays a placeholder (PLACEHOLDERS) until the box's is known."""
    v4, v6 = addresses(host)
    if not v4 and not v6:
        raise InputError(
            f"{host.path}: the box's DNS needs its public address: `address` is a name, so set ipv4 (and ipv6)"
        )
    hostname = host.hostname.lower()
    nameservers = nameserver_names(hostname)
    zones = zones_of(host)
    out: dict[str, list[Record]] = {z: [] for z in zones}

    def add(rec: Record) -> None:
        zone = zone_for(rec.name, zones)
        assert zone is not None
        out[zone].append(rec)

    for zone in zones:
        for n in zone_nameservers(host):
            add(Record(zone, "NS", f"{n}."))
    # The box itself and its nameserver names (the glue the registrar needs points at these).
    for name in (hostname, *nameservers):
        for rec in _address_records(name, v4, v6):
            add(rec)
    domains = sorted({d.lower() for d in host.domains})
    for port in TLSA_PORTS:
        add(Record(f"_{port}._tcp.{hostname}", "TLSA", tlsa))
    for value in sshfp_values(host.host_keys):
        add(Record(hostname, "SSHFP", value))
    if hostname not in domains:
        # Bounces and the box's own mail come from the hostname (its HELO name, and MAIL FROM
        # root@hostname): let it send. It gets no null MX: it receives mail for its postmaster@ and abuse@
        # (RFC 5321 4.5.1), and receivers may refuse mail from a domain with a null MX (RFC 7505 4.2).
        add(Record(hostname, "TXT", SPF_HOSTNAME))
    quiet = list(nameservers)
    for domain in domains:
        if domain != hostname:
            for rec in _address_records(domain, v4, v6):
                add(rec)
        add(Record(domain, "MX", f"10 {hostname}."))
        add(Record(domain, "TXT", SPF))
        add(Record(dkim_name(domain), "TXT", dkim))
        add(Record(dmarc_name(domain), "TXT", DMARC))
        for sub in ("www", *CLIENT_SETUP_LABELS):
            for rec in _address_records(f"{sub}.{domain}", v4, v6):
                add(rec)
            quiet.append(f"{sub}.{domain}")
        if mtasts.enabled(host):
            policy = f"{mtasts.LABEL}.{domain}"  # the policy's host: its address, and the record's condition
            for rec in _address_records(policy, v4, v6):
                add(rec)
            quiet.append(policy)
            add(Record(f"{mtasts.RECORD_LABEL}.{domain}", "TXT", txt_strings(mtasts.record_text(host)), TTL, policy))
        for label, port in MAIL_SERVICES:  # RFC 6186: port 0 says the service (plain IMAP) is not offered
            add(Record(f"{label}.{domain}", "SRV", f"0 1 {port} {hostname}." if port else "0 0 0 ."))
    for name in dict.fromkeys(quiet):  # in order, once each
        if name != hostname and name not in domains:
            add(Record(name, "TXT", SPF_NONE))
            add(Record(name, "MX", NULL_MX))
    for rec in _acme_records(host, domains, zones):
        add(rec)
    # The operator's records replace generated ones of the same name and type; a CNAME, every one at its
    # name. The inventory refuses a CNAME where the mail system needs the name; a Host made otherwise too.
    needed = mail_names(hostname, host.domains)
    for extra in host.dns_records:
        home = zone_for(extra.name, zones)
        if home is None:
            raise InputError(
                f"{host.path}: dns record {extra.name!r} is in none of the box's zones ({', '.join(zones)})"
            )
        if problem := cname_problem(extra.name, extra.type, needed):
            raise InputError(f"{host.path}: dns record {extra.name!r}: {problem}")
        out[home] = [r for r in out[home] if not _replaced_by(r, extra.name, extra.type)]
    for extra in host.dns_records:
        add(Record(extra.name, extra.type, normalized_rdata(extra.type, extra.value), extra.ttl))
    return out


def tlsa_of(certificate_der: bytes) -> str:
    """The TLSA data (3 1 1) that a DANE client checks this certificate against: what the box publishes
    for its TLS key, computed from a certificate it serves (`check`, and `dns` for an external DNS host)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    spki = x509.load_der_x509_certificate(certificate_der).public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    return f"3 1 1 {hashlib.sha256(spki).hexdigest()}"


def sshfp_values(host_keys: tuple[str, ...]) -> list[str]:
    """SSHFP data (key type, 2, SHA-256 of the key) of each pinned host key line ("TYPE BASE64 [comment]"),
    once each; a line of a type SSHFP has no number for is left out."""
    out = []
    for line in host_keys:
        parts = line.split()
        if len(parts) < 2 or parts[0] not in SSHFP_ALGORITHMS:
            continue
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except ValueError:
            continue
        value = f"{SSHFP_ALGORITHMS[parts[0]]} 2 {hashlib.sha256(blob).hexdigest()}"
        if value not in out:
            out.append(value)
    return out


def _acme_records(host: Host, domains: list[str], zones: list[str]) -> list[Record]:
    """With [acme]: where TLS failures are reported (TLS-RPT, to the admin) and which CA may issue for the
    zones (CAA at each apex: the directory's CA, no wildcards, violations reported to the admin)."""
    if host.acme is None:
        return []
    admin = mailmaps.admin_email(host)
    out = []
    if admin:
        out += [Record(f"{TLSRPT_LABEL}.{d}", "TXT", txt_strings(f"v=TLSRPTv1; rua=mailto:{admin}")) for d in domains]
    if host.acme.caa:
        for zone in zones:
            out += [Record(zone, "CAA", f'0 issue "{host.acme.caa}"'), Record(zone, "CAA", '0 issuewild ";"')]
            if admin:
                out.append(Record(zone, "CAA", f'0 iodef "mailto:{admin}"'))
    return out


def _replaced_by(generated: Record, name: str, rtype: str) -> bool:
    """Does an operator's record at (name, type) replace this generated one?"""
    return generated.name == name and (rtype == "CNAME" or generated.type == rtype)


def normalized_rdata(rtype: str, value: str) -> str:
    """Record data as dnspython writes it, names absolute (the operator may write them with or without
    the trailing dot: they are always taken as absolute)."""
    rd = dns.rdata.from_text(
        dns.rdataclass.IN, dns.rdatatype.from_text(rtype), value, origin=dns.name.root, relativize=False
    )
    return str(rd.to_text())


def txt_strings(text: str) -> str:
    """TXT rdata for a long value: quoted strings of at most 255 bytes each (RFC 1035)."""
    data = text.encode()
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    return " ".join('"' + c.decode().replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


def zone_body(host: Host, zone: str) -> str:
    """The zone file the laptop renders: placeholders for the serial and the DKIM key, filled on the box."""
    hostname = host.hostname.lower()
    lines = [
        "; Managed by miab-remote from the box's inventory; edits here are overwritten.",
        f"$ORIGIN {zone}.",
        f"$TTL {TTL}",
        f"@ IN SOA ns1.{hostname}. hostmaster.{zone}. ( {SERIAL_PLACEHOLDER} {SOA_TIMERS} )",
    ]
    for rec in records(host)[zone]:
        condition = CONDITION.format(rec.when_cert_covers) if rec.when_cert_covers else ""
        lines.append(f"{condition}{rec.relative_to(zone)} {rec.ttl} IN {rec.type} {rec.value}")
    text = "\n".join(lines) + "\n"
    _check_zone(zone, text)
    return text


@functools.lru_cache(maxsize=64)
def _check_zone(zone: str, body: str) -> None:
    """Parse the rendered zone with dnspython (placeholders filled with sample values) before sending it.
    A verdict on a text is remembered (a command builds a box twice: the CLI's check, then the deploy or
    push; ~20 ms per zone); a failure is not, and is raised again."""
    sample = body.replace(SERIAL_PLACEHOLDER, "1").replace(DKIM_PLACEHOLDER, '"v=DKIM1; k=rsa; p=AAAA"')
    sample = sample.replace(TLSA_PLACEHOLDER, "3 1 1 " + "00" * 32)
    sample = include_conditions(sample)  # each conditional record must parse too
    try:
        dns.zone.from_text(sample, origin=zone, relativize=False, check_origin=True)
    except dns.exception.DNSException as e:
        raise InputError(f"zone {zone} does not parse: {e}") from None


def conditional_names(body: str) -> list[str]:
    """The names whose coverage by the box's certificate decides a line of this zone body, in order, once."""
    return list(dict.fromkeys(_CONDITION.findall(body)))


def include_conditions(body: str) -> str:
    """The body with every conditional line included (as the box does while its certificate covers all)."""
    return _CONDITION.sub("", body)
