"""DNSSEC on a real local box (of E2E_IMAGE; on the other release test_dns's `check` validates each zone's
chain, from the box's DS down to its SOA, MX, DKIM, TLSA and SSHFP): the zone nsd serves validates with
dnspython from the DS record that `miab-remote dns --json` prints down to the MX, the box's TLSA and SSHFP
and the DKIM records; a no-op deploy changes neither serial nor signatures; a content change signs again;
signatures near their expiry are renewed by the timer's service; `check` validates the chain and says whether
the registrar has the DS; another algorithm makes another key (and another DS)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from miab_remote.providers.local import resolver
from tests.e2e.helpers import Box, cli, deployed_box, edit_inventory, new_inventory, operator_key
from tests.standins.core import lane_config

pytestmark = pytest.mark.e2e

NAME = "mx.alpha-sec.test"
ZONE = "alpha-sec.test"
DAY = 86400


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_inventory(tmp_path_factory.mktemp("dnssec") / "hosts")


@pytest.fixture(scope="module")
def box(inv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    inventories = {NAME: {"domains": [ZONE]}}
    with deployed_box(inv, operator_key(tmp_path_factory.mktemp("operator")), inventories) as made:
        yield made.boxes[NAME]


def answer(box: Box, name: str, rtype: str) -> tuple[dns.rrset.RRset, dns.rrset.RRset]:
    """The RRset and its RRSIGs, asked of the box's nsd with the DO bit (over TCP: DNSKEY answers are big)."""
    q = dns.message.make_query(name, rtype, want_dnssec=True)
    r = dns.query.tcp(q, box.address, timeout=5)
    assert r.flags & dns.flags.AA, f"{box.address} is not authoritative for {name}"
    owner, rdtype = dns.name.from_text(name), dns.rdatatype.from_text(rtype)
    rrset = r.find_rrset(r.answer, owner, dns.rdataclass.IN, rdtype)
    sigs = r.find_rrset(r.answer, owner, dns.rdataclass.IN, dns.rdatatype.RRSIG, rdtype)
    return rrset, sigs


def registrar_ds(inv: Path) -> dict[str, Any]:
    res = cli(inv, "dns", NAME, "--json")
    assert res.code == 0, res.err
    data: dict[str, Any] = res.json()
    assert "warning" not in data, data
    return data["dnssec"][ZONE]


def validate_from(box: Box, ds_text: str, names: list[tuple[str, str]]) -> None:
    """The chain of trust from the DS down: the DNSKEY the DS points at signs the DNSKEY RRset, which
    signs every RRset named. Raises dns.dnssec.ValidationFailure (or an assertion) where it breaks."""
    origin = dns.name.from_text(ZONE)
    ds = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DS, ds_text)
    dnskeys, sigs = answer(box, ZONE, "DNSKEY")
    trusted = [k for k in dnskeys if dns.dnssec.make_ds(origin, k, "SHA256") == ds]
    assert trusted, f"no DNSKEY of {ZONE} matches the DS {ds_text}"
    dns.dnssec.validate(dnskeys, sigs, {origin: dns.rrset.from_rdata_list(origin, dnskeys.ttl, trusted)})
    for name, rtype in names:
        rrset, rrsigs = answer(box, name, rtype)
        dns.dnssec.validate(rrset, rrsigs, {origin: dnskeys})


MAIL_NAMES = [(ZONE, "SOA"), (ZONE, "MX"), (f"mail._domainkey.{ZONE}", "TXT"), (f"_25._tcp.{NAME}", "TLSA"),
              (NAME, "SSHFP")]  # fmt: skip


def soa_signature(box: Box) -> tuple[int, str]:
    """The zone's serial and its SOA's signature (a new signature is new text: ECDSA signs with a nonce)."""
    soa, sigs = answer(box, ZONE, "SOA")
    return soa[0].serial, sigs[0].to_text()


def test_the_signed_zone_validates_from_the_ds_that_dns_prints(inv: Path, box: Box) -> None:
    key = registrar_ds(inv)
    assert key["algorithm"] == 13 and key["algorithm_name"] == "ECDSAP256SHA256"
    assert key["ds"].startswith(f"{key['keytag']} 13 2 ") and key["dnskey"].startswith("257 3 13 ")
    validate_from(box, key["ds"], MAIL_NAMES)
    table = cli(inv, "dns", NAME)
    assert table.code == 0, table.err
    assert f"DS      {key['ds']}" in table.out and f"DNSKEY  {key['dnskey']}" in table.out, table.out
    # The keys are in the state tree (backups carry them), the private one for root only.
    mode = box.run(f"stat -c '%a %U' /home/user-data/dns/dnssec/K{ZONE}.+013+{key['keytag']:05d}.private")[1]
    assert mode.strip() == "600 root"


def test_a_no_op_deploy_changes_neither_serial_nor_signatures(inv: Path, box: Box) -> None:
    before = soa_signature(box)
    res = cli(inv, "deploy", NAME, "--json")
    assert res.code == 0 and res.json()["hosts"][NAME]["changed"] == 0, res.json()["hosts"][NAME]["actions"]
    assert soa_signature(box) == before


def test_a_content_change_signs_again(inv: Path, box: Box) -> None:
    serial, signature = soa_signature(box)
    extra = {"name": f"extra.{ZONE}", "type": "TXT", "value": '"signed too"'}
    edit_inventory(inv, NAME, dns={"records": [extra]})
    res = cli(inv, "deploy", NAME, "--json")
    assert res.code == 0, res.err
    now = soa_signature(box)
    assert now[0] > serial and now[1] != signature
    validate_from(box, registrar_ds(inv)["ds"], [*MAIL_NAMES, (extra["name"], "TXT")])


def test_signatures_near_their_expiry_are_renewed_by_the_timer(inv: Path, box: Box) -> None:
    assert box.run("systemctl is-enabled miab-zones-resign.timer")[1].strip() == "enabled"
    assert box.run("systemctl is-active miab-zones-resign.timer")[1].strip() == "active"
    key = registrar_ds(inv)
    zone_file, keyfile = f"/etc/nsd/zones/{ZONE}.zone", f"/home/user-data/dns/dnssec/K{ZONE}.+013+{key['keytag']:05d}"
    soon = time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() + 3 * DAY))
    # Signed once by hand to expire in 3 days, the builder's first line (serial, source) kept: only the
    # signatures are due, not the content.
    box.run(
        f"set -e; head -1 {zone_file} > /tmp/head; "
        f"ldns-read-zone -e RRSIG -e NSEC3 -e NSEC3PARAM -e DNSKEY {zone_file} > /tmp/unsigned; "
        f"ldns-signzone -n -t 0 -e {soon} -f /tmp/signed /tmp/unsigned {keyfile}; "
        f"cat /tmp/head /tmp/signed > {zone_file}; systemctl reload nsd"
    )
    serial, _ = soa_signature(box)
    _, sigs = answer(box, ZONE, "SOA")
    assert sigs[0].expiration < time.time() + 4 * DAY
    box.run("systemctl start miab-zones-resign.service")
    new_serial, _ = soa_signature(box)
    _, sigs = answer(box, ZONE, "SOA")
    assert new_serial > serial and sigs[0].expiration > time.time() + 25 * DAY
    validate_from(box, key["ds"], MAIL_NAMES)
    # And once renewed, the timer's next run changes nothing.
    box.run("systemctl start miab-zones-resign.service")
    assert soa_signature(box)[0] == new_serial


def dnssec_checks(inv: Path) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """`check`'s exit code, and its lines for the zone's chain and for the DS at the registrar."""
    res = cli(inv, "check", NAME, "--json")
    checks = {c["name"]: c for c in res.json()["hosts"][NAME]["checks"]}
    return res.code, checks[f"DNSSEC {ZONE}"], checks[f"DNSSEC DS {ZONE} at the registrar"]


def test_check_validates_the_chain_and_says_whether_the_registrar_has_the_ds(inv: Path, box: Box) -> None:
    """The local provider's resolver is the registrar's stand-in: it publishes the DS after each deploy, and
    here the test plays the registrar with a wrong DS and with none."""
    key = registrar_ds(inv)
    _, chain, parent = dnssec_checks(inv)
    assert chain["status"] == "ok", chain
    assert f"key tag {key['keytag']} (ECDSAP256SHA256): DNSKEY, SOA, MX, TXT, TLSA, SSHFP validate" in chain["detail"]
    assert parent["status"] == "ok" and parent["detail"] == f"yes: {key['ds']}", parent
    cfg, zone_file = lane_config(), f"/etc/nsd/zones/{ZONE}.zone"
    tag, algorithm, digest_type, _ = key["ds"].split()
    wrong = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DS, f"{tag} {algorithm} {digest_type} {'0' * 64}")
    box.run(f"cp {zone_file} /tmp/good.zone")
    try:
        resolver.publish(cfg, NAME, [ZONE], [box.address], {ZONE: wrong})
        code, chain, parent = dnssec_checks(inv)
        assert code == 1 and parent["status"] == "failed", parent
        assert parent["detail"].startswith(f"does not match: the registrar publishes {wrong.to_text()}, ")
        assert key["ds"] in parent["detail"] and chain["status"] == "ok"
        resolver.publish(cfg, NAME, [ZONE], [box.address], {})
        _, _, parent = dnssec_checks(inv)
        assert parent["status"] == "warning" and parent["detail"].startswith("missing: "), parent
        # The zone signed by another key than the DS's: the chain breaks at the DNSKEY RRset.
        box.run(
            f"set -e; cd /tmp; rm -f K{ZONE}.*; other=$(ldns-keygen -a 13 -k -r /dev/urandom {ZONE}); "
            f"head -1 {zone_file} > head; "
            f"ldns-read-zone -e RRSIG -e NSEC3 -e NSEC3PARAM -e DNSKEY {zone_file} > unsigned; "
            f"ldns-signzone -n -t 0 -f signed unsigned $other; cat head signed > {zone_file}; systemctl reload nsd"
        )
        code, chain, _ = dnssec_checks(inv)
        assert code == 1 and chain["status"] == "failed", chain
        assert "the chain from the DS breaks: the nameserver does not publish the key of the DS" in chain["detail"]
    finally:
        box.run(f"cp /tmp/good.zone {zone_file} && systemctl reload nsd")
        assert cli(inv, "deploy", NAME).code == 0  # the registrar's stand-in gets the DS again
    _, chain, parent = dnssec_checks(inv)
    assert chain["status"] == "ok" and parent["status"] == "ok", (chain, parent)


def test_another_algorithm_makes_another_key(inv: Path, box: Box) -> None:
    old = registrar_ds(inv)
    edit_inventory(inv, NAME, dns={"dnssec_algorithm": "ED25519"})
    res = cli(inv, "deploy", NAME, "--json")
    assert res.code == 0, res.err
    key = registrar_ds(inv)
    assert key["algorithm"] == 15 and key["ds"] != old["ds"]
    validate_from(box, key["ds"], MAIL_NAMES)
    with pytest.raises(AssertionError, match="no DNSKEY"):  # the registrar's old DS no longer leads to a key
        validate_from(box, old["ds"], MAIL_NAMES)
