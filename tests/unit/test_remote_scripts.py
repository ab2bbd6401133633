"""The scripts that run on the box (apply.py, probe.py), run here exactly as shipped (`python3 -c BOOTSTRAP`
with the script, its bundled wire module and its input on stdin), by an unprivileged user (nobody, when
the tests run as root) in a temporary folder: atomic replaces with their mode, the stale refusal, the lock
timeout, the journal of notifications owed, the rollback of a rejected configuration, guarded commands,
large files carried inline, and the probe's facts."""

from __future__ import annotations

import fcntl
import grp
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from miab_remote.engine.converge import HostRun, _run_apply
from miab_remote.engine.planner import command_action, file_action
from miab_remote.engine.redact import MASK, SecretMask
from miab_remote.engine.resources import File
from miab_remote.remote import BOOTSTRAP, script_input, wire
from miab_remote.transport.ssh import Result, Transport

# When the tests run as root, the scripts run as nobody: they must not need root for what is tested here.
AS_ROOT = os.geteuid() == 0
USER = pwd.getpwnam("nobody") if AS_ROOT else pwd.getpwuid(os.geteuid())
GROUP = grp.getgrgid(USER.pw_gid)
# The system's python3 (a venv's may sit in a folder nobody cannot enter), as on a box.
PYTHON = "/usr/bin/python3" if AS_ROOT and os.path.exists("/usr/bin/python3") else sys.executable


@dataclass
class Box:
    """A temporary folder that stands in for a box: the scripts' lock, journal and stage live in it."""

    root: Path

    @property
    def journal(self) -> Path:
        return self.root / "state" / "pending.json"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def stage(self) -> Path:
        return self.root / "stage"

    def run(self, name: str, body: bytes) -> subprocess.CompletedProcess[bytes]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "MIAB_REMOTE_LOCK": str(self.lock),
            "MIAB_REMOTE_JOURNAL": str(self.journal),
        }
        return subprocess.run(
            [PYTHON, "-c", BOOTSTRAP],
            input=script_input(name, body),
            capture_output=True,
            env=env,
            cwd=self.root,
            timeout=120,
            check=False,
            # As root: the child becomes nobody (no supplementary groups) before the script starts.
            **({"user": USER.pw_uid, "group": USER.pw_gid, "extra_groups": []} if AS_ROOT else {}),
        )

    def apply(
        self, actions: Sequence[wire.Action], content: Mapping[str, bytes] | None = None, lock_timeout: float = 5
    ) -> tuple[int, list[wire.Event]]:
        """Run apply.py; the content of each file action that carries content is taken from its `data`."""
        spec = wire.ApplySpec(stage=str(self.stage), lock_timeout=lock_timeout, actions=list(actions))
        proc = self.run("apply", wire.encode_apply(spec, content or {}))
        return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    def probe(self, **spec: Any) -> dict[str, Any]:
        full = wire.ProbeSpec(files=[], want_content={}, packages=[], services=[], users=[], groups=[], guards={})
        full.update(spec)  # type: ignore[typeddict-item]
        proc = self.run("probe", json.dumps(full).encode())
        assert proc.returncode == 0, proc.stderr.decode()
        facts: dict[str, Any] = json.loads(proc.stdout)
        return facts

    def pending(self) -> dict[str, Any]:
        """What the probe reports as owed."""
        owed: dict[str, Any] = self.probe()["pending"]
        return owed


@pytest.fixture
def box() -> Iterator[Box]:
    root = Path(tempfile.mkdtemp(prefix="miab-remote-scripts-"))
    if AS_ROOT:
        os.chown(root, USER.pw_uid, USER.pw_gid)
    try:
        yield Box(root)
    finally:
        shutil.rmtree(root)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(
    path: Path, data: bytes, expect: str | None = wire.ANY, notify: Sequence[str] = (), mode: int = 0o644
) -> tuple[wire.FileAction, dict[str, bytes]]:
    """A file action owned by the unprivileged user, and the content it carries."""
    r = File(str(path), content=data, mode=mode, owner=USER.pw_name, group=GROUP.gr_name)
    return file_action(r, data, f"update {path}", True, expect, list(notify)), {str(path): data}


def as_user(path: Path, data: bytes = b"") -> Path:
    """Make a file the way the box had it before the run (owned by the unprivileged user)."""
    path.write_bytes(data)
    if AS_ROOT:
        os.chown(path, USER.pw_uid, USER.pw_gid)
    return path


def events_of(events: list[wire.Event], kind: str) -> list[wire.Event]:
    return [e for e in events if e.get("event") == kind]


def test_a_file_is_created_then_replaced_atomically_with_its_mode(box: Box) -> None:
    conf = box.root / "conf"
    create, content = put(conf, b"one\n", expect=None, mode=0o640)
    code, events = box.apply([create], content)
    assert code == 0, events
    assert conf.read_bytes() == b"one\n"
    st = conf.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o640, USER.pw_uid, USER.pw_gid)
    # An update as a deploy plans it: the box still holds what the probe saw, so it is replaced.
    update, content = put(conf, b"two\n", expect=sha(b"one\n"), mode=0o600)
    code, events = box.apply([update], content)
    assert code == 0, events
    assert conf.read_bytes() == b"two\n" and conf.stat().st_mode & 0o7777 == 0o600
    assert conf.stat().st_ino != st.st_ino, "a new file renamed over the old one, never rewritten in place"
    assert sorted(p.name for p in box.root.iterdir()) == ["conf", "lock"], "no temporary file, no stage left"
    # The same content pushed again is left alone.
    again, content = put(conf, b"two\n", mode=0o600)
    code, events = box.apply([again], content)
    assert code == 0 and events_of(events, "done") == [{"event": "done", "index": 0, "changed": False}]


def test_a_file_of_several_megabytes_is_carried_inline(box: Box) -> None:
    big = box.root / "big"
    data = os.urandom(6 * 1024 * 1024 + 7)
    action, content = put(big, data, expect=None)
    code, events = box.apply([action], content)
    assert code == 0, events
    assert sha(big.read_bytes()) == sha(data)


def test_content_that_differs_from_what_the_action_says_is_refused(box: Box) -> None:
    conf = box.root / "conf"
    action, _ = put(conf, b"planned\n", expect=None)
    spec = wire.ApplySpec(stage=str(box.stage), lock_timeout=5, actions=[action])
    # Input that ends early fails before anything is touched.
    proc = box.run("apply", json.dumps(spec).encode() + b"\n" + b"plan")
    assert proc.returncode == wire.FAILED and "ended 4 bytes early" in proc.stdout.decode()
    assert not conf.exists() and not box.lock.exists(), "staging comes before the lock"
    # Same length, other bytes (as if corrupted on the way): never moved into place.
    proc = box.run("apply", json.dumps(spec).encode() + b"\n" + b"tampered")
    assert proc.returncode == wire.FAILED
    assert "does not match the planned content" in proc.stdout.decode()
    assert not conf.exists()


def test_a_file_changed_since_the_probe_is_stale_and_nothing_is_touched(box: Box) -> None:
    conf = as_user(box.root / "conf", b"changed by someone else\n")
    other = as_user(box.root / "other", b"x\n")
    first, content = put(other, b"y\n", expect=sha(b"x\n"), notify=["command:c"])
    stale, more = put(conf, b"ours\n", expect=sha(b"what the probe saw\n"))
    code, events = box.apply([first, stale], {**content, **more})
    assert code == wire.STALE
    assert events_of(events, "stale") == [{"event": "stale", "path": str(conf)}]
    assert conf.read_bytes() == b"changed by someone else\n" and other.read_bytes() == b"x\n"
    assert not box.journal.exists(), "nothing is journaled either"


def test_a_lock_held_too_long_times_out_and_nothing_is_touched(box: Box) -> None:
    conf = box.root / "conf"
    as_user(box.lock)
    with open(box.lock, "rb+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        action, content = put(conf, b"new\n", expect=None)
        code, events = box.apply([action], content, lock_timeout=0.5)
    assert code == wire.LOCK_TIMEOUT
    states = [e["state"] for e in events_of(events, "lock")]
    assert states == ["waiting", "timeout"]
    assert not conf.exists()


def test_the_journal_is_written_before_a_change_and_settled_after(box: Box) -> None:
    conf, seen = box.root / "conf", box.root / "seen"
    change, content = put(conf, b"new\n", expect=None, notify=["command:rebuild"])
    # The notified command sees the journal as a killed run would have left it, and the new file.
    rebuild = command_action(
        "command:rebuild", "run rebuild", f"cat {box.journal} {conf} > {seen}", settles=["command:rebuild"]
    )
    code, events = box.apply([change, rebuild], content)
    assert code == 0, events
    journal, _, text = seen.read_text().partition("}}}")
    assert json.loads(journal + "}}}") == {"pending": {"command:rebuild": {"by": [f"file:{conf}"]}}}
    assert text == "new\n"
    assert json.loads(box.journal.read_text()) == {"pending": {}}
    assert box.pending() == {}


def test_a_notification_lost_to_a_killed_apply_is_run_by_the_next(box: Box) -> None:
    conf, out, kill = box.root / "conf", box.root / "rebuilt", as_user(box.root / "kill-now")
    change, content = put(conf, b"new\n", notify=["command:rebuild"])
    rebuild = command_action("command:rebuild", "run rebuild", f"cat {conf} > {out}", settles=["command:rebuild"])
    rebuild.update(if_changed=[0], guard={})
    push = [
        change,
        # Dies (SIGKILL) after the file moved into place and before the notified command ran.
        command_action("command:killer", "run killer", f"rm {kill}; kill -9 $PPID", unless=f"! test -e {kill}"),
        rebuild,
    ]
    code, _ = box.apply(push, content)
    assert code == -9 and conf.read_bytes() == b"new\n" and not out.exists()
    assert list(box.pending()) == ["command:rebuild"]
    # The same push again: the file is unchanged now, but the box still owes the rebuild.
    code, events = box.apply(push, content)
    assert code == 0, events
    assert {"event": "pending", "ids": ["command:rebuild"]} in events
    assert out.read_bytes() == b"new\n"
    assert box.pending() == {}
    # And once delivered, a third run does nothing.
    out.unlink()
    code, events = box.apply(push, content)
    assert code == 0 and not out.exists()
    assert all(e.get("changed") is not True for e in events)


def test_a_rejected_configuration_is_put_back_and_settles_what_it_undid(box: Box) -> None:
    conf = as_user(box.root / "conf", b"old\n")
    conf.chmod(0o640)
    service = wire.ServiceAction(
        resource="service:svc",
        op="service",
        why="restart svc",
        name="svc",
        running=True,
        enabled=True,
        restart="restart",
        validator="false",  # rejects the new file: it is put back, the service is never touched
        rollback=[str(conf)],
        unmask=False,
        carries_access=False,
        settles=["service:svc"],
    )
    change, content = put(conf, b"broken\n", notify=["service:svc"])
    code, events = box.apply([change, service], content)
    assert code == wire.FAILED and "validation of svc failed" in events[-1]["error"]
    assert conf.read_bytes() == b"old\n" and conf.stat().st_mode & 0o7777 == 0o640
    assert box.pending() == {}, "the old file is back: nothing is owed"
    # Owed from an earlier interrupted run, the restart stays owed: the file in place was never validated.
    box.journal.write_text(json.dumps({"pending": {"service:svc": {"by": ["file:x"]}}}))
    code, _ = box.apply([change, service], content)
    assert code == wire.FAILED and conf.read_bytes() == b"old\n"
    assert list(box.pending()) == ["service:svc"]


def test_a_push_rebuilds_an_output_older_than_its_source(box: Box) -> None:
    text, db = as_user(box.root / "map", b"a b\n"), as_user(box.root / "map.db", b"stale")
    os.utime(db, (1_000_000, 1_000_000))  # the .db is older than its text: a rebuild was lost
    change, content = put(text, b"a b\n", notify=["command:postmap"])
    postmap = command_action("command:postmap", "run postmap", f"cp {text} {db}", settles=["command:postmap"])
    postmap.update(if_changed=[0], guard={"unless": f"test -e {db} && ! test {text} -nt {db}"})
    code, events = box.apply([change, postmap], content)
    assert code == 0, events
    assert db.read_text() == "a b\n"
    code, events = box.apply([change, postmap], content)
    assert code == 0 and all(e.get("changed") is not True for e in events), events


def test_a_command_runs_only_when_its_creates_is_missing_or_its_unless_fails(box: Box) -> None:
    made, log = as_user(box.root / "made"), box.root / "log"
    commands = [
        command_action("command:a", "a", f"echo a >> {log}", creates=str(made)),
        command_action("command:b", "b", f"echo b >> {log}; touch {box.root / 'b'}", creates=str(box.root / "b")),
        command_action("command:c", "c", f"echo c >> {log}", unless="true"),
        command_action("command:d", "d", f"echo d >> {log}", unless="false"),
    ]
    code, events = box.apply(commands)
    assert code == 0, events
    assert log.read_text() == "b\nd\n"
    assert [e["changed"] for e in events_of(events, "done")] == [False, True, False, True]
    code, events = box.apply(commands)
    assert log.read_text() == "b\nd\nd\n", "b created its file: it does not run again; d's guard still fails"


def test_a_failed_command_stops_the_run_there(box: Box) -> None:
    after = box.root / "after"
    code, events = box.apply(
        [
            command_action("command:bad", "bad", "echo broken >&2; exit 4", unless="false"),
            command_action("command:after", "after", f"touch {after}", creates=str(after)),
        ]
    )
    assert code == wire.FAILED
    (fail,) = events_of(events, "fail")
    assert fail["index"] == 0 and "command failed (exit 4)" in fail["error"] and "broken" in fail["error"]
    assert not after.exists()


def test_a_commands_note_lines_become_note_events_also_when_it_fails(box: Box) -> None:
    says = "echo working; echo 'miab-note: left out: a.example.test'; echo 'miab-note:  two  '; echo 'not miab-note: x'"
    code, events = box.apply([command_action("command:n", "n", says, unless="false")])
    assert code == 0, events
    assert [e["event"] for e in events if e["event"] != "hb"] == ["start", "note", "note", "done", "end"]
    assert [e["text"] for e in events_of(events, "note")] == ["left out: a.example.test", "two"]
    code, events = box.apply([command_action("command:n", "n", "echo 'miab-note: why'; exit 3", unless="false")])
    assert code == wire.FAILED
    assert [e["text"] for e in events_of(events, "note")] == ["why"]
    assert "command failed (exit 3)" in events_of(events, "fail")[0]["error"]


def test_the_converge_puts_a_commands_notes_in_the_deploys_notes_masked(box: Box) -> None:
    """engine/converge.py's apply run, with apply.py run here as shipped instead of over SSH."""

    class Here:
        def run_script(self, name: str, payload: bytes, *, on_line: Callable[[bytes], None]) -> Result:
            head, _, content = payload.partition(b"\n")
            spec = {**json.loads(head), "stage": str(box.stage)}  # the box's /run is root's, here the folder's
            proc = box.run(name, json.dumps(spec).encode() + b"\n" + content)
            for line in proc.stdout.splitlines():
                on_line(line)
            return Result(proc.returncode, proc.stdout, proc.stderr)

    says = "echo 'miab-note: the secret s3cr3t'"
    actions: list[wire.Action] = [command_action("command:n", "n", says, unless="false")]
    run = HostRun("box.example.test")
    assert _run_apply(cast(Transport, Here()), actions, {}, 5, run, lambda *_: None, SecretMask(["s3cr3t"]))
    assert run.notes == [f"the secret {MASK}"] and run.changed == 1


def test_the_probe_reports_files_guards_and_what_is_owed(box: Box) -> None:
    conf = as_user(box.root / "conf", b"on the box\n")
    conf.chmod(0o640)
    same = as_user(box.root / "same", b"same\n")
    (box.root / "dir").mkdir(mode=0o750)
    (box.root / "link").symlink_to("conf")
    paths = [str(box.root / n) for n in ("conf", "same", "dir", "link", "missing")]
    want = {str(conf): sha(b"wanted\n"), str(same): sha(b"same\n")}
    guards = {
        "command:made": {"creates": str(conf)},
        "command:unmade": {"creates": str(box.root / "missing")},
        "command:ok": {"unless": "true"},
        "command:not": {"unless": "false"},
    }
    facts = box.probe(files=paths, want_content=want, guards=guards)
    f = facts["files"]
    assert f[str(conf)] == {
        "exists": True,
        "mode": 0o640,
        "owner": USER.pw_name,
        "group": GROUP.gr_name,
        "type": "file",
        "sha256": sha(b"on the box\n"),
        "content": "b24gdGhlIGJveAo=",  # differs from what is wanted: sent back for the diff
    }
    assert "content" not in f[str(same)] and f[str(same)]["sha256"] == sha(b"same\n")
    assert f[str(box.root / "dir")]["type"] == "directory" and f[str(box.root / "dir")]["mode"] == 0o750
    assert f[str(box.root / "link")]["type"] == "symlink" and f[str(box.root / "link")]["target"] == "conf"
    assert f[str(box.root / "missing")] == {"exists": False}
    assert facts["guards"] == {"command:made": True, "command:unmade": False, "command:ok": True, "command:not": False}
    assert facts["pending"] == {}
    box.journal.parent.mkdir()
    box.journal.write_text(json.dumps({"pending": {"service:nginx": {"by": ["file:/etc/x"]}}}))
    assert box.pending() == {"service:nginx": {"by": ["file:/etc/x"]}}


def test_the_probe_reads_no_journal_as_nothing_owed(box: Box) -> None:
    assert box.pending() == {}
    box.journal.parent.mkdir()
    box.journal.write_text("not json")
    assert box.pending() == {}


def test_the_scripts_run_as_an_unprivileged_user(box: Box) -> None:
    """What the tests above prove, they prove without root (when the tests run as root, as nobody)."""
    whoami = box.root / "whoami"
    code, events = box.apply([command_action("command:id", "id", f"id -u > {whoami}", creates=str(whoami))])
    assert code == 0, events
    assert int(whoami.read_text()) == USER.pw_uid
    assert not AS_ROOT or USER.pw_uid != 0
