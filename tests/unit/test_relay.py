"""The outbound relay: its [relay] table (schema and messages), postfix's settings rendered from it per OS
profile, the password kept in the secrets store and masked, and the `relay` commands."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from miab_remote import cli
from miab_remote.engine.converge import build
from miab_remote.engine.redact import MASK, secret_mask_for
from miab_remote.engine.resources import Command, File, Package, Resource
from miab_remote.errors import InputError
from miab_remote.fleet import secrets
from miab_remote.fleet.model import Host, Relay
from miab_remote.fleet.schema import validate
from miab_remote.fleet.store import Inventory, new_document
from miab_remote.mail import relay
from miab_remote.profiles import DEBIAN_13, PROFILES, OSProfile
from miab_remote.transport.sshkeys import generate_ed25519
from tests.unit.test_inventory import errors_of

NAME = "box1.relay.test"
P = f"hosts/{NAME}.toml"
HEAD = f'hostname = "{NAME}"\naddress = "192.0.2.10"\n'
RELAY = HEAD + '[relay]\nhost = "smtp.example.net"\nport = 587\nuser = "apikey"\n'



# ------------------------------------------------------------------------------------------------- schema
ACCEPTED_PORTS = "accepted: 587 (submission, STARTTLS) or 465 (submissions, implicit TLS)"
SCHEMA_CASES: list[tuple[str, str, str]] = [
    ("type", HEAD + 'relay = "smtp.example.net"\n',
     f"{P}:3: relay: expected a table ([relay] section), got a string 'smtp.example.net'"),
    ("missing", HEAD + "[relay]\n",
     f"{P}:3: relay.host: required key is missing; expected the relay's DNS name or IP address\n"
     f"{P}:3: relay.port: required key is missing; expected an integer port; {ACCEPTED_PORTS}\n"
     f"{P}:3: relay.user: required key is missing; expected the relay login's user name"),
    ("port-25", RELAY.replace("587", "25"),
     f"{P}:5: relay.port: 25 is not a relay port; {ACCEPTED_PORTS}; port 25 is what clouds block, and it "
     "offers no login"),
    ("port-2525", RELAY.replace("587", "2525"), f"{P}:5: relay.port: 2525 is not a relay port; {ACCEPTED_PORTS}"),
    ("port-string", RELAY.replace("587", '"587"'),
     f"{P}:5: relay.port: expected an integer port; {ACCEPTED_PORTS}, got a string '587'"),
    ("host", RELAY.replace("smtp.example.net", "smtp example"),
     f"{P}:4: relay.host: 'smtp example' is not an IP address or DNS name; expected like '203.0.113.10', "
     "'2001:db8::10' or 'box1.example.org'"),
    ("host-brackets", RELAY.replace("smtp.example.net", "[2001:db8::1]"),
     f"{P}:4: relay.host: '[2001:db8::1]': write the IPv6 address without brackets"),
    ("user-colon", RELAY.replace('"apikey"', '"a:b"'),
     f"{P}:6: relay.user: 'a:b' is not a relay user name; accepted: up to 255 printable characters, no ':' "
     "and no white space"),
    ("user-space", RELAY.replace('"apikey"', '"a b"'),
     f"{P}:6: relay.user: 'a b' is not a relay user name; accepted: up to 255 printable characters, no ':' "
     "and no white space"),
    ("user-empty", RELAY.replace('"apikey"', '""'),
     f"{P}:6: relay.user: is empty; expected the relay login's user name, like 'apikey' or 'box1@example.org'"),
    ("password", RELAY + 'password = "hunter2-secret"\n',
     f"{P}:7: relay.password: a password is never kept in the inventory; remove this line and store it with "
     "`miab-remote relay set NAME ...` (it asks for it, or reads --password-stdin)"),
    ("unknown", RELAY + "prot = 587\n",
     f"{P}:7: relay.prot: unknown key in [relay] (did you mean 'port'?); accepted: host, port, user, ca_file"),
    ("ca-file", RELAY + 'ca_file = ""\n',
     f"{P}:7: relay.ca_file: '' is not a path; expected like 'relay-ca.pem' or '~/ca/relay.pem'"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in SCHEMA_CASES], ids=[c[0] for c in SCHEMA_CASES])
def test_schema_errors(text: str, expected: str) -> None:
    assert errors_of(text, P) == expected


def test_a_password_in_the_inventory_is_never_echoed() -> None:
    assert "hunter2-secret" not in errors_of(RELAY + 'password = "hunter2-secret"\n', P)


def test_relay_is_read_and_normalised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / "hosts" / f"{NAME}.toml"
    assert validate(HEAD, path).relay is None
    host = validate(RELAY.replace("smtp.example.net", "SMTP.Example.NET."), path)
    assert host.relay == Relay("smtp.example.net", 587, "apikey", None)
    host = validate(RELAY.replace("smtp.example.net", "2001:DB8:0::1").replace("587", "465"), path)
    assert host.relay == Relay("2001:db8::1", 465, "apikey", None)
    relative = validate(RELAY + 'ca_file = "ca/relay.pem"\n', path).relay
    assert relative is not None and relative.ca_file == tmp_path / "hosts" / "ca" / "relay.pem"
    home = validate(RELAY + 'ca_file = "~/relay.pem"\n', path).relay
    assert home is not None and home.ca_file == tmp_path / "home" / "relay.pem"


# ------------------------------------------------------------------------------------- on the box: postfix
PASSWORD = "Relay-Pa55word with spaces:and:colons"


def postconf(main_cf: str) -> dict[str, str]:
    """main.cf as postconf reads it: `name = value`, continuation lines start with white space."""
    settings: dict[str, str] = {}
    last = ""
    for line in main_cf.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            settings[last] += " " + line.strip()
            continue
        last, _, value = (part.strip() for part in line.partition("="))
        assert last not in settings, f"{last} is set twice"
        settings[last] = value
    return settings


def relay_box(tmp_path: Path, table: str, password: str | None = PASSWORD) -> Host:
    hosts = tmp_path / "hosts"
    hosts.mkdir(exist_ok=True)
    path = hosts / f"{NAME}.toml"
    path.write_text(HEAD + table)
    if password is not None:
        secrets.put(NAME, secrets.RELAY_PASSWORD, password)
    return Inventory(hosts).load(NAME)


def built(host: Host, profile: OSProfile) -> tuple[dict[str, Resource], dict[str, bytes]]:
    resources, rendered = build(host, profile, host.path.parent)
    return {r.id: r for r in resources}, rendered


@pytest.mark.parametrize("profile", PROFILES.values(), ids=list(PROFILES))
def test_postfix_sends_through_the_relay_on_587_verified_against_the_system_cas(
    tmp_path: Path, profile: OSProfile
) -> None:
    host = relay_box(tmp_path, '[relay]\nhost = "smtp.example.net"\nport = 587\nuser = "apikey"\n')
    resources, rendered = built(host, profile)
    main = postconf(rendered["/etc/postfix/main.cf"].decode())
    assert {k: main[k] for k in RELAY_SETTINGS} == {
        "relayhost": "[smtp.example.net]:587",
        "smtp_tls_security_level": "secure",
        "smtp_tls_secure_cert_match": "nexthop",
        "smtp_tls_CAfile": "/etc/ssl/certs/ca-certificates.crt",
        "smtp_tls_wrappermode": "no",
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": "texthash:/etc/postfix/relay_password",
        "smtp_sasl_security_options": "noanonymous, noplaintext",
        "smtp_sasl_tls_security_options": "noanonymous",
    }
    assert main["smtp_tls_mandatory_protocols"] == ">=TLSv1.2"
    # The rules against smuggling and spoofing on the box's own ports are not touched by the relay.
    assert main["smtpd_forbid_bare_newline"] == "normalize"
    assert main["smtpd_data_restrictions"] == "reject_unauth_pipelining"
    assert rendered["/etc/postfix/relay_password"].decode() == f"[smtp.example.net]:587 apikey:{PASSWORD}\n"
    table = resources["file:/etc/postfix/relay_password"]
    assert isinstance(table, File) and table.secret and table.mode == 0o600 and table.owner == "root"
    assert {"package:libsasl2-modules", "package:ca-certificates"} <= resources.keys()
    assert "file:/etc/postfix/relay_ca.pem" not in resources
    # Through the relay no recipient's MTA-STS policy is looked up: the relay's own verified TLS applies.
    assert "smtp_tls_policy_maps" not in main and "/etc/mta-sts-daemon.yml" not in rendered
    resolver = resources["package:postfix-mta-sts-resolver"]
    assert isinstance(resolver, Package) and not resolver.present
    forget = resources["command:forget-relay"]
    assert isinstance(forget, Command) and forget.run == "rm -f -- /etc/postfix/relay_ca.pem"


@pytest.mark.parametrize("profile", PROFILES.values(), ids=list(PROFILES))
def test_on_465_tls_wraps_the_connection_and_a_private_ca_is_the_only_one_trusted(
    tmp_path: Path, profile: OSProfile
) -> None:
    (tmp_path / "hosts").mkdir()
    ca = make_ca(tmp_path / "hosts" / "relay-ca.pem")
    host = relay_box(tmp_path, '[relay]\nhost = "2001:db8::25"\nport = 465\nuser = "box1"\nca_file = "relay-ca.pem"\n')
    resources, rendered = built(host, profile)
    main = postconf(rendered["/etc/postfix/main.cf"].decode())
    assert main["relayhost"] == "[ipv6:2001:db8::25]:465"
    assert main["smtp_tls_wrappermode"] == "yes"
    assert main["smtp_tls_security_level"] == "secure"
    assert main["smtp_tls_CAfile"] == "/etc/postfix/relay_ca.pem"
    assert rendered["/etc/postfix/relay_ca.pem"] == ca
    assert rendered["/etc/postfix/relay_password"].decode() == f"[ipv6:2001:db8::25]:465 box1:{PASSWORD}\n"
    assert "command:forget-relay" not in resources


@pytest.mark.parametrize("profile", PROFILES.values(), ids=list(PROFILES))
def test_without_relay_postfix_delivers_directly_and_the_relay_files_go(tmp_path: Path, profile: OSProfile) -> None:
    host = relay_box(tmp_path, "", password=None)
    resources, rendered = built(host, profile)
    main = postconf(rendered["/etc/postfix/main.cf"].decode())
    assert main["smtp_tls_security_level"] == "may"
    assert not set(RELAY_SETTINGS) - {"smtp_tls_security_level", "smtp_tls_CAfile"} & main.keys()
    # Straight to the recipients' servers: their MTA-STS policies apply, certificates checked against the
    # system's CAs, the policies from postfix-mta-sts-resolver on loopback (running before postfix uses it).
    assert main["smtp_tls_policy_maps"] == "socketmap:inet:127.0.0.1:8461:postfix"
    assert main["smtp_tls_CAfile"] == "/etc/ssl/certs/ca-certificates.crt"
    daemon = rendered["/etc/mta-sts-daemon.yml"].decode()
    assert "host: 127.0.0.1\nport: 8461\n" in daemon and "strict_testing: false" in daemon
    assert {"package:postfix-mta-sts-resolver", "package:ca-certificates"} <= resources.keys()
    ids = list(resources)
    assert ids.index("service:postfix-mta-sts-resolver") < ids.index("service:postfix")
    assert "/etc/postfix/relay_password" not in rendered
    forget = resources["command:forget-relay"]
    assert isinstance(forget, Command)
    assert forget.run == "rm -f -- /etc/postfix/relay_password /etc/postfix/relay_ca.pem"
    assert forget.unless == "! test -e /etc/postfix/relay_password && ! test -e /etc/postfix/relay_ca.pem"
    ids = list(resources)
    assert ids.index("command:forget-relay") > ids.index("service:postfix"), "removed after postfix stopped using it"


RELAY_SETTINGS = (
    "relayhost",
    "smtp_tls_security_level",
    "smtp_tls_secure_cert_match",
    "smtp_tls_CAfile",
    "smtp_tls_wrappermode",
    "smtp_sasl_auth_enable",
    "smtp_sasl_password_maps",
    "smtp_sasl_security_options",
    "smtp_sasl_tls_security_options",
)


def test_ca_file_problems_are_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    host = relay_box(tmp_path, RELAY[len(HEAD) :] + 'ca_file = "ca.pem"\n')
    accepted = "expected a PEM file with the certificate of the CA that signs the relay's certificate"
    where = f"{P}: relay.ca_file: hosts/ca.pem"
    with pytest.raises(InputError) as e:
        built(host, DEBIAN_13)
    assert str(e.value) == f"{where}: No such file or directory; {accepted}"
    (tmp_path / "hosts" / "ca.pem").write_text("not a certificate\n")
    with pytest.raises(InputError) as e:
        built(host, DEBIAN_13)
    assert str(e.value) == f"{where}: not a PEM certificate; {accepted}"
    make_ca(tmp_path / "hosts" / "ca.pem", with_key=True)
    with pytest.raises(InputError) as e:
        built(host, DEBIAN_13)
    assert str(e.value) == f"{where}: holds a private key, which is never copied to a box; {accepted} only"


def test_a_relay_without_a_stored_password_is_bad_input_before_any_box_is_contacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], listener: socket.socket
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("MIAB_REMOTE_CONFIG_DIR", str(tmp_path / "config"))  # no secrets at all
    port = listener.getsockname()[1]
    key = generate_ed25519("root@nowhere").public_line
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    doc = new_document(NAME, "127.0.0.1", provider="manual", host_keys=[key], os="debian-13", ssh_port=port)
    (hosts / f"{NAME}.toml").write_text(doc.as_string() + RELAY[len(HEAD) :])
    assert cli.main(["deploy", NAME]) == 2
    assert capsys.readouterr().err.strip() == (
        f"miab-remote: {P}: [relay] is set but no relay password is stored for {NAME} (in config/secrets/{NAME}.toml); "
        f"store it with `miab-remote relay set {NAME}`, or remove [relay] with `miab-remote relay remove`; "
        "nothing was changed"
    )
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody called


def test_the_relay_password_is_masked_in_what_the_operator_sees(tmp_path: Path) -> None:
    host = relay_box(tmp_path, RELAY[len(HEAD) :])
    mask = secret_mask_for(host)
    shown = mask(f"postmap: warning: [smtp.example.net]:587 apikey:{PASSWORD} is odd")
    assert PASSWORD not in shown and MASK in shown


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("", "is empty"),
        ("two\nlines-password", "a control character or a line break"),
        ("tab\there-password", "a control character or a line break"),
        ("trailing-space ", "ends with white space"),
        ("x" * 513, "longer than 512 characters"),
    ],
)
def test_relay_passwords_postfix_could_not_hold_are_refused(password: str, problem: str) -> None:
    with pytest.raises(InputError) as e:
        relay.check_password(password)
    assert problem in str(e.value)
    assert not password or password not in str(e.value)


def make_ca(path: Path, with_key: bool = False) -> bytes:
    """A self-signed CA certificate written to `path` (with its key after it when `with_key`); its PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem + (private if with_key else b""))
    return pem


# ------------------------------------------------------------------------------------------- the commands
@dataclass
class Result:
    code: int
    out: str
    err: str


def run(root: Path, *args: str, stdin: str | None = PASSWORD + "\n") -> Result:
    """`miab-remote --inventory hosts ARGS` in `root`, in this process; stdin None: empty and not a terminal."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("NO_COLOR", "1")
        mp.setenv("COLUMNS", "1000")
        mp.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((stdin or "").encode()), encoding="utf-8"))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(["--inventory", "hosts", *args])
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 2
    return Result(code, out.getvalue(), err.getvalue())


OTHER = "box2.relay.test"
STYLED = "# my box; keep this comment\n" + HEAD + "\n[options]\nmessage_size_limit = 52428800  # 50 MB\n"


@pytest.fixture
def boxes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MIAB_REMOTE_CONFIG_DIR", str(tmp_path / "config"))
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    (hosts / f"{NAME}.toml").write_text(STYLED)
    (hosts / f"{OTHER}.toml").write_text(HEAD.replace(NAME, OTHER))
    return tmp_path


def test_set_stores_the_password_in_the_secrets_store_only(boxes: Path) -> None:
    res = run(boxes, "relay", "set", NAME, OTHER, "--host", "smtp.example.net", "--port", "587", "--user",
              "apikey", "--password-stdin")  # fmt: skip
    assert res.code == 0, res.err
    assert res.out.splitlines() == [
        f"{NAME}: relay [smtp.example.net]:587 (user apikey, STARTTLS) in hosts/{NAME}.toml; its password in "
        f"config/secrets/{NAME}.toml",
        f"{OTHER}: relay [smtp.example.net]:587 (user apikey, STARTTLS) in hosts/{OTHER}.toml; its password in "
        f"config/secrets/{OTHER}.toml",
        f"  note: run `miab-remote deploy {NAME} {OTHER}` to apply it: postfix's main.cf changes (and packages may "
        "be installed), which only a deploy does",
    ]
    text = (boxes / "hosts" / f"{NAME}.toml").read_text()
    assert text.startswith(STYLED), "the operator's comments and layout are kept"
    assert PASSWORD not in text and PASSWORD not in res.out + res.err
    host = Inventory(boxes / "hosts").load(NAME)
    assert host.relay == Relay("smtp.example.net", 587, "apikey", None)
    for name in (NAME, OTHER):
        assert secrets.get(name, secrets.RELAY_PASSWORD) == PASSWORD
    # A second set changes what it is given and keeps the rest; the password is asked again.
    ca = make_ca(boxes / "relay-ca.pem")
    res = run(boxes, "relay", "set", NAME, "--port", "465", "--ca-file", "relay-ca.pem", "--password-stdin",
              stdin="Another-Pa55word\n")  # fmt: skip
    assert res.code == 0, res.err
    host = Inventory(boxes / "hosts").load(NAME)
    assert host.relay == Relay("smtp.example.net", 465, "apikey", boxes / "relay-ca.pem")
    assert secrets.get(NAME, secrets.RELAY_PASSWORD) == "Another-Pa55word"
    assert secrets.get(OTHER, secrets.RELAY_PASSWORD) == PASSWORD
    assert relay.ca_pem(host).encode() == ca


def test_show_never_shows_the_password(boxes: Path) -> None:
    assert run(boxes, "relay", "show", NAME).out == (
        f"{NAME}: no relay; outgoing mail goes straight to each recipient's server\n"
    )
    run(boxes, "relay", "set", NAME, "--host", "10.0.0.25", "--port", "465", "--user", "u1", "--password-stdin")
    res = run(boxes, "relay", "show", NAME)
    assert res.out == (
        f"{NAME}: all outgoing mail through [10.0.0.25]:465 (implicit TLS, certificate verified against the "
        "system's CAs), user u1\n  password: stored\n"
    )
    shown = run(boxes, "relay", "show", NAME, "--json")
    assert json.loads(shown.out)["password_stored"] is True
    assert PASSWORD not in res.out + shown.out
    secrets.remove(NAME, secrets.RELAY_PASSWORD)
    assert f"password: NOT stored (`miab-remote relay set {NAME}`)" in run(boxes, "relay", "show", NAME).out


def test_remove_drops_the_table_and_forgets_the_password(boxes: Path) -> None:
    run(boxes, "relay", "set", NAME, "--host", "smtp.example.net", "--port", "587", "--user", "u", "--password-stdin")
    res = run(boxes, "relay", "remove", NAME)
    assert res.code == 0, res.err
    assert res.out.splitlines()[0] == f"{NAME}: relay removed from hosts/{NAME}.toml; its password forgotten"
    assert "postfix then delivers directly again" in res.out
    # As it was, but for the blank line tomlkit put before the table (once: it does not pile up).
    assert (boxes / "hosts" / f"{NAME}.toml").read_text() == STYLED + "\n"
    assert secrets.get(NAME, secrets.RELAY_PASSWORD) is None
    again = run(boxes, "relay", "remove", NAME)
    assert (again.code, again.err.strip()) == (2, f"miab-remote: {NAME} has no relay to remove; nothing was changed")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--host", "smtp.example.net"),
         f"{NAME} has no [relay] yet: give --port, --user (--port 587 for STARTTLS, 465 for implicit TLS); "
         "nothing was changed"),
        (("--host", "smtp.example.net", "--port", "25", "--user", "u"),
         "--port: 25 is not a relay port; accepted: 587 (submission, STARTTLS) or 465 (submissions, implicit "
         "TLS); port 25 is what clouds block, and it offers no login; nothing was changed"),
        (("--host", "bad host", "--port", "587", "--user", "a:b"),
         "--host: 'bad host' is not an IP address or DNS name; expected like '203.0.113.10', '2001:db8::10' or "
         "'box1.example.org'; --user: 'a:b' is not a relay user name; accepted: up to 255 printable characters, "
         "no ':' and no white space; nothing was changed"),
        (("--host", "smtp.example.net", "--port", "587", "--user", "u", "--ca-file", "missing.pem"),
         "--ca-file missing.pem: No such file or directory; expected a PEM file with the certificate of the CA "
         "that signs the relay's certificate"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_before_the_password_is_read(boxes: Path, args: tuple[str, ...], message: str) -> None:
    before = (boxes / "hosts" / f"{NAME}.toml").read_text()
    res = run(boxes, "relay", "set", NAME, *args, "--password-stdin")
    assert (res.code, res.err.strip()) == (2, f"miab-remote: {message}")
    assert (boxes / "hosts" / f"{NAME}.toml").read_text() == before
    assert secrets.get(NAME, secrets.RELAY_PASSWORD) is None


@pytest.mark.parametrize("argv", [["--password", PASSWORD], [f"--password={PASSWORD}"], ["--password"]])
def test_the_password_is_never_taken_from_argv(boxes: Path, argv: list[str]) -> None:
    res = run(boxes, "relay", "set", NAME, "--host", "smtp.example.net", "--port", "587", "--user", "u", *argv)
    assert res.code == 2
    assert "a password is never taken from the command line" in res.err
    assert PASSWORD not in res.out + res.err
    assert secrets.get(NAME, secrets.RELAY_PASSWORD) is None
    assert Inventory(boxes / "hosts").load(NAME).relay is None


def test_without_a_terminal_the_password_must_come_from_stdin(boxes: Path) -> None:
    res = run(boxes, "relay", "set", NAME, "--host", "smtp.example.net", "--port", "587", "--user", "u", stdin=None)
    assert res.code == 2
    assert "no terminal to ask for the password on; pipe it in with --password-stdin" in res.err
    assert Inventory(boxes / "hosts").load(NAME).relay is None


def test_outgoing_mail_prefers_ipv6_only_where_the_box_publishes_it(tmp_path: Path) -> None:
    """With an AAAA (and so SPF and, set at the provider, PTR) for its IPv6, the box sends over it; without,
    over IPv4: an unpublished IPv6 address fails receivers' checks."""
    host = relay_box(tmp_path, "", password=None)
    profile = next(iter(PROFILES.values()))
    assert postconf(built(host, profile)[1]["/etc/postfix/main.cf"].decode())["smtp_address_preference"] == "ipv4"
    with_v6 = dataclasses.replace(host, ipv6="2001:db8::7")
    assert postconf(built(with_v6, profile)[1]["/etc/postfix/main.cf"].decode())["smtp_address_preference"] == "ipv6"
