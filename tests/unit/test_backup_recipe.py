"""The backup recipe (recipes/backup.py): with [backup] the box gets restic, the credential files (secret,
root-only), the program as shipped, the unit and timer, and a repository initialised once per target; a
second plan of a converged box changes nothing; without [backup], only the clean-up of an earlier one."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from miab_remote.engine.converge import build
from miab_remote.engine.planner import plan, probe_spec
from miab_remote.engine.resources import Command, Directory, File, Resource
from miab_remote.errors import InputError
from miab_remote.fleet import secrets
from miab_remote.fleet.model import DEFAULT_RECIPES, Backup, Host
from miab_remote.fleet.store import Inventory
from miab_remote.mail import backup
from miab_remote.profiles import DEBIAN_13, PROFILES, OSProfile
from miab_remote.remote import script
from tests.unit.test_plan_golden import converged_box

NAME = "bk1.example.test"
HEAD = f'hostname = "{NAME}"\naddress = "192.0.2.20"\n'
PASSWORD = "repository-password-from-the-laptop"
CONFIG = "/etc/miab-remote/backup"


def box(tmp_path: Path, target: Backup | None) -> Host:
    hosts = tmp_path / "hosts"
    hosts.mkdir(exist_ok=True)
    (hosts / f"{NAME}.toml").write_text(HEAD)
    host = Inventory(hosts).load(NAME)
    return dataclasses.replace(host, backup=target)  # the [backup] table's schema is the laptop side's


def built(host: Host, profile: OSProfile = DEBIAN_13) -> tuple[list[Resource], dict[str, bytes]]:
    return build(host, profile, host.path.parent)


def built_with(host: Host, stored: dict[str, str]) -> tuple[list[Resource], dict[str, bytes]]:
    """The box built with the repository password and these secrets stored (forgotten again after)."""
    secrets.put(NAME, secrets.BACKUP_PASSWORD, PASSWORD)
    for name, value in stored.items():
        secrets.put(NAME, name, value)
    try:
        return built(host)
    finally:
        for name in stored:
            secrets.remove(NAME, name)


def by_id(resources: list[Resource]) -> dict[str, Resource]:
    return {r.id: r for r in resources}


def test_backup_is_the_last_recipe() -> None:
    assert DEFAULT_RECIPES[-1] == "backup"


@pytest.mark.parametrize("profile", PROFILES.values(), ids=list(PROFILES))
def test_a_local_target_gets_restic_the_files_the_program_and_a_timer(tmp_path: Path, profile: OSProfile) -> None:
    host = box(tmp_path, Backup(target="local:/var/backups/restic", kind="local"))
    secrets.put(NAME, secrets.BACKUP_PASSWORD, PASSWORD)
    resources, rendered = built(host, profile)
    r = by_id(resources)
    assert {"package:restic", "package:sqlite3", "package:nftables"} <= r.keys()
    alone = dataclasses.replace(host, recipes=("backup",))
    assert {"package:restic", "package:sqlite3", "package:nftables"} <= by_id(built(alone, profile)[0]).keys()
    for name in ("repository", "password", "env"):
        f = r[f"file:{CONFIG}/{name}"]
        assert isinstance(f, File) and f.secret and f.mode == 0o600 and f.owner == "root"
    assert rendered[f"{CONFIG}/repository"] == b"local:/var/backups/restic\n"
    assert rendered[f"{CONFIG}/password"] == PASSWORD.encode() + b"\n"
    assert rendered[f"{CONFIG}/env"] == b""
    d = r[f"directory:{CONFIG}"]
    assert isinstance(d, Directory) and d.mode == 0o700
    assert json.loads(rendered[f"{CONFIG}/settings.json"]) == {
        "host": NAME,
        "kind": "local",
        "keep": {"daily": 7, "weekly": 5, "monthly": 12},
        "append_only": False,
        "state": "/home/user-data",
        "sftp_command": None,
        "ca_file": None,
    }
    assert f"file:{CONFIG}/ca.pem" not in r and f"file:{CONFIG}/id_ed25519" not in r
    assert rendered[backup.PROGRAM] == script("backup")
    program = r[f"file:{backup.PROGRAM}"]
    assert isinstance(program, File) and program.mode == 0o755
    unit = rendered["/etc/systemd/system/miab-backup.service"].decode()
    assert "Type=oneshot" in unit and f"ExecStart={backup.PROGRAM} run" in unit and "IOSchedulingClass=idle" in unit
    timer = rendered["/etc/systemd/system/miab-backup.timer"].decode()
    for line in ("OnCalendar=daily", "RandomizedDelaySec=3h", "Persistent=true", "WantedBy=timers.target"):
        assert line in timer
    ids = [x.id for x in resources]
    assert (
        ids.index("command:backup-daemon-reload")
        < ids.index("service:miab-backup.timer")
        < ids.index("command:backup-init")
    )
    init = r["command:backup-init"]
    assert isinstance(init, Command) and init.creates is not None
    assert init.creates.startswith("/var/lib/miab-remote/backup/initialised-")
    assert f"{backup.PROGRAM} init" in init.run and "command:forget-backup" not in r


def test_a_new_target_is_initialised_again_but_new_credentials_are_not(tmp_path: Path) -> None:
    secrets.put(NAME, secrets.BACKUP_PASSWORD, PASSWORD)
    one = by_id(built(box(tmp_path, Backup(target="local:/srv/a", kind="local")))[0])["command:backup-init"]
    two = by_id(built(box(tmp_path, Backup(target="local:/srv/b", kind="local")))[0])["command:backup-init"]
    secrets.put(NAME, secrets.BACKUP_PASSWORD, "another")
    three = by_id(built(box(tmp_path, Backup(target="local:/srv/b", kind="local")))[0])["command:backup-init"]
    assert isinstance(one, Command) and isinstance(two, Command) and isinstance(three, Command)
    assert one.creates != two.creates == three.creates


def test_a_rest_targets_login_is_in_the_repository_file_only(tmp_path: Path) -> None:
    host = box(tmp_path, Backup(target="rest:https://10.78.6.1:8443/bk1", kind="rest"))
    resources, rendered = built_with(host, {secrets.BACKUP_REST_USER: "bk1", secrets.BACKUP_REST_PASSWORD: "p@ss:w/rd"})
    assert rendered[f"{CONFIG}/repository"] == b"rest:https://bk1:p%40ss%3Aw%2Frd@10.78.6.1:8443/bk1\n"
    spec = probe_spec(resources, rendered, True)
    assert f"{CONFIG}/repository" not in spec["want_content"] and f"{CONFIG}/password" not in spec["want_content"]
    everything_else = b"".join(v for k, v in rendered.items() if not k.startswith(CONFIG + "/"))
    assert b"p%40ss" not in everything_else and PASSWORD.encode() not in everything_else


def test_an_s3_targets_keys_go_to_restics_environment_file(tmp_path: Path) -> None:
    host = box(tmp_path, Backup(target="s3:https://10.78.6.1:9000/bucket/bk1", kind="s3", append_only=True))
    keys = {
        secrets.BACKUP_S3_ACCESS_KEY_ID: "AKIDEXAMPLE",
        secrets.BACKUP_S3_SECRET_ACCESS_KEY: "wJalrXUtnFEMI/K7MDENG",
    }
    _, rendered = built_with(host, keys)
    assert rendered[f"{CONFIG}/env"] == b"AWS_ACCESS_KEY_ID=AKIDEXAMPLE\nAWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG\n"
    assert rendered[f"{CONFIG}/repository"] == b"s3:https://10.78.6.1:9000/bucket/bk1\n"
    assert json.loads(rendered[f"{CONFIG}/settings.json"])["append_only"] is True


def test_without_a_stored_password_the_box_is_not_built(tmp_path: Path) -> None:
    host = box(tmp_path, Backup(target="local:/var/backups/restic", kind="local"))
    secrets.remove(NAME, secrets.BACKUP_PASSWORD)
    with pytest.raises(InputError, match=r"\[backup\] is set but its repository password is not stored"):
        built(host)


def test_a_converged_box_with_backup_plans_nothing(tmp_path: Path) -> None:
    host = box(tmp_path, Backup(target="local:/var/backups/restic", kind="local"))
    secrets.put(NAME, secrets.BACKUP_PASSWORD, PASSWORD)
    resources, rendered = built(host)
    result = plan(resources, rendered, converged_box(resources, rendered))
    assert result.actions == [], [a.wire["why"] for a in result.actions]


def test_without_backup_only_an_earlier_ones_timer_and_files_go(tmp_path: Path) -> None:
    resources, rendered = built(box(tmp_path, None))
    mine = [r for r in resources if "backup" in r.id]
    assert [r.id for r in mine] == ["command:forget-backup"]
    forget = mine[0]
    assert isinstance(forget, Command)
    assert forget.unless == f"! test -e /etc/systemd/system/miab-backup.timer && ! test -e {CONFIG}"
    assert "systemctl disable --now miab-backup.timer" in forget.run and f"rm -rf -- {CONFIG} " in forget.run
    assert not any(k.startswith(CONFIG) or "miab-backup" in k for k in rendered)
    result = plan(resources, rendered, converged_box(resources, rendered))
    assert result.actions == []
