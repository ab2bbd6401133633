"""The backup commands in this process against a box on loopback (tests/unit/sshbox.py: paramiko's SSH
server, the box's side of the backup program answered as the design's interface says): `backup` (progress,
a line per box, failures masked), `backups`, `restore` (its phases in order, the services to stop, a refusal,
`--from` an archived box, `--user`), `backup-target set|show|remove`; and no secret on any command line."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from miab_remote import remote
from miab_remote.checks.result import Check
from miab_remote.cli import main
from miab_remote.engine.converge import HostRun
from miab_remote.fleet import secrets
from miab_remote.fleet.model import DEFAULT_RECIPES
from miab_remote.fleet.store import new_document
from miab_remote.jobs import check as check_job
from miab_remote.jobs import deploy as deploy_job
from tests.unit.sshbox import SSHBox

NAME = "box1.backup.test"
OLD = "old.backup.test"
P = f"hosts/{NAME}.toml"
REST = "rest:https://10.78.7.1:8443/box1"
REST_USER, REST_PASSWORD = "box1-user", "rest-Pa55word:with/odd@chars"
REPO_PASSWORD = "repository-password-0123456789abcdef"
SECRETS = (REST_USER, REST_PASSWORD, REPO_PASSWORD, "rest-Pa55word%3Awith%2Fodd%40chars")


@pytest.fixture(autouse=True)
def backup_program(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until remote/backup.py (the box's program, another part) is in this tree, a stand-in source text to
    ship: the test's box never runs it, it answers as the program's interface says."""
    real = remote._source
    if not (Path(remote.__file__).parent / "backup.py").exists():
        stand_in = b"# the backup program\n"
        monkeypatch.setattr(remote, "_source", lambda name: stand_in if name == "backup" else real(name))


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli(root: Path, *args: str, stdin: str = "") -> Result:
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("NO_COLOR", "1")
        mp.setenv("COLUMNS", "1000")
        mp.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8"))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["--inventory", "hosts", *args])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 2
    return Result(code, out.getvalue(), err.getvalue())


def write_box(root: Path, name: str, box: SSHBox, table: str | None = f'target = "{REST}"\n') -> Path:
    (root / "hosts").mkdir(exist_ok=True)
    doc = new_document(
        name, "127.0.0.1", provider="manual", host_keys=[box.host_key.public_line], os="debian-13",
        ssh_port=box.port, identity_file=str(box.identity),
    )  # fmt: skip
    doc["users"] = tomlkit.parse(
        '[[users]]\nemail = "alice@backup.test"\npassword_hash = "{BLF-CRYPT}$2b$04$' + "a" * 53 + '"\n'
    )["users"]
    path = root / "hosts" / f"{name}.toml"
    path.write_text(doc.as_string() + ("" if table is None else "[backup]\n" + table))
    return path


@pytest.fixture
def root(tmp_path: Path, ssh_box: SSHBox, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MIAB_REMOTE_CONFIG_DIR", str(tmp_path / "config"))
    write_box(tmp_path, NAME, ssh_box)
    for name, value in ((secrets.BACKUP_REST_USER, REST_USER), (secrets.BACKUP_REST_PASSWORD, REST_PASSWORD),
                        (secrets.BACKUP_PASSWORD, REPO_PASSWORD)):  # fmt: skip
        secrets.put(NAME, name, value)
    return tmp_path


def payload(data: bytes) -> dict[str, Any]:
    """What the laptop gave the script: after its length line and its source text."""
    length, _, rest = data.partition(b"\n")
    return dict(json.loads(rest[int(length) :]))


def lines(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


Answer = Callable[[dict[str, Any]], tuple[bytes, int]]


def program(box: SSHBox, answers: dict[str, Answer]) -> list[dict[str, Any]]:
    """The box answers each program command from `answers`; the payloads it got, in order."""
    got: list[dict[str, Any]] = []

    def answer(command: str, data: bytes) -> tuple[bytes, int]:
        p = payload(data)
        got.append(p)
        return answers[p["command"]](p)

    box.server.answer = answer
    return got


def no_secret_on_a_command_line(box: SSHBox) -> None:
    assert box.server.commands, "the box was asked"
    for command in box.server.commands:
        for secret in SECRETS:
            assert secret not in command


RESULT = {"snapshot": "4f2a9c01deadbeefcafe", "files": 1234, "bytes": 5 << 20, "added": 10240, "seconds": 2.5,
          "parent": None, "forgot": True}  # fmt: skip


# -------------------------------------------------------------------------------------------------- backup
def test_backup_now_with_progress_and_a_line(root: Path, ssh_box: SSHBox) -> None:
    got = program(ssh_box, {"run": lambda p: (lines(
        {"progress": {"phase": "backing up", "percent": 42.0, "files": 500, "bytes": 1 << 20}},
        {"result": RESULT}), 0)})  # fmt: skip
    r = cli(root, "-v", "backup", NAME)
    assert (r.code, r.out) == (0, f"{NAME}: snapshot 4f2a9c01, 1234 files, 10.0 KiB added, 2.5 s; old snapshots "
                                   "forgotten by the keep policy\n")  # fmt: skip
    assert f"{NAME}: backing up 42% 500 files 1.0 MiB" in r.err, "progress shown as it comes"
    assert got == [{"command": "run"}], "the program reads its credentials on the box: none sent"
    no_secret_on_a_command_line(ssh_box)
    assert not any(s.encode() in i for i in ssh_box.server.inputs for s in SECRETS)


def test_a_failed_backup_is_exit_1_with_the_secrets_masked(root: Path, ssh_box: SSHBox) -> None:
    error = f"Fatal: unable to open rest:https://{REST_USER}:rest-Pa55word%3Awith%2Fodd%40chars@10.78.7.1:8443/box1"
    program(ssh_box, {"run": lambda p: (lines({"error": error, "code": "restic"}), 1)})
    r = cli(root, "backup", NAME, "--json")
    assert r.code == 1
    shown = json.loads(r.out)["hosts"][NAME]
    assert shown["error"] == f"{NAME}: Fatal: unable to open rest:https://********:********@10.78.7.1:8443/box1"


def test_a_box_without_backup_is_bad_input_before_any_box_is_asked(root: Path, ssh_box: SSHBox) -> None:
    write_box(root, OLD, ssh_box, table=None)
    r = cli(root, "backup", NAME, OLD)
    assert r.code == 2
    assert r.err.strip() == (
        f"miab-remote: {OLD} has no [backup] table (`miab-remote backup-target set {OLD} --target ...`); nothing was "
        "changed"
    )
    assert ssh_box.server.commands == []


def test_backups_lists_the_snapshots(root: Path, ssh_box: SSHBox) -> None:
    snaps = [
        {"id": "b" * 64, "short_id": "bbbbbbbb", "time": "2026-12-01T03:00:00Z", "hostname": NAME,
         "tags": ["miab-remote"], "files": 10, "bytes": 2048},
        {"id": "a" * 64, "short_id": "aaaaaaaa", "time": "2026-11-30T03:00:00Z", "hostname": NAME,
         "tags": ["miab-remote"], "files": None, "bytes": None},
    ]  # fmt: skip
    got = program(ssh_box, {"list": lambda p: (lines({"result": {"snapshots": snaps}}), 0)})
    r = cli(root, "backups", NAME)
    assert (r.code, r.out) == (0, "aaaaaaaa  2026-11-30T03:00:00Z  ?  ? files\n"
                                  "bbbbbbbb  2026-12-01T03:00:00Z  2.0 KiB  10 files\n")  # fmt: skip
    assert got == [{"command": "list", "host": NAME}]
    assert json.loads(cli(root, "backups", NAME, "--json").out)["snapshots"] == [snaps[1], snaps[0]]


# ------------------------------------------------------------------------------------------------- restore
@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The deploy and check jobs the restore calls, recorded (the box here runs no python: the real deploy
    is in tests/unit/test_deploy_job.py and the e2e tests)."""
    done: list[str] = []

    def deploy(inv, names, opts, report):  # type: ignore[no-untyped-def]
        done.append(f"deploy {' '.join(names)}")
        return {n: HostRun(n, changed=3) for n in names}

    def check(hosts):  # type: ignore[no-untyped-def]
        done.append(f"check {' '.join(h.name for h in hosts)}")
        return {h.name: [Check("backup", True, "ok"), Check("service dovecot", True, "active")] for h in hosts}

    monkeypatch.setattr(deploy_job, "deploy", deploy)
    monkeypatch.setattr(check_job, "check_hosts", check)
    yield done


def restored(p: dict[str, Any]) -> tuple[bytes, int]:
    return lines({"progress": {"phase": "restoring", "percent": 50.0}},
                 {"result": {"snapshot": "4f2a9c01dead", "time": "2026-12-01T03:00:00Z", "files": 1234,
                             "before": "/home/user-data.before-restore-20261201T120000Z", "notes": []}}), 0  # fmt: skip


# nsd and its re-signing timer: the zones' DNSSEC keys are in the state tree.
STATE_SERVICES = ["opendkim", "nsd", "miab-zones-resign.timer", "spamd", "dovecot", "postgrey", "miab-sender-guard",
                  "postfix-mta-sts-resolver",
                  "postfix", "php8.4-fpm", "nginx",
                  # the backup recipe's own timer (its settings name the state tree), once it is a default recipe
                  *(["miab-backup.timer"] if "backup" in DEFAULT_RECIPES else [])]  # fmt: skip


def test_restore_runs_its_phases_in_order(root: Path, ssh_box: SSHBox, steps: list[str]) -> None:
    def finish(p: dict[str, Any]) -> tuple[bytes, int]:
        steps.append("restore-finish")
        return lines({"result": {}}), 0

    def restore(p: dict[str, Any]) -> tuple[bytes, int]:
        steps.append("restore")
        return restored(p)

    got = program(ssh_box, {"restore": restore, "restore-finish": finish})
    r = cli(root, "restore", NAME)
    assert r.code == 0, r.err
    assert steps == ["restore", f"deploy {NAME}", "restore-finish", f"check {NAME}"]
    since = datetime.datetime.fromisoformat(secrets.get(NAME, secrets.BACKUP_SINCE) or "2000-01-01T00:00:00Z")
    assert datetime.datetime.now(datetime.UTC) - since < datetime.timedelta(minutes=5), "due again from the restore"
    assert got[0] == {"command": "restore", "snapshot": "latest", "host": NAME, "force": False,
                      "services": STATE_SERVICES, "credentials": None}  # fmt: skip
    assert got[1] == {"command": "restore-finish"}
    assert r.out.splitlines() == [
        f"{NAME}: restored snapshot 4f2a9c01 of {NAME} (1234 files; port 25 closed and {', '.join(STATE_SERVICES)} "
        "stopped meanwhile); the box's former tree is kept at /home/user-data.before-restore-20261201T120000Z",
        f"{NAME}: deployed on the restored tree (3 changed)",
        f"{NAME}: port 25 open again, backups timer started",
        f"{NAME}: checked: 0 of 2 checks failed",
    ]
    no_secret_on_a_command_line(ssh_box)


def test_a_box_that_holds_mail_is_refused_and_nothing_follows(root: Path, ssh_box: SSHBox, steps: list[str]) -> None:
    message = f"{NAME} holds mail already (3 messages); restore over it with --force"
    got = program(ssh_box, {"restore": lambda p: (lines({"error": message, "code": "holds-mail"}), 2)})
    r = cli(root, "restore", NAME, "--snapshot", "4f2a9c01")
    assert (r.code, r.err.strip()) == (2, f"miab-remote: {NAME}: {message}")
    assert steps == [] and len(got) == 1 and got[0]["snapshot"] == "4f2a9c01"
    program(ssh_box, {"restore": restored, "restore-finish": lambda p: (lines({"result": {}}), 0)})
    assert cli(root, "restore", NAME, "--force").code == 0
    assert steps == [f"deploy {NAME}", f"check {NAME}"]


def test_a_failed_deploy_after_the_swap_says_how_to_finish(
    root: Path, ssh_box: SSHBox, steps: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deploy_job, "deploy", lambda inv, names, opts, report: {
        n: HostRun(n, failed=1, error=f"{n}: postfix: failed") for n in names})  # fmt: skip
    got = program(ssh_box, {"restore": restored})
    r = cli(root, "restore", NAME)
    assert r.code == 1
    assert r.err.strip().endswith(
        f"the deploy after the restore failed: {NAME}: postfix: failed; run `miab-remote restore {NAME}` again to "
        "finish: port 25 stays closed until then"
    )
    assert [p["command"] for p in got] == ["restore"], "port 25 is not opened on a box that did not deploy"


def test_restore_refuses_without_backup_or_its_password(root: Path, ssh_box: SSHBox) -> None:
    secrets.remove(NAME, secrets.BACKUP_PASSWORD)
    r = cli(root, "restore", NAME)
    assert r.code == 2 and "its repository password is not stored" in r.err
    write_box(root, NAME, ssh_box, table=None)
    assert cli(root, "restore", NAME).code == 2
    assert ssh_box.server.commands == []


def test_restore_from_an_archived_box_sends_its_repository_on_stdin_only(
    root: Path, ssh_box: SSHBox, steps: list[str]
) -> None:
    archive = root / "hosts" / ".archive"
    archive.mkdir(mode=0o700)
    old = write_box(root, OLD, ssh_box, table='target = "s3:https://10.78.7.1:9000/bucket1/old"\n')
    older = archive / f"{OLD}.20261101T000000Z.toml"
    older.write_text(old.read_text().replace("bucket1/old", "bucket1/older"))
    old.rename(archive / f"{OLD}.20261130T000000Z.toml")
    r = cli(root, "restore", NAME, "--from", OLD)
    assert (r.code, r.err.strip()) == (2, f"miab-remote: --from {OLD}: its repository password is not stored (in "
                                          f"config/secrets/{OLD}.toml; its recovery sheet has it); nothing was changed")
    secrets.put(OLD, secrets.BACKUP_PASSWORD, "old-repository-password")
    r = cli(root, "restore", NAME, "--from", OLD)
    assert r.code == 2 and "no S3 access key id (backup_s3_access_key_id) is stored for old.backup.test" in r.err
    for name, value in ((secrets.BACKUP_S3_ACCESS_KEY_ID, "AKIDOLDBOX"),
                        (secrets.BACKUP_S3_SECRET_ACCESS_KEY, "old-s3-secret-key-value")):  # fmt: skip
        secrets.put(OLD, name, value)
    got = program(ssh_box, {"restore": restored, "restore-finish": lambda p: (lines({"result": {}}), 0)})
    r = cli(root, "restore", NAME, "--from", OLD)
    assert r.code == 0, r.err
    assert got[0]["host"] == OLD
    assert got[0]["credentials"] == {
        "repository": "s3:https://10.78.7.1:9000/bucket1/old\n", "password": "old-repository-password",
        "env": "AWS_ACCESS_KEY_ID=AKIDOLDBOX\nAWS_SECRET_ACCESS_KEY=old-s3-secret-key-value\n", "ca": None,
    }, "the newest archived record"  # fmt: skip
    for command in ssh_box.server.commands:
        assert "old-s3-secret-key-value" not in command and "old-repository-password" not in command
    r = cli(root, "restore", NAME, "--from", OLD, "--user", "alice@backup.test")
    assert (r.code, r.err.strip()) == (2, f"miab-remote: --user with --from {OLD}: one mailbox is restored from the "
                                          f"box's own repository only; restore the whole box from {OLD}'s, or set "
                                          f"{NAME}'s target to it first; nothing was changed")  # fmt: skip


def test_restore_from_an_unknown_box_is_bad_input(root: Path, ssh_box: SSHBox) -> None:
    r = cli(root, "restore", NAME, "--from", OLD)
    assert r.code == 2
    assert r.err.strip() == (
        f"miab-remote: --from {OLD}: no inventory hosts/{OLD}.toml and no archived record of it in hosts/.archive; "
        "nothing was changed"
    )


def test_restore_one_user(root: Path, ssh_box: SSHBox, steps: list[str]) -> None:
    got = program(ssh_box, {"restore-user": lambda p: (lines({"result": {"folder": p["folder"], "messages": 7}}), 0)})
    r = cli(root, "restore", NAME, "--user", "Alice@backup.test", "--snapshot", "4f2a9c01")
    assert r.code == 0, r.err
    assert got[0]["command"] == "restore-user" and got[0]["email"] == "alice@backup.test"
    assert got[0]["folder"].startswith("Restored-20") and got[0]["snapshot"] == "4f2a9c01"
    assert steps == [], "no deploy, no check: services keep running"
    assert "7 messages of alice@backup.test restored into the folder Restored-20" in r.out
    r = cli(root, "restore", NAME, "--user", "bob@backup.test")
    assert (r.code, r.err.strip()) == (2, f"miab-remote: --user bob@backup.test: not a user of {NAME} (`miab-remote "
                                          f"user list {NAME}`); nothing was changed")  # fmt: skip


# ------------------------------------------------------------------------------------------- backup-target
def inventory(root: Path, name: str = NAME) -> dict[str, Any]:
    return dict(tomlkit.parse((root / "hosts" / f"{name}.toml").read_text()).unwrap())


def test_set_rest_reads_the_login_from_stdin_and_stores_it_only_there(root: Path, ssh_box: SSHBox) -> None:
    write_box(root, OLD, ssh_box, table=None)
    r = cli(root, "backup-target", "set", OLD, "--target", "rest:https://10.78.7.1:8443/old", "--keep-daily", "3",
            "--append-only", "--credentials-stdin", stdin="old-user\nold-Password-1\n")  # fmt: skip
    assert r.code == 0, r.err
    assert r.out.splitlines() == [
        f"{OLD}: backups to rest:https://10.78.7.1:8443/old (append-only: never forgets) in hosts/{OLD}.toml",
        f"  note: run `miab-remote deploy {OLD}` to apply it: the box's backup files and timer change only with a "
        "deploy",
    ]
    assert inventory(root, OLD)["backup"] == {"target": "rest:https://10.78.7.1:8443/old",
                                              "keep": {"daily": 3, "weekly": 5, "monthly": 12}, "append_only": True}
    assert secrets.read_all(OLD) == {"backup_rest_user": "old-user", "backup_rest_password": "old-Password-1"}
    assert "old-Password-1" not in (root / "hosts" / f"{OLD}.toml").read_text()
    assert stat.S_IMODE(secrets.path_for(OLD).stat().st_mode) == 0o600
    r = cli(root, "backup-target", "set", OLD, "--target", "rest:https://10.78.7.1:8443/old", "--credentials-stdin",
            stdin="\n")  # fmt: skip
    assert r.code == 0 and secrets.read_all(OLD) == {}, "an empty user: a server without login"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "rest:http://10.78.7.1/x"],
         "--target: 'rest:http://10.78.7.1/x': rest targets go over https only (the repository is encrypted, but its "
         "credentials are not); expected like 'rest:https://HOST[:PORT]/PATH'; nothing was changed"),
        (["--target", "local:/srv/b", "--keep-weekly", "5000"],
         "--keep-weekly: 5000 is out of range; accepted: 0..1000; nothing was changed"),
        (["--keep-daily", "1"], f"{OLD} has no [backup] yet: give --target; nothing was changed"),
        (["--target", "sftp:u@store.test:/srv"],
         f"hosts/{OLD}.toml:"),
        (["--target", "local:/srv/b", "--ca-file", "nowhere.pem"],
         "--ca-file nowhere.pem: No such file or directory; expected a PEM file with the certificate of the CA that "
         "signs the backup target's certificate"),
    ],
)  # fmt: skip
def test_set_checks_everything_before_it_asks(root: Path, ssh_box: SSHBox, args: list[str], message: str) -> None:
    path = write_box(root, OLD, ssh_box, table=None)
    before = path.read_bytes()
    r = cli(root, "backup-target", "set", OLD, *args, "--credentials-stdin", stdin="u\np\n")
    assert r.code == 2
    assert r.err.strip().startswith(f"miab-remote: {message}")
    assert path.read_bytes() == before and secrets.read_all(OLD) == {}


def test_a_password_argument_is_refused_without_echo(root: Path) -> None:
    r = cli(root, "backup-target", "set", NAME, "--target", REST, "--password", "hunter2-secret")
    assert r.code == 2 and "never taken from the command line" in r.err and "hunter2-secret" not in r.err


def test_set_s3_then_sftp_makes_a_key_once_and_forgets_the_other_kinds(root: Path, ssh_box: SSHBox) -> None:
    r = cli(root, "backup-target", "set", NAME, "--target", "s3:https://10.78.7.1:9000/bucket1/box1",
            "--credentials-stdin", stdin="AKIDBOX1\nbox1-s3-secret\n")  # fmt: skip
    assert r.code == 0, r.err
    assert secrets.get(NAME, secrets.BACKUP_S3_SECRET_ACCESS_KEY) == "box1-s3-secret"
    assert secrets.get(NAME, secrets.BACKUP_REST_PASSWORD) is None, "the rest login went with the rest target"
    assert "recovery sheet written to config/recovery/box1.backup.test.txt" in r.out, "a password exists: new sheet"
    assert "AWS_SECRET_ACCESS_KEY=box1-s3-secret" in (root / "config/recovery" / f"{NAME}.txt").read_text()
    host_key = ssh_box.host_key.public_line
    args = ["backup-target", "set", NAME, "--target", "sftp:restic@store.test:/srv/box1", "--host-key", host_key]
    r = cli(root, *args)
    assert r.code == 0, r.err
    key_line = next(line for line in r.out.splitlines() if "authorized_keys" in line)
    assert key_line.startswith(f"  note: {NAME}: add this line to the sftp target's ~/.ssh/authorized_keys: "
                               "ssh-ed25519 ")  # fmt: skip
    assert secrets.get(NAME, secrets.BACKUP_S3_ACCESS_KEY_ID) is None
    key = secrets.get(NAME, secrets.BACKUP_SFTP_KEY)
    assert cli(root, *args).code == 0 and secrets.get(NAME, secrets.BACKUP_SFTP_KEY) == key, "made once"
    assert inventory(root)["backup"]["host_key"] == host_key


def test_show_never_shows_a_credential_but_the_sheet_on_request(root: Path) -> None:
    r = cli(root, "backup-target", "show", NAME, "--json")
    assert r.code == 0
    shown = json.loads(r.out)
    assert shown["backup"]["target"] == REST and shown["password_stored"] is True
    assert shown["credentials_stored"] == ["backup_rest_password", "backup_rest_user"]
    for secret in SECRETS:
        assert secret not in r.out
    text = cli(root, "backup-target", "show", NAME)
    assert text.out.splitlines()[0] == f"{NAME}: backups to {REST} (keeps 7 daily, 5 weekly, 12 monthly)"
    sheet = cli(root, "backup-target", "show", NAME, "--recovery-sheet")
    assert f"password:   {REPO_PASSWORD}" in sheet.out and "rest-Pa55word%3Awith%2Fodd%40chars" in sheet.out


def test_remove_keeps_the_password_and_forgets_the_login(root: Path) -> None:
    r = cli(root, "backup-target", "remove", NAME)
    assert r.code == 0
    assert "backup" not in inventory(root)
    assert secrets.read_all(NAME) == {"backup_password": REPO_PASSWORD}
    assert cli(root, "backup-target", "remove", NAME).code == 2


def test_restore_from_another_boxs_sftp_repository_is_refused(root: Path, ssh_box: SSHBox) -> None:
    key = ssh_box.host_key.public_line
    write_box(root, OLD, ssh_box, table=f'target = "sftp:restic@store.test:/srv/old"\nhost_key = "{key}"\n')
    secrets.put(OLD, secrets.BACKUP_PASSWORD, "old-repository-password")
    secrets.put(OLD, secrets.BACKUP_SFTP_KEY, "-----BEGIN OPENSSH PRIVATE KEY-----\nold\n-----END")
    r = cli(root, "restore", NAME, "--from", OLD)
    assert r.code == 2 and f"--from {OLD}: its sftp repository is not this box's" in r.err
    assert ssh_box.server.commands == []


def test_a_new_laptop_stores_the_sheets_password_once(root: Path) -> None:
    assert cli(root, "backup-target", "password", NAME, "--password-stdin", stdin="other\n").code == 2
    secrets.remove(NAME, secrets.BACKUP_PASSWORD)
    refused = cli(root, "backup-target", "password", NAME, "--password", "x")
    assert refused.code == 2 and "x" not in refused.err.replace("--password", "")
    r = cli(root, "backup-target", "password", NAME, "--password-stdin", stdin=REPO_PASSWORD + "\n")
    assert r.code == 0, r.err
    assert secrets.get(NAME, secrets.BACKUP_PASSWORD) == REPO_PASSWORD
    assert REPO_PASSWORD not in r.out + r.err
    assert "recovery sheet written" in r.out
    again = cli(root, "backup-target", "password", NAME, "--password-stdin", stdin="another-one\n")
    assert again.code == 2 and "never replaced" in again.err
    assert secrets.get(NAME, secrets.BACKUP_PASSWORD) == REPO_PASSWORD
