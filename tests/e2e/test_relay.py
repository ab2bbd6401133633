"""The outbound relay against a real box: a smarthost on this machine's address on the test bridge (aiosmtpd,
AUTH only over TLS, its certificate from a test CA the box is told to trust) receives the box's outgoing
mail on 587 (STARTTLS, by name) and 465 (implicit TLS, by address) with the right login; a relay whose
certificate is not from that CA never sees the login; `relay remove` puts postfix back to direct delivery.
The password never shows in the inventory, in any process's argv or environment while the commands run,
in their output, or in the box's journal and logs; `destroy` leaves the laptop's secrets alone.

It runs once per release (a box each, like the core modules), since postfix and OpenSSL differ between them.
The relay listens on HOST_ADDRESS only (the bridge's gateway), which the boxes reach and nothing else does."""

from __future__ import annotations

import json
import ssl
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from miab_remote.mail import layout
from miab_remote.mail.passwords import hash_password
from tests.e2e.helpers import (
    HOST_ADDRESS,
    Box,
    cli,
    deployed_box,
    new_inventory,
    operator_key,
    private_config,
    wait_until,
)
from tests.e2e.leakwatch import LeakWatch
from tests.e2e.mailclients import Mail, message
from tests.standins.testca import CA

pytestmark = [
    pytest.mark.e2e,
    # The 465 relay takes AUTH without aiosmtpd's STARTTLS check (which knows no implicit TLS); it checks
    # the connection's TLS itself (Relay.authenticate).
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]

NAME = "mx.relay.test"
DOMAIN = "relay.test"
RELAY_NAME = f"smarthost.{DOMAIN}"  # published in the box's own zone, pointing at HOST_ADDRESS
ALICE, ALICE_PASSWORD = f"alice@{DOMAIN}", "alice-secret-1"
RELAY_USER = "mx-relay-login"
# Distinctive, so that a leak anywhere is found by a plain search.
RELAY_PASSWORD = f"Rly-{uuid.uuid4().hex}-pw"
OUTSIDE = "friend@elsewhere.example"


# ------------------------------------------------------------------------------------ a relay
@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    login: str | None


@dataclass
class Relay:
    """A smarthost on HOST_ADDRESS:port that accepts mail only after AUTH over TLS with the one login."""

    port: int
    context: ssl.SSLContext | None
    logins: list[tuple[str, str, str, bool]] = field(default_factory=list)  # mechanism, user, password, tls
    received: list[Received] = field(default_factory=list)

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        tls = server.transport is not None and server.transport.get_extra_info("ssl_object") is not None
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = data.login.decode(), data.password.decode()
        self.logins.append((mechanism, user, password, tls))
        ok = tls and user == RELAY_USER and password == RELAY_PASSWORD
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        login = session.auth_data if session.authenticated else None
        self.received.append(
            Received(str(envelope.mail_from), list(envelope.rcpt_tos), bytes(envelope.content or b""), login)
        )
        return "250 2.0.0 queued by the test relay"

    def controller(self) -> Controller:
        if self.context is None:  # a plain port 25 server, as the recipient's own MX would be
            return Controller(self, hostname=HOST_ADDRESS, port=self.port, ready_timeout=10)
        kwargs: dict[str, Any] = {"authenticator": self.authenticate, "auth_required": True}
        if self.port == 465:  # TLS from the first byte: aiosmtpd's own TLS check only knows STARTTLS
            return Controller(
                self, hostname=HOST_ADDRESS, port=465, ssl_context=self.context, auth_require_tls=False,
                ready_timeout=10, **kwargs,
            )  # fmt: skip
        return Controller(
            self, hostname=HOST_ADDRESS, port=self.port, tls_context=self.context, require_starttls=True,
            ready_timeout=10, **kwargs,
        )  # fmt: skip


@pytest.fixture(scope="module")
def running(image: str) -> Iterator[list[Controller]]:
    """The relays a test starts; all stopped when the release's box is done (or a test fails)."""
    started: list[Controller] = []
    yield started
    for c in started:
        c.stop()


def start(running: list[Controller], relay: Relay) -> Relay:
    for c in [c for c in running if c.port == relay.port]:
        c.stop()
        running.remove(c)
    c = relay.controller()
    c.start()
    running.append(c)
    return relay


# ------------------------------------------------------------------------------------------------- the box
@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory, image: str) -> Iterator[Path]:
    """The tool's private folder for every CLI run of this module (cli() passes os.environ on)."""
    with private_config(tmp_path_factory, f"relay-config-{image}") as folder:
        yield folder


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory, image: str) -> Path:
    return new_inventory(tmp_path_factory.mktemp(f"relay-{image}") / "hosts")


@pytest.fixture(scope="module")
def ca(inv: Path) -> CA:
    made = CA.make("miab-remote relay test CA")
    (inv / "relay-ca.pem").write_bytes(made.pem())
    return made


@pytest.fixture(scope="module")
def box(inv: Path, config_dir: Path, tmp_path_factory: pytest.TempPathFactory, image: str) -> Iterator[Box]:
    inventory = {
        "users": [{"email": ALICE, "password_hash": hash_password(ALICE_PASSWORD)}],
        "dns": {"records": [{"name": RELAY_NAME, "type": "A", "value": HOST_ADDRESS}]},
    }
    kept = config_dir / "secrets" / f"{NAME}.toml"
    with deployed_box(inv, operator_key(tmp_path_factory.mktemp("operator")), {NAME: inventory}, image=image) as made:
        yield made.box
        had = kept.read_bytes() if kept.is_file() else None  # the last test stores a password again
    # destroy archived the inventory and left the box's secrets where they were (it may be restored).
    assert (kept.read_bytes() if kept.is_file() else None) == had, "destroy must leave the secrets store alone"


@pytest.fixture(scope="module")
def mail(box: Box) -> Mail:
    return Mail(box, NAME, box.run(f"cat {layout.TLS_CERT}")[1])


def send(mail: Mail, to: str, subject: str) -> None:
    mail.submit(ALICE, ALICE_PASSWORD, message(ALICE, to, subject))


def assert_no_leak(*texts: str) -> None:
    for text in texts:
        assert RELAY_PASSWORD not in text


def box_logs(box: Box) -> str:
    """The box's whole journal and its log files, read back over SSH (never searched on the box, where the
    search's own argv would hold the password)."""
    journal = box.run("journalctl --no-pager -o cat")[1]
    files = box.run("find /var/log -type f -size -20M -exec cat {} + 2>/dev/null; true")[1]
    return journal + files


def postconf(box: Box, name: str) -> str:
    return box.run(f"postconf -h {name}")[1].strip()


# ------------------------------------------------------------------------------------------------- tests
def test_relay_set_on_587_and_deploy_send_through_the_relay(
    inv: Path, box: Box, mail: Mail, ca: CA, running: list[Controller], tmp_path: Path
) -> None:
    relay = start(running, Relay(587, ca.server_context(tmp_path, [RELAY_NAME], [HOST_ADDRESS])))
    with LeakWatch(RELAY_PASSWORD, expect=b"miab_remote") as watch:
        res = cli(inv, "relay", "set", NAME, "--host", RELAY_NAME, "--port", "587", "--user", RELAY_USER,
                  "--ca-file", str(inv / "relay-ca.pem"), "--password-stdin", stdin=RELAY_PASSWORD + "\n")  # fmt: skip
        assert res.code == 0, res.err + res.out
        deployed = cli(inv, "deploy", NAME, "--diff", "-v")
        assert deployed.code == 0, deployed.err + deployed.out
    assert watch.seen and not watch.hits, watch.hits  # it scanned while the CLI ran
    assert_no_leak(res.out, res.err, deployed.out, deployed.err, (inv / f"{NAME}.toml").read_text())
    assert "relay_password" in deployed.out  # the secret file was written, its content never shown
    assert 'ca_file = "relay-ca.pem"' in (inv / f"{NAME}.toml").read_text()

    assert box.run("stat -c '%a %U:%G' /etc/postfix/relay_password")[1].strip() == "600 root:root"
    assert postconf(box, "relayhost") == f"[{RELAY_NAME}]:587"
    assert postconf(box, "smtp_tls_security_level") == "secure"
    send(mail, OUTSIDE, "through the relay on 587")
    wait_until(lambda: bool(relay.received), "the relay receives the box's mail", timeout=90)
    [got] = relay.received
    assert (got.mail_from, got.rcpt_tos, got.login) == (ALICE, [OUTSIDE], RELAY_USER)
    assert b"Subject: through the relay on 587" in got.content
    assert b"DKIM-Signature:" in got.content  # signed on the box before it left
    assert {(user, password, tls) for _m, user, password, tls in relay.logins} == {(RELAY_USER, RELAY_PASSWORD, True)}
    assert_no_leak(box_logs(box))


def test_a_second_deploy_changes_nothing(inv: Path, box: Box) -> None:
    res = cli(inv, "deploy", NAME, "--json")
    assert res.code == 0, res.errors()
    run = res.json()["hosts"][NAME]
    assert run["changed"] == 0, run["actions"]
    assert_no_leak(res.out, res.err)


@pytest.mark.parametrize("wrong", ["another CA", "another name"])
def test_a_relay_whose_certificate_does_not_verify_never_sees_the_login(
    box: Box, mail: Mail, ca: CA, running: list[Controller], tmp_path: Path, wrong: str
) -> None:
    """Signed by a CA the box was not told to trust, or by the right CA for a name that is not the relay's:
    postfix defers the mail, and the relay sees neither the message nor the login."""
    if wrong == "another CA":
        context = CA.make("somebody else's CA").server_context(tmp_path, [RELAY_NAME], [HOST_ADDRESS])
    else:
        context = ca.server_context(tmp_path, [f"other.{DOMAIN}"], [])
    relay = start(running, Relay(587, context))
    send(mail, OUTSIDE, f"must not reach a relay with a certificate of {wrong}")

    queues = [""]

    def deferred() -> bool:
        queues[0] = queue = box.run("postqueue -p")[1].lower()
        return "certificate verification failed" in queue or "server certificate not verified" in queue

    try:
        wait_until(deferred, "postfix defers the mail: the relay's certificate is not verified", timeout=90)
    except AssertionError as e:
        raise AssertionError(f"{e}; the queue:\n{queues[0]}") from None
    assert relay.received == [] and relay.logins == []
    box.run("postsuper -d ALL")


def test_465_by_address_with_implicit_tls(
    inv: Path, box: Box, mail: Mail, ca: CA, running: list[Controller], tmp_path: Path
) -> None:
    relay = start(running, Relay(465, ca.server_context(tmp_path, [RELAY_NAME], [HOST_ADDRESS])))
    with LeakWatch(RELAY_PASSWORD, expect=b"miab_remote") as watch:
        res = cli(inv, "relay", "set", NAME, "--host", HOST_ADDRESS, "--port", "465", "--password-stdin",
                  stdin=RELAY_PASSWORD + "\n")  # fmt: skip
        assert res.code == 0, res.err + res.out
        deployed = cli(inv, "deploy", NAME, "--json")
        assert deployed.code == 0, deployed.errors()
    assert not watch.hits, watch.hits
    assert_no_leak(res.out, res.err, deployed.out, deployed.err)
    assert postconf(box, "relayhost") == f"[{HOST_ADDRESS}]:465"
    assert postconf(box, "smtp_tls_wrappermode") == "yes"
    send(mail, OUTSIDE, "through the relay on 465")
    wait_until(lambda: bool(relay.received), "the relay on 465 receives the box's mail", timeout=90)
    [got] = relay.received
    assert (got.mail_from, got.rcpt_tos, got.login) == (ALICE, [OUTSIDE], RELAY_USER)
    assert_no_leak(box_logs(box))


def test_relay_remove_puts_postfix_back_to_direct_delivery(
    inv: Path, box: Box, mail: Mail, running: list[Controller], config_dir: Path
) -> None:
    res = cli(inv, "relay", "remove", NAME)
    assert res.code == 0, res.err + res.out
    assert "relay" not in tomllib.loads((inv / f"{NAME}.toml").read_text())
    assert not (config_dir / "secrets" / f"{NAME}.toml").exists()
    deployed = cli(inv, "deploy", NAME, "--json")
    assert deployed.code == 0, deployed.errors()
    assert postconf(box, "relayhost") == ""
    assert postconf(box, "smtp_tls_security_level") == "may"
    assert box.run("test -e /etc/postfix/relay_password", check=False)[0] != 0
    assert box.run("test -e /etc/postfix/relay_ca.pem", check=False)[0] != 0
    again = cli(inv, "deploy", NAME, "--json")
    assert again.json()["hosts"][NAME]["changed"] == 0
    # Direct delivery: to the recipient's own server on port 25 (an address literal, so that no DNS lookup
    # leaves the test network), without any login.
    mx = start(running, Relay(25, None))
    send(mail, f"friend@[{HOST_ADDRESS}]", "directly again")
    wait_until(lambda: bool(mx.received), "the recipient's server receives the mail directly", timeout=90)
    [got] = mx.received
    assert (got.mail_from, got.login) == (ALICE, None)


def test_a_box_with_relay_but_no_stored_password_is_refused_before_anything_changes(
    inv: Path, box: Box, config_dir: Path
) -> None:
    res = cli(inv, "relay", "set", NAME, "--host", RELAY_NAME, "--port", "587", "--user", RELAY_USER,
              "--password-stdin", stdin=RELAY_PASSWORD + "\n")  # fmt: skip
    assert res.code == 0, res.err
    secrets_file = config_dir / "secrets" / f"{NAME}.toml"
    kept = secrets_file.read_bytes()
    secrets_file.unlink()
    before = box.run("sha256sum /etc/postfix/main.cf")[1]
    refused = cli(inv, "deploy", NAME)
    assert refused.code == 2
    assert f"[relay] is set but no relay password is stored for {NAME}" in refused.err
    assert box.run("sha256sum /etc/postfix/main.cf")[1] == before
    secrets_file.write_bytes(kept)  # for the module's end: destroy must leave it alone
    secrets_file.chmod(0o600)
    shown = cli(inv, "relay", "show", NAME, "--json")
    assert json.loads(shown.out)["password_stored"] is True
    assert_no_leak(shown.out, refused.out, refused.err)
