"""Backups to an sftp target: a second real box (plain Debian with OpenSSH, on the same bridge) holds the
repository, reached with a key made on the laptop and the target's host key pinned from its inventory.

`backup-target set --target sftp:... --host-key LINE` makes the key and prints its public line; the
target's authorized_keys gets it (restricted to sftp); deploy initialises the repository over sftp; `backup`,
`backups`, `restore --user` and a full `restore --force` work through it; a wrong pinned host key makes the
next backup fail (the target is never trusted on first use)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomlkit

from miab_remote.fleet import secrets
from miab_remote.mail import layout
from miab_remote.mail.passwords import hash_password
from miab_remote.transport.sshkeys import generate_ed25519
from tests.e2e.helpers import Box, cli, deployed_box, new_inventory, operator_key, private_config

pytestmark = pytest.mark.e2e

NAME = "bk-sftp.example.test"
STORE = "bk-store.example.test"
ALICE, ALICE_PASSWORD = "alice@example.test", "alice-sftp-secret-1"
REPOSITORY = f"/srv/restic/{NAME}"


def pinned_key(inv: Path, name: str) -> str:
    """A box's host key line as its inventory pins it."""
    return str(tomlkit.parse((inv / f"{name}.toml").read_text())["host_keys"][0])


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with private_config(tmp_path_factory, "backup-sftp-config") as folder:
        yield folder


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_inventory(tmp_path_factory.mktemp("backup-sftp") / "hosts")


@pytest.fixture(scope="module")
def boxes(inv: Path, config_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Box]]:
    identity = operator_key(tmp_path_factory.mktemp("operator"))
    users = [{"email": ALICE, "password_hash": hash_password(ALICE_PASSWORD)}]
    with deployed_box(inv, identity, {NAME: {"users": users}, STORE: {}}, deploy=False) as made:
        store = made.boxes[STORE]
        host_key = pinned_key(inv, STORE)
        r = cli(inv, "backup-target", "set", NAME, "--target", f"sftp:restic@{store.address}:{REPOSITORY}",
                "--host-key", host_key)  # fmt: skip
        assert r.code == 0, r.errors()
        shown = cli(inv, "backup-target", "show", NAME, "--json")
        public = shown.json()["sftp_public_key"]
        assert public.startswith("ssh-ed25519 ") and public in r.out, "the operator is told what to install"
        # The target: a user that may only speak sftp, with the box's key and nothing else.
        line = shlex.quote('restrict,command="internal-sftp" ' + public)
        store.run(
            "useradd --create-home --shell /bin/sh restic && install -d -o restic -g restic -m 700 /srv/restic "
            "~restic/.ssh && "
            f"printf '%s\\n' {line} > ~restic/.ssh/authorized_keys && chown restic:restic ~restic/.ssh/authorized_keys"
        )
        first = cli(inv, "deploy", NAME, "--json")
        assert first.code == 0, first.errors()
        yield made.boxes


def test_deploy_initialised_the_repository_over_sftp_and_a_backup_lands_there(inv: Path, boxes: dict[str, Box]) -> None:
    box, store = boxes[NAME], boxes[STORE]
    assert store.run(f"test -f {REPOSITORY}/config", check=False)[0] == 0, "restic init ran over sftp"
    kept = b"Subject: kept over sftp\nMessage-ID: <sftp-1@example.test>\n\nhi\n"
    box.run(f"doveadm save -u {ALICE} -m INBOX", stdin=kept)
    r = cli(inv, "backup", NAME, "--json")
    assert r.code == 0, r.errors()
    snapshot = r.json()["hosts"][NAME]["result"]["snapshot"]
    listed = cli(inv, "backups", NAME, "--json").json()["snapshots"]
    assert [s["id"] for s in listed] == [snapshot]
    assert store.run(f"ls {REPOSITORY}/snapshots")[1].split() == [snapshot]
    again = cli(inv, "deploy", NAME, "--json")
    assert again.code == 0 and again.json()["hosts"][NAME]["changed"] == 0, again.out
    # The key never left the laptop's store but for the box's root-only file; argv never held it.
    key = secrets.get(NAME, secrets.BACKUP_SFTP_KEY)
    assert key is not None and key.splitlines()[1] not in box.run("cat /proc/*/cmdline | tr '\\0' ' '", check=False)[1]


def test_one_mailbox_and_then_the_whole_box_come_back_from_sftp(inv: Path, boxes: dict[str, Box]) -> None:
    box = boxes[NAME]
    box.run(f"doveadm expunge -u {ALICE} mailbox INBOX all")
    one = cli(inv, "restore", NAME, "--user", ALICE)
    assert one.code == 0, one.errors()
    folders = [f for f in box.run(f"doveadm mailbox list -u {ALICE}")[1].split() if f.startswith("Restored-")]
    assert len(folders) == 1, folders
    found = box.run(f"doveadm fetch -u {ALICE} hdr.message-id mailbox {shlex.quote(folders[0])} all")[1]
    assert "<sftp-1@example.test>" in found
    whole = cli(inv, "restore", NAME, "--force", "--json")
    assert whole.code == 0, whole.errors()
    inbox = box.run(f"doveadm fetch -u {ALICE} hdr.message-id mailbox INBOX all")[1]
    assert "<sftp-1@example.test>" in inbox, "the snapshot's INBOX is back"
    assert box.run(f"test -d {layout.STATE}", check=False)[0] == 0


def test_a_target_presenting_another_host_key_is_never_used(inv: Path, boxes: dict[str, Box]) -> None:
    other = generate_ed25519("not the target").public_line
    doc = (inv / f"{NAME}.toml").read_text()
    good = json.dumps(pinned_key(inv, STORE))
    assert good in doc
    (inv / f"{NAME}.toml").write_text(doc.replace(good, json.dumps(other)))
    try:
        assert cli(inv, "deploy", NAME).code == 0
        r = cli(inv, "backup", NAME, "--json")
        assert r.code == 1, r.out
        error = r.json()["hosts"][NAME]["error"]
        assert "host key" in error.lower(), error
    finally:
        (inv / f"{NAME}.toml").write_text(doc)
        assert cli(inv, "deploy", NAME).code == 0
