"""`create --provider linode|vultr|ec2` and `destroy`, the whole flow through the real CLI, the adapters and
libcloud's real drivers, against the stand-ins of tests/standins/ (Linode v4, Vultr v2, moto's EC2 behind its
proxy) whose servers are SSH servers on loopback addresses (127.0.N.M:22) presenting the host key of the
user data they were given (LoopbackBoxes). What tests/unit/test_cloud_create.py proves for DigitalOcean:
the key pinned is the key handed over, the inventory's [node] table, the next steps, destroy.

Runs as root (port 22), as the CI does."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomlkit
import yaml

from miab_remote import cli
from miab_remote.providers.cloud import adapter_for
from miab_remote.providers.cloud.ec2 import key_name
from tests.standins import ec2, linode, vultr
from tests.standins.loopback import LoopbackBoxes, write_operator_key

NAME = "box1.example.org"
TOKEN = "cl0ud-t0ken-" + "9a8b7c" * 6  # distinctive: must appear in no output
SECRET = "aws/secret+" + "Zq7Wx" * 7


@dataclass(frozen=True)
class Cloud:
    provider: str
    credentials: dict[str, str]
    user: str  # the login user the inventory records


CLOUDS = {
    "linode": Cloud("linode", {"LINODE_TOKEN": TOKEN}, "root"),
    "vultr": Cloud("vultr", {"VULTR_API_KEY": TOKEN}, "root"),
    "ec2": Cloud("ec2", {"AWS_ACCESS_KEY_ID": "AKIA" + TOKEN[:16].upper(), "AWS_SECRET_ACCESS_KEY": SECRET}, "admin"),
}


def started(provider: str, boxes: LoopbackBoxes) -> AbstractContextManager[Any]:
    if provider == "ec2":
        return ec2.start(boxes)
    front = linode if provider == "linode" else vultr
    return front.start(boxes, token=TOKEN)


@pytest.fixture(params=sorted(CLOUDS))
def cloud(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Cloud, Any]]:
    if os.geteuid() != 0:
        pytest.skip("the stand-in servers listen on port 22 of loopback addresses: run as root (as the CI does)")
    chosen = CLOUDS[request.param]
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("MIAB_REMOTE_CONFIG_DIR", str(tmp_path / "config"))
    for variable, value in chosen.credentials.items():
        monkeypatch.setenv(variable, value)
    for variable in ("AWS_DEFAULT_REGION", "LIBCLOUD_DEBUG"):
        monkeypatch.delenv(variable, raising=False)
    write_operator_key(tmp_path)
    with started(chosen.provider, LoopbackBoxes()) as front:
        yield chosen, front


def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["--inventory", str(tmp_path / "hosts"), *args])
    out = capsys.readouterr()
    text = out.out + out.err
    assert TOKEN not in text and SECRET not in text
    return code, text


def sent_user_data(provider: str, front: Any) -> str:
    """The user data the cloud received, decoded."""
    if provider == "ec2":
        [run_instances] = front.called("RunInstances")
        return base64.b64decode(run_instances["UserData"]).decode()
    path = "/v4/linode/instances" if provider == "linode" else "/v2/instances"
    [post] = front.cloud.requests_to("POST", path)
    encoded = post.body["metadata"]["user_data"] if provider == "linode" else post.body["user_data"]
    return base64.b64decode(encoded).decode()


def test_create_pins_the_key_it_handed_over_and_destroy_removes_the_server(
    cloud: tuple[Cloud, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chosen, front = cloud
    args = ("--provider", chosen.provider, "--endpoint", front.url, "--identity-file", str(tmp_path / "id_ed25519"))
    code, text = run(tmp_path, capsys, "create", *args, "--timeout", "30", NAME)
    assert code == 0, text

    sent = yaml.safe_load(sent_user_data(chosen.provider, front))
    doc = tomlkit.parse((tmp_path / "hosts" / f"{NAME}.toml").read_text()).unwrap()
    assert doc["host_keys"] == [sent["ssh_keys"]["ed25519_public"]], "the key pinned is the key handed over"
    assert (doc["provider"], doc["os"], doc["ssh"]["user"]) == (chosen.provider, "debian-13", chosen.user)
    assert doc["address"] == doc["ipv4"] and doc["address"].startswith("127.0."), "the loopback server's address"
    operator = (tmp_path / "id_ed25519.pub").read_text().strip()
    node = doc["node"]
    assert node["endpoint"] == front.url
    if chosen.provider == "ec2":
        assert sent["users"][0]["name"] == "admin" and sent["users"][0]["ssh_authorized_keys"] == [operator]
        assert (node["region"], node["size"], node["image"]) == ("eu-central-1", "t3.micro", "ami-0d13d13d13d13d131")
        assert node["key_name"] == key_name(operator) and node["security_group"].startswith("sg-")
    else:
        assert sent["ssh_authorized_keys"] == [operator]
        expected = {"linode": ("eu-central", "g6-nanode-1", "linode/debian13"), "vultr": ("fra", "vc2-1c-1gb", "2625")}
        assert (node["region"], node["size"], node["image"]) == expected[chosen.provider]
    adapter = adapter_for(chosen.provider)
    assert f"next: miab-remote deploy {NAME}" in text
    assert adapter.port25 in text and adapter.reverse_dns in text, "what only this cloud's adapter knows"

    code, text = run(tmp_path, capsys, "destroy", "--yes", NAME)
    assert code == 0, text
    assert not (tmp_path / "hosts" / f"{NAME}.toml").exists()
    if chosen.provider == "ec2":
        assert (
            f"terminated instance {node['id']}" in text and f"deleted security group {node['security_group']}" in text
        )
        assert front.instances == {}
    else:
        assert f"destroyed {'Linode' if chosen.provider == 'linode' else 'Vultr server'} {node['id']}" in text
        front.cloud.wait_removed()


def test_a_refused_token_is_exit_2_and_nothing_is_made(
    cloud: tuple[Cloud, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen, front = cloud
    if chosen.provider == "ec2":
        pytest.skip("moto takes any credentials")
    variable = next(iter(chosen.credentials))
    monkeypatch.setenv(variable, TOKEN[::-1])
    args = ("--provider", chosen.provider, "--endpoint", front.url, "--identity-file", str(tmp_path / "id_ed25519"))
    code, text = run(tmp_path, capsys, "create", *args, NAME)
    assert code == 2, text
    assert "refused" in text and TOKEN[::-1] not in text
    assert not front.cloud.requests_to("POST", ".*") and not (tmp_path / "hosts" / f"{NAME}.toml").exists()
