"""The [backup] table: every problem one line `file:line: field: what is accepted`, and the Backup it makes."""

from __future__ import annotations

from pathlib import Path

import pytest

from miab_remote.fleet.model import Backup
from miab_remote.fleet.schema import validate
from miab_remote.transport.sshkeys import generate_ed25519
from tests.unit.test_inventory import errors_of

NAME = "box1.backup.test"
P = f"hosts/{NAME}.toml"
HEAD = f'hostname = "{NAME}"\naddress = "192.0.2.10"\n'
KEY = generate_ed25519("target").public_line
TARGETS = (
    "accepted: 'rest:https://HOST[:PORT]/PATH', 's3:https://HOST[:PORT]/BUCKET[/PATH]', 'sftp:USER@HOST:/PATH' or "
    "'local:/PATH' (a folder on the box, such as a second disk)"
)
REST = "expected like 'rest:https://HOST[:PORT]/PATH'"
S3 = "expected like 's3:https://HOST[:PORT]/BUCKET[/PATH]'"
SECRET = (
    "credentials are never kept in the inventory; remove this line: credentials go in the secrets store: "
    "`miab-remote backup-target set NAME --target ...` (it asks for them, or reads --credentials-stdin)"
)
KEEP = "a table like { daily = 7, weekly = 5, monthly = 12 }, each 0..1000"


def backup(*lines: str) -> str:
    return HEAD + "[backup]\n" + "".join(f"{line}\n" for line in lines)



SCHEMA_CASES: list[tuple[str, str, str]] = [
    ("type", HEAD + 'backup = "rest:https://x.test/r"\n',
     f"{P}:3: backup: expected a table ([backup] section), got a string 'rest:https://x.test/r'"),
    ("missing", backup(), f"{P}:3: backup.target: required key is missing; expected a restic repository; {TARGETS}"),
    ("scheme", backup('target = "b2:bucket/path"'),
     f"{P}:4: backup.target: 'b2:bucket/path' is not a backup target; {TARGETS}"),
    ("no-scheme", backup('target = "/srv/backup"'),
     f"{P}:4: backup.target: '/srv/backup' is not a backup target; {TARGETS}"),
    ("space", backup('target = "local:/srv/my backup"'),
     f"{P}:4: backup.target: 'local:/srv/my backup' is not a backup target; {TARGETS}"),
    ("rest-http", backup('target = "rest:http://10.0.0.1:8000/box1"'),
     f"{P}:4: backup.target: 'rest:http://10.0.0.1:8000/box1': rest targets go over https only (the repository is "
     f"encrypted, but its credentials are not); {REST}"),
    ("s3-http", backup('target = "s3:http://s3.test/bucket"'),
     f"{P}:4: backup.target: 's3:http://s3.test/bucket': s3 targets go over https only (the repository is "
     f"encrypted, but its credentials are not); {S3}"),
    ("s3-bare", backup('target = "s3:s3.amazonaws.com/bucket"'),
     f"{P}:4: backup.target: 's3:s3.amazonaws.com/bucket': s3 targets go over https only (the repository is "
     f"encrypted, but its credentials are not); {S3}"),
    ("rest-credentials", backup('target = "rest:https://bob:hunter2@10.0.0.1:8000/box1"'),
     f"{P}:4: backup.target: 'rest:https://bob:hunter2@10.0.0.1:8000/box1': credentials go in the secrets store: "
     f"`miab-remote backup-target set`; {REST}"),
    ("rest-user", backup('target = "rest:https://bob@10.0.0.1:8000/box1"'),
     f"{P}:4: backup.target: 'rest:https://bob@10.0.0.1:8000/box1': credentials go in the secrets store: "
     f"`miab-remote backup-target set`; {REST}"),
    ("rest-query", backup('target = "rest:https://x.test/r?a=b"'),
     f"{P}:4: backup.target: 'rest:https://x.test/r?a=b': no query or fragment; {REST}"),
    ("rest-host", backup('target = "rest:https://bad_host!/r"'),
     f"{P}:4: backup.target: 'rest:https://bad_host!/r': 'bad_host!' is not an IP address or DNS name; expected "
     "like '203.0.113.10', '2001:db8::10' or 'box1.example.org'"),
    ("rest-port", backup('target = "rest:https://x.test:99999/r"'),
     f"{P}:4: backup.target: 'rest:https://x.test:99999/r': the port is not 1..65535; {REST}"),
    ("s3-bucket", backup('target = "s3:https://s3.test:9000/"'),
     f"{P}:4: backup.target: 's3:https://s3.test:9000/': no bucket; {S3}"),
    ("s3-bucket-name", backup('target = "s3:https://s3.test/My_Bucket/box1"'),
     f"{P}:4: backup.target: 's3:https://s3.test/My_Bucket/box1': 'My_Bucket' is not a bucket name; accepted: 3 to "
     "63 lower-case letters, digits, '.' and '-', starting and ending with a letter or digit"),
    ("local-relative", backup('target = "local:srv/backup"'),
     f"{P}:4: backup.target: 'local:srv/backup': the path 'srv/backup' is relative; expected an absolute one on the "
     "box, like 'local:/srv/backup'"),
    ("local-root", backup('target = "local:/"'),
     f"{P}:4: backup.target: 'local:/': not the root folder; expected a folder of its own, like 'local:/srv/backup'"),
    ("local-state", backup('target = "local:/home/user-data/backup"'),
     f"{P}:4: backup.target: 'local:/home/user-data/backup': inside the state tree /home/user-data, which is what is "
     "backed up; expected a folder outside it, like 'local:/srv/backup' (best on a second disk)"),
    ("local-state-dots", backup('target = "local:/srv/../home/user-data"'),
     f"{P}:4: backup.target: 'local:/srv/../home/user-data': inside the state tree /home/user-data, which is what is "
     "backed up; expected a folder outside it, like 'local:/srv/backup' (best on a second disk)"),
    ("sftp-shape", backup('target = "sftp:backup.test:/srv"', f'host_key = "{KEY}"'),
     f"{P}:4: backup.target: 'sftp:backup.test:/srv' is not an sftp target; expected 'sftp:USER@HOST:/PATH'"),
    ("sftp-relative", backup('target = "sftp:u@backup.test:srv"', f'host_key = "{KEY}"'),
     f"{P}:4: backup.target: 'sftp:u@backup.test:srv': the path 'srv' is relative; expected an absolute one, like "
     "'sftp:USER@HOST:/PATH'"),
    ("sftp-host-key", backup('target = "sftp:u@backup.test:/srv"'),
     f"{P}:3: backup.host_key: required key is missing; expected the sftp target's SSH host key, a line like "
     "'ssh-ed25519 AAAAC3Nza...'"),
    ("sftp-bad-key", backup('target = "sftp:u@backup.test:/srv"', 'host_key = "ssh-ed25519 AAAA"'),
     f"{P}:5: backup.host_key: not an SSH public key (type does not match its data): 'ssh-ed25519 AAAA'; expected "
     "the sftp target's SSH host key, a line like 'ssh-ed25519 AAAAC3Nza...'"),
    ("host-key-not-sftp", backup('target = "local:/srv/backup"', f'host_key = "{KEY}"'),
     f"{P}:5: backup.host_key: a local target has no SSH host key; accepted: host_key for sftp only"),
    ("ca-not-https", backup('target = "local:/srv/backup"', 'ca_file = "ca.pem"'),
     f"{P}:5: backup.ca_file: a local target has no certificate; accepted: ca_file for rest and s3 only"),
    ("ca-empty", backup('target = "rest:https://x.test/r"', 'ca_file = ""'),
     f"{P}:5: backup.ca_file: '' is not a path; expected like 'backup-ca.pem' or '~/ca/backup.pem'"),
    ("keep-type", backup('target = "local:/srv/b"', "keep = 7"),
     f"{P}:5: backup.keep: expected {KEEP}, got an integer 7"),
    ("keep-range", backup('target = "local:/srv/b"', "keep = { daily = 1001 }"),
     f"{P}:5: backup.keep.daily: 1001 is out of range; accepted: 0..1000"),
    ("keep-negative", backup('target = "local:/srv/b"', "keep = { weekly = -1 }"),
     f"{P}:5: backup.keep.weekly: -1 is out of range; accepted: 0..1000"),
    ("keep-nothing", backup('target = "local:/srv/b"', "keep = { daily = 0, weekly = 0 }"),
     f"{P}:5: backup.keep: keeps nothing; accepted: {KEEP}, at least one above 0"),
    ("keep-unknown", backup('target = "local:/srv/b"', "keep = { hourly = 24, daily = 7 }"),
     f"{P}:5: backup.keep.hourly: unknown key in [backup] keep; accepted: daily, weekly, monthly"),
    ("keep-string", backup('target = "local:/srv/b"', 'keep = { daily = "7" }'),
     f"{P}:5: backup.keep.daily: expected a count of snapshots, 0..1000, got a string '7'"),
    ("append-only", backup('target = "local:/srv/b"', 'append_only = "yes"'),
     f"{P}:5: backup.append_only: expected true or false (true: never forget or prune), got a string 'yes'"),
    ("password", backup('target = "local:/srv/b"', 'password = "hunter2-secret"'), f"{P}:5: backup.password: {SECRET}"),
    ("secret-key", backup('target = "s3:https://s3.test/bucket1"', 'secret_access_key = "AKIA-secret"'),
     f"{P}:5: backup.secret_access_key: {SECRET}"),
    ("unknown", backup('target = "local:/srv/b"', "apend_only = true"),
     f"{P}:5: backup.apend_only: unknown key in [backup] (did you mean 'append_only'?); accepted: target, keep, "
     "append_only, ca_file, host_key"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in SCHEMA_CASES], ids=[c[0] for c in SCHEMA_CASES])
def test_schema_errors(text: str, expected: str) -> None:
    assert errors_of(text, P) == expected


def test_a_credential_in_the_inventory_is_never_echoed() -> None:
    assert "hunter2-secret" not in errors_of(backup('target = "local:/srv/b"', 'password = "hunter2-secret"'), P)


GOOD_CASES: list[tuple[str, list[str], Backup]] = [
    ("rest", ['target = "rest:https://10.78.0.1:8443/box1"'],
     Backup("rest:https://10.78.0.1:8443/box1", "rest")),
    ("rest-root", ['target = "rest:https://backup.test/"', "append_only = true"],
     Backup("rest:https://backup.test/", "rest", append_only=True)),
    ("rest-ipv6", ['target = "rest:https://[2001:db8::1]:8000/r"'],
     Backup("rest:https://[2001:db8::1]:8000/r", "rest")),
    ("s3", ['target = "s3:https://s3.test:9000/bucket-1/box1"', "keep = { daily = 3, monthly = 24 }"],
     Backup("s3:https://s3.test:9000/bucket-1/box1", "s3", 3, 0, 24)),
    ("sftp", ['target = "sftp:backup@store.test:/srv/box1"', f'host_key = "{KEY}"'],
     Backup("sftp:backup@store.test:/srv/box1", "sftp", host_key=" ".join(KEY.split()[:2]))),
    ("local", ['target = "local:/srv/backup"', "keep = { weekly = 1 }"], Backup("local:/srv/backup", "local", 0, 1, 0)),
]  # fmt: skip


@pytest.mark.parametrize(("lines", "expected"), [c[1:] for c in GOOD_CASES], ids=[c[0] for c in GOOD_CASES])
def test_a_good_table_is_read(lines: list[str], expected: Backup) -> None:
    assert validate(backup(*lines), Path(P)).backup == expected


def test_no_table_no_backup_and_ca_file_relative_to_the_inventory(tmp_path: Path) -> None:
    path = tmp_path / "hosts" / f"{NAME}.toml"
    assert validate(HEAD, path).backup is None
    b = validate(backup('target = "rest:https://x.test/r"', 'ca_file = "ca/backup.pem"'), path).backup
    assert b is not None and b.ca_file == tmp_path / "hosts" / "ca" / "backup.pem"
