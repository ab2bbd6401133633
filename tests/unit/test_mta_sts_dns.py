"""The DNS and policies of a box with [acme]: MTA-STS (RFC 8461) policy and its conditional _mta-sts record,
TLS-RPT (RFC 8460), CAA (RFC 8659), as the laptop renders them."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import dns.zone
import pytest

from miab_remote.fleet.model import Acme, DNSRecord, Host, MailUser
from miab_remote.fleet.store import Inventory, new_document
from miab_remote.mail import dnszones, mtasts
from tests.unit.sshbox import SSHBox
from tests.unit.test_accounts import cli as accounts_cli
from tests.unit.test_dnszones import box as dnszones_box

LE = "https://acme-v02.api.letsencrypt.org/directory"
HASH = "{BLF-CRYPT}$2b$04$" + "a" * 53


def box(**kw: object) -> Host:
    """test_dnszones' two-domain box, with IPv6, an admin and [acme]."""
    base: dict[str, object] = dict(ipv6="2001:db8::7", users=(MailUser("admin@alpha.test", HASH),), acme=Acme(LE))
    return dnszones_box(**(base | kw))


def by_key(host: Host) -> dict[tuple[str, str], list[dnszones.Record]]:
    out: dict[tuple[str, str], list[dnszones.Record]] = {}
    for recs in dnszones.records(host).values():
        for r in recs:
            out.setdefault((r.name, r.type), []).append(r)
    return out


def values(host: Host) -> dict[tuple[str, str], list[str]]:
    return {k: [r.value for r in recs] for k, recs in by_key(host).items()}


def test_the_policy_is_rfc_8461_text_with_crlf_lines() -> None:
    assert mtasts.policy(box()) == "version: STSv1\r\nmode: testing\r\nmx: mx.alpha.test\r\nmax_age: 604800\r\n"
    assert "mode: enforce\r\n" in mtasts.policy(box(acme=Acme(LE, mta_sts="enforce")))


POLICY_CASES = [
    ("testing", Acme(LE), ["mta-sts.alpha.test", "mta-sts.beta.test"]),
    ("enforce", Acme(LE, mta_sts="enforce"), ["mta-sts.alpha.test", "mta-sts.beta.test"]),
    ("none", Acme(LE, mta_sts="none"), []),
    ("no [acme]", None, []),
]


@pytest.mark.parametrize(("acme", "names"), [c[1:] for c in POLICY_CASES], ids=[c[0] for c in POLICY_CASES])
def test_mta_sts_names_get_an_address_and_no_mail(acme: Acme | None, names: list[str]) -> None:
    h = box(acme=acme)
    assert mtasts.policy_names(h) == names
    r = values(h)
    for name in names:
        assert r[(name, "A")] == ["203.0.113.7"] and r[(name, "AAAA")] == ["2001:db8::7"]
        assert r[(name, "MX")] == ["0 ."] and r[(name, "TXT")] == ['"v=spf1 -all"']
    for domain in ("alpha.test", "beta.test"):
        assert ((f"mta-sts.{domain}", "A") in r) == bool(names)
        assert ((f"_mta-sts.{domain}", "TXT") in r) == bool(names)


def test_the_policy_id_is_the_policys_hash_and_changes_only_with_it() -> None:
    h = box()
    want = hashlib.sha256(mtasts.policy(h).encode()).hexdigest()[:20]
    assert mtasts.policy_id(h) == want and re.fullmatch(r"[0-9a-f]{20}", want)
    # Users, aliases, the directory: the policy does not change, nor its id.
    same = box(users=(MailUser("other@beta.test", HASH),), acme=Acme("https://ca.test/dir"))
    assert mtasts.policy_id(same) == want
    assert mtasts.policy_id(box(acme=Acme(LE, mta_sts="enforce"))) != want
    assert mtasts.policy_id(box(hostname="mx2.alpha.test", name="mx2.alpha.test")) != want
    for domain in ("alpha.test", "beta.test"):
        [rec] = by_key(h)[(f"_mta-sts.{domain}", "TXT")]
        assert rec.value == f'"v=STSv1; id={want}"'
        assert rec.when_cert_covers == f"mta-sts.{domain}"


def test_tls_reports_go_to_the_admin() -> None:
    r = values(box())
    for domain in ("alpha.test", "beta.test"):
        assert r[(f"_smtp._tls.{domain}", "TXT")] == ['"v=TLSRPTv1; rua=mailto:admin@alpha.test"']
    assert ("_smtp._tls.alpha.test", "TXT") not in values(box(users=()))
    assert ("_smtp._tls.alpha.test", "TXT") not in values(box(acme=None))
    chosen = values(box(options={"admin_email": "ops@elsewhere.test"}))
    assert chosen[("_smtp._tls.beta.test", "TXT")] == ['"v=TLSRPTv1; rua=mailto:ops@elsewhere.test"']


def test_caa_at_every_zone_apex() -> None:
    for hostname, zones in (
        ("mx.alpha.test", ["alpha.test", "beta.test"]),
        ("box.provider.test", ["alpha.test", "beta.test", "box.provider.test"]),
    ):
        h = box(hostname=hostname, name=hostname)
        assert dnszones.zones_of(h) == zones
        r = values(h)
        for zone in zones:
            want = ['0 issue "letsencrypt.org"', '0 issuewild ";"', '0 iodef "mailto:admin@alpha.test"']
            assert r[(zone, "CAA")] == want
        assert ("mta-sts.box.provider.test", "A") not in r  # the hostname is not a mail domain
    r = values(box(acme=Acme(LE, caa="pebble.test"), users=()))
    assert r[("alpha.test", "CAA")] == ['0 issue "pebble.test"', '0 issuewild ";"']  # no admin, no iodef
    assert ("alpha.test", "CAA") not in values(box(acme=Acme(LE, caa=None)))
    assert ("alpha.test", "CAA") not in values(box(acme=None))
    # The operator's CAA replaces the generated ones at its name, as any record of the same type does.
    own = values(box(dns_records=(DNSRecord("alpha.test", "CAA", '0 issue "other.test"'),)))
    assert own[("alpha.test", "CAA")] == ['0 issue "other.test"']
    assert len(own[("beta.test", "CAA")]) == 3


def test_the_zone_body_carries_the_mta_sts_record_as_a_condition_the_box_decides() -> None:
    h = box()
    body = dnszones.zone_body(h, "beta.test")
    pid = mtasts.policy_id(h)
    conditional = [line for line in body.splitlines() if "_mta-sts" in line]
    assert conditional == [f';@IF-CERT-COVERS mta-sts.beta.test@ _mta-sts 1800 IN TXT "v=STSv1; id={pid}"']
    # Without the condition the line is a comment to any zone parser; with it, a record that parses.
    assert dnszones.conditional_names(body) == ["mta-sts.beta.test"]
    sample = body.replace("@SERIAL@", "7").replace("@DKIM@", '"k"')
    plain = dns.zone.from_text(sample, origin="beta.test", relativize=False)
    assert plain.get_rdataset("_mta-sts.beta.test.", "TXT") is None
    included = dns.zone.from_text(dnszones.include_conditions(sample), origin="beta.test", relativize=False)
    txt = included.get_rdataset("_mta-sts.beta.test.", "TXT")
    assert txt is not None and txt[0].to_text() == f'"v=STSv1; id={pid}"'
    assert included.get_rdataset("beta.test.", "CAA") is not None
    assert dnszones.conditional_names(dnszones.zone_body(box(acme=None), "beta.test")) == []


def test_dns_lists_the_mta_sts_record_with_its_condition() -> None:
    """`miab-remote dns NAME` for a box whose records another DNS host serves: the _mta-sts record says when
    to publish it (the records as dns_info builds them once it read the box's DKIM key)."""
    from miab_remote.jobs import dns as dnsjob

    h = box(options={"dns": "external"})
    records = dnsjob.external_records(h, '"v=DKIM1; k=rsa; p=KEY"')
    [rec] = [r for r in records["beta.test"] if r["name"] == "_mta-sts.beta.test"]
    assert rec["when_cert_covers"] == "mta-sts.beta.test"
    others = [r for recs in records.values() for r in recs if not r["name"].startswith("_mta-sts.")]
    assert len(others) > 40 and all("when_cert_covers" not in r for r in others)
    assert json.loads(json.dumps(records)) == records
    lines = dnsjob.zone_file_lines(h, records["beta.test"])
    i = lines.index(f'_mta-sts.beta.test. 1800 IN TXT "v=STSv1; id={mtasts.policy_id(h)}"')
    assert lines[i - 1] == (
        "; only while the box's certificate covers mta-sts.beta.test (`miab-remote check mx.alpha.test` says so):"
    )
    assert lines[0] == "beta.test. 1800 IN NS ns1.mx.alpha.test."


def test_the_dns_command_prints_the_condition(tmp_path: Path, ssh_box: SSHBox) -> None:
    """`miab-remote dns NAME` as the operator runs it, the DKIM key read over SSH from a stand-in box."""
    name = "mx.alpha.test"
    doc = new_document(name, "127.0.0.1", provider="manual", host_keys=[ssh_box.host_key.public_line], os="debian-12",
                       ssh_port=ssh_box.port)  # fmt: skip
    doc["ipv4"] = "203.0.113.7"
    doc["domains"] = ["alpha.test", "beta.test"]
    doc["ssh"]["identity_file"] = str(ssh_box.identity)
    doc["options"] = {"dns": "external", "admin_email": "ops@elsewhere.test"}
    doc["acme"] = {"directory": "staging"}
    Inventory(tmp_path / "hosts").create(name, doc)
    dkim = b'mail._domainkey IN TXT ( "v=DKIM1; k=rsa; " "p=KEY" )\n'
    ssh_box.server.answer = lambda command, _input: (dkim, 0) if command.startswith("cat ") else (b"", 97)
    r = accounts_cli(tmp_path, "dns", name, stdin=None)
    assert r.code == 0, r.err
    host = Inventory(tmp_path / "hosts").load(name)
    lines = r.out.splitlines()
    i = lines.index(f'_mta-sts.beta.test. 1800 IN TXT "v=STSv1; id={mtasts.policy_id(host)}"')
    assert lines[i - 1].startswith("; only while the box's certificate covers mta-sts.beta.test ")
    assert '_smtp._tls.beta.test. 1800 IN TXT "v=TLSRPTv1; rua=mailto:ops@elsewhere.test"' in lines
    assert 'alpha.test. 1800 IN CAA 0 issue "letsencrypt.org"' in lines
    assert any("_mta-sts.beta.test" in line and "only while the box's certificate covers" in line for line in lines)
