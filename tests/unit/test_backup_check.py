"""`check` of a box with [backup]: the status file the box's backup program writes (read by remote/status.py)
judged on the laptop: a failure when the last good backup is more than 36 h old, or when there is none and
the backups are due (since the first deploy with [backup] or the last restore) for more than 36 h; each says
when, and the last error."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from miab_remote.checks import box as boxchecks
from miab_remote.checks.result import Check, warn
from miab_remote.fleet.model import Backup, Host
from miab_remote.remote import script

NAME = "mx.alpha.test"
NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
FIX = f"`miab-remote backup {NAME}` runs one now and says why it fails; `journalctl -u miab-backup` on the box"


def box(backup: bool = True) -> Host:
    b = Backup("rest:https://10.78.7.1:8443/box1", "rest") if backup else None
    return Host(NAME, Path(f"hosts/{NAME}.toml"), NAME, "198.51.200.7", backup=b)


def status(
    success: str | None, attempt: str | None = None, ok: bool = True, error: str | None = None
) -> dict[str, Any]:
    return {"status": {
        "last_attempt": None if attempt is None else {"time": attempt, "ok": ok, "error": error, "snapshot": None},
        "last_success": None if success is None else {"time": success, "snapshot": "4f2a9c01deadbeef", "files": 9,
                                                      "bytes": 100, "added": 10, "seconds": 1.5},
    }}  # fmt: skip


CASES: list[tuple[str, dict[str, Any] | None, str | None, Check | None]] = [
    ("fresh", status("2026-12-01T03:12:00+00:00", "2026-12-01T03:12:00+00:00"), None,
     Check("backup", True, "last good backup 2026-12-01 03:12 UTC, 9 h ago (snapshot 4f2a9c01)")),
    ("naive-time-is-utc", status("2026-12-01T03:12:00"), None,
     Check("backup", True, "last good backup 2026-12-01 03:12 UTC, 9 h ago (snapshot 4f2a9c01)")),
    ("old", status("2026-11-29T23:00:00Z"), None,
     Check("backup", False, "last good backup 2026-11-29 23:00 UTC, 37 h ago (snapshot 4f2a9c01): older than 36 h",
           FIX)),
    ("old-and-failing", status("2026-11-20T03:00:00Z", "2026-12-01T03:00:00Z", False, "Fatal: unable to open repo"),
     None,
     Check("backup", False, "last good backup 2026-11-20 03:00 UTC, 11 days ago (snapshot 4f2a9c01): older than "
           "36 h; the last attempt (2026-12-01 03:00 UTC, 9 h ago) failed: Fatal: unable to open repo", FIX)),
    ("fresh-but-last-failed", status("2026-12-01T01:00:00Z", "2026-12-01T11:00:00Z", False, "a backup is running"),
     None,
     warn("backup", "last good backup 2026-12-01 01:00 UTC, 11 h ago (snapshot 4f2a9c01); the last attempt "
          "(2026-12-01 11:00 UTC, 1 h ago) failed: a backup is running", FIX)),
    ("none-yet-new", {"missing": True}, "2026-12-01T02:00:00Z",
     Check("backup", True, "none yet: due since 2026-12-01 02:00 UTC, 10 h ago, the timer runs one within a day")),
    ("none-yet-old", {"missing": True}, "2026-11-29T12:00:00Z",
     Check("backup", False, "no good backup yet (due since 2026-11-29 12:00 UTC, 48 h ago)", FIX)),
    ("none-and-failing", status(None, "2026-11-30T03:00:00Z", False, "repository not found"), "2026-11-28T12:00:00Z",
     Check("backup", False, "no good backup yet (due since 2026-11-28 12:00 UTC, 3 days ago); the last "
           "attempt (2026-11-30 03:00 UTC, 33 h ago) failed: repository not found", FIX)),
    ("none-no-password", {"missing": True}, None, Check("backup", False, "no good backup yet", FIX)),
    ("unreadable", {"error": "Expecting value: line 1 column 1 (char 0)"}, None,
     Check("backup", False, "could not read the backup status: Expecting value: line 1 column 1 (char 0)", FIX)),
]  # fmt: skip


@pytest.mark.parametrize(("fact", "since", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_backup_status_is_judged(fact: dict[str, Any] | None, since: str | None, expected: Check) -> None:
    assert boxchecks.backup_check(box(), fact, since, NOW) == expected


def test_no_backup_table_no_check() -> None:
    assert boxchecks.backup_check(box(backup=False), {"missing": True}, None, NOW) is None


def status_script_namespace() -> dict[str, Any]:
    """remote/status.py as shipped, its functions without its final call of main()."""
    source = script("status").decode()
    assert source.rstrip().endswith("main()")
    namespace: dict[str, Any] = {"__name__": "status"}
    exec(compile(source.rstrip()[: -len("main()")], "status.py", "exec"), namespace)
    return namespace


def test_the_box_reads_its_status_file(tmp_path: Path) -> None:
    read = status_script_namespace()["status_file"]
    path = tmp_path / "status.json"
    assert read(str(path)) == {"missing": True}
    path.write_text("{not json")
    assert "error" in read(str(path))
    content = status("2026-12-01T03:12:00+00:00")["status"]
    path.write_text(json.dumps(content))
    assert read(str(path)) == {"status": content}


def test_an_unfinished_restore_fails_check_and_names_the_command(tmp_path: Path) -> None:
    read = status_script_namespace()["restore_journal"]
    path = tmp_path / "restore.json"
    assert read(str(path)) is None
    path.write_text(json.dumps({"snapshot": "0123456789abcdef", "phase": "swapped", "host": NAME, "notes": ["x"]}))
    fact = read(str(path))
    assert fact == {"snapshot": "0123456789abcdef", "phase": "swapped", "host": NAME}
    judged = boxchecks.restore_check(box(), fact)
    assert judged is not None and judged.failed
    assert "01234567" in judged.detail and "port 25" in judged.detail and "swapped" in judged.detail
    assert judged.fix == f"`miab-remote restore {NAME}` finishes it"
    assert boxchecks.restore_check(box(), None) is None
    path.write_text("{broken")
    assert boxchecks.restore_check(box(), read(str(path))) is not None
