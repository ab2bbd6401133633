"""`create --provider digitalocean` true end to end: the real CLI and libcloud's DigitalOcean driver against
the stand-in API (tests/standins/digitalocean.py), whose droplets are real local boxes booted by Debian's
cloud-init from a NoCloud seed holding exactly the user data the tool sent. So the host key pinned is the
one cloud-init installed from that user data. Then deploy, send and read a mail, destroy (the stand-in sees
the DELETE, the box is gone, the inventory archived). And a server presenting another key: refused before
authentication, destroyed, only an archive record written."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit
import yaml

from miab_remote.mail import layout
from miab_remote.mail.passwords import hash_password
from miab_remote.providers.local import LocalProvider
from tests.e2e.helpers import HOST_ADDRESS, Box, cli, edit_inventory, new_inventory, operator_key, wait_until
from tests.e2e.mailclients import Mail, message
from tests.standins import digitalocean
from tests.standins.core import lane_config

pytestmark = pytest.mark.e2e

NAME = "cloud1.droplet.test"
WRONG = "cloud2.droplet.test"
DOMAIN = "droplet.test"
TOKEN = "dop_v1_" + secrets.token_hex(32)
PASSWORDS = {f"alice@{DOMAIN}": "alice-cloud-secret", f"bob@{DOMAIN}": "bob-cloud-secret"}


@pytest.fixture(scope="module")
def standin() -> Iterator[digitalocean.DigitalOceanStandIn]:
    with digitalocean.start(token=TOKEN) as front:
        yield front


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_inventory(tmp_path_factory.mktemp("cloud") / "hosts")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, standin: digitalocean.DigitalOceanStandIn) -> dict[str, str]:
    return {
        "DIGITALOCEAN_TOKEN": TOKEN,
        "MIAB_REMOTE_DIGITALOCEAN_ENDPOINT": standin.url,
        "MIAB_REMOTE_CONFIG_DIR": str(tmp_path_factory.mktemp("config")),
    }


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return operator_key(tmp_path_factory.mktemp("operator"))


def test_create_deploy_mail_destroy(
    standin: digitalocean.DigitalOceanStandIn, inv: Path, env: dict[str, str], identity: Path
) -> None:
    res = cli(inv, "create", "--provider", "digitalocean", "--identity-file", str(identity), NAME, env=env)
    assert res.code == 0, res.err + res.out
    outputs = [res.out + res.err]
    [post] = standin.cloud.requests_to("POST", "/v2/droplets")
    sent = yaml.safe_load(post.body["user_data"])
    [node] = standin.cloud.nodes.values()
    assert node.booted is not None
    assert node.seeded_user_data == post.body["user_data"], "the box was seeded with exactly what was sent"
    doc = tomlkit.parse((inv / f"{NAME}.toml").read_text()).unwrap()
    assert doc["host_keys"] == [sent["ssh_keys"]["ed25519_public"]]
    assert doc["address"] == node.booted.address and doc["node"]["id"] == str(node.id)
    box = Box(doc["address"], doc["host_keys"][0], identity)
    # cloud-init made the box what the user data asked: its name, only our host key, root's key, no passwords
    assert box.run("hostname -f")[1].strip() == NAME
    assert box.run("ls /etc/ssh/ | grep '^ssh_host_' | sort")[1].split() == [
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
    ]
    assert "status: done" in box.run("cloud-init status --wait")[1]
    assert box.run("sshd -T | grep -i '^passwordauthentication'")[1].split() == ["passwordauthentication", "no"]

    edit_inventory(
        inv,
        NAME,
        users=[{"email": e, "password_hash": hash_password(p)} for e, p in PASSWORDS.items()],
        options={"resolvers": [HOST_ADDRESS]},
    )
    res = cli(inv, "deploy", NAME, env=env)
    assert res.code == 0, res.err + res.out
    outputs.append(res.out + res.err)
    mail = Mail(box, NAME, box.run(f"cat {layout.TLS_CERT}")[1])
    subject = f"from the cloud {secrets.token_hex(4)}"
    alice, bob = PASSWORDS
    mail.submit(alice, PASSWORDS[alice], message(alice, bob, subject))
    got = mail.wait_for(bob, PASSWORDS[bob], "INBOX", lambda m: m["Subject"] == subject)
    assert got["From"] == alice

    res = cli(inv, "destroy", "--yes", NAME, env=env)
    assert res.code == 0, res.err + res.out
    outputs.append(res.out + res.err)
    assert standin.cloud.requests_to("DELETE", f"/v2/droplets/{node.id}")
    assert not (inv / f"{NAME}.toml").exists()
    assert [p.name.startswith(f"{NAME}.") for p in (inv / ".archive").iterdir()] == [True]
    standin.cloud.wait_removed()
    assert LocalProvider(lane_config()).status(NAME) == "absent"
    assert not any(TOKEN in text for text in outputs), "the token is never shown"


def test_a_server_presenting_another_host_key_is_refused_and_destroyed(
    standin: digitalocean.DigitalOceanStandIn, inv: Path, env: dict[str, str], identity: Path
) -> None:
    deleted = len(standin.cloud.requests_to("DELETE", r"/v2/droplets/\d+"))
    standin.cloud.wrong_host_key = True
    try:
        res = cli(inv, "create", "--provider", "digitalocean", "--identity-file", str(identity), WRONG, env=env)
    finally:
        standin.cloud.wrong_host_key = False
    assert res.code == 1, res.err + res.out
    assert "presented another SSH host key" in res.out and "it was destroyed" in res.out, res.out
    assert [r.body["name"] for r in standin.cloud.requests_to("POST", "/v2/droplets")][-1] == WRONG
    assert len(standin.cloud.requests_to("DELETE", r"/v2/droplets/\d+")) == deleted + 1, "the server was destroyed"
    assert all(n.name != WRONG for n in standin.cloud.nodes.values())
    assert not (inv / f"{WRONG}.toml").exists()
    [record] = [p for p in (inv / ".archive").iterdir() if p.name.startswith(f"{WRONG}.")]
    assert tomlkit.parse(record.read_text()).unwrap()["host_keys"] == []
    standin.cloud.wait_removed()
    wait_until(lambda: LocalProvider(lane_config()).status(WRONG) == "absent", "the refused box removed", 60)
    assert TOKEN not in res.out + res.err


OTHERS = {  # provider -> (its box, its credentials, the login user cloud-init made)
    "linode": ("cloud3.linode.test", {"LINODE_TOKEN": TOKEN}, "root"),
    "vultr": ("cloud4.vultr.test", {"VULTR_API_KEY": TOKEN}, "root"),
    "ec2": ("cloud5.ec2.test", {"AWS_ACCESS_KEY_ID": "AKIASTANDIN0000001", "AWS_SECRET_ACCESS_KEY": TOKEN}, "admin"),
}


def test_linode_vultr_and_ec2_make_real_cloud_init_boxes(
    inv: Path, env: dict[str, str], identity: Path, tmp_path: Path
) -> None:
    """Each through its stand-in (Linode v4, Vultr v2, moto's EC2 behind its proxy), all at once: the box
    cloud-init made from the user data presents the pinned key, lets the recorded user in (EC2: `admin`,
    with sudo: a dry-run deploy probes it through `sudo -n`), and destroy removes it."""
    from tests.standins import ec2, linode, vultr
    from tests.standins.core import LocalBoxes

    fronts: dict[str, Any] = {
        "linode": linode.start(LocalBoxes(), token=TOKEN),
        "vultr": vultr.start(LocalBoxes(), token=TOKEN),
        "ec2": ec2.start(LocalBoxes()),
    }
    results: dict[str, Any] = {}

    def create(provider: str) -> None:
        name, creds, _user = OTHERS[provider]
        args = ("--provider", provider, "--endpoint", fronts[provider].url, "--identity-file", str(identity))
        results[provider] = cli(inv, "create", *args, name, env={**env, **creds})

    try:
        threads = [threading.Thread(target=create, args=(p,)) for p in OTHERS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for provider, (name, creds, user) in OTHERS.items():
            res = results[provider]
            assert res.code == 0, f"{provider}: {res.err}{res.out}"
            assert TOKEN not in res.out + res.err
            doc = tomlkit.parse((inv / f"{name}.toml").read_text()).unwrap()
            assert doc["ssh"]["user"] == user and doc["provider"] == provider
            box = Box(doc["address"], doc["host_keys"][0], identity, user=user)
            assert box.run("hostname -f")[1].strip() == name
            assert "status: done" in box.run("cloud-init status --wait")[1]
            if user != "root":
                assert box.run("sudo -n id -u")[1].strip() == "0"
                res = cli(inv, "deploy", "--dry-run", name, env={**env, **creds})
                assert res.code == 0, res.err + res.out
            res = cli(inv, "destroy", "--yes", name, env={**env, **creds})
            assert res.code == 0, f"{provider}: {res.err}{res.out}"
            assert not (inv / f"{name}.toml").exists()
            assert TOKEN not in res.out + res.err
    finally:
        for front in fronts.values():
            front.close()
    for provider, (name, _creds, _user) in OTHERS.items():
        assert LocalProvider(lane_config()).status(name) == "absent", provider
