"""The cloud provider's own parts, each against the real thing it meets: the user data through PyYAML
(the parser cloud-init uses), the first contact against a real SSH server on loopback, the credentials
from a real file with real modes, the endpoint rule."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import pytest
import yaml

from miab_remote.errors import InputError
from miab_remote.providers.cloud import credentials, endpoint, firstcontact, keys, userdata
from miab_remote.providers.cloud.calls import CloudRefused, api_call, refuse_debug_log
from miab_remote.providers.cloud.credentials import Field
from miab_remote.transport.sshkeys import generate_ed25519
from tests.unit.sshbox import SSHBox

OPERATOR = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGTRIXqSTHnKyIYRyTxjqFAT3oRSI1iIs2uTcMPfu6HE op@laptop"


def test_user_data_is_cloud_config_that_installs_exactly_our_host_key_and_lets_root_in() -> None:
    host_key = generate_ed25519("root@box1.example.org")
    text = userdata.render("box1.example.org", host_key, OPERATOR)
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert data["ssh_deletekeys"] is True
    assert data["ssh_keys"] == {
        "ed25519_private": host_key.private_openssh.decode(),
        "ed25519_public": host_key.public_line,
    }
    assert data["ssh_keys"]["ed25519_private"].endswith("-----END OPENSSH PRIVATE KEY-----\n")
    assert data["disable_root"] is False and data["ssh_authorized_keys"] == [OPERATOR]
    assert data["users"] == [] and data["ssh_pwauth"] is False
    assert (data["hostname"], data["fqdn"]) == ("box1", "box1.example.org")
    assert data["prefer_fqdn_over_hostname"] is True and data["manage_etc_hosts"] is True


def test_user_data_for_a_sudo_login_user_keeps_root_shut() -> None:
    data = yaml.safe_load(userdata.render("box1.example.org", generate_ed25519("k"), OPERATOR, "admin"))
    assert data["disable_root"] is True and "ssh_authorized_keys" not in data
    assert data["users"] == [
        {
            "name": "admin",
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "shell": "/bin/bash",
            "lock_passwd": True,
            "ssh_authorized_keys": [OPERATOR],
        }
    ]


def test_fingerprints_as_the_clouds_compute_them() -> None:
    # ssh-keygen -E md5 -lf and ssh-keygen -lf of OPERATOR
    assert keys.md5_hex(OPERATOR) == "14:4c:39:98:a8:1f:71:d8:ca:06:e7:d7:d3:3b:46:2f"
    assert keys.sha256_base64(OPERATOR).rstrip("=") == "KgmtCDPre9qYNOWN2yd6GVtMZ+jYG0YhIwANO3EjlHY"
    assert keys.same_key(OPERATOR, OPERATOR.rsplit(" ", 1)[0] + " other-comment")


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("https://api.example.net", endpoint.Endpoint("api.example.net", 443, True)),
        ("https://api.example.net:8443/", endpoint.Endpoint("api.example.net", 8443, True)),
        ("http://127.0.0.1:8080", endpoint.Endpoint("127.0.0.1", 8080, False)),
        ("http://[::1]:81", endpoint.Endpoint("::1", 81, False)),
    ],
)
def test_endpoints_accepted(url: str, parsed: endpoint.Endpoint) -> None:
    assert endpoint.parse(url, "--endpoint") == parsed


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://api.example.net", "unencrypted across a network"),
        ("http://10.0.0.1:80", "unencrypted across a network"),
        ("ftp://127.0.0.1", "not an http(s) URL"),
        ("https://api.example.net/v2", "more than a scheme, host and port"),
        ("https://user:pw@api.example.net", "more than a scheme, host and port"),
        ("https://api.example.net:99999", "not a URL"),
    ],
)
def test_endpoints_refused(url: str, why: str) -> None:
    with pytest.raises(InputError, match=re.escape(why)):
        endpoint.parse(url, "--endpoint")


FIELDS = (Field("token", "EXAMPLE_TOKEN"), Field("region", "EXAMPLE_REGION", secret=False))


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MIAB_REMOTE_CONFIG_DIR", str(tmp_path / "config"))
    for f in FIELDS:
        monkeypatch.delenv(f.variable, raising=False)
    return tmp_path / "config"


def test_credentials_from_the_environment_first(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXAMPLE_TOKEN", "tok-from-env-1234")
    creds = credentials.load("example", FIELDS, ("token",))
    assert creds["token"] == "tok-from-env-1234" and creds.source["token"] == "EXAMPLE_TOKEN"
    assert creds.mask("refused tok-from-env-1234!") == "refused ********!"


def test_credentials_from_a_private_file(config: Path) -> None:
    config.mkdir(mode=0o700)
    path = config / "credentials.toml"
    path.write_text('[example]\ntoken = "tok-from-file-5678"\nregion = "fra1"\n')
    path.chmod(0o600)
    creds = credentials.load("example", FIELDS, ("token",))
    assert (creds["token"], creds["region"]) == ("tok-from-file-5678", "fra1")
    assert creds.mask("fra1 tok-from-file-5678") == "fra1 ********", "the region is no secret"
    path.chmod(0o644)
    with pytest.raises(InputError, match="mode 0644: others may read it") as e:
        credentials.load("example", FIELDS, ("token",))
    assert "tok-from-file" not in str(e.value)


def test_missing_credentials_name_both_ways_to_give_them(config: Path) -> None:
    with pytest.raises(InputError) as e:
        credentials.load("example", FIELDS, ("token",))
    assert "set EXAMPLE_TOKEN in the environment, or put [example] token" in str(e.value)
    assert "nothing was made" in str(e.value)


def test_a_bad_credentials_file_is_named_without_its_content(config: Path) -> None:
    config.mkdir(mode=0o700)
    path = config / "credentials.toml"
    path.write_text('[example]\ntoken = "tok-secret-9999\n')
    path.chmod(0o600)
    with pytest.raises(InputError, match="not valid TOML") as e:
        credentials.load("example", FIELDS, ("token",))
    assert "tok-secret" not in str(e.value)


def test_libcloud_debug_log_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBCLOUD_DEBUG", "/tmp/libcloud.log")
    with pytest.raises(InputError, match="LIBCLOUD_DEBUG is set"):
        refuse_debug_log()


def test_api_errors_become_one_masked_message() -> None:
    from libcloud.common.exceptions import BaseHTTPError
    from libcloud.common.types import InvalidCredsError

    mask = credentials.SecretMask(["tok-abcdef"])
    with pytest.raises(CloudRefused) as e, api_call("Example", "listing", mask, "https://api.example.net"):
        raise InvalidCredsError("bad token tok-abcdef")
    assert str(e.value) == "Example refused the credentials while listing: bad token ********"
    with pytest.raises(CloudRefused, match="Example refused creating: quota reached"), api_call(
        "Example", "creating", mask, "u"
    ):
        raise BaseHTTPError(422, "quota reached")
    with pytest.raises(Exception) as e2, api_call("Example", "creating", mask, "u"):
        raise BaseHTTPError(500, "oops tok-abcdef")
    assert type(e2.value).__name__ == "ProviderError" and "tok-abcdef" not in str(e2.value)
    with pytest.raises(Exception, match=re.escape("cannot reach the Example API at http://127.0.0.1:9")), api_call(
        "Example", "listing", mask, "http://127.0.0.1:9"
    ):
        socket.create_connection(("127.0.0.1", 9), timeout=1)


def test_first_contact_accepts_exactly_the_injected_key(ssh_box: SSHBox) -> None:
    said: list[str] = []
    firstcontact.wait_for_key("127.0.0.1", ssh_box.host_key.public_line, time.monotonic() + 10, said.append,
                              port=ssh_box.port)  # fmt: skip
    assert ssh_box.server.commands == [], "nothing was sent but the handshake"


def test_first_contact_refuses_any_other_key_at_once(ssh_box: SSHBox) -> None:
    other = generate_ed25519("root@elsewhere")
    started = time.monotonic()
    with pytest.raises(firstcontact.KeyRefused) as e:
        firstcontact.wait_for_key("127.0.0.1", other.public_line, started + 30, print, port=ssh_box.port)
    assert time.monotonic() - started < 5, "refused at the first answer, not retried"
    assert e.value.offered.startswith(" ".join(ssh_box.host_key.public_line.split()[:2]))


def test_first_contact_waits_for_the_port_then_gives_up() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    said: list[str] = []
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        firstcontact.wait_for_key("127.0.0.1", OPERATOR, started + 1.5, said.append, port=port)
    assert 1.4 < time.monotonic() - started < 5
    assert os.environ.get("LIBCLOUD_DEBUG") is None


def test_linode_public_address_is_any_outside_its_private_range() -> None:
    from miab_remote.providers.cloud.linode import public_ipv4

    assert public_ipv4(["192.168.129.4", "10.78.5.7"]) == "10.78.5.7"  # a stand-in box's address
    assert public_ipv4(["45.33.1.2", "192.168.130.1"]) == "45.33.1.2"
    assert public_ipv4(["192.168.200.1"]) is None
