"""The box's backup program (miab_remote/remote/backup.py), run exactly as shipped (`python3 -c BOOTSTRAP`
with its input on stdin) against a real restic repository in a temporary folder (`local:`), with a small
state tree: init, backups (exclusions, sqlite copies, owners, status), the guard against a new box's
first run, the list, full restores (journal, phases, an interrupted one finished), one mailbox restored
into folders, and no secret on restic's command line. systemctl and nft are stand-in scripts that log
what they were asked (MIAB_BACKUP_SYSTEMCTL, MIAB_BACKUP_NFT)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from miab_remote.remote import BOOTSTRAP, script, script_input

RESTIC = shutil.which("restic")
pytestmark = pytest.mark.skipif(RESTIC is None or shutil.which("sqlite3") is None, reason="needs restic and sqlite3")
AS_ROOT = os.geteuid() == 0
PASSWORD = "Repo-Passw0rd-never-on-argv"
NAME = "box1.example.test"
VMAIL_OLD, VMAIL_NEW = 5000, 5011
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

FAKE_TOOL = """#!/bin/sh
# A stand-in for systemctl or nft: logs its arguments; nft keeps whether its table exists in a file.
echo "$(basename "$0") $*" >> "{log}"
case "$(basename "$0") $1" in
  "nft -f") cat > /dev/null; touch "{table}" ;;
  "nft list") test -e "{table}" || exit 1 ;;
  "nft delete") rm -f "{table}" ;;
esac
exit 0
"""
# restic as the box runs it, with every command line it gets written down (the argv watch).
RESTIC_WRAPPER = """#!/bin/sh
printf '%s\\n' "$*" >> "{log}"
exec {restic} "$@"
"""


@dataclass
class Box:
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    first: dict[str, Any] = field(default_factory=dict)  # the result of its first backup

    @property
    def state(self) -> Path:
        return self.root / "home" / "user-data"

    @property
    def config(self) -> Path:
        return self.root / "etc" / "backup"

    @property
    def var(self) -> Path:
        return self.root / "var"

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def journal(self) -> Path:
        return self.var / "restore.json"

    def tool_log(self) -> list[str]:
        path = self.root / "tools.log"
        return path.read_text().splitlines() if path.exists() else []

    def restic_argv(self) -> str:
        return (self.root / "restic-argv.log").read_text()

    def run(self, payload: dict[str, Any], **env: str) -> tuple[int, list[dict[str, Any]]]:
        proc = subprocess.run(
            [PYTHON, "-c", BOOTSTRAP],
            input=script_input("backup", json.dumps(payload).encode()),
            capture_output=True,
            env={**self.env, **env},
            timeout=120,
            check=False,
        )
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        assert proc.returncode < 0 or lines, proc.stderr.decode()
        return proc.returncode, lines

    def ok(self, payload: dict[str, Any], **env: str) -> dict[str, Any]:
        rc, lines = self.run(payload, **env)
        assert rc == 0 and "result" in lines[-1], lines[-1:]
        result: dict[str, Any] = lines[-1]["result"]
        return result

    def restic(self, *args: str) -> str:
        env = {"PATH": os.environ["PATH"], "RESTIC_CACHE_DIR": str(self.root / "cache"), "HOME": str(self.root)}
        argv = [str(RESTIC), "-r", str(self.repo), "--password-file", str(self.config / "password"), *args]
        return subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout


def passwd(path: Path, vmail: int) -> None:
    path.write_text(f"root:x:0:0:root:/root:/bin/sh\nvmail:x:{vmail}:{vmail}::/home/user-data/mail:/bin/false\n")


def make_box(root: Path, repo: Path | None = None, vmail: int = VMAIL_OLD) -> Box:
    box = Box(root)
    for d in ("etc/backup", "var", "run", "cache", "bin", "home"):
        (root / d).mkdir(parents=True, exist_ok=True)
    repository = f"local:{repo or box.repo}\n"
    (box.config / "repository").write_text(repository)
    (box.config / "password").write_text(PASSWORD + "\n")
    (box.config / "env").write_text("")
    settings = {
        "host": NAME,
        "kind": "local",
        "keep": {"daily": 7, "weekly": 5, "monthly": 12},
        "append_only": False,
        "state": str(box.state),
        "sftp_command": None,
    }
    (box.config / "settings.json").write_text(json.dumps(settings))
    passwd(root / "passwd", vmail)
    passwd(root / "group", vmail)
    for tool in ("systemctl", "nft"):
        path = root / "bin" / tool
        path.write_text(FAKE_TOOL.format(log=root / "tools.log", table=root / "nft-table"))
        path.chmod(0o755)
    wrapper = root / "bin" / "restic"
    wrapper.write_text(RESTIC_WRAPPER.format(log=root / "restic-argv.log", restic=RESTIC))
    wrapper.chmod(0o755)
    box.env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "MIAB_BACKUP_CONFIG": str(box.config),
        "MIAB_BACKUP_VAR": str(box.var),
        "MIAB_BACKUP_LOCK": str(root / "run" / "miab-backup.lock"),
        "MIAB_BACKUP_RUN": str(root / "run"),
        "MIAB_BACKUP_CACHE": str(root / "cache"),
        "MIAB_BACKUP_PASSWD": str(root / "passwd"),
        "MIAB_BACKUP_GROUP": str(root / "group"),
        "MIAB_BACKUP_RESTIC": str(wrapper),
        "MIAB_BACKUP_SYSTEMCTL": str(root / "bin" / "systemctl"),
        "MIAB_BACKUP_NFT": str(root / "bin" / "nft"),
    }
    if not AS_ROOT:
        box.env["MIAB_BACKUP_CHOWN_LOG"] = str(root / "chown.log")
    return box


MAILDIR = "mail/mailboxes/example.test/alice"


def fill_state(box: Box, vmail: int = VMAIL_OLD) -> None:
    """A small state tree: one mailbox (INBOX and Sent, a message in tmp/), a sqlite database, a key."""
    s = box.state
    for folder in ("", ".Sent"):
        for d in ("cur", "new", "tmp"):
            (s / MAILDIR / folder / d).mkdir(parents=True, exist_ok=True)
    (s / MAILDIR / "cur" / "1700000000.M1.box:2,S").write_text("Subject: one\n\nhello\n")
    (s / MAILDIR / "new" / "1700000001.M2.box").write_text("Subject: two\n\nnew\n")
    (s / MAILDIR / "tmp" / "1700000002.M3.box").write_text("half delivered")
    (s / MAILDIR / ".Sent" / "cur" / "1700000003.M4.box:2,S").write_text("Subject: sent\n\nbye\n")
    (s / MAILDIR / "dovecot-uidlist").write_text("3 V1700000000 N3\n")
    (s / MAILDIR / "subscriptions").write_text("Sent\n")
    (s / "mail/dkim").mkdir(parents=True)
    (s / "mail/dkim/mail.private").write_text("DKIM KEY\n")
    (s / "roundcube").mkdir()
    db = sqlite3.connect(s / "roundcube" / "roundcube.sqlite")
    db.execute("create table contacts (name text)")
    db.execute("insert into contacts values ('Bob')")
    db.commit()
    db.close()
    (s / "roundcube" / "roundcube.sqlite-journal").write_text("")
    if AS_ROOT:
        for root, dirs, files in os.walk(s / "mail/mailboxes"):
            for n in [*dirs, *files]:
                os.lchown(os.path.join(root, n), vmail, vmail)


def owner(box: Box, path: Path) -> int:
    """The owner a path has (or, unprivileged, the one the program gave it last)."""
    log = box.root / "chown.log"
    if not AS_ROOT and log.exists():
        for line in reversed(log.read_text().splitlines()):
            p, uid, _ = json.loads(line)
            if p == str(path):
                return int(uid)
    return path.lstat().st_uid


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One box, initialised and backed up once (restic's key derivation makes each start cost ~0.6 s), kept
    aside; each test gets a copy of it at the same path."""
    root = tmp_path_factory.mktemp("backup") / "old"
    b = make_box(root)
    fill_state(b)
    assert b.ok({"command": "init"}) == {"initialised": True}
    first = b.ok({"command": "run"})
    subprocess.run(["cp", "-a", str(root), str(root) + ".pristine"], check=True)
    return root, first


@pytest.fixture
def box(pristine: tuple[Path, dict[str, Any]]) -> Box:
    root, first = pristine
    shutil.rmtree(root)
    subprocess.run(["cp", "-a", str(root) + ".pristine", str(root)], check=True)
    b = make_box(root)
    b.first = first
    return b


def files_in(box: Box, snapshot: str) -> set[str]:
    listing = box.restic("ls", "--json", snapshot)
    prefix = str(box.state)
    out = set()
    for line in listing.splitlines():
        item = json.loads(line)
        if item.get("struct_type") == "node" and item["path"].startswith(prefix + "/"):
            out.add(item["path"][len(prefix) + 1 :])
    return out


# ---------------------------------------------------------------------------------------------- init, run
def test_init_twice_reuses_the_repository(box: Box) -> None:
    config = (box.repo / "config").read_bytes()
    assert box.ok({"command": "init"})["initialised"] is False
    assert (box.repo / "config").read_bytes() == config


def test_a_backup_holds_the_tree_without_tmp_and_live_databases_but_their_copies(box: Box) -> None:
    result = box.first
    assert result["parent"] is None and result["forgot"] is True and len(result["snapshot"]) == 64
    assert result["files"] > 0 and result["bytes"] > 0 and result["added"] > 0
    names = files_in(box, result["snapshot"])
    assert f"{MAILDIR}/cur/1700000000.M1.box:2,S" in names and f"{MAILDIR}/.Sent/cur/1700000003.M4.box:2,S" in names
    assert f"{MAILDIR}/tmp" not in names and f"{MAILDIR}/.Sent/tmp" not in names
    assert not any("/tmp/" in n for n in names)
    assert "roundcube/roundcube.sqlite" not in names and "roundcube/roundcube.sqlite-journal" not in names
    assert "backup/sqlite/roundcube/roundcube.sqlite" in names
    assert {"backup/tree-id", "backup/owners.json", "mail/dkim/mail.private"} <= names
    copy = box.root / "copy.sqlite"
    copy.write_bytes(
        subprocess.run(
            [
                str(RESTIC),
                "-r",
                str(box.repo),
                "--password-file",
                str(box.config / "password"),
                "dump",
                result["snapshot"],
                str(box.state / "backup/sqlite/roundcube/roundcube.sqlite"),
            ],
            capture_output=True,
            check=True,
            env={**box.env, "RESTIC_CACHE_DIR": str(box.root / "cache")},
        ).stdout
    )
    db = sqlite3.connect(copy)
    assert db.execute("pragma integrity_check").fetchone() == ("ok",)
    assert db.execute("select name from contacts").fetchall() == [("Bob",)]
    db.close()
    owners = json.loads((box.state / "backup/owners.json").read_text())
    assert owners == {"users": {"0": "root", str(VMAIL_OLD): "vmail"}, "groups": {"0": "root", str(VMAIL_OLD): "vmail"}}
    status = json.loads((box.var / "backup/status.json").read_text())
    assert status["last_attempt"]["ok"] is True and status["last_attempt"]["snapshot"] == result["snapshot"]
    assert (
        status["last_success"]["snapshot"] == result["snapshot"] and status["last_success"]["files"] == result["files"]
    )
    assert (box.var / "backup/status.json").stat().st_mode & 0o777 == 0o644
    history = json.loads((box.var / "backup/history.json").read_text())
    assert history[result["snapshot"]]["added"] == result["added"]
    assert box.ok({"command": "status"}) == status

    second = box.ok({"command": "run"})
    assert second["parent"] == result["snapshot"] and second["added"] < result["added"]
    history = json.loads((box.var / "backup/history.json").read_text())
    assert set(history) == {result["snapshot"], second["snapshot"]}


def test_a_new_box_refuses_to_back_up_over_the_old_boxes_snapshots(box: Box) -> None:
    (box.state / "backup/tree-id").unlink()  # a freshly created box of the same name: another state tree
    rc, lines = box.run({"command": "run"})
    assert rc == 2 and lines[-1]["code"] == "other-box"
    assert lines[-1]["error"] == (
        f"the repository holds backups of {NAME} made by another box (a move?): restore them with "
        f"`miab-remote restore {NAME}` first; nothing was backed up"
    )
    assert len(json.loads(box.restic("snapshots", "--json"))) == 1
    status = box.ok({"command": "status"})
    assert status["last_attempt"]["ok"] is False and "another box" in status["last_attempt"]["error"]
    assert status["last_success"] is not None


def test_a_second_run_meanwhile_is_told_one_is_running(box: Box) -> None:
    with open(box.env["MIAB_BACKUP_LOCK"], "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        rc, lines = box.run({"command": "run"})
    assert rc == 1 and lines[-1] == {"error": "a backup is running already", "code": "busy"}
    assert box.ok({"command": "status"})["last_attempt"]["snapshot"] == box.first["snapshot"], "status untouched"


def test_the_list_has_sizes_from_the_history_or_restic(box: Box) -> None:
    ours = box.first
    box.restic("backup", "--host", NAME, str(box.state / "mail/dkim"))  # by hand: not in the history
    snaps = box.ok({"command": "list", "host": None})["snapshots"]
    assert snaps[0]["id"] == ours["snapshot"] and len(snaps) == 2
    assert snaps[0]["files"] == ours["files"] and snaps[0]["bytes"] == ours["bytes"]
    assert (
        snaps[0]["hostname"] == NAME
        and f"tree-{(box.state / 'backup/tree-id').read_text().strip()}" in snaps[0]["tags"]
    )
    assert snaps[1]["bytes"] == len("DKIM KEY\n") and snaps[1]["files"] is not None
    assert set(snaps[0]) == {"id", "short_id", "time", "hostname", "tags", "files", "bytes"}


def test_secret_file_contents_restic_would_print_are_masked(box: Box) -> None:
    (box.config / "repository").write_text("rest:https://bk1:Url-Passw0rd%2F@127.0.0.1:9/box1\n")
    (box.config / "env").write_text("AWS_SECRET_ACCESS_KEY=S3-Secret-Key/abc\n")
    leaky = box.root / "bin" / "leaky-restic"  # a restic whose error text quotes its secrets
    leaky.write_text('#!/bin/sh\ncat "$2" "$4" >&2; env | grep AWS >&2; echo "password Url-Passw0rd/" >&2; exit 1\n')
    leaky.chmod(0o755)
    rc, lines = box.run({"command": "init"}, MIAB_BACKUP_RESTIC=str(leaky))
    assert rc == 1 and lines[-1]["code"] == "restic"
    error = lines[-1]["error"]
    for secret in (PASSWORD, "Url-Passw0rd%2F", "Url-Passw0rd/", "S3-Secret-Key/abc"):
        assert secret not in error
    assert "rest:https://bk1:***@127.0.0.1:9/box1" in error and "AWS_SECRET_ACCESS_KEY=***" in error


def test_a_slow_restic_is_covered_by_heartbeats(box: Box) -> None:
    slow = box.root / "bin" / "slow-restic"
    slow.write_text(f'#!/bin/sh\nsleep 3\nexec {box.env["MIAB_BACKUP_RESTIC"]} "$@"\n')
    slow.chmod(0o755)
    rc, lines = box.run({"command": "list"}, MIAB_BACKUP_RESTIC=str(slow), MIAB_BACKUP_HEARTBEAT="1")
    assert rc == 0 and "result" in lines[-1]
    beats = [line["progress"] for line in lines[:-1]]
    assert len(beats) >= 2 and all(b == {"phase": "list", "percent": None, "files": None, "bytes": None} for b in beats)


def test_the_password_is_never_on_restics_command_line_and_never_shown(box: Box, tmp_path: Path) -> None:
    b = make_box(tmp_path / "b")
    secret = "Rest-Passw0rd-in-the-url"
    (b.config / "repository").write_text(f"rest:http://backup:{secret}@127.0.0.1:9/box1\n")
    rc, lines = b.run({"command": "init"})
    assert rc == 1 and lines[-1]["code"] == "restic"
    text = json.dumps(lines)
    assert secret not in text and PASSWORD not in text
    box.ok({"command": "list"})
    box.ok({"command": "restore-user", "email": "alice@example.test", "folder": "Restored-2026-12-01"})
    argv = b.restic_argv() + box.restic_argv()
    assert " init" in argv and " backup " in argv and " snapshots" in argv and " restore " in argv
    assert "--password-file" in argv and "--repository-file" in argv
    assert secret not in argv and PASSWORD not in argv and "127.0.0.1" not in argv


# ---------------------------------------------------------------------------------------------- restore
def new_box(tmp_path: Path, old: Box) -> Box:
    """Another box of the same name on the same repository: freshly deployed, no mail, vmail another uid."""
    b = make_box(tmp_path / "new", repo=old.repo, vmail=VMAIL_NEW)
    (b.state / "mail/mailboxes").mkdir(parents=True)
    (b.state / "mail/dkim").mkdir(parents=True)
    (b.state / "mail/dkim/mail.private").write_text("NEW BOX KEY\n")
    return b


SERVICES = ["postfix", "dovecot"]


def test_a_restore_swaps_in_the_old_tree_with_this_boxes_owners(box: Box, tmp_path: Path) -> None:
    snap = box.first["snapshot"]
    new = new_box(tmp_path, box)
    result = new.ok(
        {
            "command": "restore",
            "snapshot": "latest",
            "host": NAME,
            "force": False,
            "services": SERVICES,
            "credentials": None,
        }
    )
    s = new.state
    assert result["snapshot"] == snap and result["notes"] == [] and result["files"] >= 6
    assert (s / "mail/dkim/mail.private").read_text() == "DKIM KEY\n"
    assert (s / MAILDIR / "cur/1700000000.M1.box:2,S").exists()
    assert (s / MAILDIR / "tmp").is_dir() and (s / MAILDIR / ".Sent/tmp").is_dir()
    assert not (s / MAILDIR / "tmp/1700000002.M3.box").exists()
    db = sqlite3.connect(s / "roundcube/roundcube.sqlite")
    assert db.execute("select name from contacts").fetchall() == [("Bob",)]
    db.close()
    before = Path(result["before"])
    assert before.name.startswith("user-data.before-restore-") and (before / "mail/dkim/mail.private").read_text() == (
        "NEW BOX KEY\n"
    )
    assert not Path(str(s) + ".restore-new").exists() and not (s / "backup/restore-marker").exists()
    if AS_ROOT or (new.root / "chown.log").exists():
        assert owner(new, s / MAILDIR / "cur/1700000000.M1.box:2,S") == VMAIL_NEW
        assert owner(new, s / MAILDIR / "tmp") == VMAIL_NEW
    assert new.tool_log() == [
        "nft -f -",
        "systemctl stop --no-block -- postfix dovecot miab-backup.timer",
        "systemctl stop -- postfix dovecot miab-backup.timer",
    ]
    journal = json.loads(new.journal.read_text())
    assert journal["phase"] == "swapped" and journal["snapshot"] == snap and journal["before"] == result["before"]

    again = new.ok({"command": "restore", "snapshot": "latest", "host": NAME, "services": SERVICES})
    assert again["before"] == result["before"] and again["notes"] == [
        f"the restore of snapshot {snap} was done already"
    ]
    assert len(new.tool_log()) == 3, "a finished restore does nothing again"

    assert new.ok({"command": "restore-finish"}) == {"finished": True, "snapshot": snap, "port_opened": True}
    assert new.tool_log()[3:] == [
        "nft list table inet miab_restore",
        "nft delete table inet miab_restore",
        "systemctl start miab-backup.timer",
    ]
    assert not new.journal.exists()
    assert new.ok({"command": "restore-finish"})["finished"] is False
    # The tree-id came back with the tree: the next backup is not taken for another box's.
    assert new.ok({"command": "run"})["snapshot"] != snap


def test_a_box_that_holds_mail_is_refused_unless_forced(box: Box) -> None:
    rc, lines = box.run({"command": "restore", "snapshot": "latest", "host": NAME, "services": SERVICES})
    assert rc == 2 and lines[-1]["code"] == "holds-mail" and "nothing was changed" in lines[-1]["error"]
    assert box.tool_log() == [] and not box.journal.exists()
    result = box.ok({"command": "restore", "snapshot": "latest", "host": NAME, "services": SERVICES, "force": True})
    assert Path(result["before"]).is_dir()
    rc, lines = box.run({"command": "restore", "snapshot": "nosuch", "host": "other.example.test", "force": True})
    assert rc == 0, "a journal at swapped: the finished restore is reported, not a new one started"


def test_an_unknown_snapshot_is_refused(box: Box, tmp_path: Path) -> None:
    new = new_box(tmp_path, box)
    rc, lines = new.run({"command": "restore", "snapshot": "abcdef99", "host": NAME, "services": []})
    assert rc == 2 and lines[-1]["code"] == "no-snapshot"
    rc, lines = new.run({"command": "restore", "snapshot": "latest", "host": "other.example.test", "services": []})
    assert rc == 2 and lines[-1]["error"] == "the repository holds no backup of other.example.test"
    assert new.tool_log() == []


@pytest.mark.parametrize("phase", ["closing", "restoring", "fixing"])
def test_a_restore_killed_before_the_swap_leaves_the_box_as_it_was_and_is_finished_by_the_next(
    box: Box, tmp_path: Path, phase: str
) -> None:
    snap = box.first["snapshot"]
    new = new_box(tmp_path, box)
    request = {"command": "restore", "snapshot": "latest", "host": NAME, "services": SERVICES}
    rc, _ = new.run(request, MIAB_BACKUP_KILL_AFTER=phase)
    assert rc == -9
    assert json.loads(new.journal.read_text())["phase"] == phase
    assert (new.state / "mail/dkim/mail.private").read_text() == "NEW BOX KEY\n"
    (new.state / MAILDIR).mkdir(parents=True, exist_ok=True)  # mail now: the journal still lets it finish
    (new.state / MAILDIR / "new").mkdir(exist_ok=True)
    (new.state / MAILDIR / "new/1.x").write_text("x")
    result = new.ok(request)
    assert result["notes"] == [f"finishing the interrupted restore of snapshot {snap}"]
    assert (new.state / "mail/dkim/mail.private").read_text() == "DKIM KEY\n"
    assert (Path(result["before"]) / "mail/dkim/mail.private").read_text() == "NEW BOX KEY\n"
    assert not Path(str(new.state) + ".restore-new").exists()


def test_a_restore_killed_right_after_the_swap_is_finished_without_restoring_again(box: Box, tmp_path: Path) -> None:
    new = new_box(tmp_path, box)
    request = {"command": "restore", "snapshot": "latest", "host": NAME, "services": SERVICES}
    rc, _ = new.run(request, MIAB_BACKUP_KILL_AFTER="swapping")
    assert rc == -9 and json.loads(new.journal.read_text())["phase"] == "swapping"
    assert (new.state / "mail/dkim/mail.private").read_text() == "DKIM KEY\n"
    restores = new.restic_argv().count(" restore ")
    result = new.ok(request)
    assert new.restic_argv().count(" restore ") == restores
    assert (Path(result["before"]) / "mail/dkim/mail.private").read_text() == "NEW BOX KEY\n"
    assert json.loads(new.journal.read_text())["phase"] == "swapped"
    assert not Path(str(new.state) + ".restore-new").exists()


def test_a_restore_run_again_while_the_interrupted_one_still_runs_waits_for_it(box: Box, tmp_path: Path) -> None:
    """The laptop that started a restore went away (its output is gone, the work goes on and holds the lock):
    the restore run again waits for it, saying so, and then takes up from where it ended."""
    snap = box.first["snapshot"]
    new = new_box(tmp_path, box)
    request = {"command": "restore", "snapshot": "latest", "host": NAME, "services": SERVICES}
    with open(new.env["MIAB_BACKUP_LOCK"], "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the first restore, still at work
        again = subprocess.Popen(
            [PYTHON, "-c", BOOTSTRAP], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=new.env
        )
        assert again.stdin is not None and again.stdout is not None
        again.stdin.write(script_input("backup", json.dumps(request).encode()))
        again.stdin.close()
        assert json.loads(again.stdout.readline()) == {
            "progress": {"phase": "waiting", "percent": None, "files": None, "bytes": None}
        }
        assert not new.journal.exists() and new.tool_log() == []
    lines = [json.loads(line) for line in again.stdout.read().splitlines() if line.strip()]
    assert again.wait(60) == 0 and lines[-1]["result"]["snapshot"] == snap
    assert (new.state / "mail/dkim/mail.private").read_text() == "DKIM KEY\n"


def test_a_restore_is_told_busy_once_its_wait_for_the_lock_is_over(box: Box, tmp_path: Path) -> None:
    new = new_box(tmp_path, box)
    with open(new.env["MIAB_BACKUP_LOCK"], "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        rc, lines = new.run({"command": "restore", "host": NAME, "services": []}, MIAB_BACKUP_RESTORE_LOCK_WAIT="0.5")
    assert rc == 1 and lines[-1] == {"error": "a backup or restore is running already", "code": "busy"}
    assert not new.journal.exists()


def test_restore_finish_refuses_an_unfinished_restore(box: Box, tmp_path: Path) -> None:
    new = new_box(tmp_path, box)
    new.run({"command": "restore", "host": NAME, "services": []}, MIAB_BACKUP_KILL_AFTER="stopping")
    rc, lines = new.run({"command": "restore-finish"})
    assert rc == 2 and lines[-1]["code"] == "unfinished" and "port 25 stays closed" in lines[-1]["error"]
    assert (new.root / "nft-table").exists()


def test_a_restore_from_another_repository_uses_the_given_credentials_and_removes_them(
    box: Box, tmp_path: Path
) -> None:
    snap = box.first["snapshot"]
    new = make_box(tmp_path / "new")  # its own repository (not even made: only the given one is read)
    creds = {"repository": f"local:{box.repo}", "password": PASSWORD, "env": "", "ca": None}
    result = new.ok({"command": "restore", "host": NAME, "services": [], "credentials": creds})
    assert result["snapshot"] == snap and (new.state / "mail/dkim/mail.private").read_text() == "DKIM KEY\n"
    assert list((new.root / "run").glob("miab-restore-*")) == []
    assert PASSWORD not in new.restic_argv()


# ---------------------------------------------------------------------------------------------- one mailbox
def test_one_mailbox_comes_back_as_restored_folders(box: Box) -> None:
    snap = box.first["snapshot"]
    live = box.state / MAILDIR
    for f in [*live.glob("cur/*"), *live.glob(".Sent/cur/*")]:
        f.unlink()
    request = {
        "command": "restore-user",
        "snapshot": snap[:8],
        "host": NAME,
        "email": "Alice@example.test",
        "folder": "Restored-2026-12-01",
    }
    assert box.ok(request) == {"folder": "Restored-2026-12-01", "messages": 3, "snapshot": snap}
    inbox, sent = live / ".Restored-2026-12-01", live / ".Restored-2026-12-01.Sent"
    assert sorted(p.name for p in inbox.glob("*/*")) == ["1700000000.M1.box:2,S", "1700000001.M2.box"]
    assert [p.name for p in sent.glob("cur/*")] == ["1700000003.M4.box:2,S"]
    assert (inbox / "tmp").is_dir() and (inbox / "maildirfolder").exists() and not (inbox / "dovecot-uidlist").exists()
    assert (live / "subscriptions").read_text() == "Sent\nRestored-2026-12-01\nRestored-2026-12-01.Sent\n"
    if AS_ROOT:
        assert owner(box, sent / "cur/1700000003.M4.box:2,S") == VMAIL_OLD
    assert box.ok(request)["folder"] == "Restored-2026-12-01-2"
    assert list((box.state / "backup/tmp").iterdir()) == []
    assert box.tool_log() == [], "services keep running"
    rc, lines = box.run({**request, "email": "nobody@example.test"})
    assert rc == 2 and lines[-1]["code"] == "no-mailbox"


def test_the_installed_program_is_the_shipped_script_and_takes_only_argv_commands(box: Box) -> None:
    program = box.root / "miab-backup"
    program.write_bytes(script("backup"))
    program.chmod(0o755)
    assert script("backup").startswith(b"#!/usr/bin/python3\n")
    proc = subprocess.run([PYTHON, str(program), "status"], capture_output=True, text=True, env=box.env, check=False)
    assert (
        proc.returncode == 0 and json.loads(proc.stdout)["result"]["last_success"]["snapshot"] == box.first["snapshot"]
    )
    proc = subprocess.run([PYTHON, str(program), "restore"], capture_output=True, text=True, env=box.env, check=False)
    assert proc.returncode == 2 and "usage: miab-backup" in proc.stderr
