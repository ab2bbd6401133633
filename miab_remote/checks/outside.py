"""`miab-remote check`: is the box working, seen from the outside?

From the laptop: every DNS record the box should publish (asked of the box's own nameserver), the ports
mail clients and other servers need, the certificate (name and validity), SSH password login, and the
addresses the box publishes. From inside, in one SSH round trip (miab_remote/remote/status.py, judged in
miab_remote/boxchecks.py): its services, LMTP delivery, firewall, disk, memory, updates and reboot. Each
check says ok, or what is wrong and how to fix it; a warning (miab_remote/checkresult.py) is not a failure.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import socket
import ssl
from collections.abc import Sequence
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename
import paramiko
from cryptography import x509

from miab_remote.checks import box as boxchecks
from miab_remote.checks.dnssec import dnssec_checks
from miab_remote.checks.result import Check, warn
from miab_remote.engine.resources import Resource
from miab_remote.errors import HostError, MiabError
from miab_remote.fleet import secrets
from miab_remote.fleet.model import Host
from miab_remote.mail import backup, dnszones, layout
from miab_remote.profiles import assumed_profile
from miab_remote.transport.ssh import PinnedKeyPolicy, Transport, disabled_host_key_algorithms

__all__ = ["Check", "dkim_rdata_from_box", "run_checks", "served_tlsa"]

TIMEOUT = 5.0
CERT_MIN_DAYS = boxchecks.CERT_MIN_DAYS


def dkim_rdata(public_file: str | None) -> str | None:
    """The DKIM TXT rdata from opendkim-genkey's mail.txt, as strings of at most 255 bytes."""
    text = "".join(re.findall(r'"([^"]*)"', public_file or ""))
    return dnszones.txt_strings(text) if text else None


def dkim_rdata_from_box(host: Host, timeout: float = 10.0) -> str | None:
    """The DKIM TXT rdata as the box publishes it (the key is made on the box), over pinned SSH."""
    with Transport(host.target, connect_timeout=timeout) as t:
        res = t.exec(f"cat {layout.DKIM_PUBLIC} 2>/dev/null", idle_timeout=timeout)
    return dkim_rdata(res.stdout.decode(errors="replace"))


def desired(host: Host) -> tuple[list[Resource], dict[str, bytes]]:
    """What the box's recipes declare and render, as a deploy would (the operator's recipes and templates
    included): what the box is expected to run."""
    from miab_remote.engine.converge import build  # deploy imports much more; only check needs it here

    return build(host, assumed_profile(host.os), host.path.parent)


def status_spec(host: Host, resources: Sequence[Resource]) -> dict[str, Any]:
    """What remote/status.py is asked to read on the box."""
    acme = {
        "status": boxchecks.ACME_STATUS,
        "certificate": layout.TLS_CERT,
        "lineage": boxchecks.ACME_LINEAGE,
        "unit": boxchecks.ACME_UNIT,
    }
    return {
        "services": boxchecks.running_services(resources),
        "chains": boxchecks.UFW_CHAINS,
        "disk": ["/", layout.STATE],
        "dkim": layout.DKIM_PUBLIC,
        **({"backup": backup.STATUS} if host.backup else {}),
        "restore": backup.RESTORE_JOURNAL,
        **({"acme": acme} if host.acme else {}),
    }


def box_facts(host: Host, resources: Sequence[Resource], timeout: float = 10.0) -> dict[str, Any]:
    """The box's health facts and its DKIM key, in one SSH round trip."""
    spec = status_spec(host, resources)
    with Transport(host.target, connect_timeout=timeout) as t:
        facts: dict[str, Any] = t.run_json("status", spec, idle_timeout=150)
    return facts


def public_address(host: Host) -> str:
    """Where the world reaches the box: its published address (`address` may be a tunnel's end)."""
    v4, v6 = dnszones.addresses(host)
    return v4 or v6 or host.address


def _query(server: str, name: str, rtype: str) -> list[str]:
    q = dns.message.make_query(name, rtype)
    try:
        r = dns.query.udp(q, server, timeout=TIMEOUT)
        if r.flags & dns.flags.TC:
            r = dns.query.tcp(q, server, timeout=TIMEOUT)
    except (dns.exception.DNSException, OSError) as e:
        raise HostError(f"{server} did not answer: {e}") from None
    return sorted(rd.to_text() for rrset in r.answer if rrset.rdtype == dns.rdatatype.from_text(rtype) for rd in rrset)


def _txt_value(rdata: str) -> str:
    """The text of TXT rdata, however it is split into strings."""
    return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', rdata))


def _same(rtype: str, got: list[str], want: list[str]) -> bool:
    if rtype == "TXT":
        return sorted(map(_txt_value, got)) == sorted(map(_txt_value, want))
    return [g.lower() for g in got] == sorted(w.lower() for w in want)


def expected_records(
    host: Host, dkim: str | None, covered: set[str] | None, tlsa: str | None = None
) -> dict[tuple[str, str], list[str]]:
    """What the box's DNS should answer, by (name, type): [] for a record that must not be there (an _mta-sts
    record while the certificate does not cover its name). `covered`: the certificate's names (None: unknown,
    so such records are not expected either way). `tlsa`: the TLSA data of the certificate the box serves
    (None: unknown, so its records are not checked)."""
    expected: dict[tuple[str, str], list[str]] = {}
    for zone_records in dnszones.records(
        host, dkim or dnszones.DKIM_PLACEHOLDER, tlsa or dnszones.TLSA_PLACEHOLDER
    ).values():
        for rec in zone_records:
            if rec.value in dnszones.PLACEHOLDERS:
                continue
            if rec.when_cert_covers is not None:
                if covered is None:
                    continue
                if rec.when_cert_covers not in covered:
                    expected.setdefault((rec.name, rec.type), [])
                    continue
            expected.setdefault((rec.name, rec.type), []).append(
                dns.rdata.from_text(
                    dns.rdataclass.IN,
                    dns.rdatatype.from_text(rec.type),
                    rec.value,
                    origin=dns.name.root,
                    relativize=False,
                ).to_text()
            )
    return expected


def dns_checks(
    host: Host, dkim: str | None, covered: set[str] | None = None, tlsa: str | None = None
) -> list[Check]:
    """Every expected record, asked of the box's own nameserver (or the system resolver for external)."""
    external = host.options["dns"] == "external"
    server = public_address(host)
    expected = expected_records(host, dkim, covered, tlsa)
    out: list[Check] = []
    if dkim is None:
        out.append(Check("DNS DKIM key", False, "the box has no DKIM key yet", f"miab-remote deploy {host.name}"))
    where = "the DNS host" if external else f"the box's nameserver ({server})"
    fix = f"miab-remote dns {host.name} lists the records to enter" if external else f"miab-remote deploy {host.name}"
    resolver = dns.resolver.Resolver() if external else None
    for (name, rtype), want in expected.items():
        label = f"DNS {rtype} {name}"
        try:
            if resolver is not None:
                try:
                    got = sorted(rd.to_text() for rd in resolver.resolve(name, rtype))
                except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                    got = []
            else:
                got = _query(server, name, rtype)
        except (MiabError, dns.exception.DNSException) as e:
            out.append(Check(label, False, f"no answer from {where}: {e}", fix))
            continue
        if not want and not got:
            out.append(Check(label, True, "not published: the box's certificate does not cover its policy's name"))
        elif _same(rtype, got, want):
            out.append(Check(label, True, "; ".join(want) if rtype != "TXT" or len(want[0]) < 60 else "as expected"))
        else:
            shown, wanted = "; ".join(got) or "nothing", "; ".join(want) or "nothing"
            out.append(Check(label, False, f"{where} answers {shown[:120]}, expected {wanted[:120]}", fix))
    return out


def port_checks(host: Host) -> list[Check]:
    ports = {25: "SMTP", 465: "submission (TLS)", 587: "submission (STARTTLS)", 993: "IMAPS"}
    if "dovecot" in host.recipes:
        ports[4190] = "ManageSieve"
    if "webmail" in host.recipes:
        ports[443] = "HTTPS (webmail)"
        ports[80] = "HTTP (redirects to HTTPS)"
    if host.serves_dns:
        ports[53] = "DNS (TCP)"
    address = public_address(host)
    out = []
    for port, what in sorted(ports.items()):
        try:
            with socket.create_connection((address, port), timeout=TIMEOUT):
                out.append(Check(f"port {port} {what}", True, "answers"))
        except OSError as e:
            out.append(
                Check(
                    f"port {port} {what}",
                    False,
                    f"no answer: {e}",
                    f"miab-remote deploy {host.name}; check the provider's firewall",
                )
            )
    return out


def served_certificate(host: Host) -> bytes:
    """The certificate the box serves on 993 (DER), unverified: a self-signed one is expected before ACME,
    and `check` judges it itself. Every TLS port serves the same one (recipes/tls.py)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((public_address(host), 993), timeout=TIMEOUT) as sock,
        ctx.wrap_socket(sock, server_hostname=host.hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def served_tlsa(host: Host) -> tuple[str | None, bool]:
    """The TLSA data of the certificate the box serves (None when it cannot be read), and whether that
    certificate is the box's self-signed one."""
    try:
        der = served_certificate(host)
    except OSError:
        return None, False
    return dnszones.tlsa_of(der), boxchecks.self_signed(x509.load_der_x509_certificate(der))


def certificate_check(host: Host) -> tuple[Check, str | None]:
    """The certificate served on 993 names the box and stays valid for a while; and its TLSA data."""
    try:
        der = served_certificate(host)
    except OSError as e:
        fix = f"miab-remote deploy {host.name}"
        return Check("TLS certificate", False, f"could not read it on port 993: {e}", fix), None
    judged = judge_certificate(host, x509.load_der_x509_certificate(der), datetime.datetime.now(datetime.UTC))
    return judged, dnszones.tlsa_of(der)


def judge_certificate(host: Host, cert: x509.Certificate, now: datetime.datetime) -> Check:
    """Names the box, and valid: a failure once expired, a warning within CERT_MIN_DAYS of expiry."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
    except x509.ExtensionNotFound:
        names = []
    days = (cert.not_valid_after_utc - now).days
    self_signed = boxchecks.self_signed(cert)
    kind = "self-signed" if self_signed else f"issued by {cert.issuer.rfc4514_string()}"
    if host.hostname not in names:
        return Check(
            "TLS certificate",
            False,
            f"names {', '.join(names) or 'nothing'}, not {host.hostname}",
            "a certificate for the box's hostname is made by deploy",
        )
    renew = f"miab-remote deploy {host.name} re-issues it from the same key" if self_signed else "renew it"
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca:
        return Check("TLS certificate", False, f"{kind}, a CA certificate (CA:TRUE): strict clients refuse it", renew)
    if cert.not_valid_after_utc <= now:
        return Check("TLS certificate", False, f"{kind}, expired on {cert.not_valid_after_utc:%Y-%m-%d}", renew)
    if days < CERT_MIN_DAYS:
        return warn("TLS certificate", f"{kind}, expires in {days} days", renew)
    return Check("TLS certificate", True, f"{kind}, names {host.hostname}, valid for {days} more days")


def ssh_password_check(host: Host) -> Check:
    """Ask the server which authentications it offers (auth 'none'): 'password' must not be one."""
    name = "SSH password login"
    try:
        sock = socket.create_connection((host.address, host.ssh.port), timeout=TIMEOUT)
    except OSError as e:
        return Check(name, False, f"no answer on port {host.ssh.port}: {e}", "")
    t = paramiko.Transport(sock, disabled_algorithms={"keys": disabled_host_key_algorithms(list(host.host_keys))})
    try:
        t.start_client(timeout=TIMEOUT)
        PinnedKeyPolicy(host.name, list(host.host_keys)).missing_host_key(None, host.address, t.get_remote_server_key())
        try:
            t.auth_none(host.ssh.user)
            allowed: list[str] = []
        except paramiko.BadAuthenticationType as e:
            allowed = list(e.allowed_types)
    except (paramiko.SSHException, OSError, MiabError) as e:
        return Check(name, False, f"could not ask: {e}", "")
    finally:
        t.close()
    if "password" in allowed or "keyboard-interactive" in allowed:
        return Check(name, False, f"offered ({', '.join(allowed)})", f"miab-remote deploy {host.name} (turns it off)")
    return Check(name, True, f"off (offers {', '.join(allowed) or 'nothing before auth'})")


def world_resolver(resolvers: Sequence[str] = ()) -> dns.resolver.Resolver:
    """A resolver asking `resolvers` (the provider's view of the world's DNS), or the laptop's own ones."""
    resolver = dns.resolver.Resolver(configure=not resolvers)
    if resolvers:
        resolver.nameservers = list(resolvers)
    resolver.lifetime = TIMEOUT
    return resolver


def ptr_checks(host: Host, resolver: dns.resolver.Resolver) -> list[Check]:
    """The reverse DNS of each published address, asked as a receiving server asks it (world_resolver): it
    should name the box's hostname, or receivers refuse or distrust its mail (Gmail refuses IPv6 mail without
    it). A missing or other name is a warning: the provider sets it, not a deploy. A private address of a box
    not on this machine is skipped: no resolver out there knows it (address_checks already flags it)."""
    fix = f"set the reverse DNS (PTR) of {{ip}} to {host.hostname} at the provider (its console or API)"
    out = []
    for ip in dnszones.addresses(host):
        if not ip or (host.provider != "local" and not ipaddress.ip_address(ip).is_global):
            continue
        label = f"reverse DNS {ip}"
        try:
            names = sorted(
                rd.to_text().rstrip(".").lower() for rd in resolver.resolve(dns.reversename.from_address(ip), "PTR")
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            names = []
        except dns.exception.DNSException as e:
            out.append(warn(label, f"could not ask: {e}", fix.format(ip=ip)))
            continue
        if names == [host.hostname]:
            out.append(Check(label, True, host.hostname))
        elif not names:
            out.append(warn(label, "no PTR record: receivers may refuse the box's mail", fix.format(ip=ip)))
        else:
            out.append(warn(label, f"names {', '.join(names)}, not {host.hostname}", fix.format(ip=ip)))
    return out


def run_checks(host: Host, resolvers: Sequence[str] = ()) -> list[Check]:
    """Every check of the box; `resolvers`: where the world's DNS is asked (the reverse DNS, and whether the
    registrar has the zones' DS): the provider's stand-in for the world's, or () for the laptop's own."""
    world = world_resolver(resolvers)
    resources, rendered = desired(host)
    facts: dict[str, Any] | None
    try:
        facts = box_facts(host, resources)
        ssh = Check("SSH key login", True, f"{host.ssh.user}@{host.address}:{host.ssh.port}, pinned host key")
    except MiabError as e:
        facts = None
        ssh = Check("SSH key login", False, str(e), "")
    out = [ssh, ssh_password_check(host)]
    out += boxchecks.address_checks(host)
    out += ptr_checks(host, world)
    out += port_checks(host)
    certificate, tlsa = certificate_check(host)
    out.append(certificate)
    if facts is not None:
        out += boxchecks.box_checks(host, facts, resources, rendered)
        since = secrets.get(host.name, secrets.BACKUP_SINCE)
        now = datetime.datetime.now(datetime.UTC)
        if (judged := boxchecks.backup_check(host, facts.get("backup"), since, now)) is not None:
            out.append(judged)
        if (unfinished := boxchecks.restore_check(host, facts.get("restore"))) is not None:
            out.append(unfinished)
        out += boxchecks.acme_checks(host, facts.get("acme"), now)
    covered = boxchecks.certificate_names(facts.get("acme")) if facts else None
    out += dns_checks(host, dkim_rdata(facts.get("dkim")) if facts else None, covered, tlsa)
    if host.options["dns"] != "external":
        out += dnssec_checks(host, public_address(host), world)
    out += admin_mail_checks(host)
    return out


# ------------------------------------------------------------------------------ the admin addresses

_DELIVERY_PROBE = (
    "echo '@aliases'; postmap -s hash:/etc/postfix/virtual_aliases; "
    "echo '@mailboxes'; postmap -s hash:/etc/postfix/virtual_mailboxes; "
    "echo '@domains'; postconf -h virtual_alias_domains virtual_mailbox_domains; "
    "echo '@users'; doveadm user '*'"
)


def _box_tables(text: str) -> dict[str, list[str]]:
    """The probe's output, by section: each line of the live .db tables, the domains, dovecot's users."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("@") and line[1:] in ("aliases", "mailboxes", "domains", "users"):
            current = sections.setdefault(line[1:], [])
        elif line.strip():
            current.append(line.strip())
    return sections


def delivery_of(address: str, tables: dict[str, list[str]], ours: set[str]) -> tuple[bool, str]:
    """Where the box's live tables (what postfix reads now, not the inventory) send `address`: expanded
    through virtual_aliases the way postfix does (full address, without +extension, @domain), each
    result into a dovecot mailbox or out to another server. `ours`: the box's hostname and domains, which
    postfix must take as its own. (True, where) or (False, why it is lost)."""
    from miab_remote.remote.sender_guard import lookup_keys, parse_table  # postfix's lookup order, one copy

    aliases = parse_table("\n".join(tables.get("aliases", [])))
    mailboxes = parse_table("\n".join(tables.get("mailboxes", [])))
    local = {d.lower() for line in tables.get("domains", []) for d in re.split(r"[\s,]+", line) if d}
    users = {line.split()[0].lower() for line in tables.get("users", [])}
    reached: list[str] = []
    todo, seen = [address.lower()], set[str]()
    while todo:
        addr = todo.pop(0)
        if addr in seen or len(seen) > 50:
            continue
        seen.add(addr)
        domain = addr.rpartition("@")[2]
        if domain not in local:
            if domain in ours:
                return False, f"postfix does not take mail for {domain} as its own: mail to {addr} is refused"
            reached.append(f"{addr} (another server)")
            continue
        found = next((aliases[k] for k in lookup_keys(addr) if k in aliases), None)
        if found is not None and list(found) != [addr]:
            todo += list(found)
            continue
        box = next((k for k in lookup_keys(addr)[:2] if k in mailboxes), None)
        if box is None:
            return False, f"{addr} is neither a mailbox nor an alias on the box: mail to {address} is refused"
        if box not in users:
            return False, f"{addr} is a mailbox postfix knows but dovecot has no such user: mail would bounce"
        reached.append(f"{box}'s mailbox")
    return True, "delivered to " + ", ".join(dict.fromkeys(reached))


def admin_mail_checks(host: Host) -> list[Check]:
    """The administrator's address and postmaster@, abuse@, hostmaster@ (and the hostname's root@): asked of
    the box's own tables over SSH, so the answer is what postfix and dovecot would do now, and no mail is
    sent (an SMTP probe would be greylisted, and is often blocked from a laptop)."""
    from miab_remote.mail import mailmaps

    admin = mailmaps.admin_email(host)
    addresses = ([admin] if admin else []) + mailmaps.automatic_sources(host)
    fix_admin = f"set [options] admin_email in {host.path.name}, or add a user, then miab-remote deploy {host.name}"
    if admin is None:
        return [Check("mail to the administrator", False, "no admin_email and no user to default to", fix_admin)]
    try:
        with Transport(host.target, connect_timeout=TIMEOUT * 2) as t:
            res = t.exec(_DELIVERY_PROBE, idle_timeout=TIMEOUT * 4)
    except MiabError as e:
        return [Check("mail to the admin addresses", False, f"could not ask the box: {e}", "")]
    tables = _box_tables(res.stdout.decode(errors="replace"))
    out = []
    for address in dict.fromkeys(addresses):
        ok, detail = delivery_of(address, tables, {host.hostname, *host.domains})
        label = f"mail to {address}" + (" (the administrator)" if address == admin else "")
        out.append(Check(label, ok, detail, "" if ok else f"miab-remote deploy {host.name}; {fix_admin}"))
    return out
