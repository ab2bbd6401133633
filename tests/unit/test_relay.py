"""The outbound relay: its [relay] table (schema and messages), postfix's settings rendered from it per OS
profile, the password kept in the secrets store and masked, and the `relay` commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from miab_remote.errors import InputError
from miab_remote.fleet.model import Relay
from miab_remote.fleet.schema import validate

NAME = "box1.relay.test"
P = f"hosts/{NAME}.toml"
HEAD = f'hostname = "{NAME}"\naddress = "192.0.2.10"\n'
RELAY = HEAD + '[relay]\nhost = "smtp.example.net"\nport = 587\nuser = "apikey"\n'


def errors_of(text: str) -> str:
    with pytest.raises(InputError) as info:
        validate(text, Path(P))
    return str(info.value)


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
    assert errors_of(text) == expected


def test_a_password_in_the_inventory_is_never_echoed() -> None:
    assert "hunter2-secret" not in errors_of(RELAY + 'password = "hunter2-secret"\n')


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
