"""Moving a box: `create` onto an inventory that `destroy --keep-inventory` left, from any provider to any
other (a cloud to another cloud, a local box to a cloud, Debian 12 to 13), recording the new provider's data
and key while keeping the operator's (users, aliases, options, [relay], [backup], dns records); and the refusals of an
inventory whose box may still exist. Through the real CLI and libcloud's real drivers against the stand-ins
(tests/standins/), whose servers are SSH servers on loopback addresses presenting the user data's host key
(LoopbackBoxes), as tests/unit/test_cloud_create.py; the local provider's own view of its boxes is its state
folder (MIAB_REMOTE_LOCAL_DIR).

Runs as root (port 22), as the CI does."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from miab_remote import cli, providers
from miab_remote.errors import InputError
from miab_remote.fleet.model import Host
from miab_remote.fleet.store import Inventory, new_document
from miab_remote.jobs import create
from miab_remote.transport.sshkeys import generate_ed25519
from tests.standins import digitalocean, ec2
from tests.standins.loopback import LoopbackBoxes
from tests.unit.test_cloud_create import standin_env

NAME = "box1.example.org"
TOKEN = "dop_v1_" + "m0ve" * 12  # distinctive: must appear in no output
AWS_SECRET = "aws/m0ve+" + "Qx7Zr" * 7

# What the operator wrote and the move must keep, byte for byte.
OPERATORS_PART = """
domains = ["example.org", "example.net"]

[options]
message_size_limit = 52428800
greylist_delay = 60

[backup]
target = "local:/srv/backup/restic"
keep = { daily = 3, weekly = 2, monthly = 1 }

[[aliases]]
source = "info@example.org"
destinations = ["alice@example.org"]

[[dns.records]]
name = "www.example.org"
type = "CNAME"
value = "example.github.io"
"""
KEPT = ("domains", "options", "relay", "backup", "aliases", "dns", "users")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return standin_env(
        tmp_path, monkeypatch,
        MIAB_REMOTE_LOCAL_DIR=str(tmp_path / "local"),  # the local provider's boxes: none
        DIGITALOCEAN_TOKEN=TOKEN, AWS_ACCESS_KEY_ID="AKIA" + "M0VE" * 4, AWS_SECRET_ACCESS_KEY=AWS_SECRET,
    )  # fmt: skip


@pytest.fixture
def do() -> Iterator[digitalocean.DigitalOceanStandIn]:
    with digitalocean.start(LoopbackBoxes(), token=TOKEN) as front:
        yield front


def run(env: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["--inventory", str(env / "hosts"), *args])
    out = capsys.readouterr()
    text = out.out + out.err
    assert TOKEN not in text and AWS_SECRET not in text
    return code, text


def create_on(env: Path, capsys: pytest.CaptureFixture[str], provider: str, url: str, *extra: str) -> tuple[int, str]:
    return run(
        env, capsys, "create", "--provider", provider, "--endpoint", url,
        "--identity-file", str(env / "id_ed25519"), "--timeout", "20", *extra, NAME,
    )  # fmt: skip


def inventory(env: Path) -> dict[str, Any]:
    data: dict[str, Any] = tomlkit.parse((env / "hosts" / f"{NAME}.toml").read_text()).unwrap()
    return data


def add_operators_part(env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """What an operator adds to a box over its life: a user (through the CLI), aliases, options, a relay, records."""
    path = env / "hosts" / f"{NAME}.toml"
    doc = tomlkit.parse(path.read_text())
    for key, value in tomlkit.parse(OPERATORS_PART).items():
        doc[key] = value
    path.write_text(doc.as_string())
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"alice-pass-1\n")))
    code, text = run(env, capsys, "user", "add", NAME, "alice@example.org", "--password-stdin", "--no-push")
    assert code == 0, text
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"relay-pass-1\n")))
    relay = ("--host", "smtp.relay.example", "--port", "587", "--user", "box1", "--password-stdin")
    code, text = run(env, capsys, "relay", "set", NAME, *relay)
    assert code == 0, text


def test_a_box_moves_to_another_cloud_and_release_keeping_what_the_operator_wrote(
    env: Path, capsys: pytest.CaptureFixture[str], do: digitalocean.DigitalOceanStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DigitalOcean Debian 12 -> EC2 Debian 13: destroy --keep-inventory forgets the server and its key (so
    `hosts` says "no box" and deploy refuses it), and create records EC2's server, address, login user, key
    and os while users, aliases, options, [relay], [backup] and dns records stay as they were."""
    code, text = create_on(env, capsys, "digitalocean", do.url, "--image", "debian-12")
    assert code == 0, text
    add_operators_part(env, capsys, monkeypatch)
    before = inventory(env)
    assert before["os"] == "debian-12" and before["node"]["id"] and before["host_keys"]

    code, text = run(env, capsys, "destroy", "--yes", "--keep-inventory", NAME)
    assert code == 0, text
    kept = inventory(env)
    assert "node" not in kept and kept["host_keys"] == [], "the server and its key are gone"
    assert {k: kept[k] for k in KEPT} == {k: before[k] for k in KEPT}

    code, text = run(env, capsys, "hosts", "--json")
    assert code == 0 and json.loads(text)["hosts"][NAME]["box"] is False, text
    code, text = run(env, capsys, "hosts")
    assert code == 0 and "no box" in text and before["address"] not in text, text
    asked: list[str] = []

    def before_deploy(host: Host) -> list[str]:
        asked.append(host.name)
        return []

    with monkeypatch.context() as m:
        m.setattr(providers, "before_deploy", before_deploy)
        code, text = run(env, capsys, "deploy", NAME)
    assert code == 1 and "no box" in text and f"miab-remote create --provider PROVIDER {NAME}" in text, text
    assert asked == [], "no box: nothing for the provider to do before the deploy (the local one would delegate)"

    with ec2.start(LoopbackBoxes()) as aws:
        code, text = create_on(env, capsys, "ec2", aws.url, "--image", "debian-13")
        assert code == 0, text
        assert "kept the existing inventory" in text and "moved from digitalocean" in text, text
        after = inventory(env)
        assert (after["provider"], after["os"], after["ssh"]["user"]) == ("ec2", "debian-13", "admin")
        assert after["address"] == after["ipv4"] != before["address"]
        [instance] = aws.instances
        assert after["node"]["id"] == instance and after["node"]["region"] == "eu-central-1"
        assert after["host_keys"] and after["host_keys"] != before["host_keys"]
        assert {k: after[k] for k in KEPT} == {k: before[k] for k in KEPT}, "the operator's part"
        assert after["ssh"]["identity_file"] == before["ssh"]["identity_file"]
        assert f"the address changed from {before['address']} to {after['address']}" in text, text
        assert f"glue records ns1.{NAME} A {after['address']}" in text and f"miab-remote dns {NAME}" in text
        code, text = run(env, capsys, "hosts", "--json")
        assert json.loads(text)["hosts"][NAME]["box"] is True
        assert run(env, capsys, "destroy", "--yes", NAME)[0] == 0
    assert len(do.cloud.nodes) == 0


def test_a_local_box_kept_moves_to_a_cloud_without_the_local_resolver(
    env: Path, capsys: pytest.CaptureFixture[str], do: digitalocean.DigitalOceanStandIn
) -> None:
    """A local box's inventory (even one an earlier destroy --keep-inventory left with its key pinned): the local
    provider knows whether the box is gone. Its resolver (the bridge's dnsmasq) means nothing on a cloud."""
    hosts = env / "hosts"
    hosts.mkdir()
    key = generate_ed25519(f"root@{NAME}").public_line
    doc = new_document(NAME, "10.77.0.5", provider="local", host_keys=[key], os="debian-12", identity_file="/k")
    doc["options"] = {"resolvers": ["10.77.0.1"], "greylist_delay": 60}
    doc["ssh"]["port"] = 2222  # the operator's way to the old box (a tunnel's end, say): kept, and said
    (hosts / f"{NAME}.toml").write_text(doc.as_string())

    (env / "local" / NAME).mkdir(parents=True)  # what is left of a local box: it may hold the mail
    code, text = create_on(env, capsys, "digitalocean", do.url)
    assert code == 2, text
    assert f"a local box {NAME} still exists (stopped)" in text
    assert f"miab-remote destroy --keep-inventory {NAME}" in text
    assert "nothing was made" in text and not do.cloud.requests_to("POST", ".*")

    (env / "local" / NAME).rmdir()
    code, text = create_on(env, capsys, "digitalocean", do.url)
    assert code == 0, text
    after = inventory(env)
    assert after["provider"] == "digitalocean" and after["os"] == "debian-13" and after["host_keys"] != [key]
    assert after["options"] == {"greylist_delay": 60}, "the local resolver is dropped, the operator's options kept"
    assert "moved from local" in text and "dropped options.resolvers" in text, text
    assert after["ssh"]["port"] == 2222
    assert f"kept [ssh] port 2222: check that it reaches the new box at {after['address']}" in text, text


def write(hosts: Path, provider: str | None, keys: bool, node: dict[str, str] | None = None) -> Path:
    hosts.mkdir(exist_ok=True)
    doc = new_document(
        NAME, "192.0.2.10", provider=provider, host_keys=[generate_ed25519("k").public_line] if keys else [], os=None
    )
    if node:
        doc["node"] = node
    path = hosts / f"{NAME}.toml"
    path.write_text(doc.as_string())
    return path


@pytest.mark.parametrize(
    ("provider", "keys", "node", "message"),
    [
        (
            "vultr", True, {"id": "srv-7"},
            f"hosts/{NAME}.toml records vultr server srv-7, which may still run; destroy it first "
            f"(`miab-remote destroy --keep-inventory {NAME}` keeps the inventory for the new box)",
        ),
        (
            "local", False, {"id": "odd"},
            f"hosts/{NAME}.toml records local server odd, which may still run",
        ),
        (
            "manual", True, None,
            f"hosts/{NAME}.toml pins the host key of a box you made (provider manual), which may still run: "
            "miab-remote cannot remove it or tell whether it is gone. Once it is (take its last backup first), "
            f"empty its pinned keys (host_keys = [] in hosts/{NAME}.toml) and run create again",
        ),
        (None, True, None, "a box you made (no provider), which may still run"),
        (
            "digitalocean", True, None,
            "pins the host key of a digitalocean box but records no server ([node] id), which may still run",
        ),
    ],
)  # fmt: skip
def test_an_inventory_whose_box_may_still_exist_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str | None, keys: bool, node: Any, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIAB_REMOTE_LOCAL_DIR", str(tmp_path / "local"))
    path = write(tmp_path / "hosts", provider, keys, node)
    before = path.read_bytes()
    with pytest.raises(InputError) as e:
        create.check_new_boxes(Inventory(Path("hosts")), [NAME], "local")
    assert message in str(e.value) and str(e.value).endswith("nothing was made"), str(e.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize("provider", ["local", "digitalocean", "ec2", "manual", None])
@pytest.mark.parametrize("new", ["local", "linode"])
def test_an_inventory_without_a_box_is_accepted_from_any_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str | None, new: str
) -> None:
    """No pinned key and no server: what destroy --keep-inventory leaves (or an inventory written ahead)."""
    monkeypatch.setenv("MIAB_REMOTE_LOCAL_DIR", str(tmp_path / "local"))
    write(tmp_path / "hosts", provider, keys=False)
    assert create.check_new_boxes(Inventory(tmp_path / "hosts"), [NAME], new).name == new
