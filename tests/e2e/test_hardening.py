"""The hardened box against a real local box: a port scan finds only the allowed ports open, fail2ban bans
an address that keeps failing IMAP (and SASL) logins and `miab-remote unban` lifts it, SSH takes keys only,
time sync is reported not applicable in a container, unattended security upgrades are on, testssl.sh finds
no protocol below TLS 1.2 and no severe finding (the box's certificate from ACME, pebble, as a box on the
internet has one: trusted through pebble's root, a 90-day life, an OCSP address), and a second deploy changes
nothing."""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import imaplib
import json
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from miab_remote.fleet.store import Inventory
from miab_remote.mail import layout
from miab_remote.mail.passwords import hash_password
from miab_remote.profiles import PROFILES
from tests.e2e.helpers import (
    HOST_ADDRESS,
    SUBNET_PREFIX,
    Box,
    acme_boxes,
    cli,
    new_inventory,
    operator_key,
)
from tests.e2e.mailclients import _IMAPS, Mail, message

pytestmark = pytest.mark.e2e

NAME = "hard.hardtest.test"
DOMAIN = "hardtest.test"
USER, PASSWORD = f"alice@{DOMAIN}", "alice-hard-secret-1"
# The host's address on the e2e bridge: what the box sees as our source address.
ALLOWED_TCP = {22, 25, 53, 80, 443, 465, 587, 993, 4190}
ALWAYS_OPEN = {22, 25, 465, 587, 993, 4190}
MAXRETRY = 5
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_inventory(tmp_path_factory.mktemp("hardening") / "hosts")


@pytest.fixture(scope="module")
def first_deploy(inv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Box, dict[str, Any], Path]]:
    """The box deployed with [acme] from a pebble of its own (Let's Encrypt's 90 days), its first deploy's
    report and pebble's root (a PEM file)."""
    inventory = {"users": [{"email": USER, "password_hash": hash_password(PASSWORD)}]}
    key = operator_key(tmp_path_factory.mktemp("operator"))
    folder = tmp_path_factory.mktemp("pebble")
    with acme_boxes(inv, key, {NAME: inventory}, folder) as (made, pebble):
        root = folder / "root.pem"
        root.write_text(pebble.root())
        yield made.box, made.host_run(NAME), root


@pytest.fixture(scope="module")
def box(first_deploy: tuple[Box, dict[str, Any], Path]) -> Box:
    return first_deploy[0]


@pytest.fixture(scope="module")
def root(first_deploy: tuple[Box, dict[str, Any], Path]) -> Path:
    return first_deploy[2]


@pytest.fixture(scope="module")
def recipes(inv: Path, box: Box) -> tuple[str, ...]:
    return Inventory(inv).load(NAME).recipes


@pytest.fixture(scope="module")
def mail(box: Box, root: Path) -> Mail:
    return Mail(box, NAME, ca_file=root)


@pytest.fixture
def no_bans(box: Box) -> Iterator[None]:
    """Whatever a test did, it leaves no ban behind (later tests connect from the same address)."""
    yield
    box.run("fail2ban-client unban --all")


# -- helpers ---------------------------------------------------------------------------------------------------
def scan(address: str, ports: range, timeout: float = 0.5, concurrency: int = 500) -> set[int]:
    """A TCP connect scan: the ports that accept a connection. A port ufw drops times out (`timeout`)."""

    async def probe(port: int, gate: asyncio.Semaphore) -> bool:
        async with gate:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
            except (TimeoutError, OSError):
                return False
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True

    async def run() -> set[int]:
        gate = asyncio.Semaphore(concurrency)
        found = await asyncio.gather(*(probe(p, gate) for p in ports))
        return {p for p, ok in zip(ports, found, strict=True) if ok}

    return asyncio.run(run())


def connect_state(address: str, port: int, timeout: float = 3.0) -> str:
    """Says "open", "refused" (a RST or an ICMP unreachable: fail2ban's reject) or "timeout" (ufw's drop)."""
    try:
        socket.create_connection((address, port), timeout=timeout).close()
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"


def wait_for_state(address: str, port: int, want: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (state := connect_state(address, port)) != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"port {port}: still {state} after {timeout} s, expected {want}")
        time.sleep(0.5)


def listening_ports(box: Box) -> set[int]:
    """TCP ports the box listens on, on an address other hosts can reach (not loopback)."""
    ports = set()
    for line in box.run("ss -Hltn")[1].splitlines():
        local = line.split()[3]
        addr, _, port = local.rpartition(":")
        if addr.strip("[]") not in ("127.0.0.1", "::1") and not addr.startswith("127."):
            ports.add(int(port))
    return ports


def bans(inv: Path) -> dict[str, list[str]]:
    res = cli(inv, "bans", NAME, "--json")
    assert res.code == 0, res.err + res.out
    jails: dict[str, list[str]] = res.json()["hosts"][NAME]["jails"]
    return jails


def failed_imap_login(box: Box, mail: Mail) -> None:
    conn = _IMAPS(box.address, NAME, mail.tls)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            conn.login(USER, "not-the-password")
    finally:
        conn.shutdown()  # dovecot logs the failure when the client goes


def failed_sasl_login(box: Box, mail: Mail) -> None:
    conn = mail.smtp(587)
    try:
        mail.starttls(conn)
        conn.user, conn.password = USER, "not-the-password"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            conn.auth("PLAIN", conn.auth_plain)  # one attempt (login() would try PLAIN, then LOGIN)
    finally:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            conn.quit()


def failed_webmail_login(box: Box, tls: ssl.SSLContext) -> None:
    """One failed roundcube login, as a browser does it: the login page (a session and its token), then the form."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), urllib.request.HTTPSHandler(context=tls)
    )
    with opener.open(f"https://{box.address}/", timeout=20) as page:  # redirected to roundcube
        url, html = page.geturl(), page.read().decode()
    token = re.search(r'name="_token" value="([^"]+)"', html)
    assert token, f"no login form at {url}"
    form = {"_token": token.group(1), "_task": "login", "_action": "login", "_timezone": "UTC", "_url": ""}
    form |= {"_user": USER, "_pass": "not-the-password"}
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(url.split("?")[0] + "?_task=login", urllib.parse.urlencode(form).encode(), timeout=20)
    assert refused.value.code == 401


# -- firewall --------------------------------------------------------------------------------------------------
def test_port_scan_finds_only_the_allowed_ports(box: Box, recipes: tuple[str, ...]) -> None:
    # A service on a port the firewall does not allow: up on the box, unreachable from outside.
    box.run("systemd-run --unit=hardtest-http --property=WorkingDirectory=/tmp python3 -m http.server 8088")
    try:
        box.run("for i in $(seq 50); do ss -Hltn 'sport = :8088' | grep -q . && exit 0; sleep 0.1; done; exit 1")
        box.run("python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8088/', timeout=5)\"")
        listening = listening_ports(box)
        assert 8088 in listening
        started = time.monotonic()
        found = scan(box.address, range(1, 10001))
        seconds = time.monotonic() - started
        # Re-check any surprise, slowly, so that a busy machine never makes this flaky.
        expected = listening & ALLOWED_TCP
        for port in found ^ expected:
            if (connect_state(box.address, port, timeout=3) == "open") != (port in found):
                found ^= {port}
        assert found == expected, f"open: {sorted(found)}; expected: {sorted(expected)} (scan took {seconds:.1f} s)"
        assert found <= ALLOWED_TCP
        assert found >= ALWAYS_OPEN
        if "webmail" in recipes:
            assert {80, 443} <= found
        if "nsd" in recipes:
            assert 53 in found
        assert connect_state(box.address, 8088) == "timeout", "ufw drops what it does not allow"
    finally:
        box.run("systemctl stop hardtest-http", check=False)
    status = box.run("ufw status verbose")[1]
    assert "Status: active" in status and "deny (incoming)" in status, status


# -- SSH -------------------------------------------------------------------------------------------------------
def test_ssh_takes_keys_only(box: Box) -> None:
    effective = box.run("sshd -T")[1].splitlines()
    for line in ("passwordauthentication no", "kbdinteractiveauthentication no", "permitrootlogin without-password"):
        assert line in effective
    # The local provider's host key setting is kept.
    assert box.run("test -s /etc/ssh/sshd_config.d/miab-remote-hostkey.conf", check=False)[0] == 0
    password = "hardtest-root-password-1"
    box.run("chpasswd", stdin=f"root:{password}\n".encode())  # on stdin, never on a command line

    t = paramiko.Transport((box.address, 22))
    try:
        t.start_client(timeout=10)
        assert t.get_remote_server_key().asbytes() == box.host_key.asbytes()
        with pytest.raises(paramiko.BadAuthenticationType) as none:
            t.auth_none("root")
        assert none.value.allowed_types == ["publickey"]
    finally:
        t.close()

    client = box.pinned_client()
    try:
        with pytest.raises(paramiko.AuthenticationException):
            client.connect(
                box.address, username="root", password=password, look_for_keys=False, allow_agent=False, timeout=10
            )
    finally:
        client.close()
    box.run("true")  # the key still gets in


# -- time and upgrades -----------------------------------------------------------------------------------------
def test_time_sync_is_not_applicable_in_a_container(first_deploy: tuple[Box, dict[str, Any], Path], box: Box) -> None:
    run = first_deploy[1]
    assert run["failed"] == 0 and run["error"] is None
    why = {u["resource"]: u["why"] for u in run["unchanged"]}
    assert "not applicable" in why["command:time-sync"], why["command:time-sync"]
    assert box.run("systemd-detect-virt --container")[1].strip() == "systemd-nspawn"
    assert box.run("dpkg-query -W -f='${Status}' chrony")[1] == "install ok installed"
    # chrony's unit needs CAP_SYS_TIME, which a local box never has: skipped, not failed.
    assert box.run("systemctl show chrony -p ConditionResult")[1].strip() == "ConditionResult=no"
    assert box.run("systemctl is-failed chrony", check=False)[1].strip() != "failed"


def test_unattended_security_upgrades_are_on(inv: Path, box: Box) -> None:
    box.run("test -s /etc/apt/apt.conf.d/20auto-upgrades && test -s /etc/apt/apt.conf.d/50unattended-upgrades")
    dump = box.run("apt-config dump | grep -E '^(APT::Periodic|Unattended-Upgrade)'")[1].splitlines()
    assert 'APT::Periodic::Unattended-Upgrade "1";' in dump
    assert 'APT::Periodic::Update-Package-Lists "1";' in dump
    origins = [line for line in dump if line.startswith("Unattended-Upgrade::Origins-Pattern:: ")]
    assert origins and all("label=Debian-Security" in line for line in origins), origins
    allowed = box.run("unattended-upgrade --dry-run --debug 2>&1 | grep -m1 'Allowed origins'")[1]
    suite = f"{PROFILES[str(Inventory(inv).load(NAME).os)].codename}-security"  # the box's own release's
    assert suite in allowed and "label=Debian," not in allowed, allowed
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        assert box.run(f"systemctl is-active {timer}")[1].strip() == "active"
        assert box.run(f"systemctl is-enabled {timer}")[1].strip() == "enabled"


# -- TLS -------------------------------------------------------------------------------------------------------
def run_testssl(box: Box, port: int, root: Path, starttls: str | None) -> list[dict[str, Any]]:
    ARTIFACTS.mkdir(exist_ok=True)
    report = ARTIFACTS / f"testssl-{NAME}-{port}.json"
    report.unlink(missing_ok=True)
    argv = [
        "testssl",
        "--quiet",
        "--color",
        "0",
        "--warnings",
        "batch",
        "--nodns",
        "none",  # never a DNS lookup: the name is the box's, its address is given
        "--ip",
        box.address,
        "--add-ca",
        str(root),  # pebble's root, as a client trusts Let's Encrypt's: the chain is checked like a real one
        "-p",  # protocols
        "-s",  # cipher categories (NULL, export, LOW, 3DES, ...)
        "-S",  # server defaults, the certificate
        "-U",  # vulnerabilities
        "--jsonfile",
        str(report),
        *(["--starttls", starttls] if starttls else []),
        f"{NAME}:{port}",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert report.exists(), f"testssl wrote no report for {port}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    findings: list[dict[str, Any]] = json.loads(report.read_text())
    return findings


@pytest.mark.skipif(shutil.which("testssl") is None, reason="needs testssl.sh (scripts/setup-host --test)")
def test_testssl_finds_tls_12_at_least_and_nothing_severe(box: Box, recipes: tuple[str, ...], root: Path) -> None:
    targets: dict[int, str | None] = {465: None, 993: None, 587: "smtp"}
    if "webmail" in recipes:
        targets[443] = None
    with ThreadPoolExecutor(len(targets)) as pool:
        futures = {port: pool.submit(run_testssl, box, port, root, starttls) for port, starttls in targets.items()}
        reports = {port: f.result() for port, f in futures.items()}
    problems = []
    for port, findings in reports.items():
        by_id = {f["id"]: f for f in findings}
        for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
            assert old in by_id, f"{port}: testssl did not check {old}"
            if by_id[old]["finding"] != "not offered":
                problems.append(f"{port}: {old} {by_id[old]['finding']}")
        assert by_id["TLS1_2"]["finding"] == "offered", f"{port}: TLS 1.2 {by_id['TLS1_2']['finding']}"
        # The chain checked against pebble's root, up from a certificate the box did not issue itself.
        assert by_id["cert_chain_of_trust"]["finding"].startswith("passed"), by_id["cert_chain_of_trust"]
        assert by_id["cert_caIssuers"]["finding"] != NAME, by_id["cert_caIssuers"]
        for f in findings:
            if f["severity"] in ("HIGH", "CRITICAL", "FATAL"):
                problems.append(f"{port}: {f['id']} {f['severity']}: {f['finding']}")
    assert not problems, "\n".join(problems) + f"\n(reports in {ARTIFACTS})"


# -- fail2ban --------------------------------------------------------------------------------------------------
def test_failed_imap_logins_ban_the_address_and_unban_lifts_it(inv: Path, box: Box, mail: Mail, no_bans: None) -> None:
    mail.imap(USER, PASSWORD).logout()
    assert all(not addresses for addresses in bans(inv).values())
    for _ in range(MAXRETRY):
        failed_imap_login(box, mail)
    wait_for_state(box.address, 993, "refused")
    assert HOST_ADDRESS in bans(inv)["dovecot"]
    # The ban covers the dovecot jail's ports only: mail submission and SSH still reach the box.
    assert connect_state(box.address, 587) == "open"
    box.run("true")

    res = cli(inv, "unban", NAME, HOST_ADDRESS)
    assert res.code == 0, res.err + res.out
    assert f"unbanned {HOST_ADDRESS} (dovecot" in res.out, res.out
    mail.imap(USER, PASSWORD).logout()
    assert HOST_ADDRESS not in bans(inv)["dovecot"]

    res = cli(inv, "unban", NAME, HOST_ADDRESS)
    assert res.code == 0 and "not banned" in res.out, res.err + res.out


def test_failed_sasl_logins_on_587_ban_submission(inv: Path, box: Box, mail: Mail, no_bans: None) -> None:
    for _ in range(MAXRETRY):
        failed_sasl_login(box, mail)
    wait_for_state(box.address, 587, "refused")
    assert connect_state(box.address, 465) == "refused"
    assert HOST_ADDRESS in bans(inv)["postfix-sasl"]
    res = cli(inv, "unban", NAME, HOST_ADDRESS, "--jail", "postfix-sasl")
    assert res.code == 0, res.err + res.out
    assert connect_state(box.address, 587) == "open"
    mail.submit(USER, PASSWORD, message(USER, USER, "after the ban"))


def test_failed_webmail_logins_ban_the_web_ports(
    inv: Path, box: Box, recipes: tuple[str, ...], root: Path, no_bans: None
) -> None:
    if "webmail" not in recipes:
        pytest.skip("no webmail recipe on this box")
    tls = ssl.create_default_context(cafile=str(root))
    tls.check_hostname = False  # reached by address; the chain is still checked, against pebble's root only
    for _ in range(MAXRETRY):
        failed_webmail_login(box, tls)
    wait_for_state(box.address, 443, "refused")
    assert HOST_ADDRESS in bans(inv)["roundcube-auth"]
    assert connect_state(box.address, 993) == "open"
    res = cli(inv, "unban", NAME, HOST_ADDRESS, "--jail", "roundcube-auth")
    assert res.code == 0, res.err + res.out
    assert connect_state(box.address, 443) == "open"


def test_unban_refuses_bad_input(inv: Path, box: Box) -> None:
    for bad in (f"{SUBNET_PREFIX}.300", "example.org", ""):
        res = cli(inv, "unban", NAME, bad)
        assert res.code == 2 and "not an IP address" in res.err, res.err + res.out
    res = cli(inv, "unban", NAME, HOST_ADDRESS, "--jail", "no-such-jail")
    assert res.code == 2 and "no fail2ban jail 'no-such-jail'" in res.err, res.err + res.out
    res = cli(inv, "unban", "nobox.hardtest.test", HOST_ADDRESS)
    assert res.code == 2, res.err + res.out


# -- the certificate ------------------------------------------------------------------------------------------
def served_certificate(box: Box, port: int) -> x509.Certificate:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # read it; judged below
    with socket.create_connection((box.address, port), timeout=10) as sock, ctx.wrap_socket(sock) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def assert_strict_verifiers_accept(box: Box, chain_pem: str, root: Path, ports: list[int]) -> None:
    """`cryptography`'s verifier (webpki rules, which refuse a CA certificate as a server's) on the box's chain,
    and OpenSSL with X509_STRICT on what each port serves, each with pebble's root as the only trust anchor."""
    leaf, *intermediates = x509.load_pem_x509_certificates(chain_pem.encode())
    anchors = Store(x509.load_pem_x509_certificates(root.read_bytes()))
    PolicyBuilder().store(anchors).build_server_verifier(x509.DNSName(NAME)).verify(leaf, intermediates)
    for port in ports:
        ctx = ssl.create_default_context(cafile=str(root))
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        with (
            socket.create_connection((box.address, port), timeout=10) as sock,
            ctx.wrap_socket(sock, server_hostname=NAME) as tls,
        ):
            assert tls.getpeercert(binary_form=True) == leaf.public_bytes(serialization.Encoding.DER), port


def assert_end_entity(cert: x509.Certificate) -> None:
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert ExtendedKeyUsageOID.SERVER_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    # mta-sts.DOMAIN too once the box's zone gives it the box's address (which names are ordered is test_acme's).
    want = {NAME, f"autoconfig.{DOMAIN}", f"autodiscover.{DOMAIN}"}
    assert want <= set(names) <= want | {f"mta-sts.{DOMAIN}"} and len(names) == len(set(names)), names
    assert cert.issuer != cert.subject, "the CA's certificate, not a self-signed one"


def test_certificate_is_the_cas_end_entity_one_and_a_deploy_puts_it_back(
    inv: Path, box: Box, recipes: tuple[str, ...], root: Path
) -> None:
    ports = [993, 465] + ([443] if "webmail" in recipes else [])
    chain = box.run(f"cat {layout.TLS_CERT}")[1]
    leaf = x509.load_pem_x509_certificates(chain.encode())[0]
    assert_end_entity(leaf)
    for port in ports:
        assert served_certificate(box, port) == leaf, port
    assert_strict_verifiers_accept(box, chain, root, ports)
    # A certificate replaced on the box (here a CA:TRUE self-signed one, as the first versions of the tls
    # recipe made) is replaced by the CA's again at the next deploy, from the same key; the deploy after it
    # changes nothing (test_second_deploy_changes_nothing).
    key = box.sha256(layout.TLS_KEY)
    box.run(
        f"openssl req -x509 -new -key {layout.TLS_KEY} -sha256 -days 3650 -subj /CN={NAME} "
        f"-addext subjectAltName=DNS:{NAME} -out {layout.TLS_CERT}.old && mv {layout.TLS_CERT}.old {layout.TLS_CERT} "
        "&& systemctl restart dovecot"
    )
    assert served_certificate(box, 993).extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    res = cli(inv, "deploy", NAME, "--json")
    assert res.code == 0, res.errors()
    changed = {a["resource"] for a in res.json()["hosts"][NAME]["actions"]}
    assert "command:tls-key" not in changed, changed
    assert box.sha256(layout.TLS_KEY) == key
    assert box.run(f"cat {layout.TLS_CERT}")[1] == chain
    for port in ports:
        assert served_certificate(box, port) == leaf, port
    assert_strict_verifiers_accept(box, chain, root, ports)


# -- idempotence -----------------------------------------------------------------------------------------------
def test_second_deploy_changes_nothing(inv: Path, box: Box) -> None:
    rules = box.sha256("/etc/ufw/user.rules")
    res = cli(inv, "deploy", NAME, "--json")
    assert res.code == 0, res.err
    run = res.json()["hosts"][NAME]
    assert run["changed"] == 0 and run["failed"] == 0, run["actions"]
    assert box.sha256("/etc/ufw/user.rules") == rules
