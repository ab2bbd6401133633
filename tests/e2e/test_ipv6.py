"""IPv6 end to end, on two real local boxes of this lane: each gets an address in the bridge's ULA /64 (the
stand-in for a cloud's IPv6: nothing here leaves this machine), recorded in its inventory; the box's DNS
publishes AAAA beside every A; postfix, dovecot, nginx and nsd answer on it, ufw drops what is not open over
IPv6 as over IPv4, fail2ban bans IPv6 addresses; mail goes from one box to the other over IPv6 only, with DKIM
and SPF passing; `check` finds the PTR of both addresses (the lane's dnsmasq answers PTR for the boxes, as a
cloud's reverse DNS does once set) and warns when one is missing.

"IPv6 only": the sending box's namespace (from this machine, as a cloud's firewall would) rejects every
IPv4 connection to port 25, so its postfix can reach the receiver over IPv6 only; a delivery then proves that
the receiver's AAAA, its postfix on IPv6 and, at the receiver, the sender's AAAA under its SPF (`mx`) all work,
and the Received line names the sender's IPv6 address. The box's own configuration is untouched (restricting
postfix itself, inet_protocols = ipv6, also cuts it off from its milters and policy services on 127.0.0.1).
A box without that block takes IPv6 too when the receiver has AAAA (smtp_address_preference = ipv6), which the
next mail test shows.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest

from miab_remote.fleet.store import Inventory
from miab_remote.mail import dnszones, layout
from miab_remote.mail.passwords import hash_password
from miab_remote.providers.local import LocalConfig
from tests.e2e.helpers import (
    E2E_ENV,
    Box,
    cli,
    deployed_box,
    edit_inventory,
    new_inventory,
    operator_key,
    wait_until,
)
from tests.e2e.mailclients import Mail, message

pytestmark = pytest.mark.e2e

A, B = "mx.alpha-six.test", "mx.beta-six.test"
ALICE, BOB = "alice@alpha-six.test", "bob@beta-six.test"
PW = {ALICE: "alice-six-pass", BOB: "bob-six-pass1"}
CLOSED_PORT = 8089  # something listens there on the box, and ufw does not open it


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_inventory(tmp_path_factory.mktemp("ipv6") / "hosts")


@pytest.fixture(scope="module")
def boxes(inv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Box]]:
    """The two boxes, reached as root over their IPv4 address (the boxes' IPv6 handles: six())."""
    inventories = {
        A: {"users": [{"email": ALICE, "password_hash": hash_password(PW[ALICE])}], "options": {"greylist_delay": 0}},
        B: {"users": [{"email": BOB, "password_hash": hash_password(PW[BOB])}], "options": {"greylist_delay": 0}},
    }
    with deployed_box(inv, operator_key(tmp_path_factory.mktemp("operator")), inventories) as made:
        yield made.boxes


def ipv6_of(inv: Path, name: str) -> str:
    value = tomllib.loads((inv / f"{name}.toml").read_text()).get("ipv6")
    assert isinstance(value, str), f"{name}'s inventory records no ipv6"
    return value


def six(inv: Path, boxes: dict[str, Box], name: str) -> Box:
    """The same box, reached over its IPv6 address (SSH, and every client built on a Box)."""
    b = boxes[name]
    return Box(ipv6_of(inv, name), f"ssh-ed25519 {b.host_key.get_base64()}", b.identity)


def mail_over_six(inv: Path, boxes: dict[str, Box], name: str) -> Mail:
    box = six(inv, boxes, name)
    return Mail(box, name, box.run(f"cat {layout.TLS_CERT}")[1])


def ask(server: str, name: str, rtype: str, tcp: bool = False) -> list[str]:
    q = dns.message.make_query(name, rtype)
    r = dns.query.tcp(q, server, timeout=5) if tcp else dns.query.udp(q, server, timeout=5)
    assert r.flags & dns.flags.AA, f"{server} is not authoritative for {name}"
    return sorted(rd.to_text() for rrset in r.answer if rrset.rdtype == dns.rdatatype.from_text(rtype) for rd in rrset)


@contextlib.contextmanager
def ipv4_smtp_rejected(name: str, receiver: str) -> Iterator[None]:
    """In the box's network namespace, an nft table of the test's own that rejects IPv4 connections to port 25
    (the box's own firewall, ufw, is not touched); the block is checked on `receiver` (an IPv4 address whose
    port 25 answers otherwise), and removed afterwards."""
    netns = json.loads((Path(E2E_ENV["MIAB_REMOTE_LOCAL_DIR"]) / name / "box.json").read_text())["netns"]
    table = "ip e2e_no_ipv4_smtp"
    rules = f"table {table} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n"
    rules += "  tcp dport 25 counter reject with tcp reset\n }\n}\n"
    nft = ["ip", "netns", "exec", netns, "nft"]
    subprocess.run([*nft, "-f", "-"], input=rules, text=True, check=True)
    try:
        probe = [
            "ip",
            "netns",
            "exec",
            netns,
            sys.executable,
            "-c",
            f"import socket; socket.create_connection(('{receiver}', 25), 3)",
        ]
        refused = subprocess.run(probe, capture_output=True, text=True)
        assert refused.returncode != 0 and "ConnectionRefusedError" in refused.stderr, refused.stderr
        yield
    finally:
        subprocess.run([*nft, "delete", "table", *table.split()], check=True)


def test_create_records_the_boxes_ipv6_address(inv: Path, boxes: dict[str, Box]) -> None:
    subnet6 = LocalConfig(bridge=E2E_ENV["MIAB_REMOTE_LOCAL_BRIDGE"]).subnet6  # the lane's bridge's own ULA /64
    for name, box in boxes.items():
        v6 = ipaddress.IPv6Address(ipv6_of(inv, name))
        assert v6 in subnet6 and v6.is_private
        assert f"inet6 {v6}/64 scope global" in box.run("ip -6 addr show dev eth0")[1]
        assert six(inv, boxes, name).run("hostname")[1].strip() == name  # SSH over IPv6, same pinned key


def test_the_box_publishes_aaaa_beside_every_a_and_nsd_answers_on_ipv6(inv: Path, boxes: dict[str, Box]) -> None:
    host = Inventory(inv).load(B)
    v4, v6 = boxes[B].address, ipv6_of(inv, B)
    names = sorted({r.name for zone in dnszones.records(host).values() for r in zone if r.type == "A"})
    assert {B, f"ns1.{B}", "beta-six.test", "www.beta-six.test"} <= set(names)
    for name in names:
        assert ask(v6, name, "A") == [v4], name
        assert ask(v6, name, "AAAA") == [v6], name
    assert ask(v6, "beta-six.test", "MX", tcp=True) == [f"10 {B}."]
    assert ask(v6, "beta-six.test", "TXT") == ['"v=spf1 mx -all"']  # `mx`: the MX host's A and AAAA both


def test_imap_submission_and_https_answer_on_ipv6(inv: Path, boxes: dict[str, Box]) -> None:
    mail = mail_over_six(inv, boxes, B)
    mail.imap(BOB, PW[BOB]).logout()
    for port in (465, 587):
        conn = mail.smtp(port)
        try:
            if port == 587:
                mail.starttls(conn)
            conn.login(BOB, PW[BOB])
        finally:
            conn.quit()
    with (
        socket.create_connection((ipv6_of(inv, B), 443), timeout=10) as sock,
        mail.tls.wrap_socket(sock, server_hostname=B) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {B}\r\nConnection: close\r\n\r\n".encode())
        assert tls.recv(64).startswith(b"HTTP/1.1 ")


def test_ufw_drops_a_port_it_does_not_open_over_ipv6(inv: Path, boxes: dict[str, Box]) -> None:
    box, v6 = boxes[B], ipv6_of(inv, B)
    box.run(f"systemd-run --unit=e2e-listener --collect python3 -m http.server --bind :: -d /tmp {CLOSED_PORT}")
    try:
        # On the box itself the port answers (over IPv6, and IPv4); from this machine the SYN is dropped, a
        # timeout, not a refusal, over IPv6 as over IPv4.
        probe = f"python3 -c 'import socket; socket.create_connection((\"{v6}\", {CLOSED_PORT}), 3).close()'"
        wait_until(lambda: box.run(probe, check=False)[0] == 0, "the listener on the box", 30)
        for address in (v6, box.address):
            with pytest.raises(TimeoutError):
                socket.create_connection((address, CLOSED_PORT), timeout=3).close()
        with contextlib.closing(socket.create_connection((v6, 25), timeout=5)) as smtp:  # an open port does answer
            assert smtp.recv(64).startswith(b"220 ")
    finally:
        box.run("systemctl stop e2e-listener", check=False)


def test_fail2ban_bans_an_ipv6_address(inv: Path, boxes: dict[str, Box]) -> None:
    box = boxes[B]
    banned = "fd00:dead:beef::99"  # nothing uses it: the ban is read back from fail2ban's nftables set
    box.run(f"fail2ban-client set postfix-sasl banip {banned}")
    try:
        assert banned in box.run("nft list table inet f2b-table")[1]
        res = cli(inv, "bans", B)
        assert res.code == 0 and banned in res.out, res.err + res.out
    finally:
        box.run(f"fail2ban-client set postfix-sasl unbanip {banned}", check=False)


def test_mail_over_ipv6_only_is_delivered_with_dkim_and_spf_passing(inv: Path, boxes: dict[str, Box]) -> None:
    with contextlib.closing(socket.create_connection((boxes[B].address, 25), timeout=5)) as smtp:
        assert smtp.recv(64).startswith(b"220 "), "the receiver answers SMTP over IPv4"
    with ipv4_smtp_rejected(A, boxes[B].address):
        subject = "from alpha to beta over IPv6 only"
        mail_over_six(inv, boxes, A).submit(ALICE, PW[ALICE], message(ALICE, BOB, subject))  # 587 on IPv6
        got = mail_over_six(inv, boxes, B).wait_for(BOB, PW[BOB], "INBOX", lambda m: m["Subject"] == subject, 90)
    received = " ".join(str(h) for h in got.get_all("Received") or [])
    assert f"[IPv6:{ipv6_of(inv, A)}]" in received, received
    results = " ".join(str(h) for h in got.get_all("Authentication-Results") or [])
    assert "dkim=pass" in results and "header.d=alpha-six.test" in results, results
    assert "spf=pass smtp.mailfrom=alpha-six.test" in " ".join(results.split()), results  # of that client


def test_a_box_sends_over_ipv6_when_the_receiver_has_aaaa(inv: Path, boxes: dict[str, Box]) -> None:
    subject = "from beta to alpha, as the boxes are"
    Mail(boxes[B], B, boxes[B].run(f"cat {layout.TLS_CERT}")[1]).submit(BOB, PW[BOB], message(BOB, ALICE, subject))
    got = mail_over_six(inv, boxes, A).wait_for(ALICE, PW[ALICE], "INBOX", lambda m: m["Subject"] == subject, 90)
    received = " ".join(str(h) for h in got.get_all("Received") or [])
    assert f"[IPv6:{ipv6_of(inv, B)}]" in received, received
    results = " ".join(str(h) for h in got.get_all("Authentication-Results") or [])
    assert "dkim=pass" in results and "spf=pass" in results, results


def test_check_finds_the_ptr_of_both_addresses_and_warns_of_a_missing_one(inv: Path, boxes: dict[str, Box]) -> None:
    v4, v6 = boxes[A].address, ipv6_of(inv, A)
    res = cli(inv, "check", A, "--json")
    by_name = {c["name"]: c for c in res.json()["hosts"][A]["checks"]}
    assert res.code == 0, [c for c in by_name.values() if not c["ok"]]
    for ip in (v4, v6):
        assert by_name[f"reverse DNS {ip}"]["status"] == "ok" and by_name[f"reverse DNS {ip}"]["detail"] == A
    for name in ("published ipv4", "published ipv6", f"DNS AAAA {A}", "DNS AAAA alpha-six.test"):
        assert by_name[name]["status"] == "ok", by_name[name]
    # An address nobody has set reverse DNS for (the inventory says another, not yet deployed): a warning.
    other = str(ipaddress.IPv6Address(v6) + 200)
    edit_inventory(inv, A, ipv6=other)
    try:
        res = cli(inv, "check", A, "--json")
        item = {c["name"]: c for c in res.json()["hosts"][A]["checks"]}[f"reverse DNS {other}"]
        assert item["status"] == "warning" and "no PTR record" in item["detail"], item
        assert f"set the reverse DNS (PTR) of {other} to {A} at the provider" in item["fix"], item
    finally:
        edit_inventory(inv, A, ipv6=v6)


def test_a_no_op_deploy_changes_nothing(inv: Path, boxes: dict[str, Box]) -> None:
    res = cli(inv, "deploy", A, B, "--json")
    assert res.code == 0, res.errors()
    assert {n: h["changed"] for n, h in res.json()["hosts"].items()} == {A: 0, B: 0}
    assert not any(n for h in res.json()["hosts"].values() for n in h["notes"] if "local resolver" in n)
