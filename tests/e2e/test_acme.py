"""[acme] against a real local box and Debian's pebble on this machine's bridge address (tests/standins/
pebble.py): the box's certbot orders over HTTP-01 through its nginx for the names that resolve to it (pebble
resolves them through the lane's dnsmasq, which delegates the box's zones to its nsd), a name an inventory
record points elsewhere is left out and reported, every TLS port serves the certificate verified against
pebble's root (no verification turned off), a second deploy orders nothing, `systemctl start certbot.service`
renews (pebble's short validity makes it due) with the same key and the services serve the new certificate,
the hostname's TLSA records (DANE) match the certificate served on 25 before and after that renewal, and
without [acme] the box goes back to a self-signed certificate from the same key."""

from __future__ import annotations

import json
import shlex
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest
import tomlkit
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID

from miab_remote.mail import acme, dnszones, layout
from miab_remote.mail.passwords import hash_password
from tests.e2e import helpers
from tests.e2e.helpers import HOST_ADDRESS, SUBNET_PREFIX, Box, CLIResult, cli, deployed_box, new_inventory
from tests.e2e.mailclients import Mail
from tests.standins.pebble import Pebble

pytestmark = pytest.mark.e2e

NAME = "mx.acmetest.test"
DOMAIN = "acmetest.test"
ELSEWHERE = f"{SUBNET_PREFIX}.250"  # no box: autodiscover.DOMAIN points here, so it is left out
LEFT_OUT = f"autodiscover.{DOMAIN}"
COVERED = sorted([NAME, f"autoconfig.{DOMAIN}", f"mta-sts.{DOMAIN}"])
VALIDITY = 6 * 3600  # under renew_before_expiry's 30 days: certbot.service renews at once
USER, PASSWORD = f"alice@{DOMAIN}", "alice-acme-secret-1"


@dataclass
class Setup:
    inv: Path
    box: Box
    pebble: Pebble
    first: CLIResult

    def deploy(self) -> dict[str, Any]:
        res = cli(self.inv, "deploy", NAME, "--json")
        assert res.code == 0, res.errors()
        run: dict[str, Any] = res.json()["hosts"][NAME]
        return run


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, image: str) -> Iterator[Setup]:
    """Once per release (the `image` fixture): certbot 2.1 on Debian 12, 4.0 on Debian 13."""
    inv = new_inventory(tmp_path_factory.mktemp(f"acme-{image}") / "hosts")
    top = {"domains": [DOMAIN], "users": [{"email": USER, "password_hash": hash_password(PASSWORD)}]}
    identity = helpers.operator_key(tmp_path_factory.mktemp("operator"))
    with deployed_box(inv, identity, {NAME: top}, deploy=False, image=image) as made:
        box = made.boxes[NAME]
        # The bridge address exists now that a box of the lane is up: pebble listens there.
        with Pebble(tmp_path_factory.mktemp("pebble"), HOST_ADDRESS, validity=VALIDITY) as pebble:
            records = [
                {"name": LEFT_OUT, "type": "A", "value": ELSEWHERE},
                # The box's zones publish mta-sts.DOMAIN with [acme] (mail/dnszones); the same record here keeps
                # this module about the order, whatever the zones say.
                {"name": f"mta-sts.{DOMAIN}", "type": "A", "value": box.address},
            ]
            # The CA file: what the box trusts for the directory (the listener's CA) and, like a private CA's
            # root, for the box's own clients (roundcube) the root pebble's certificates chain up to.
            ca_file = pebble.folder / "trusted.pem"
            ca_file.write_text(pebble.listener_ca.read_text() + pebble.root())
            helpers.edit_inventory(
                inv,
                NAME,
                acme={"directory": pebble.directory, "ca_file": str(ca_file), "caa": ""},
                dns={"records": records},
            )
            first = cli(inv, "deploy", NAME, "--json")
            assert first.code == 0, first.errors()
            yield Setup(inv, box, pebble, first)


def served(
    address: str, port: int, name: str, root: str, starttls: str | None = None, strict: bool = False
) -> x509.Certificate:
    """The certificate `address:port` serves for `name`, verified against `root` with the name checked
    (`strict`: with OpenSSL's X509_STRICT as well)."""
    context = ssl.create_default_context(cadata=root)
    if strict:
        context.verify_flags |= ssl.VERIFY_X509_STRICT
    with socket.create_connection((address, port), timeout=20) as raw:
        if starttls == "smtp":
            f = raw.makefile("rb")
            f.readline()
            raw.sendall(b"EHLO client.e2e.test\r\n")
            while not f.readline().startswith(b"250 "):
                pass
            raw.sendall(b"STARTTLS\r\n")
            assert f.readline().startswith(b"220"), "STARTTLS refused"
        with context.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def tlsa_published(box: Box, port: int) -> list[str]:
    """The TLSA data the box's nameserver answers for `_PORT._tcp.NAME`."""
    answer = dns.query.udp(dns.message.make_query(f"_{port}._tcp.{NAME}", "TLSA"), box.address, timeout=10).answer
    return sorted(rd.to_text() for rrset in answer for rd in rrset)


def assert_tlsa_matches(box: Box, cert: x509.Certificate) -> None:
    """What a DANE client checks: every TLS port's TLSA record matches the certificate the box serves."""
    want = [dnszones.tlsa_of(cert.public_bytes(Encoding.DER))]
    for port in dnszones.TLSA_PORTS:
        assert tlsa_published(box, port) == want, port


def sans(cert: x509.Certificate) -> list[str]:
    return sorted(
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    )


def public_key(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def notes(run: object) -> list[str]:
    assert isinstance(run, dict)
    return list(run["notes"])


def test_the_names_that_resolve_to_the_box_are_ordered_and_the_other_is_reported(setup: Setup) -> None:
    said = notes(setup.first.json()["hosts"][NAME])
    assert f"left out (resolves to {ELSEWHERE}, not this box): {LEFT_OUT}" in said, said
    assert f"ordered a certificate for {len(COVERED)} names from {setup.pebble.directory}" in said, said
    cert = served(setup.box.address, 443, NAME, setup.pebble.root())
    assert sans(cert) == COVERED
    status = json.loads(setup.box.run(f"cat {acme.STATUS}")[1])
    assert status["names"] == COVERED and status["directory"] == setup.pebble.directory
    assert status["left_out"] == {LEFT_OUT: f"resolves to {ELSEWHERE}, not this box"}
    assert status["ordered"] and status["installed"]


def test_every_tls_port_serves_it_verified_against_pebbles_root(setup: Setup) -> None:
    root, address = setup.pebble.root(), setup.box.address
    for name in COVERED:
        assert sans(served(address, 443, name, root)) == COVERED, name
    for port in (25, 587):
        assert sans(served(address, port, NAME, root, starttls="smtp")) == COVERED
    for port in (465, 993):
        assert sans(served(address, port, NAME, root)) == COVERED
    # The mail clients of the other modules, trusting pebble's root instead of a pinned certificate.
    mail = Mail(setup.box, NAME, root)
    conn = mail.smtp(587)
    mail.starttls(conn)
    conn.login(USER, PASSWORD)
    conn.quit()
    mail.imap(USER, PASSWORD).logout()
    # roundcube reaches dovecot on the box as it does for a login, verifying the certificate by name.
    php = (
        '$config = []; include "/etc/roundcube/config.inc.php"; '
        '$c = stream_context_create($config["imap_conn_options"]); '
        '$s = stream_socket_client("ssl://localhost:993", $no, $why, 10, STREAM_CLIENT_CONNECT, $c); '
        'echo $s ? "connected" : "failed: $why";'
    )
    _, out = setup.box.run(f"runuser -u www-data -- php -r {shlex.quote(php)}", check=False)
    assert out.strip().endswith("connected"), out
    # A name the certificate does not cover fails verification: nothing is turned off.
    with pytest.raises(ssl.SSLCertVerificationError):
        served(address, 443, LEFT_OUT, root)


def test_a_second_deploy_changes_nothing_and_orders_nothing(setup: Setup) -> None:
    lineage = f"{acme.CERTBOT_DIR}/live/{acme.LINEAGE}/cert.pem"
    before = setup.box.run(f"sha256sum {lineage} {layout.TLS_CERT}")[1]
    run = setup.deploy()
    assert run["changed"] == 0, [a for a in run["actions"] if a["status"] != "unchanged"]
    assert not any(n.startswith("ordered") for n in notes(run)), run
    assert setup.box.run(f"sha256sum {lineage} {layout.TLS_CERT}")[1] == before


def test_certbot_service_renews_with_the_same_key_and_the_services_serve_it(setup: Setup) -> None:
    root, address = setup.pebble.root(), setup.box.address
    old = served(address, 443, NAME, root)
    assert_tlsa_matches(setup.box, served(address, 25, NAME, root, starttls="smtp"))
    code, out = setup.box.run("systemctl start certbot.service", check=False)
    assert code == 0, out + setup.box.run("journalctl -u certbot.service -n 30 --no-pager", check=False)[1]

    for port, starttls in ((443, None), (993, None), (465, None), (25, "smtp")):
        helpers.wait_until(
            lambda p=port, s=starttls: served(address, p, NAME, root, s).serial_number != old.serial_number,  # type: ignore[misc]
            f"port {port} serves the renewed certificate",
            timeout=60,
        )
    new = served(address, 443, NAME, root)
    assert public_key(new) == public_key(old), "--reuse-key: a TLSA record stays valid"
    assert_tlsa_matches(setup.box, served(address, 25, NAME, root, starttls="smtp"))
    assert sans(new) == COVERED
    conf = setup.box.run(f"cat {acme.CERTBOT_DIR}/renewal/{acme.LINEAGE}.conf")[1]
    assert "\nrenew_before_expiry = 30 days\n" in conf, "kept across the renewal"
    run = setup.deploy()
    assert run["changed"] == 0, [a for a in run["actions"] if a["status"] != "unchanged"]  # the lineage's


def test_a_renewal_whose_install_fails_is_reported_and_the_next_deploy_installs_it(setup: Setup) -> None:
    """certbot renews, but the box's install (its deploy hook) refuses: nginx's configuration does not pass
    `nginx -t` (here a stray file). The served certificate stays the one before, `check` says the renewed one
    is not installed, and once the stray file is gone a deploy installs it."""
    root, address, box = setup.pebble.root(), setup.box.address, setup.box
    before = served(address, 443, NAME, root)
    stray = "/etc/nginx/conf.d/zz-e2e-stray.conf"
    box.run(f"echo 'this is not nginx;' > {stray}")
    try:
        box.run("systemctl start certbot.service", check=False)
        lineage = box.run(f"cat {acme.LIVE_CHAIN}")[1]
        assert lineage != box.run(f"cat {layout.TLS_CERT}")[1], "certbot renewed"
        assert served(address, 443, NAME, root) == before, "the old certificate stays in use"
        res = cli(setup.inv, "check", NAME, "--json")
        checks = {c["name"]: c for c in res.json()["hosts"][NAME]["checks"]}
        cert = checks["ACME certificate"]
        assert cert["status"] == "failed" and "the install after the renewal failed" in cert["detail"], cert
    finally:
        box.run(f"rm -f {stray}")
    run = setup.deploy()
    assert "command:acme-order" in {a["resource"] for a in run["actions"] if a["status"] == "changed"}, run
    # The lineage's newest (with pebble's short validity the deploy's order renews once more: still due).
    assert box.run(f"cat {layout.TLS_CERT}")[1] == box.run(f"cat {acme.LIVE_CHAIN}")[1]
    helpers.wait_until(
        lambda: served(address, 443, NAME, root).serial_number != before.serial_number,
        "nginx serves the renewed certificate",
        timeout=60,
    )
    assert setup.deploy()["changed"] == 0


def test_without_acme_the_box_goes_back_to_self_signed_from_the_same_key(setup: Setup) -> None:
    root, address = setup.pebble.root(), setup.box.address
    key = public_key(served(address, 443, NAME, root))
    path = setup.inv / f"{NAME}.toml"
    doc = tomlkit.parse(path.read_text())
    del doc["acme"]
    path.write_text(tomlkit.dumps(doc))
    run = setup.deploy()
    assert run["changed"] > 0
    pem = setup.box.run(f"cat {layout.TLS_CERT}")[1]
    cert = served(address, 443, NAME, pem)  # verified against itself: self-signed, for the box's name
    assert cert.issuer == cert.subject and public_key(cert) == key
    # An end-entity certificate (strict verifiers refuse a CA:TRUE one as a server's, even when told to trust
    # it), for the hostname and the client setup names (no mta-sts: no policy without a CA's certificate).
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    assert sans(cert) == sorted([NAME, f"autoconfig.{DOMAIN}", f"autodiscover.{DOMAIN}"])
    for port in (993, 465, 443):
        assert served(address, port, NAME, pem, strict=True) == cert, port
    assert setup.box.run(f"test -e {acme.CLI_INI} || test -e {acme.PROGRAM}", check=False)[0] != 0
    assert setup.box.run("command -v certbot", check=False)[0] != 0, "certbot removed: nothing renews"
    assert setup.box.run(f"test -e {acme.CERTBOT_DIR}/live/{acme.LINEAGE}/cert.pem", check=False)[0] == 0, (
        "the lineage stays in the state tree"
    )
    assert setup.deploy()["changed"] == 0
    assert setup.box.run(f"cat {layout.TLS_CERT}")[1] == pem
    # A CA:TRUE certificate (what the first versions of the tls recipe made) is re-issued from the same key.
    setup.box.run(
        f"openssl req -x509 -new -key {layout.TLS_KEY} -sha256 -days 3650 -subj /CN={NAME} "
        f"-addext subjectAltName=DNS:{NAME} -out {layout.TLS_CERT}.old && mv {layout.TLS_CERT}.old {layout.TLS_CERT}"
    )
    changed = {a["resource"] for a in setup.deploy()["actions"] if a["status"] == "changed"}
    assert "command:tls-certificate" in changed and "command:tls-key" not in changed, changed
    again = served(address, 993, NAME, setup.box.run(f"cat {layout.TLS_CERT}")[1], strict=True)
    assert again.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert public_key(again) == key
