"""The backup recipe and program on a real box (a local restic repository on the box itself, so no target
and no credentials are needed): a deploy sets up restic, the root-only files, miab-backup and its timer, and
initialises the repository; a second deploy changes nothing; `miab-backup run` (as the timer runs it) makes
a snapshot; a restore over a box that holds mail is refused, and with force it closes port 25, stops the
services, swaps the restored tree in atomically and keeps the old one; a deploy and restore-finish open the
box again. The laptop's commands (backup, restore) and the other targets are tests/e2e/test_backup.py's."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from miab_remote.fleet import secrets
from miab_remote.mail import layout
from miab_remote.mail.passwords import hash_password
from miab_remote.remote import BOOTSTRAP, script_input
from tests.e2e.helpers import Box, cli, deployed_box, new_inventory, operator_key, private_config

pytestmark = pytest.mark.e2e

NAME = "bk-a1.example.test"
TARGET = "/var/backups/restic"
MAILDIR = f"{layout.MAILBOXES}/example.test/late"
ALICE = "alice@example.test"
SERVICES = ["postfix", "dovecot"]


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with private_config(tmp_path_factory, "backup-box-config") as folder:
        yield folder


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_inventory(tmp_path_factory.mktemp("backup-box") / "hosts")


@pytest.fixture(scope="module")
def box(inv: Path, config_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    identity = operator_key(tmp_path_factory.mktemp("operator"))
    inventory = {
        "backup": {"target": f"local:{TARGET}"},
        "users": [{"email": ALICE, "password_hash": hash_password("alice-secret-1")}],
    }
    with deployed_box(inv, identity, {NAME: inventory}, deploy=False) as made:
        if secrets.get(NAME, secrets.BACKUP_PASSWORD) is None:  # the laptop's deploy makes it (jobs/deploy.py)
            secrets.put(NAME, secrets.BACKUP_PASSWORD, "e2e-repository-password-0123456789")
        first = cli(inv, "deploy", NAME, "--json")
        assert first.code == 0, first.errors()
        yield made.box


def program(box: Box, payload: dict[str, Any], ok: bool = True) -> tuple[int, dict[str, Any]]:
    """miab-backup as the laptop runs it (the script on stdin): its exit code and final JSON line."""
    code, out = box.run(
        f"python3 -c {shlex.quote(BOOTSTRAP)}", check=False, stdin=script_input("backup", json.dumps(payload).encode())
    )
    last = [json.loads(line) for line in out.splitlines() if line.startswith("{")][-1]
    assert not ok or (code == 0 and "result" in last), out
    return code, last


def test_a_deploy_sets_up_the_backup_and_a_second_changes_nothing(inv: Path, box: Box) -> None:
    again = cli(inv, "deploy", NAME, "--json")
    assert again.code == 0 and again.json()["hosts"][NAME]["changed"] == 0, again.out
    assert box.run("systemctl is-enabled miab-backup.timer")[1].strip() == "enabled"
    assert box.run("systemctl is-active miab-backup.timer")[1].strip() == "active"
    assert box.run("stat -c '%a %U' /etc/miab-remote/backup /etc/miab-remote/backup/password")[1].split("\n")[:2] == [
        "700 root",
        "600 root",
    ]
    assert box.run(f"test -f {TARGET}/config", check=False)[0] == 0, "the repository was initialised"
    assert box.run("ls /var/lib/miab-remote/backup")[1].startswith("initialised-")


def test_the_timers_command_makes_a_snapshot(box: Box) -> None:
    code, out = box.run("miab-backup run", check=False)
    result = json.loads(out.strip().splitlines()[-1])["result"]
    assert code == 0 and len(result["snapshot"]) == 64 and result["files"] > 0
    status = json.loads(box.run("cat /var/lib/miab-remote/backup/status.json")[1])
    assert status["last_success"]["snapshot"] == result["snapshot"] and status["last_attempt"]["ok"] is True
    assert program(box, {"command": "list", "host": None})[1]["result"]["snapshots"][-1]["id"] == result["snapshot"]


def test_one_mailbox_comes_back_as_folders_dovecot_lists(box: Box) -> None:
    box.run(f"doveadm mailbox create -u {ALICE} -s Sent")
    for folder in ("INBOX", "Sent"):
        box.run(f"doveadm save -u {ALICE} -m {folder}", stdin=f"Subject: in {folder}\n\nhello\n".encode())
    snap = program(box, {"command": "run"})[1]["result"]["snapshot"]
    box.run(f"doveadm expunge -u {ALICE} mailbox INBOX all && doveadm expunge -u {ALICE} mailbox Sent all")
    request = {
        "command": "restore-user",
        "snapshot": snap,
        "host": NAME,
        "email": ALICE,
        "folder": "Restored-2026-12-01",
    }
    assert program(box, request)[1]["result"] == {"folder": "Restored-2026-12-01", "messages": 2, "snapshot": snap}
    listed = box.run(f"doveadm mailbox list -u {ALICE}")[1].split()
    restored = [n for n in listed if n.startswith("Restored-2026-12-01")]
    assert len(restored) == 2, listed
    for name in restored:
        assert box.run(f"doveadm search -u {ALICE} mailbox {shlex.quote(name)} all")[1].count("\n") == 1
    assert set(restored) <= set(box.run(f"doveadm mailbox list -s -u {ALICE}")[1].split()), "subscribed"
    assert box.run("systemctl is-active dovecot postfix")[1].split() == ["active", "active"]


def test_a_restore_over_mail_needs_force_and_swaps_the_tree_in_behind_a_closed_port(inv: Path, box: Box) -> None:
    snap = program(box, {"command": "run"})[1]["result"]["snapshot"]
    box.run(f"mkdir -p {MAILDIR}/cur {MAILDIR}/new {MAILDIR}/tmp && echo 'Subject: late' > {MAILDIR}/new/1.late")
    request = {"command": "restore", "snapshot": "latest", "host": NAME, "services": SERVICES, "credentials": None}
    code, last = program(box, request, ok=False)
    assert code == 2 and last["code"] == "holds-mail", last
    assert box.run("nft list table inet miab_restore", check=False)[0] != 0, "a refusal changes nothing"

    result = program(box, {**request, "force": True})[1]["result"]
    assert result["snapshot"] == snap and result["before"].startswith(f"{layout.STATE}.before-restore-")
    assert box.run(f"test -e {MAILDIR}/new/1.late", check=False)[0] != 0, "the tree is the snapshot's"
    assert box.run(f"test -e {result['before']}/mail/mailboxes/example.test/late/new/1.late", check=False)[0] == 0
    assert "reject with tcp reset" in box.run("nft list table inet miab_restore")[1]
    assert box.run("systemctl is-active postfix", check=False)[1].strip() != "active"
    owner = box.run(f"stat -c %U {layout.MAILBOXES} {layout.TLS_KEY}")[1].split()
    assert owner[0] != "UNKNOWN" and "UNKNOWN" not in owner

    redeploy = cli(inv, "deploy", NAME, "--json")
    assert redeploy.code == 0, redeploy.errors()
    assert box.run("nft list table inet miab_restore", check=False)[0] == 0, "a deploy leaves port 25 closed"
    assert program(box, {"command": "restore-finish"})[1]["result"]["finished"] is True
    assert box.run("nft list table inet miab_restore", check=False)[0] != 0
    assert box.run("systemctl is-active postfix miab-backup.timer")[1].split() == ["active", "active"]
    assert box.run("test -e /var/lib/miab-remote/restore.json", check=False)[0] != 0
    after = program(box, {"command": "run"})[1]["result"]
    assert after["parent"] == snap, "the restored tree continues the same snapshots"
    again = cli(inv, "deploy", NAME, "--json")
    assert again.code == 0 and again.json()["hosts"][NAME]["changed"] == 0, again.out
