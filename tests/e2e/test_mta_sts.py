"""MTA-STS, TLS-RPT and CAA on a box with [acme] whose CA is Debian's pebble on this lane's bridge: the policy
fetched over HTTPS (verified against pebble's root, by name) and parsed as RFC 8461 says; `_mta-sts`,
`_smtp._tls` and CAA answered by the box's nsd once the certificate covers mta-sts.DOMAIN; the policy id and
the zone's serial the same after a no-op deploy; `check`'s ACME items. Then outgoing MTA-STS: with the
policy in enforce mode, a second box (without [acme]) delivers to the first only over TLS it verifies."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest

from miab_remote.fleet.store import Inventory
from miab_remote.mail import acme, mtasts
from miab_remote.mail.passwords import hash_password
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
from tests.standins.pebble import Pebble

pytestmark = pytest.mark.e2e

NAME = "mx.alpha-sts.test"
DOMAIN = "alpha-sts.test"
ADMIN = f"admin@{DOMAIN}"
CAA = "pebble.test"  # pebble checks no CAA; the box publishes what the inventory says
SENDER = "mx.sender-sts.test"


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_inventory(tmp_path_factory.mktemp("mta-sts") / "hosts")


@pytest.fixture(scope="module")
def boxes(inv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Box], Pebble]]:
    users = [{"email": ADMIN, "password_hash": hash_password("mta-sts-admin-pass")}]
    identity = operator_key(tmp_path_factory.mktemp("operator"))
    inventories = {NAME: {"users": users, "options": {"greylist_delay": 0}}, SENDER: {}}
    # Made before pebble starts: the lane's bridge (pebble's address) exists once its first box is up.
    with (
        deployed_box(inv, identity, inventories, deploy=False) as made,
        Pebble(tmp_path_factory.mktemp("pebble"), HOST_ADDRESS) as pebble,
    ):
        edit_inventory(inv, NAME, acme={"directory": pebble.directory, "ca_file": str(pebble.listener_ca), "caa": CAA})
        first = cli(inv, "deploy", NAME, SENDER, "--json")
        assert first.code == 0, first.errors()
        yield made.boxes, pebble


@pytest.fixture(scope="module")
def box(boxes: tuple[dict[str, Box], Pebble]) -> tuple[Box, Pebble]:
    """The box with [acme] and its CA."""
    return boxes[0][NAME], boxes[1]


@pytest.fixture(scope="module")
def sender(boxes: tuple[dict[str, Box], Pebble]) -> Box:
    """The second box: it sends mail to the first, and has no [acme]."""
    return boxes[0][SENDER]


def ask(box: Box, name: str, rtype: str) -> list[str]:
    r = dns.query.udp(dns.message.make_query(name, rtype), box.address, timeout=5)
    assert r.flags & dns.flags.AA, f"{box.address} is not authoritative for {name}"
    return sorted(rd.to_text() for rrset in r.answer if rrset.rdtype == dns.rdatatype.from_text(rtype) for rd in rrset)


def fetch_policy(box: Box, root_pem: str) -> tuple[str, dict[str, str], bytes]:
    """GET the policy as a sender does (RFC 8461 3.3): HTTPS to mta-sts.DOMAIN, its certificate verified by
    name against the CA's root. Returns the status line, the headers and the body."""
    context = ssl.create_default_context(cadata=root_pem)
    host = f"{mtasts.LABEL}.{DOMAIN}"
    with (
        socket.create_connection((box.address, 443), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        tls.sendall(f"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


def parse_policy(body: bytes) -> dict[str, list[str]]:
    """RFC 8461 3.2: `key: value` lines ending in CRLF (LF tolerated by senders; the box sends CRLF)."""
    text = body.decode("ascii")
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    out: dict[str, list[str]] = {}
    for line in text.split("\r\n")[:-1]:
        key, sep, value = line.partition(":")
        assert sep, line
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_policy_is_served_over_verified_https(box: tuple[Box, Pebble]) -> None:
    b, pebble = box
    status, headers, body = fetch_policy(b, pebble.root())
    assert status.split()[1] == "200", status
    assert headers["content-type"].split(";")[0] == "text/plain"
    assert parse_policy(body) == {
        "version": ["STSv1"],
        "mode": ["testing"],
        "mx": [NAME],
        "max_age": [str(mtasts.MAX_AGE)],
    }


def test_nsd_serves_mta_sts_tls_rpt_and_caa(box: tuple[Box, Pebble], inv: Path) -> None:
    b, _ = box
    host = Inventory(inv).load(NAME)
    assert ask(b, f"_mta-sts.{DOMAIN}", "TXT") == [f'"v=STSv1; id={mtasts.policy_id(host)}"']
    assert ask(b, f"mta-sts.{DOMAIN}", "A") == [b.address]
    assert ask(b, f"_smtp._tls.{DOMAIN}", "TXT") == [f'"v=TLSRPTv1; rua=mailto:{ADMIN}"']
    assert ask(b, DOMAIN, "CAA") == sorted([f'0 issue "{CAA}"', '0 issuewild ";"', f'0 iodef "mailto:{ADMIN}"'])


def test_a_no_op_deploy_keeps_the_policy_id_and_the_serial(box: tuple[Box, Pebble], inv: Path) -> None:
    b, _ = box
    before = ask(b, f"_mta-sts.{DOMAIN}", "TXT"), ask(b, DOMAIN, "SOA"), b.sha256(mtasts.POLICY_FILE)
    again = cli(inv, "deploy", NAME, "--json")
    assert again.code == 0, again.errors()
    run = again.json()["hosts"][NAME]
    assert run["changed"] == 0, run
    assert (ask(b, f"_mta-sts.{DOMAIN}", "TXT"), ask(b, DOMAIN, "SOA"), b.sha256(mtasts.POLICY_FILE)) == before


def test_check_reports_the_certificate_its_renewal_and_the_records(box: tuple[Box, Pebble], inv: Path) -> None:
    res = cli(inv, "check", NAME, "--json")
    checks = {c["name"]: c for c in res.json()["hosts"][NAME]["checks"]}
    cert = checks["ACME certificate"]
    assert cert["status"] == "ok" and cert["detail"].startswith(f"from {box[1].directory}, "), cert
    assert checks["ACME renewal"]["status"] == "ok", checks["ACME renewal"]
    names = checks["ACME names"]
    assert names["status"] == "ok" and f"mta-sts.{DOMAIN}" in names["detail"], names
    for name in (f"DNS TXT _mta-sts.{DOMAIN}", f"DNS TXT _smtp._tls.{DOMAIN}", f"DNS CAA {DOMAIN}"):
        assert checks[name]["status"] == "ok", checks[name]
    assert "issued by" in checks["TLS certificate"]["detail"], checks["TLS certificate"]


def test_check_says_why_the_last_renewal_failed(box: tuple[Box, Pebble], inv: Path) -> None:
    """certbot.service (as Debian's timer starts it) with the renewal due and the CA unreachable: check fails
    its ACME renewal item with certbot's own lines. Last: the renewal conf is put back afterwards."""
    b, _ = box
    conf = f"{acme.CERTBOT_DIR}/renewal/{acme.LINEAGE}.conf"
    saved = "/root/miab-test-renewal.conf"
    b.run(
        f"cp -p {conf} {saved} && sed -i -e 's|^server = .*|server = https://{HOST_ADDRESS}:9/dir|' "
        f"-e 's|^renew_before_expiry = .*|renew_before_expiry = 3650 days|' {conf}"
    )
    try:
        code, out = b.run("systemctl start certbot.service", check=False)
        assert code != 0, out
        res = cli(inv, "check", NAME, "--json")
        renewal = {c["name"]: c for c in res.json()["hosts"][NAME]["checks"]}["ACME renewal"]
        assert renewal["status"] == "failed", renewal
        assert renewal["detail"].startswith("certbot.service's last run failed (exit-code, "), renewal
        assert "miab-remote" in renewal["detail"] and "journalctl -u certbot.service" in renewal["fix"], renewal
        assert res.code == 1
    finally:
        b.run(f"mv {saved} {conf} && systemctl reset-failed certbot.service")


# -- outgoing: a sender box honours the policy ----------------------------------------------------------------
PEBBLE_TRUST = "/usr/local/share/ca-certificates/miab-e2e-pebble-root.crt"
SOCKETMAP = "socketmap:inet:127.0.0.1:8461:postfix"


def policy_for(sender: Box, domain: str) -> str:
    """What the sender's postfix-mta-sts-resolver tells postfix about `domain` (postmap asks the socketmap as
    postfix's smtp client does); empty when it has no policy to apply."""
    return sender.run(f"postmap -q {domain} {SOCKETMAP}", check=False)[1].strip()


def trust_pebble(sender: Box, root_pem: str) -> None:
    """The web PKI's stand-in: the sender trusts pebble's root as a box on the internet trusts Let's Encrypt's
    (the system's CAs, which postfix and the policy resolver use). The resolver starts afresh (no policy or
    failed fetch cached), postfix's smtp processes read the CA file anew."""
    sender.run(f"cat > {PEBBLE_TRUST} && update-ca-certificates >/dev/null 2>&1", stdin=root_pem.encode())
    sender.run(
        "systemctl stop postfix-mta-sts-resolver && rm -f /var/lib/mta-sts/cache.db "
        "&& systemctl start postfix-mta-sts-resolver && postfix reload 2>/dev/null"
    )


def distrust_pebble(sender: Box) -> None:
    """Takes that trust away from postfix; the resolver keeps the policy it has (RFC 8461 5.1: a sender keeps
    applying a cached policy until it expires)."""
    sender.run(f"rm -f {PEBBLE_TRUST} && update-ca-certificates --fresh >/dev/null 2>&1 && postfix reload 2>/dev/null")


def send_from(sender: Box, subject: str) -> None:
    sender.run(
        f"/usr/sbin/sendmail -f root@{SENDER} {ADMIN}",
        stdin=f"From: root@{SENDER}\nTo: {ADMIN}\nSubject: {subject}\n\nbody\n".encode(),
    )


def test_outgoing_mail_to_an_enforced_policy_goes_only_over_verified_tls(
    box: tuple[Box, Pebble], sender: Box, inv: Path
) -> None:
    """Last in the module: the box's policy moves to enforce. The sender (another box, without [acme]) then
    delivers to it only over TLS with a certificate it verifies for the MX's name; when it cannot verify
    it, the mail waits in its queue (never sent unverified) and goes once it can."""
    b, pebble = box
    assert policy_for(sender, DOMAIN) == ""  # testing mode: reports only, nothing enforced
    edit_inventory(inv, NAME, acme={"directory": pebble.directory, "ca_file": str(pebble.listener_ca), "caa": CAA,
                                    "mta_sts": "enforce"})  # fmt: skip
    res = cli(inv, "deploy", NAME, "--json")
    assert res.code == 0, res.errors()
    trust_pebble(sender, pebble.root())
    wait_until(lambda: policy_for(sender, DOMAIN).startswith("secure match="), "the sender fetches the policy", 60)
    assert policy_for(sender, DOMAIN).split()[:2] == ["secure", f"match={NAME}"]  # 1.5 adds servername=hostname

    send_from(sender, "over verified TLS")

    def smtp_log() -> str:
        return sender.run("journalctl --no-pager -o cat -t postfix/smtp")[1]

    def sent() -> bool:
        return any(f"to=<{ADMIN}>" in line and "status=sent" in line for line in smtp_log().splitlines())

    wait_until(sent, "the sender delivers to the box", 90)
    # To the box's IPv6 address or its IPv4 one (postfix prefers IPv6 where the box publishes it, as local
    # boxes do).
    six = Inventory(inv).load(NAME).ipv6
    assert any(f"Verified TLS connection established to {NAME}[{ip}]:25" in smtp_log() for ip in (six, b.address))

    distrust_pebble(sender)  # the box's certificate can no longer be verified by the sender
    send_from(sender, "must wait for verified TLS")

    def deferred() -> bool:
        return "server certificate not verified" in sender.run("postqueue -p")[1].lower()

    wait_until(deferred, "the sender keeps the mail queued: the box's certificate is not verified", 90)
    assert policy_for(sender, DOMAIN).startswith(f"secure match={NAME}")  # still enforced, from the resolver's cache
    sender.run(f"cat > {PEBBLE_TRUST} && update-ca-certificates >/dev/null 2>&1 && postfix reload 2>/dev/null",
               stdin=pebble.root().encode())  # fmt: skip
    sender.run("postqueue -f")
    wait_until(lambda: "Mail queue is empty" in sender.run("postqueue -p")[1], "the queued mail goes out", 90)
