"""The scripts that run on the box (apply.py, probe.py), run here as subprocesses in a temporary folder:
the journal of notifications owed survives an interrupted apply, and a rollback settles what it undid."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REMOTE = Path(__file__).resolve().parents[2] / "miab_remote" / "remote"


@pytest.fixture
def box(tmp_path: Path) -> dict[str, str]:
    """The environment that points the scripts' lock and journal into tmp_path."""
    return {
        **os.environ,
        "MIAB_REMOTE_LOCK": str(tmp_path / "lock"),
        "MIAB_REMOTE_JOURNAL": str(tmp_path / "state" / "pending.json"),
    }


def apply(env: dict[str, str], tmp_path: Path, actions: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    spec = {"stage": str(tmp_path / "stage"), "lock_timeout": 5, "actions": actions}
    proc = subprocess.run(
        [sys.executable, str(REMOTE / "apply.py")],
        input=json.dumps(spec).encode(),
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def pending(env: dict[str, str]) -> dict[str, Any]:
    """What the probe reports as owed."""
    out = subprocess.run(
        [sys.executable, str(REMOTE / "probe.py")],
        input=b"{}",
        capture_output=True,
        env=env,
        timeout=60,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)["pending"]
    return result


def pushed_file(path: Path, data: bytes, notify: list[str]) -> dict[str, Any]:
    return {
        "resource": f"file:{path}",
        "op": "file",
        "why": f"update {path}",
        "path": str(path),
        "mode": 0o644,
        "owner": "root",
        "group": "root",
        "sha256": hashlib.sha256(data).hexdigest(),
        "secret": False,
        "content": True,
        "expect": "*",
        "inline": base64.b64encode(data).decode(),
        "notify": notify,
    }


def command(name: str, run: str, **extra: Any) -> dict[str, Any]:
    return {
        "resource": f"command:{name}",
        "op": "command",
        "why": f"run {name}",
        "run": run,
        "creates": None,
        "unless": None,
        **extra,
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="the apply script sets owners, as root on a box")
def test_a_notification_lost_to_a_killed_apply_is_run_by_the_next(box: dict[str, str], tmp_path: Path) -> None:
    conf, out, kill = tmp_path / "conf", tmp_path / "rebuilt", tmp_path / "kill-now"
    kill.touch()
    push = [
        pushed_file(conf, b"new\n", ["command:rebuild"]),
        # Dies (SIGKILL) after the file moved into place and before the notified command ran.
        command("killer", f"rm {kill}; kill -9 $PPID", unless=f"! test -e {kill}"),
        command("rebuild", f"cat {conf} > {out}", if_changed=[0], settles=["command:rebuild"], guard={}),
    ]
    code, _ = apply(box, tmp_path, push)
    assert code == -9 and conf.read_bytes() == b"new\n" and not out.exists()
    assert list(pending(box)) == ["command:rebuild"]
    # The same push again: the file is unchanged now, but the box still owes the rebuild.
    code, events = apply(box, tmp_path, push)
    assert code == 0, events
    assert {"event": "pending", "ids": ["command:rebuild"]} in events
    assert out.read_bytes() == b"new\n"
    assert pending(box) == {}
    # And once delivered, a third run does nothing.
    out.unlink()
    code, events = apply(box, tmp_path, push)
    assert code == 0 and not out.exists()
    assert all(e.get("changed") is not True for e in events)


@pytest.mark.skipif(os.geteuid() != 0, reason="the apply script sets owners, as root on a box")
def test_a_rollback_settles_what_it_undid_and_keeps_what_was_owed_before(box: dict[str, str], tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.write_bytes(b"old\n")
    service = {
        "resource": "service:svc",
        "op": "service",
        "why": "restart svc",
        "name": "svc",
        "running": True,
        "enabled": True,
        "restart": "restart",
        "validator": "false",  # rejects the new file: it is put back, the service is never touched
        "rollback": [str(conf)],
        "settles": ["service:svc"],
    }
    run = [pushed_file(conf, b"broken\n", ["service:svc"]), service]
    code, events = apply(box, tmp_path, run)
    assert code == 1 and "validation of svc failed" in events[-1]["error"]
    assert conf.read_bytes() == b"old\n"
    assert pending(box) == {}, "the old file is back: nothing is owed"
    # Owed from an earlier interrupted run, the restart stays owed: the file in place was never validated.
    journal = Path(box["MIAB_REMOTE_JOURNAL"])
    journal.write_text(json.dumps({"pending": {"service:svc": {"by": ["file:x"]}}}))
    code, _ = apply(box, tmp_path, run)
    assert code == 1 and conf.read_bytes() == b"old\n"
    assert list(pending(box)) == ["service:svc"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the apply script sets owners, as root on a box")
def test_a_push_rebuilds_an_output_older_than_its_source(box: dict[str, str], tmp_path: Path) -> None:
    text, db = tmp_path / "map", tmp_path / "map.db"
    db.write_text("stale")
    text.write_text("a b\n")
    os.utime(db, (1_000_000, 1_000_000))  # the .db is older than its text: a rebuild was lost
    guard = {"unless": f"test -e {db} && ! test {text} -nt {db}"}
    push = [
        pushed_file(text, b"a b\n", ["command:postmap"]),
        command("postmap", f"cp {text} {db}", if_changed=[0], settles=["command:postmap"], guard=guard),
    ]
    code, events = apply(box, tmp_path, push)
    assert code == 0, events
    assert db.read_text() == "a b\n"
    code, events = apply(box, tmp_path, push)
    assert code == 0 and all(e.get("changed") is not True for e in events), events


def test_the_probe_reads_no_journal_as_nothing_owed(box: dict[str, str], tmp_path: Path) -> None:
    assert pending(box) == {}
    journal = Path(box["MIAB_REMOTE_JOURNAL"])
    journal.parent.mkdir()
    journal.write_text("not json")
    assert pending(box) == {}
