"""Box B is the secondary nameserver of box A ([dns] secondaries), two real local boxes: B answers
authoritatively for A's zones with A's serial and A's signatures (validated from the DS that `dns A`
prints), a transfer without the TSIG key is refused, a new domain on A
appears on B after A's deploy, a second deploy changes nothing, `check` of A says whether B serves each
zone, and with A stopped B still answers, also through the lane's resolver (the registrar stand-in).

The boxes run only what DNS needs (base, hardening: its firewall must let the transfers through, opendkim:
the zones' key, nsd), so the module stays quick; the mail stack is test_dns's. They run on E2E_IMAGE only, to
keep CI within its time; test_dns proves each release's nsd and signing."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import dns.xfr
import dns.zone
import pytest

from miab_remote.mail import secondary
from tests.e2e.helpers import (
    HOST_ADDRESS,
    Box,
    cli,
    deployed_box,
    edit_inventory,
    new_inventory,
    operator_key,
    wait_until,
)

pytestmark = pytest.mark.e2e

A, B = "ns.alpha-2nd.test", "ns.beta-2nd.test"
A_ZONES = ("alpha-2nd.test", "second-alpha-2nd.test")
NEW_ZONE = "third-alpha-2nd.test"
RECIPES = ["base", "hardening", "opendkim", "nsd"]


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_inventory(tmp_path_factory.mktemp("secondary") / "hosts")


@pytest.fixture(scope="module")
def boxes(inv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Box]]:
    inventories = {
        A: {"recipes": RECIPES, "domains": list(A_ZONES), "dns": {"secondaries": [B]}},
        B: {"recipes": RECIPES},
    }
    with deployed_box(inv, operator_key(tmp_path_factory.mktemp("operator")), inventories) as made:
        yield made.boxes


def answer(address: str, name: str, rtype: str) -> dns.message.Message | None:
    try:
        return dns.query.udp(dns.message.make_query(name, rtype), address, timeout=3)
    except (dns.exception.Timeout, OSError):
        return None


def soa_serial(address: str, zone: str) -> int | None:
    """The zone's SOA serial as the server answers it authoritatively (aa set), or None."""
    r = answer(address, zone, "SOA")
    if r is None or not r.flags & dns.flags.AA or r.rcode() != dns.rcode.NOERROR or not r.answer:
        return None
    return int(r.answer[0][0].serial)


def records(address: str, name: str, rtype: str) -> list[str]:
    r = answer(address, name, rtype)
    assert r is not None and r.flags & dns.flags.AA, f"{address} does not answer {name} {rtype} authoritatively"
    return sorted(rd.to_text() for rrset in r.answer if rrset.rdtype == dns.rdatatype.from_text(rtype) for rd in rrset)


def in_step(boxes: dict[str, Box], zone: str) -> bool:
    serial = soa_serial(boxes[A].address, zone)
    return serial is not None and soa_serial(boxes[B].address, zone) == serial


def test_the_secondary_answers_authoritatively_with_the_primarys_serial(boxes: dict[str, Box]) -> None:
    a, b = boxes[A], boxes[B]
    for zone in A_ZONES:
        wait_until(lambda zone=zone: in_step(boxes, zone), f"{B} serves {zone} with {A}'s serial", timeout=60)
        for name, rtype in ((zone, "NS"), (zone, "MX"), (f"mail._domainkey.{zone}", "TXT"), (zone, "A")):
            assert records(b.address, name, rtype) == records(a.address, name, rtype), (name, rtype)
        assert records(b.address, zone, "NS") == [f"ns1.{A}.", f"ns1.{B}.", f"ns2.{A}.", f"ns2.{B}."]
    # B is no secondary of its own zone: that one is B's, and A serves none of it.
    assert soa_serial(b.address, "beta-2nd.test") is not None and soa_serial(a.address, "beta-2nd.test") is None


def signed(address: str, name: str, rtype: str) -> tuple[dns.rrset.RRset, dns.rrset.RRset]:
    """The RRset and its RRSIGs as the server answers them with the DO bit (over TCP: DNSKEY answers are big)."""
    r = dns.query.tcp(dns.message.make_query(name, rtype, want_dnssec=True), address, timeout=5)
    assert r.flags & dns.flags.AA, f"{address} does not answer {name} {rtype} authoritatively"
    owner, rdtype = dns.name.from_text(name), dns.rdatatype.from_text(rtype)
    rrset = r.find_rrset(r.answer, owner, dns.rdataclass.IN, rdtype)
    return rrset, r.find_rrset(r.answer, owner, dns.rdataclass.IN, dns.rdatatype.RRSIG, rdtype)


def test_the_secondary_serves_the_primarys_signatures_which_validate_from_its_ds(
    inv: Path, boxes: dict[str, Box]
) -> None:
    """Signed zones transfer as they are: B holds no key, yet its answers validate from A's DS."""
    a, b = boxes[A], boxes[B]
    res = cli(inv, "dns", A, "--json")
    assert res.code == 0, res.err
    for zone in A_ZONES:
        wait_until(lambda zone=zone: in_step(boxes, zone), f"{B} serves {zone} with {A}'s serial", timeout=60)
        origin = dns.name.from_text(zone)
        ds = res.json()["dnssec"][zone]["ds"]
        dnskeys, sigs = signed(b.address, zone, "DNSKEY")
        trusted = [k for k in dnskeys if dns.dnssec.make_ds(origin, k, "SHA256").to_text() == ds]
        assert trusted, f"no DNSKEY that {B} serves for {zone} matches {A}'s DS {ds}"
        dns.dnssec.validate(dnskeys, sigs, {origin: dns.rrset.from_rdata_list(origin, dnskeys.ttl, trusted)})
        for name, rtype in ((zone, "SOA"), (zone, "MX"), (f"mail._domainkey.{zone}", "TXT")):
            rrset, rrsigs = signed(b.address, name, rtype)
            dns.dnssec.validate(rrset, rrsigs, {origin: dnskeys})  # raises ValidationFailure if it does not
            assert rrsigs == signed(a.address, name, rtype)[1], f"{name} {rtype}: A's own signatures"
    assert b.run(f"ls /home/user-data/dns/dnssec/ | grep -c '^K{A_ZONES[0]}' || true")[1].strip() == "0"


AXFR_FROM_BOX = r"""
import socket, struct, sys
name = b"".join(bytes([len(p)]) + p.encode() for p in sys.argv[2].split(".")) + b"\0"
query = struct.pack(">HHHHHH", 0x5ec0, 0, 1, 0, 0, 0) + name + struct.pack(">HH", 252, 1)
s = socket.create_connection((sys.argv[1], 53), timeout=5)
s.sendall(struct.pack(">H", len(query)) + query)
head = b""
while len(head) < 6:
    head += s.recv(6 - len(head))
print(struct.unpack(">H", head[4:6])[0] & 15)
"""


def test_a_transfer_without_the_key_is_refused(boxes: dict[str, Box]) -> None:
    a, b = boxes[A], boxes[B]
    zone = A_ZONES[0]
    # From the secondary's own address (the one the primary lets transfer), but unsigned: REFUSED (5).
    _code, out = b.run(f"python3 - {a.address} {zone}", stdin=AXFR_FROM_BOX.encode())
    assert out.strip() == str(dns.rcode.REFUSED), out
    # From this machine (not a secondary): refused as well.
    with pytest.raises(dns.xfr.TransferError) as e:
        dns.zone.from_xfr(dns.query.xfr(a.address, zone, timeout=5, lifetime=10))
    assert e.value.rcode == dns.rcode.REFUSED
    # ... while the secondary, with the key, has every record of the zone.
    assert records(b.address, f"www.{zone}", "A") == [a.address]


def test_a_new_domain_on_the_primary_is_on_the_secondary_after_its_deploy(inv: Path, boxes: dict[str, Box]) -> None:
    edit_inventory(inv, A, domains=[*A_ZONES, NEW_ZONE])
    res = cli(inv, "deploy", A, "--json")
    assert res.code == 0, res.errors()
    wait_until(lambda: in_step(boxes, NEW_ZONE), f"{B} serves the new {NEW_ZONE}", timeout=60)
    assert records(boxes[B].address, NEW_ZONE, "MX") == [f"10 {A}."]


def test_a_second_deploy_of_both_changes_nothing(inv: Path, boxes: dict[str, Box]) -> None:
    before = {zone: soa_serial(boxes[A].address, zone) for zone in (*A_ZONES, NEW_ZONE)}
    res = cli(inv, "deploy", A, B, "--json")
    assert res.code == 0, res.errors()
    hosts = json.loads(res.out)["hosts"]
    assert {n: h["changed"] for n, h in hosts.items()} == {A: 0, B: 0}, res.out
    assert {zone: soa_serial(boxes[B].address, zone) for zone in before} == before


def secondary_items(inv: Path) -> dict[str, dict[str, str]]:
    res = cli(inv, "check", A, "--json")
    checks = json.loads(res.out)["hosts"][A]["checks"]
    return {c["name"]: c for c in checks if c["name"].startswith("DNS secondary")}


def test_check_says_whether_the_secondary_serves_each_zone(inv: Path, boxes: dict[str, Box]) -> None:
    zones = (*A_ZONES, NEW_ZONE)
    items = secondary_items(inv)
    assert sorted(items) == sorted(f"DNS secondary {B} {zone}" for zone in zones), items
    assert all(c["status"] == "ok" for c in items.values()), items
    boxes[B].run("systemctl stop nsd")
    try:
        items = secondary_items(inv)
        assert all(c["status"] == "failed" and "does not serve" in c["detail"] for c in items.values()), items
        assert items[f"DNS secondary {B} {NEW_ZONE}"]["fix"] == f"miab-remote deploy {A} {B}"
    finally:
        boxes[B].run("systemctl start nsd")
    wait_until(lambda: all(in_step(boxes, zone) for zone in zones), f"{B} serves {A}'s zones again", timeout=60)


def copies_on_disk(b: Box) -> list[str]:
    return sorted(b.run(f"ls {secondary.COPIES_DIR}")[1].split())


def test_with_the_primary_stopped_the_secondary_still_answers(boxes: dict[str, Box]) -> None:
    """Also after a restart of B's nsd with A down: B serves the copies it wrote to disk, including one
    whose file was missing at an earlier start (nsd, told by its state file that it held that serial, would
    not have transferred it again, and would not have written it)."""
    a, b = boxes[A], boxes[B]
    zones = (*A_ZONES, NEW_ZONE)
    files = sorted(f"{zone}.zone" for zone in zones)
    serial = soa_serial(a.address, A_ZONES[0])
    b.run(f"rm -f {secondary.COPIES_DIR}/{A_ZONES[0]}.zone && systemctl restart nsd")
    wait_until(lambda: copies_on_disk(b) == files, f"{B} writes its copies of {A}'s zones to disk", timeout=90)
    with contextlib.suppress(Exception):  # the connection may drop as the box goes down
        a.run("systemctl poweroff", check=False)

    def down() -> bool:
        try:
            socket.create_connection((a.address, 22), timeout=1).close()
        except OSError:
            return answer(a.address, A_ZONES[0], "SOA") is None
        return False

    wait_until(down, f"{A} is stopped", timeout=90)
    b.run("systemctl restart nsd")
    wait_until(lambda: all(soa_serial(b.address, zone) for zone in zones), f"{B} serves {A}'s zones", timeout=20)
    assert soa_serial(b.address, A_ZONES[0]) == serial
    assert records(b.address, A_ZONES[0], "MX") == [f"10 {A}."]
    # Through the lane's resolver (the registrar stand-in delegates A's zones to A and to B, as the NS
    # records do): a name nobody asked before, so it is B's answer, not one dnsmasq kept.
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [HOST_ADDRESS]
    got = resolver.resolve(f"_dmarc.{NEW_ZONE}", "TXT", lifetime=20)
    assert [rd.to_text() for rd in got] == ['"v=DMARC1; p=quarantine;"']
