"""The `miab-remote` entry point as its own process: once the command is done it ends the process at
once (the interpreter's teardown would add 40-60 ms to every command), yet every line of output is out
and the exit status is the command's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from miab_remote.fleet.store import Inventory, new_document

# The entry point, with a teardown step of our own: Python runs atexit functions in its teardown.
ENTRY = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write('teardown ran\\n'))\n"
    "sys.argv[0] = 'miab-remote'\n"
    "from miab_remote.launch import main\n"
    "raise SystemExit(main())\n"
)


def entry(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    env.pop("MIAB_REMOTE_INVENTORY", None)
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
    )


def test_the_process_ends_without_the_teardown_and_with_all_its_output(tmp_path: Path) -> None:
    hosts = Inventory(tmp_path / "hosts")
    for i in range(300):  # output well beyond a pipe's buffer and Python's
        name = f"box{i}.example.test"
        hosts.create(name, new_document(name, f"192.0.2.{i % 250 + 1}", provider=None, host_keys=[], os=None))
    proc = entry(tmp_path, "hosts", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["hosts"]) == 300
    assert "teardown ran" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "code", "says"), [(("user", "list", "nosuch.example.test"), 2, "nosuch.example.test")]
)
def test_the_exit_status_and_the_error_are_the_commands(
    tmp_path: Path, args: tuple[str, ...], code: int, says: str
) -> None:
    (tmp_path / "hosts").mkdir()
    proc = entry(tmp_path, *args)
    assert proc.returncode == code, proc.stderr
    assert says in proc.stderr and proc.stderr.endswith("\n")
    assert "teardown ran" not in proc.stderr
