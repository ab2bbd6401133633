"""Moving a box onto a new one of the same name, Debian 12 -> 13, with real local boxes: `destroy
--keep-inventory` leaves the inventory without a box (`hosts` says so, deploy refuses it), `create --image
debian-13` makes the new box into it, and its deploy gives the same users and aliases (the user logs in with
the same password on the new box). The mail itself comes back by `restore` (tests/e2e/test_backup.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from miab_remote.mail import layout
from miab_remote.mail.passwords import hash_password
from tests.e2e.helpers import Box, cli, deployed_box, new_inventory, operator_key
from tests.e2e.mailclients import Mail

pytestmark = pytest.mark.e2e

NAME = "bk-mv1.example.test"
USER, PASSWORD = "alice@example.test", "alice-move-secret-1"


def test_a_box_moves_from_debian_12_to_13_keeping_its_users(tmp_path: Path) -> None:
    inv = new_inventory(tmp_path / "hosts")
    identity = operator_key(tmp_path)
    inventory = {
        "users": [{"email": USER, "password_hash": hash_password(PASSWORD)}],
        "aliases": [{"source": "info@example.test", "destinations": [USER]}],
    }
    with deployed_box(inv, identity, {NAME: inventory}, image="debian-12"):
        path = inv / f"{NAME}.toml"
        old = tomllib.loads(path.read_text())
        assert old["os"] == "debian-12"

        gone = cli(inv, "destroy", "--yes", "--keep-inventory", NAME)
        assert gone.code == 0, gone.err + gone.out
        kept = tomllib.loads(path.read_text())
        assert kept["host_keys"] == [] and kept["users"] == old["users"] and kept["aliases"] == old["aliases"]
        hosts = cli(inv, "hosts", "--json")
        assert hosts.code == 0 and hosts.json()["hosts"][NAME]["box"] is False, hosts.err
        refused = cli(inv, "deploy", NAME)
        assert refused.code == 1 and "no box" in refused.out + refused.err, refused.err + refused.out

        create = ("create", "--provider", "local", "--image", "debian-13", "--identity-file", str(identity))
        again = cli(inv, *create, NAME)
        assert again.code == 0 and "kept the existing inventory" in again.out, again.err + again.out
        new = tomllib.loads(path.read_text())
        assert new["os"] == "debian-13" and new["host_keys"] and new["host_keys"] != old["host_keys"]
        assert new["users"] == old["users"] and new["aliases"] == old["aliases"]

        deployed = cli(inv, "deploy", NAME, "--json")
        assert deployed.code == 0, deployed.errors()
        assert deployed.json()["hosts"][NAME]["os"] == "debian-13"
        box = Box(new["address"], new["host_keys"][0], identity)
        assert box.run(". /etc/os-release; echo $VERSION_CODENAME")[1].strip() == "trixie"
        mail = Mail(box, NAME, box.run(f"cat {layout.TLS_CERT}")[1])
        with mail.imap(USER, PASSWORD) as imap:
            assert imap.select("INBOX")[0] == "OK"
