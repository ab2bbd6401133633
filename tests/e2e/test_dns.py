"""The box as its own DNS, against two real local boxes: every record answered by nsd (the hostname's
TLSA records matching the certificate it serves, its SSHFP records what OpenSSH's `ssh-keygen -r` makes of
its pinned host key), a serial that moves only with the content, two boxes mailing each other by MX lookup
with DKIM and SPF passing, `check`, and `dns` (registrar glue, or the full record set for an external DNS
host)."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import dns.message
import dns.query
import dns.rdatatype
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from miab_remote.fleet.store import Inventory
from miab_remote.mail import dnszones, layout
from miab_remote.mail.passwords import hash_password
from miab_remote.profiles import PROFILES
from tests.e2e.helpers import Box, cli, deployed_box, edit_inventory, new_inventory, operator_key
from tests.e2e.mailclients import Mail, message

pytestmark = pytest.mark.e2e

A, B = "mx.alpha-dns.test", "mx.beta-dns.test"
PW = {"alice@alpha-dns.test": "alice-dns-pass", "bob@beta-dns.test": "bob-dns-pass1"}


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory, image: str) -> Path:
    return new_inventory(tmp_path_factory.mktemp(f"dns-{image}") / "hosts")


@pytest.fixture(scope="module")
def boxes(inv: Path, tmp_path_factory: pytest.TempPathFactory, image: str) -> Iterator[dict[str, Box]]:
    inventories = {
        A: {
            "users": [{"email": "alice@alpha-dns.test", "password_hash": hash_password(PW["alice@alpha-dns.test"])}],
            "options": {"greylist_delay": 0},
        },
        B: {
            "domains": ["beta-dns.test", "second-beta.test"],
            "users": [{"email": "bob@beta-dns.test", "password_hash": hash_password(PW["bob@beta-dns.test"])}],
            "options": {"greylist_delay": 0},
        },
    }
    # Both made at once, and deployed in one `deploy A B` (in parallel).
    with deployed_box(inv, operator_key(tmp_path_factory.mktemp("operator")), inventories, image=image) as made:
        assert set(made.boxes) == {A, B}
        yield made.boxes


def ask(box: Box, name: str, rtype: str) -> list[str]:
    r = dns.query.udp(dns.message.make_query(name, rtype), box.address, timeout=5)
    assert r.flags & dns.flags.AA, f"{box.address} is not authoritative for {name}"
    return sorted(rd.to_text() for rrset in r.answer if rrset.rdtype == dns.rdatatype.from_text(rtype) for rd in rrset)


def serial(box: Box, zone: str) -> int:
    return int(ask(box, zone, "SOA")[0].split()[2])


def test_every_record_is_answered_by_the_box(inv: Path, boxes: dict[str, Box]) -> None:
    b = boxes[B]
    dkim_txt = "".join(re.findall(r'"([^"]*)"', b.run(f"cat {layout.DKIM_PUBLIC}")[1]))
    for domain in ("beta-dns.test", "second-beta.test"):
        assert ask(b, domain, "NS") == [f"ns1.{B}.", f"ns2.{B}."]
        assert ask(b, domain, "MX") == [f"10 {B}."]
        assert ask(b, domain, "TXT") == ['"v=spf1 mx -all"']
        assert ask(b, domain, "A") == [b.address]
        assert ask(b, f"_dmarc.{domain}", "TXT") == ['"v=DMARC1; p=quarantine;"']
        key = ask(b, f"mail._domainkey.{domain}", "TXT")[0]
        strings = re.findall(r'"([^"]*)"', key)
        assert "".join(strings) == dkim_txt and all(len(s) <= 255 for s in strings) and len(strings) > 1
        for sub in ("www", "autoconfig", "autodiscover"):
            assert ask(b, f"{sub}.{domain}", "A") == [b.address]
        assert ask(b, f"_submission._tcp.{domain}", "SRV") == [f"0 1 587 {B}."]
        assert ask(b, f"_imaps._tcp.{domain}", "SRV") == [f"0 1 993 {B}."]
        assert ask(b, domain, "SOA")[0].startswith(f"ns1.{B}. hostmaster.{domain}. ")
    for name in (B, f"ns1.{B}", f"ns2.{B}"):
        assert ask(b, name, "A") == [b.address]
    # Names with an address that never send mail: a null MX (RFC 7505) and an SPF that allows no one. The
    # hostname sends (HELO, bounces, system mail): its SPF lets it, and it has no null MX.
    quiet = [f"ns1.{B}", f"ns2.{B}"]
    quiet += [f"{s}.{d}" for d in ("beta-dns.test", "second-beta.test") for s in ("www", "autoconfig", "autodiscover")]
    for name in quiet:
        assert ask(b, name, "MX") == ["0 ."], name
        assert ask(b, name, "TXT") == ['"v=spf1 -all"'], name
    assert ask(b, B, "TXT") == ['"v=spf1 a -all"'] and ask(b, B, "MX") == []
    # DANE: TLSA 3 1 1 of the TLS key, for every TLS port of the hostname.
    cert = x509.load_pem_x509_certificate(b.run(f"cat {layout.TLS_CERT}")[1].encode())
    for port in dnszones.TLSA_PORTS:
        assert ask(b, f"_{port}._tcp.{B}", "TLSA") == [dnszones.tlsa_of(cert.public_bytes(Encoding.DER))], port
    # SSHFP of the pinned host key, as OpenSSH computes it (SHA-256 only).
    pinned = Inventory(inv).load(B).host_keys
    keygen = subprocess.run(["ssh-keygen", "-r", B, "-f", "/dev/stdin"], input="\n".join(pinned) + "\n",
                            check=True, capture_output=True, text=True).stdout  # fmt: skip
    want = sorted(" ".join(line.split()[3:]) for line in keygen.splitlines() if line.split()[4] == "2")
    assert ask(b, B, "SSHFP") == want and want


def test_serial_moves_only_with_the_content(inv: Path, boxes: dict[str, Box]) -> None:
    a = boxes[A]
    before = serial(a, "alpha-dns.test")
    res = cli(inv, "deploy", A, "--json")
    assert res.code == 0 and res.json()["hosts"][A]["changed"] == 0, res.json()["hosts"][A]["actions"]
    assert serial(a, "alpha-dns.test") == before
    edit_inventory(inv, A, dns={"records": [{"name": "extra.alpha-dns.test", "type": "TXT", "value": '"hello"'}]})
    res = cli(inv, "deploy", A, "--json")
    assert res.code == 0, res.err
    assert serial(a, "alpha-dns.test") > before
    assert ask(a, "extra.alpha-dns.test", "TXT") == ['"hello"']


def test_two_boxes_mail_each_other_with_dkim_and_spf_passing(boxes: dict[str, Box]) -> None:
    alice, bob = "alice@alpha-dns.test", "bob@beta-dns.test"
    ma = Mail(boxes[A], A, boxes[A].run(f"cat {layout.TLS_CERT}")[1])
    mb = Mail(boxes[B], B, boxes[B].run(f"cat {layout.TLS_CERT}")[1])
    for sender, rcpt, out_box, in_box in ((alice, bob, ma, mb), (bob, alice, mb, ma)):
        subject = f"from {sender} by MX lookup"
        out_box.submit(sender, PW[sender], message(sender, rcpt, subject))
        got = in_box.wait_for(rcpt, PW[rcpt], "INBOX", lambda m, s=subject: m["Subject"] == s, timeout=90)
        results = " ".join(str(h) for h in got.get_all("Authentication-Results") or [])
        assert "dkim=pass" in results and f"header.d={sender.split('@')[1]}" in results, results
        assert "spf=pass" in results, results


def test_check_passes_then_names_what_broke(inv: Path, boxes: dict[str, Box]) -> None:
    res = cli(inv, "check", B, "--json")
    checks = res.json()["hosts"][B]["checks"]
    assert res.code == 0, [c for c in checks if not c["ok"]]
    # The box's own state, read in the same run: every service its recipes run, LMTP, the firewall, ...
    by_name = {c["name"]: c for c in checks}
    inside = [f"service {u}" for u in ("postgrey", "spamd", "opendkim", "opendmarc", "dovecot", "postfix")]
    profile = PROFILES[str(Inventory(inv).load(B).os)]  # the release create recorded for the box
    php_fpm = PurePosixPath(profile.paths["php_fpm_socket"]).stem  # php8.2-fpm on Debian 12
    inside += [f"service {u}" for u in (php_fpm, "fail2ban", "nginx", "nsd", "ufw", "ssh")]
    inside += ["LMTP delivery to dovecot", "firewall (ufw)", "port 80 HTTP (redirects to HTTPS)"]
    inside += ["port 4190 ManageSieve", "disk /", "memory", "reboot", "published ipv4"]
    inside += [f"DNSSEC {zone}" for zone in ("beta-dns.test", "second-beta.test")]  # the chain, on each release
    for name in inside:
        assert name in by_name and by_name[name]["status"] == "ok", by_name.get(name)
    assert "4190/tcp" in by_name["firewall (ufw)"]["detail"]
    # Whether Debian has published security updates since the box was made is the archive's doing, not
    # the box's: it may be a warning, never a failure.
    assert by_name["security updates"]["status"] in ("ok", "warning"), by_name["security updates"]
    assert any(c["name"] == "DNS MX second-beta.test" and c["ok"] for c in checks)
    assert any(c["name"] == "DNS MX www.second-beta.test" and c["ok"] and c["detail"] == "0 ." for c in checks)
    assert by_name[f"DNS TLSA _25._tcp.{B}"]["status"] == "ok", "matches the certificate served"
    assert by_name[f"DNS SSHFP {B}"]["status"] == "ok"
    boxes[B].run("systemctl stop nsd")
    try:
        res = cli(inv, "check", B)
        assert res.code == 1
        failing = [line for line in res.out.splitlines() if "FAIL" in line]
        assert any("port 53" in line for line in failing)
        assert any("DNS MX beta-dns.test" in line and "did not answer" in line for line in failing)
    finally:
        boxes[B].run("systemctl start nsd")


def test_check_names_what_is_wrong_inside_the_box(inv: Path, boxes: dict[str, Box]) -> None:
    b = boxes[B]
    b.run("systemctl stop postgrey && ufw allow 8080/tcp >/dev/null")  # by hand, as an operator might
    b.run("touch /var/run/reboot-required && echo libc6 > /var/run/reboot-required.pkgs")
    try:
        res = cli(inv, "check", B)
        assert res.code == 1, res.out + res.err
        failing = [line for line in res.out.splitlines() if " FAIL " in line]
        assert len(failing) == 2, failing
        assert any(
            "service postgrey" in line and "inactive" in line and f"miab-remote deploy {B} starts it" in line
            for line in failing
        ), failing
        assert any(
            "firewall (ufw)" in line and "also allows 8080/tcp (IPv4 and IPv6)" in line and "ufw delete" in line
            for line in failing
        ), failing
        assert any(
            "reboot" in line and "required by libc6" in line for line in res.out.splitlines() if " WARN " in line
        )
        # A warning alone is no failure: exit 0, and --json counts it apart.
        b.run("systemctl start postgrey && ufw delete allow 8080/tcp >/dev/null")
        res = cli(inv, "check", B, "--json")
        host = res.json()["hosts"][B]
        assert res.code == 0 and host["failed"] == 0 and host["warnings"] >= 1, host
        assert any(c["name"] == "reboot" and c["status"] == "warning" for c in host["checks"])
    finally:
        b.run("rm -f /var/run/reboot-required /var/run/reboot-required.pkgs", check=False)
        b.run("systemctl start postgrey; ufw delete allow 8080/tcp", check=False)


def test_dns_lists_the_glue_and_the_full_set_for_an_external_host(inv: Path, boxes: dict[str, Box]) -> None:
    res = cli(inv, "dns", B)
    assert res.code == 0, res.err
    assert f"ns1.{B}  A  {boxes[B].address}" in res.out and f"ns2.{B}  A  {boxes[B].address}" in res.out
    assert f"second-beta.test: ns1.{B}, ns2.{B}" in res.out
    # The box's DNS is moved to another host: nsd goes, and `dns` prints every record to enter there.
    edit_inventory(inv, A, options={"greylist_delay": 0, "dns": "external"})
    res = cli(inv, "deploy", A, "--json")
    assert res.code == 0, res.err
    status = boxes[A].run("dpkg-query -W -f='${db:Status-Abbrev}' nsd", check=False)[1]
    assert not status.startswith("ii"), f"nsd is removed (dpkg status {status!r})"
    with pytest.raises(OSError):  # nothing answers DNS on the box any more
        socket.create_connection((boxes[A].address, 53), timeout=3).close()
    res = cli(inv, "dns", A)
    assert res.code == 0, res.err
    assert f"alpha-dns.test. 1800 IN MX 10 {A}." in res.out
    assert 'mail._domainkey.alpha-dns.test. 1800 IN TXT "v=DKIM1;' in res.out
    assert "_dmarc.alpha-dns.test. 1800 IN TXT" in res.out
    assert "www.alpha-dns.test. 1800 IN MX 0 ." in res.out
    assert f"_25._tcp.{A}. 1800 IN TLSA 3 1 1 " in res.out  # from the certificate the box serves
    assert 'autoconfig.alpha-dns.test. 1800 IN TXT "v=spf1 -all"' in res.out
    data = cli(inv, "dns", A, "--json").json()
    assert {r["type"] for r in data["records"]["alpha-dns.test"]} >= {"A", "MX", "TXT", "SRV", "NS"}
    assert "warning" not in data, data["warning"]
    # With [acme] not deployed yet, the TLSA shown is of the self-signed certificate's key, which the first
    # ACME certificate replaces: `dns` says to enter the records after that deploy.
    edit_inventory(inv, A, acme={"email": "admin@alpha-dns.test", "directory": "staging"})
    try:
        data = cli(inv, "dns", A, "--json").json()
        assert "the TLSA records change with the deploy that installs it" in data.get("warning", ""), data
    finally:
        with Inventory(inv).edit(A) as doc:
            del doc["acme"]


def test_an_operators_cname_takes_the_place_of_the_generated_records(inv: Path, boxes: dict[str, Box]) -> None:
    """A CNAME like hosts/example.toml's (www to a web host): refused with exit 2 where mail needs the name,
    and elsewhere accepted by the box's nsd-checkzone, answered by nsd where www's address, null MX and SPF
    were, and what `check` expects."""
    b, www = boxes[B], "www.second-beta.test"

    def cname_at(name: str) -> dict[str, object]:
        return {"records": [{"name": name, "type": "CNAME", "value": "pages.example.", "ttl": 3600}]}

    edit_inventory(inv, B, dns=cname_at("autoconfig.second-beta.test"))
    res = cli(inv, "deploy", B)
    assert res.code == 2, res.err
    assert f"{B}.toml:" in res.err and "dns.records[0].type: a CNAME is not accepted at 'autoconfig." in res.err
    edit_inventory(inv, B, dns=cname_at(www))
    res = cli(inv, "deploy", B, "--json")
    assert res.code == 0, res.errors()
    assert ask(b, www, "CNAME") == ["pages.example."]
    assert ask(b, www, "A") == [] and ask(b, www, "MX") == [] and ask(b, www, "TXT") == []
    assert ask(b, "www.beta-dns.test", "A") == [b.address]  # only that name
    res = cli(inv, "check", B, "--json")
    checks = res.json()["hosts"][B]["checks"]
    assert res.code == 0, [c for c in checks if not c["ok"]]
    names = {c["name"] for c in checks}
    assert f"DNS CNAME {www}" in names and f"DNS A {www}" not in names and f"DNS MX {www}" not in names
