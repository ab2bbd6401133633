"""What a box's backup files say (mail/backup.py), the repository password and recovery sheet made at deploy
(jobs/recovery.py through jobs/deploy.py: a dry run makes nothing), and the masking of every backup secret."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import pytest

from miab_remote import cli
from miab_remote.engine.redact import MASK, secret_mask_for
from miab_remote.errors import InputError
from miab_remote.fleet import configdir, secrets
from miab_remote.fleet.model import Host
from miab_remote.fleet.schema import validate
from miab_remote.fleet.store import new_document
from miab_remote.jobs import deploy as deploy_job
from miab_remote.jobs import recovery
from miab_remote.mail import backup
from miab_remote.transport.sshkeys import generate_ed25519
from tests.unit.test_relay import make_ca

NAME = "box1.backup.test"
REST_PASSWORD = "p@ss:w/rd%20 with?#"
TARGET_KEY = generate_ed25519("store")


def box(tmp_path: Path, table: str, port: int = 1) -> Host:
    hosts = tmp_path / "hosts"
    hosts.mkdir(exist_ok=True)
    key = generate_ed25519("root@nowhere").public_line
    doc = new_document(NAME, "127.0.0.1", provider="manual", host_keys=[key], os="debian-13", ssh_port=port)
    doc["recipes"] = ["base"]
    path = hosts / f"{NAME}.toml"
    path.write_text(doc.as_string() + "[backup]\n" + table)
    return validate(path.read_text(), path)


@pytest.fixture(autouse=True)
def fresh_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIAB_REMOTE_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)


def store(**values: str) -> None:
    for name, value in values.items():
        secrets.put(NAME, name, value)


def test_rest_repository_carries_the_login_percent_encoded(tmp_path: Path) -> None:
    host = box(tmp_path, 'target = "rest:https://10.78.7.1:8443/box1"\n')
    assert backup.repository_text(host) == "rest:https://10.78.7.1:8443/box1\n", "a server without auth"
    store(backup_rest_user="bob@example", backup_rest_password=REST_PASSWORD)
    assert backup.repository_text(host) == "rest:https://bob%40example:p%40ss%3Aw%2Frd%2520%20with%3F%23@10.78.7.1:8443/box1\n"
    assert backup.env_text(host) == ""
    assert backup.sftp_key(host) is None and backup.known_hosts(host) is None and backup.ca_pem(host) is None


def test_half_a_rest_login_is_bad_input_naming_the_secret_and_the_command(tmp_path: Path) -> None:
    host = box(tmp_path, 'target = "rest:https://10.78.7.1:8443/box1"\n')
    store(backup_rest_user="bob")
    with pytest.raises(InputError) as e:
        backup.repository_text(host)
    assert str(e.value) == (
        f"hosts/{NAME}.toml: [backup] is set but no REST login half (backup_rest_password) is stored for {NAME} (in "
        f"config/secrets/{NAME}.toml); store it with `miab-remote backup-target set {NAME} --target "
        f"rest:https://10.78.7.1:8443/box1`, or remove [backup] with `miab-remote backup-target remove {NAME}`; "
        "nothing was changed"
    )


def test_s3_keys_go_to_the_environment_file_only(tmp_path: Path) -> None:
    host = box(tmp_path, 'target = "s3:https://10.78.7.1:9000/bucket1/box1"\n')
    with pytest.raises(InputError, match=r"no S3 access key id \(backup_s3_access_key_id\) is stored for box1"):
        backup.env_text(host)
    store(backup_s3_access_key_id="AKIDEXAMPLE", backup_s3_secret_access_key="wJalrXUtnFEMI/K7MDENG")
    assert backup.env_text(host) == "AWS_ACCESS_KEY_ID=AKIDEXAMPLE\nAWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG\n"
    assert backup.repository_text(host) == "s3:https://10.78.7.1:9000/bucket1/box1\n"


def test_sftp_files_pin_the_host_key_and_use_the_stored_key(tmp_path: Path) -> None:
    host = box(tmp_path, f'target = "sftp:restic@store.test:/srv/box1"\nhost_key = "{TARGET_KEY.public_line}"\n')
    with pytest.raises(InputError, match=r"no sftp key \(backup_sftp_key\)"):
        backup.sftp_key(host)
    made = generate_ed25519("box1 backup")
    store(backup_sftp_key=made.private_openssh.decode())
    assert backup.sftp_key(host) == made.private_openssh.decode()
    assert backup.known_hosts(host) == f"store.test {' '.join(TARGET_KEY.public_line.split()[:2])}\n"
    assert backup.settings(host)["sftp_command"] == (
        "ssh -i /etc/miab-remote/backup/id_ed25519 -o IdentitiesOnly=yes -o UserKnownHostsFile="
        "/etc/miab-remote/backup/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes restic@store.test -s sftp"
    )


def test_settings_and_ca(tmp_path: Path) -> None:
    (tmp_path / "hosts").mkdir()
    make_ca(tmp_path / "hosts" / "ca.pem")
    table = 'target = "rest:https://x.test/r"\nkeep = { daily = 3, monthly = 6 }\n'
    table += 'append_only = true\nca_file = "ca.pem"\n'
    host = box(tmp_path, table)
    assert backup.settings(host) == {
        "host": NAME, "kind": "rest", "keep": {"daily": 3, "weekly": 0, "monthly": 6}, "append_only": True,
        "state": "/home/user-data", "sftp_command": None, "ca_file": "/etc/miab-remote/backup/ca.pem",
    }  # fmt: skip
    pem = backup.ca_pem(host)
    assert pem is not None and pem.startswith("-----BEGIN CERTIFICATE-----")
    assert json.loads(backup.settings_text(host)) == backup.settings(host)


def test_no_password_before_the_first_deploy(tmp_path: Path) -> None:
    host = box(tmp_path, 'target = "local:/srv/backup"\n')
    with pytest.raises(InputError, match=f"`miab-remote deploy {NAME}` makes one"):
        backup.password(host)


# ------------------------------------------------------------------------------------------ at deploy
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deploy(*args: str) -> int:
    return cli.main(["--inventory", "hosts", "deploy", NAME, "--json", "--connect-timeout", "1", *args])


def sheet() -> Path:
    return Path("config/recovery") / f"{NAME}.txt"


def test_a_dry_run_makes_nothing_and_says_what_it_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    box(tmp_path, 'target = "local:/srv/backup"\n', closed_port())
    rendered: list[str] = []
    real = deploy_job.check_builds

    def watching(inventory, host):  # type: ignore[no-untyped-def]
        rendered.append(backup.password(host))
        return real(inventory, host)

    monkeypatch.setattr(deploy_job, "check_builds", watching)
    assert deploy("--dry-run") == 1  # the box does not answer
    run = json.loads(capsys.readouterr().out)["hosts"][NAME]
    assert run["notes"][0] == (
        f"a new repository password would be made, and the recovery sheet config/recovery/{NAME}.txt written"
    )
    assert rendered == [backup.STAND_IN], "the build renders a stand-in"
    assert secrets.read_all(NAME) == {} and not sheet().exists()
    with pytest.raises(InputError):
        backup.password(validate(Path(f"hosts/{NAME}.toml").read_text(), Path(f"hosts/{NAME}.toml")))


def test_the_first_deploy_makes_the_password_and_the_sheet_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = box(tmp_path, 'target = "rest:https://10.78.7.1:8443/box1"\n', closed_port())
    store(backup_rest_user="bob", backup_rest_password=REST_PASSWORD)
    assert deploy() == 1  # made before the box is contacted, and kept when it cannot be
    run = json.loads(capsys.readouterr().out)["hosts"][NAME]
    assert run["notes"][0] == (
        f"recovery sheet written to config/recovery/{NAME}.txt (0600): print it or copy it offline now: the laptop "
        "must not be the only copy"
    )
    password = secrets.get(NAME, secrets.BACKUP_PASSWORD)
    assert password is not None and len(password) == 43
    assert secrets.get(NAME, secrets.BACKUP_SINCE) is not None
    assert stat.S_IMODE(sheet().stat().st_mode) == 0o600 and stat.S_IMODE(sheet().parent.stat().st_mode) == 0o700
    text = sheet().read_text()
    assert f"password:   {password}\n" in text
    assert f"repository: {backup.repository_text(host).strip()}\n" in text
    assert f"miab-remote restore {NAME}" in text and f"restore latest --host {NAME} --target /" in text
    assert "KEEP THIS OFFLINE" in text
    assert deploy() == 1
    run = json.loads(capsys.readouterr().out)["hosts"][NAME]
    assert not any("recovery sheet" in n for n in run["notes"]), "nothing changed: not written again"
    assert secrets.get(NAME, secrets.BACKUP_PASSWORD) == password, "never made twice"
    store(backup_rest_password="another-password")
    assert deploy("--dry-run") == 1
    run = json.loads(capsys.readouterr().out)["hosts"][NAME]
    assert run["notes"][0] == (
        f"the recovery sheet config/recovery/{NAME}.txt would be written again (what it says changed)"
    )
    assert sheet().read_text() == text
    assert deploy() == 1
    assert "another-password" in sheet().read_text()
    assert "print it or copy it offline now" in json.loads(capsys.readouterr().out)["hosts"][NAME]["notes"][0]


def test_a_missing_credential_is_bad_input_before_anything_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box(tmp_path, 'target = "s3:https://10.78.7.1:9000/bucket1"\n', closed_port())
    for args in ((), ("--dry-run",)):
        assert deploy(*args) == 2
        assert "no S3 access key id (backup_s3_access_key_id) is stored" in capsys.readouterr().err
    assert not sheet().exists() and secrets.read_all(NAME) == {}


def test_sheet_of_sftp_and_s3_hold_what_restic_needs(tmp_path: Path) -> None:
    host = box(tmp_path, 'target = "s3:https://10.78.7.1:9000/bucket1"\n')
    store(backup_s3_access_key_id="AKIDEXAMPLE", backup_s3_secret_access_key="wJalrXUtnFEMI/K7MDENG")
    store(backup_password="pw-" + "x" * 40)
    text = recovery.sheet_text(host)
    assert "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG" in text and "export AWS_ACCESS_KEY_ID=AKIDEXAMPLE" in text
    assert configdir.read_private(sheet(), "sheet") is None
    assert recovery.refresh(host) and configdir.read_private(sheet(), "sheet") == text


def test_every_backup_secret_is_masked(tmp_path: Path) -> None:
    host = box(tmp_path, 'target = "rest:https://10.78.7.1:8443/box1"\n')
    key = generate_ed25519("k").private_openssh.decode()
    store(backup_rest_user="bob-the-user", backup_rest_password=REST_PASSWORD, backup_password="repo-password-1",
          backup_sftp_key=key, backup_since="2026-12-01T21:00:00Z")  # fmt: skip
    mask = secret_mask_for(host)
    repository = backup.repository_text(host)
    shown = mask(f"Fatal: unable to open {repository} with repo-password-1; key {key.splitlines()[1]}")
    for secret in (REST_PASSWORD, "p%40ss%3Aw%2Frd", "bob-the-user", "repo-password-1", key.splitlines()[1]):
        assert secret not in shown
    assert MASK in shown and "10.78.7.1:8443/box1" in shown
    assert mask("made 2026-12-01T21:00:00Z") == "made 2026-12-01T21:00:00Z", "a time is no secret"


def test_a_ca_file_with_a_private_key_is_refused_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "hosts").mkdir()
    make_ca(tmp_path / "hosts" / "ca.pem", with_key=True)
    host = box(tmp_path, 'target = "rest:https://x.test/r"\nca_file = "ca.pem"\n')
    with pytest.raises(InputError) as e:
        backup.ca_pem(host)
    assert str(e.value) == (
        f"hosts/{NAME}.toml: backup.ca_file: hosts/ca.pem: holds a private key, which is never copied to a box; "
        "expected a PEM file with the certificate of the CA that signs the backup target's certificate only"
    )
