"""Zone rendering from an inventory: deterministic, and the right records for a two-domain box."""

from __future__ import annotations

import json
from pathlib import Path

import dns.zone
import pytest

from miab_remote.errors import InputError
from miab_remote.fleet.model import DNSRecord, Host
from miab_remote.fleet.schema import validate
from miab_remote.mail import dnszones


def box(**kw: object) -> Host:
    base: dict[str, object] = dict(
        name="mx.alpha.test",
        path=Path("hosts/mx.alpha.test.toml"),
        hostname="mx.alpha.test",
        address="203.0.113.7",
        domains=("alpha.test", "beta.test"),
    )
    base.update(kw)
    return Host(**base)  # type: ignore[arg-type]


def by_key(host: Host, dkim: str = '"v=DKIM1; k=rsa; p=KEY"') -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for recs in dnszones.records(host, dkim).values():
        for r in recs:
            out.setdefault((r.name, r.type), []).append(r.value)
    return out


def test_zones_are_the_domains_and_a_hostname_outside_them() -> None:
    assert dnszones.zones_of(box()) == ["alpha.test", "beta.test"]
    assert dnszones.zones_of(box(hostname="box.provider.test")) == ["alpha.test", "beta.test", "box.provider.test"]
    assert dnszones.zones_of(box(domains=("alpha.test", "sub.alpha.test"))) == ["alpha.test"]


def test_two_domain_box_records() -> None:
    r = by_key(box(ipv6="2001:db8::7"))
    for domain in ("alpha.test", "beta.test"):
        assert r[(domain, "NS")] == ["ns1.mx.alpha.test.", "ns2.mx.alpha.test."]
        assert r[(domain, "MX")] == ["10 mx.alpha.test."]
        assert r[(domain, "TXT")] == ['"v=spf1 mx -all"']
        assert r[(domain, "A")] == ["203.0.113.7"] and r[(domain, "AAAA")] == ["2001:db8::7"]
        assert r[(f"_dmarc.{domain}", "TXT")] == ['"v=DMARC1; p=quarantine;"']
        assert r[(f"mail._domainkey.{domain}", "TXT")] == ['"v=DKIM1; k=rsa; p=KEY"']
        for sub in ("www", "autoconfig", "autodiscover"):
            assert r[(f"{sub}.{domain}", "A")] == ["203.0.113.7"]
        assert r[(f"_submission._tcp.{domain}", "SRV")] == ["0 1 587 mx.alpha.test."]
        assert r[(f"_submissions._tcp.{domain}", "SRV")] == ["0 1 465 mx.alpha.test."]
        assert r[(f"_imaps._tcp.{domain}", "SRV")] == ["0 1 993 mx.alpha.test."]
    # The box and its nameserver names (what the registrar's glue points at) are in the hostname's zone.
    for name in ("mx.alpha.test", "ns1.mx.alpha.test", "ns2.mx.alpha.test"):
        assert r[(name, "A")] == ["203.0.113.7"] and r[(name, "AAAA")] == ["2001:db8::7"]
    assert r[("mx.alpha.test", "TXT")] == ['"v=spf1 a -all"']
    assert ("ns1.mx.alpha.test", "A") not in {(rec.name, rec.type) for rec in dnszones.records(box())["beta.test"]}


def test_names_without_mail_publish_a_null_mx_and_spf_that_allows_no_one() -> None:
    """RFC 7505 null MX and `v=spf1 -all` for every name that has an address but no mail, as Mail-in-a-Box
    does; the hostname keeps an SPF that lets it send (HELO, bounces, system mail) and gets no null MX."""
    for hostname, zone in (("mx.alpha.test", "alpha.test"), ("box.provider.test", "box.provider.test")):
        h = box(hostname=hostname)
        r = by_key(h)
        quiet = [f"ns1.{hostname}", f"ns2.{hostname}"]
        quiet += [f"{sub}.{d}" for d in ("alpha.test", "beta.test") for sub in ("www", "autoconfig", "autodiscover")]
        for name in quiet:
            assert r[(name, "MX")] == ["0 ."], name
            assert r[(name, "TXT")] == ['"v=spf1 -all"'], name
        assert r[(hostname, "TXT")] == ['"v=spf1 a -all"'] and (hostname, "MX") not in r
        for domain in ("alpha.test", "beta.test"):
            assert r[(domain, "MX")] == ["10 mx.alpha.test."] if hostname == "mx.alpha.test" else [f"10 {hostname}."]
        body = dnszones.zone_body(h, zone)
        assert "ns1" in body and "IN MX 0 ." in body
    # A name that is itself a mail domain keeps its MX; the operator's own MX or SPF replaces the generated one.
    r = by_key(box(domains=("alpha.test", "www.alpha.test")))
    assert r[("www.alpha.test", "MX")] == ["10 mx.alpha.test."] and r[("www.alpha.test", "TXT")] == ['"v=spf1 mx -all"']
    r = by_key(box(dns_records=(DNSRecord("www.beta.test", "MX", "10 mail.example."),)))
    assert r[("www.beta.test", "MX")] == ["10 mail.example."] and r[("www.beta.test", "TXT")] == ['"v=spf1 -all"']


def test_rendering_is_deterministic_and_parses() -> None:
    a = dnszones.zone_body(box(), "beta.test")
    assert a == dnszones.zone_body(box(), "beta.test")
    assert dnszones.SERIAL_PLACEHOLDER in a and dnszones.DKIM_PLACEHOLDER in a
    zone = dns.zone.from_text(a.replace("@SERIAL@", "7").replace("@DKIM@", '"k"'), origin="beta.test", relativize=False)
    assert zone.get_rdataset("beta.test.", "MX") is not None


def test_extra_records_replace_generated_ones_and_names_become_absolute() -> None:
    h = box(
        dns_records=(
            DNSRecord("www.beta.test", "CNAME", "elsewhere.example"),
            DNSRecord("beta.test", "MX", "20 backup.example.", 600),
        )
    )
    r = by_key(h)
    assert r[("www.beta.test", "CNAME")] == ["elsewhere.example."]
    assert r[("beta.test", "MX")] == ["20 backup.example."]


def test_an_operators_cname_replaces_every_generated_record_at_its_name() -> None:
    """A CNAME cannot live beside other data (RFC 1034 3.6.2): the operator's CNAME at www takes the place of
    the generated A, AAAA, null MX and SPF there, as Mail-in-a-Box's custom records do; the zone parses, in
    the zone file nsd serves and in the record set `miab-remote dns` prints for another DNS host."""
    cname = DNSRecord("www.beta.test", "CNAME", "pages.example.", 3600)
    for served_by in ("nsd", "external"):
        h = box(ipv6="2001:db8::7", dns_records=(cname,), options={"dns": served_by})
        at_www = [(r.type, r.value, r.ttl) for r in dnszones.records(h)["beta.test"] if r.name == "www.beta.test"]
        assert at_www == [("CNAME", "pages.example.", 3600)]
        body = dnszones.zone_body(h, "beta.test")
        assert "www 3600 IN CNAME pages.example." in body
        # Only www: the other names keep what they had, and other types still replace only their own type.
        r = by_key(h)
        assert r[("www.alpha.test", "A")] == ["203.0.113.7"] and r[("autoconfig.beta.test", "MX")] == ["0 ."]


def test_record_outside_every_zone_is_refused() -> None:
    with pytest.raises(InputError, match="in none of the box's zones"):
        dnszones.records(box(dns_records=(DNSRecord("www.gamma.test", "A", "192.0.2.1"),)))


def test_a_named_address_needs_ipv4() -> None:
    with pytest.raises(InputError, match="set ipv4"):
        dnszones.records(box(address="mx.alpha.test"))
    assert by_key(box(address="mx.alpha.test", ipv4="192.0.2.9"))[("alpha.test", "A")] == ["192.0.2.9"]


def test_txt_strings_are_split_at_255_bytes() -> None:
    text = "p=" + "A" * 600
    out = dnszones.txt_strings(text)
    parts = out.split(" ")
    assert [len(p) - 2 for p in parts] == [255, 255, 92]


INVENTORY = """hostname = "mx.alpha.test"
address = "203.0.113.7"
ipv6 = "2001:db8::7"

[[dns.records]]
name = "www.alpha.test"
type = "CNAME"
value = "elsewhere.example."

[[dns.records]]
name = "x.alpha.test"
type = "A"
value = "not-an-ip"
"""


def test_inventory_dns_records_are_validated_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "mx.alpha.test.toml"
    with pytest.raises(InputError) as e:
        validate(INVENTORY, path)
    assert ":13: dns.records[1].value: 'not-an-ip' is not valid A data" in str(e.value)
    host = validate(INVENTORY.split('\n[[dns.records]]\nname = "x')[0], path)
    assert host.dns_records == (DNSRecord("www.alpha.test", "CNAME", "elsewhere.example."),)
    assert host.ipv6 == "2001:db8::7"
    with pytest.raises(InputError, match=r":2: ipv4: 'fe80::1' is not an IPv4 address"):
        validate('hostname = "mx.alpha.test"\nipv4 = "fe80::1"\naddress = "10.0.0.1"\n', path)


INJECTIONS = [
    # A second record (a foreign NS) smuggled in through the name: refused at load time.
    (
        "name",
        '"@ 60 IN NS ns.evil.invalid.\\nx.alpha.test"',
        "A",
        '"192.0.2.1"',
        r"'@ 60 IN NS ns.evil.invalid.\\nx.alpha.test' is not a DNS name: '\\n', ' ', '@' not accepted",
    ),
    ("name", '"$ORIGIN.alpha.test"', "A", '"192.0.2.1"', r"'\$ORIGIN.alpha.test' is not a DNS name: '\$'"),
    (
        "name",
        '"www.gamma.test"',
        "A",
        '"192.0.2.1"',
        r"'www.gamma.test' is in none of the box's zones; its zones: alpha.test$",
    ),
    ("name", '"a\\\\032b.alpha.test"', "A", '"192.0.2.1"', r"is not a DNS name: '\\\\' not accepted"),
    # A newline in a value used to be cut silently (dnspython stops at the end of the line).
    (
        "value",
        '"192.0.2.1\\nx 60 IN NS ns.evil.invalid."',
        "A",
        "",
        r"'192.0.2.1\\nx 60 IN NS ns.evil.invalid.' contains the control character '\\n'",
    ),
    ("value", '"\\"v=spf1\\" \\u0000"', "TXT", "", r"contains the control character '\\x00'"),
    ("value", '"$INCLUDE /etc/passwd"', "TXT", "", r"starts like a zone-file directive"),
    ("value", '"\\"a\\" ; the rest"', "TXT", "", r"has a ';' outside quotes"),
]


@pytest.mark.parametrize(("field", "name", "rtype", "value", "message"), INJECTIONS)
def test_records_that_are_not_plain_zone_data_are_refused_at_load_time(
    tmp_path: Path, field: str, name: str, rtype: str, value: str, message: str
) -> None:
    if field == "value":
        name, value = '"x.alpha.test"', name
    text = 'hostname = "mx.alpha.test"\naddress = "203.0.113.7"\ndomains = ["alpha.test"]\n\n[[dns.records]]\n'
    text += f'name = {name}\ntype = "{rtype}"\nvalue = {value}\n'
    with pytest.raises(InputError, match=rf":{6 if field == 'name' else 8}: dns\.records\[0\]\.{field}: .*{message}"):
        validate(text, tmp_path / "mx.alpha.test.toml")


def test_wildcards_and_service_names_are_plain_zone_data(tmp_path: Path) -> None:
    text = 'hostname = "mx.alpha.test"\naddress = "203.0.113.7"\n'
    for name, rtype, value in [
        ("*.alpha.test", "A", "192.0.2.1"),
        ("_25._tcp.mx.alpha.test", "TLSA", "3 1 1 " + "ab" * 32),
        ("alpha.test", "TXT", '"v=spf1 mx -all" "second; string"'),
        ("web.alpha.test.", "CNAME", "elsewhere.example"),
    ]:
        text += f'\n[[dns.records]]\nname = "{name}"\ntype = "{rtype}"\nvalue = {json.dumps(value)}\n'
    host = validate(text, tmp_path / "mx.alpha.test.toml")
    assert [r.name for r in host.dns_records] == [
        "*.alpha.test",
        "_25._tcp.mx.alpha.test",
        "alpha.test",
        "web.alpha.test",
    ]
    assert all(dnszones.zone_body(host, zone) for zone in dnszones.zones_of(host))


MX = ("MX", "10 other.example.")
MAIL_NAMES = [  # (name, what the message says it is for, a record of another type accepted there)
    ("alpha.test", "a mail domain", MX),
    ("beta.test", "a mail domain", MX),
    ("mx.alpha.test", "the box's hostname", MX),
    ("ns1.mx.alpha.test", "a nameserver name", ("A", "192.0.2.53")),
    ("ns2.mx.alpha.test.", "a nameserver name", MX),
    ("autoconfig.alpha.test", "mail clients' autoconfiguration", ("AAAA", "2001:db8::80")),
    ("AutoDiscover.beta.test", "mail clients' autoconfiguration", MX),
    ("_dmarc.alpha.test", "DMARC", ("TXT", '"v=DMARC1; p=reject;"')),
    ("mail._domainkey.beta.test", "DKIM", ("TXT", '"v=DKIM1; k=rsa; p=OTHER"')),
    ("_submission._tcp.alpha.test", "mail clients' server discovery", ("SRV", "0 1 587 other.example.")),
    ("_imap._tcp.beta.test", "mail clients' server discovery", ("SRV", "0 1 143 other.example.")),
]


@pytest.mark.parametrize(("name", "what", "other"), MAIL_NAMES)
def test_a_cname_at_a_name_the_mail_system_needs_is_refused_at_load_time(
    tmp_path: Path, name: str, what: str, other: tuple[str, str]
) -> None:
    """A CNAME there would replace the box's own records and break mail, DNS or TLS: bad input, with the
    file, line and field, what the name is for and what is accepted; another type there still replaces only
    the generated record of its type."""
    path = tmp_path / "mx.alpha.test.toml"
    text = 'hostname = "mx.alpha.test"\naddress = "203.0.113.7"\ndomains = ["alpha.test", "beta.test"]\n\n'
    text += f'[[dns.records]]\nname = "{name}"\ntype = "CNAME"\nvalue = "elsewhere.example."\n'
    with pytest.raises(InputError) as e:
        validate(text, path)
    message = str(e.value)
    shown = name.lower().rstrip(".")
    assert f"mx.alpha.test.toml:7: dns.records[0].type: a CNAME is not accepted at {shown!r}" in message
    assert what in message and "accepted:" in message
    assert message.count("\n") == 0, "one problem, one line"
    rtype, value = other
    host = validate(text.replace('"CNAME"', f'"{rtype}"').replace('"elsewhere.example."', json.dumps(value)), path)
    assert all(dnszones.zone_body(host, zone) for zone in dnszones.zones_of(host))
    r = by_key(host)
    assert dnszones.normalized_rdata(rtype, value) in r[(shown, rtype)]
    assert ("mail._domainkey.beta.test", "TXT") in r and (shown, "CNAME") not in r


def test_a_cname_at_the_apex_of_the_hostnames_own_zone_is_refused(tmp_path: Path) -> None:
    text = 'hostname = "box.provider.test"\naddress = "203.0.113.7"\ndomains = ["alpha.test"]\n\n'
    text += '[[dns.records]]\nname = "box.provider.test"\ntype = "CNAME"\nvalue = "elsewhere.example."\n'
    refused = r":7: dns\.records\[0\]\.type: a CNAME is not accepted at 'box\.provider\.test', the box's hostname"
    with pytest.raises(InputError, match=refused):
        validate(text, tmp_path / "box.provider.test.toml")


def test_a_cname_beside_the_operators_own_records_at_its_name_is_refused(tmp_path: Path) -> None:
    """Two operator records at one name where one is a CNAME would not parse as a zone: refused at load time
    (the later record is named, with the earlier one it clashes with); a CNAME at another DKIM selector (a
    third-party sender's key) is the operator's business and accepted."""
    head = 'hostname = "mx.alpha.test"\naddress = "203.0.113.7"\n'
    for first, second in (("CNAME", "TXT"), ("TXT", "CNAME"), ("CNAME", "CNAME")):
        text = head
        for rtype in (first, second):
            value = '"elsewhere.example."' if rtype == "CNAME" else '"\\"hello\\""'
            text += f'\n[[dns.records]]\nname = "web.alpha.test"\ntype = "{rtype}"\nvalue = {value}\n'
        with pytest.raises(InputError) as e:
            validate(text, tmp_path / "mx.alpha.test.toml")
        assert ":10: dns.records[1].name: 'web.alpha.test' already has a record in dns.records[0]" in str(e.value)
        assert "a CNAME" in str(e.value)
    text = head + '\n[[dns.records]]\nname = "s1._domainkey.alpha.test"\ntype = "CNAME"\nvalue = "s1.dkim.example."\n'
    host = validate(text, tmp_path / "mx.alpha.test.toml")
    assert "s1._domainkey 1800 IN CNAME s1.dkim.example." in dnszones.zone_body(host, "alpha.test")


def test_the_hostname_gets_tlsa_for_its_tls_ports_and_sshfp_for_its_pinned_keys(tmp_path: Path) -> None:
    """SSHFP as OpenSSH's own `ssh-keygen -r` prints it for the same keys (SHA-256 lines only)."""
    import subprocess

    lines = []
    for kind in ("ed25519", "ecdsa"):
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(tmp_path / kind)], check=True)
        lines.append((tmp_path / f"{kind}.pub").read_text().strip())
    ssh_keygen = []
    for kind in ("ed25519", "ecdsa"):
        out = subprocess.run(["ssh-keygen", "-r", "mx.alpha.test", "-f", str(tmp_path / f"{kind}.pub")],
                             check=True, capture_output=True, text=True).stdout  # fmt: skip
        ssh_keygen += [" ".join(line.split()[3:]) for line in out.splitlines() if line.split()[4] == "2"]
    r = by_key(box(host_keys=(*lines, lines[0], "ssh-unknown AAAA x", "not a key")))
    assert r[("mx.alpha.test", "SSHFP")] == ssh_keygen and len(ssh_keygen) == 2  # once each, the others left out
    assert ("mx.alpha.test", "SSHFP") not in by_key(box())
    for port in (25, 465, 587, 993):
        assert r[(f"_{port}._tcp.mx.alpha.test", "TLSA")] == [dnszones.TLSA_PLACEHOLDER]
    tlsa = "3 1 1 " + "ab" * 32
    assert dnszones.records(box(), tlsa=tlsa)["alpha.test"][-1].value  # renders with the box's value
    assert {r.value for r in dnszones.records(box(), tlsa=tlsa)["alpha.test"] if r.type == "TLSA"} == {tlsa}
    assert not [r for r in dnszones.records(box())["beta.test"] if r.type in ("TLSA", "SSHFP")], "the hostname's zone"


def test_tlsa_of_a_certificate_is_the_sha256_of_its_public_key(tmp_path: Path) -> None:
    import hashlib
    import subprocess

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=mx.alpha.test"], check=True, capture_output=True)  # fmt: skip
    der = subprocess.run(["openssl", "x509", "-in", str(cert), "-outform", "DER"], check=True, capture_output=True)
    spki = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"], check=True,
                          capture_output=True).stdout  # fmt: skip
    assert dnszones.tlsa_of(der.stdout) == "3 1 1 " + hashlib.sha256(spki).hexdigest()


def test_check_expects_the_tlsa_of_the_served_certificate_and_skips_it_when_unknown() -> None:
    from miab_remote.checks import outside

    tlsa = "3 1 1 " + "cd" * 32
    assert outside.expected_records(box(), None, None, tlsa)[("_25._tcp.mx.alpha.test", "TLSA")] == [tlsa]
    assert not [k for k in outside.expected_records(box(), None, None) if k[1] == "TLSA"]
