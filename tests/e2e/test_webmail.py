"""Webmail and autoconfiguration against a real local box with a certificate from ACME (pebble, as a box on the
internet has one from Let's Encrypt): a headless Chromium logs into roundcube, reads a message sent over SMTP
and replies from the browser, which verifies the box's certificate against pebble's root (and refuses one
from another CA); HTTP goes to HTTPS, HSTS, TLS 1.2 at least, the autoconfiguration documents on every name
the certificate covers, roundcube's state in the state tree with a des_key made on the box, no apache, and a
second deploy that touches nothing."""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import uuid
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Error

from miab_remote.mail import layout
from miab_remote.mail.passwords import hash_password
from tests.e2e.browser import chromium, goto, https_page
from tests.e2e.helpers import Box, acme_boxes, cli, new_inventory, operator_key
from tests.e2e.mailclients import Mail, message
from tests.standins.testca import CA

pytestmark = pytest.mark.e2e

NAME = "web.webtest.test"
DOMAIN = "webtest.test"
OTHER = "webother.test"
IMPOSTOR = f"www.{DOMAIN}"  # a page on this machine's loopback, its certificate from another CA
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{OTHER}"
PASSWORDS = {ALICE: "alice-web-secret-1", BOB: "bob-web-secret-22"}
ROUNDCUBE = f"{layout.STATE}/roundcube"
SECRETS = f"{ROUNDCUBE}/secrets.inc.php"
DATABASE = f"{ROUNDCUBE}/db/roundcube.sqlite"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
FIRST_DEPLOY: dict[str, Any] = {}


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_inventory(tmp_path_factory.mktemp("webmail") / "hosts")


@pytest.fixture(scope="module")
def acme(inv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Box, Path]]:
    """The box, deployed with [acme] from a pebble of its own (Let's Encrypt's 90 days), and pebble's root (a
    PEM file)."""
    inventory = {
        "domains": [DOMAIN, OTHER],
        "users": [{"email": e, "password_hash": hash_password(p)} for e, p in PASSWORDS.items()],
        "options": {"greylist_delay": 2},
    }
    key = operator_key(tmp_path_factory.mktemp("operator"))
    folder = tmp_path_factory.mktemp("pebble")
    with acme_boxes(inv, key, {NAME: inventory}, folder) as (made, pebble):
        FIRST_DEPLOY.update(made.host_run(NAME), wall=made.deploy_seconds)
        root = folder / "root.pem"
        root.write_text(pebble.root())
        yield made.box, root


@pytest.fixture(scope="module")
def box(acme: tuple[Box, Path]) -> Box:
    return acme[0]


@pytest.fixture(scope="module")
def root(acme: tuple[Box, Path]) -> Path:
    return acme[1]


@pytest.fixture(scope="module")
def tls(root: Path) -> ssl.SSLContext:
    """Trusts pebble's root only (not the system's) and checks that the certificate names the box."""
    ctx = ssl.create_default_context(cafile=str(root))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@pytest.fixture(scope="module")
def mail(box: Box, root: Path) -> Mail:
    return Mail(box, NAME, ca_file=root)


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def get(box: Box, host: str, path: str, tls: ssl.SSLContext | None = None, sni: str | None = None) -> Response:
    """One GET to the box's address with this Host header, over TLS (SNI `sni`, default `host`) or not."""
    conn = http.client.HTTPConnection(box.address, 443 if tls else 80, timeout=20)
    try:
        conn.connect()
        if tls is not None:
            conn.sock = tls.wrap_socket(conn.sock, server_hostname=sni or host)
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def test_first_deploy_installs_no_apache(box: Box) -> None:
    assert FIRST_DEPLOY["changed"] > 0 and FIRST_DEPLOY["failed"] == 0
    print(f"first deploy: {FIRST_DEPLOY['seconds']} s on the box, {FIRST_DEPLOY['wall']:.1f} s in all")
    installed = box.run("dpkg-query -W -f '${Package} ${db:Status-Status}\\n' | awk '$2 == \"installed\" {print $1}'")
    apache = [p for p in installed[1].split() if "apache" in p]
    assert apache == [], f"apache is installed: {apache}"
    listeners = box.run("ss -Hltnp 'sport = :80 or sport = :443'")[1]
    assert "nginx" in listeners and "apache" not in listeners, listeners


def test_plain_http_redirects_to_https(box: Box) -> None:
    resp = get(box, NAME, "/mail/?_task=mail")
    assert resp.status == 301 and resp.headers["Location"] == f"https://{NAME}/mail/?_task=mail"
    resp = get(box, f"autoconfig.{OTHER}", "/mail/config-v1.1.xml")
    assert resp.status == 301 and resp.headers["Location"] == f"https://autoconfig.{OTHER}/mail/config-v1.1.xml"
    # Any other name (or a bare address) goes to the box's own name, never to a name the client made up.
    resp = get(box, "elsewhere.example", "/x")
    assert resp.status == 301 and resp.headers["Location"] == f"https://{NAME}/x"


def test_https_hsts_and_root_redirects_to_mail(box: Box, tls: ssl.SSLContext) -> None:
    resp = get(box, NAME, "/", tls)
    assert resp.status == 301 and re.fullmatch(rf"(https://{re.escape(NAME)})?/mail/", resp.headers["Location"])
    hsts = resp.headers["Strict-Transport-Security"]
    assert hsts and int(re.search(r"max-age=(\d+)", hsts).group(1)) >= 180 * 86400  # type: ignore[union-attr]
    resp = get(box, NAME, "/mail/", tls)
    assert resp.status == 200 and b'id="rcmloginuser"' in resp.body
    assert resp.headers["Strict-Transport-Security"] == hsts
    # Only roundcube's entry point runs PHP; no source or configuration is handed out.
    assert get(box, NAME, "/mail/program/include/iniset.php", tls).status == 404
    assert get(box, NAME, "/mail/plugins/managesieve/config.inc.php", tls).status == 404


def test_tls_below_1_2_refused_on_443(box: Box, tls: ssl.SSLContext) -> None:
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.set_ciphers("ALL:@SECLEVEL=0")  # let this client offer the old versions at all
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = version
            old.maximum_version = version
        sock = socket.create_connection((box.address, 443), 10)
        with pytest.raises(ssl.SSLError) as refused, old.wrap_socket(sock, server_hostname=NAME):
            pass
        sock.close()
        assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", refused.value  # the server said no
    with tls.wrap_socket(socket.create_connection((box.address, 443), 10), server_hostname=NAME) as conn:
        assert conn.version() in ("TLSv1.2", "TLSv1.3")


def check_autoconfig(resp: Response) -> None:
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/xml")
    root = ET.fromstring(resp.body)
    assert root.tag == "clientConfig"
    provider = root.find("emailProvider")
    assert provider is not None
    assert {d.text for d in provider.findall("domain")} == {DOMAIN, OTHER}

    def settings(kind: str) -> list[dict[str, str | None]]:
        return [{c.tag: c.text for c in server} | {"type": server.get("type")} for server in provider.findall(kind)]

    common = {"hostname": NAME, "authentication": "password-cleartext", "username": "%EMAILADDRESS%"}
    assert settings("incomingServer") == [{"type": "imap", "port": "993", "socketType": "SSL", **common}]
    assert sorted(settings("outgoingServer"), key=lambda s: str(s["port"])) == [
        {"type": "smtp", "port": "465", "socketType": "SSL", **common},
        {"type": "smtp", "port": "587", "socketType": "STARTTLS", **common},
    ]


def test_autoconfig_on_the_box_and_for_every_domain(box: Box, tls: ssl.SSLContext) -> None:
    check_autoconfig(get(box, NAME, "/.well-known/autoconfig/mail/config-v1.1.xml", tls))
    # The certificate names autoconfig.DOMAIN (the names resolve to the box): verified by name, as a client does.
    for domain in (DOMAIN, OTHER):
        resp = get(box, f"autoconfig.{domain}", "/mail/config-v1.1.xml?emailaddress=x%40" + domain, tls)
        check_autoconfig(resp)
        assert get(box, f"autoconfig.{domain}", "/mail/", tls).status == 404


def test_browser_trusts_the_ca_it_is_given_and_no_other(box: Box, root: Path, tmp_path: Path) -> None:
    """The browser verifies certificates (no error ignored, no key pinned by a flag): trusting pebble's root, it
    loads the box's page and refuses a page whose certificate is right but for its CA; trusting that CA, the
    reverse."""
    other = CA.make("another e2e CA")
    with https_page(other.server_context(tmp_path / "impostor", [IMPOSTOR], [])) as port:
        hosts = {NAME: box.address, IMPOSTOR: "127.0.0.1"}
        box_page, impostor_page = f"https://{NAME}/mail/", f"https://{IMPOSTOR}:{port}/"
        runs = {
            "pebble": (root.read_text(), box_page, impostor_page),
            "other": (other.pem().decode(), impostor_page, box_page),
        }
        for label, (trusted_pem, trusted, refused) in runs.items():
            with chromium(tmp_path / label, trusted_pem, hosts) as browser:
                page = browser.new_page()
                response = goto(page, trusted)
                assert response is not None and response.ok, trusted
                with pytest.raises(Error, match="net::ERR_CERT_AUTHORITY_INVALID"):
                    goto(page, refused)


def test_browser_reads_a_message_and_replies(box: Box, mail: Mail, root: Path, tmp_path: Path) -> None:
    token = uuid.uuid4().hex[:12]
    subject = f"Lunch on Friday? {token}"
    mail.submit(BOB, PASSWORDS[BOB], message(BOB, ALICE, subject, "Hi Alice,\nare you free on Friday?\n"))
    mail.wait_for(ALICE, PASSWORDS[ALICE], "INBOX", lambda m: m["Subject"] == subject)
    ARTIFACTS.mkdir(exist_ok=True)

    # Verifies the box's certificate against pebble's root, and reaches the box by its name without any DNS.
    with chromium(tmp_path, root.read_text(), {NAME: box.address}) as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        try:
            goto(page, f"http://{NAME}/")  # plain HTTP, redirected to https://NAME/mail/
            assert page.url == f"https://{NAME}/mail/"
            page.fill("#rcmloginuser", ALICE)
            page.fill("#rcmloginpwd", PASSWORDS[ALICE])
            page.click("#rcmloginsubmit")
            row = page.locator("#messagelist tbody tr", has_text=subject)
            row.wait_for()
            page.screenshot(path=str(ARTIFACTS / "webmail-inbox.png"))
            row.click()
            page.frame_locator("#messagecontframe").locator("text=are you free on Friday?").wait_for()
            page.locator("a.reply:visible").first.click()  # "Reply" in the toolbar (others are in menus)
            body = page.locator("#composebody")
            body.wait_for()
            body.fill(f"Friday works for me. {token}\n")
            page.screenshot(path=str(ARTIFACTS / "webmail-reply.png"))
            page.locator("button.send:visible, a.send:visible").first.click()
            # Back in the message list once the message is sent and saved to Sent.
            page.wait_for_url(lambda url: "_action=compose" not in url)
            page.locator("#messagelist tbody tr", has_text=subject).wait_for()
            page.screenshot(path=str(ARTIFACTS / "webmail-after-send.png"))
            # The filters (managesieve plugin) reach dovecot's ManageSieve: a failure is in roundcube's log.
            goto(page, f"https://{NAME}/mail/?_task=settings&_action=plugin.managesieve")
            page.locator("#filtersetslist").wait_for(state="attached")
            page.screenshot(path=str(ARTIFACTS / "webmail-filters.png"))
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "webmail-failure.png"))
            raise

    reply = mail.wait_for(BOB, PASSWORDS[BOB], "INBOX", lambda m: m["Subject"] == f"Re: {subject}")
    assert ALICE in reply["From"]
    assert token in reply.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    mail.wait_for(ALICE, PASSWORDS[ALICE], "Sent", lambda m: m["Subject"] == f"Re: {subject}")
    errors = box.run("cat /var/log/roundcube/errors.log", check=False)[1]
    assert "managesieve" not in errors.lower(), errors


def test_roundcube_state_in_the_state_tree_and_des_key_made_on_the_box(inv: Path, box: Box) -> None:
    assert box.run(f"stat -c '%a %U:%G' {SECRETS}")[1].split() == ["640", "root:www-data"]
    secrets = box.run(f"cat {SECRETS}")[1]
    key = re.search(r'\$config\["des_key"\] = "([A-Za-z0-9+/]{32})";', secrets)
    assert key, "the secrets file holds one 32-character key"
    assert key.group(1) not in box.run("cat /etc/roundcube/config.inc.php")[1]
    assert key.group(1) not in (inv / f"{NAME}.toml").read_text()
    users = box.run(f"runuser -u www-data -- sqlite3 -readonly {DATABASE} 'SELECT username FROM users'")[1]
    assert ALICE in users.split(), "logging in made alice's roundcube account in the state tree's database"
    assert box.run(f"stat -c '%U' {DATABASE}")[1].strip() == "www-data"
    # Debian's daily clean-up jobs reach the database in the state tree too (they run with ProtectHome).
    box.run("systemctl start roundcube-gc.service roundcube-cleandb.service")


def test_second_deploy_changes_nothing_and_keeps_state(inv: Path, box: Box) -> None:
    before = {p: box.sha256(p) for p in (SECRETS, layout.TLS_CERT)}
    res = cli(inv, "deploy", NAME, "--json")
    assert res.code == 0, res.err
    run = res.json()["hosts"][NAME]
    assert run["changed"] == 0 and run["failed"] == 0, run["actions"]
    assert {p: box.sha256(p) for p in before} == before
    users = box.run(f"runuser -u www-data -- sqlite3 -readonly {DATABASE} 'SELECT username FROM users'")[1]
    assert ALICE in users.split()
