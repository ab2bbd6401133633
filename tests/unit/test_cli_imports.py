"""What each command loads: `--help` none of the commands' modules (it answered in ~0.3 s, from imports it did
not need), a command its own group's module only. Each case is its own process, as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GROUPS = {"boxes", "deploy", "accounts", "relay", "bans", "dns"}
HEAVY = {"rich", "paramiko", "jinja2", "tomlkit", "dns", "miab_remote.jobs", "miab_remote.engine"}

PROBE = (
    "import json, sys\n"
    "from miab_remote.cli import main\n"
    "try:\n"
    "    code = main(sys.argv[1:])\n"
    "except SystemExit as e:\n"
    "    code = e.code\n"
    "print(json.dumps({'code': code, 'loaded': sorted(sys.modules)}), file=sys.stderr)\n"
)


def loaded_by(tmp_path: Path, *args: str) -> tuple[int, set[str], set[str]]:
    """(exit code, the command groups loaded, every module loaded) of `miab-remote ARGS` in a fresh process."""
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    env.pop("MIAB_REMOTE_INVENTORY", None)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "--inventory", str(tmp_path / "hosts"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    modules = set(report["loaded"])
    groups = {m.removeprefix("miab_remote.cli.") for m in modules if m.startswith("miab_remote.cli.")} & GROUPS
    return report["code"], groups, modules


def test_help_loads_no_command(tmp_path: Path) -> None:
    code, groups, modules = loaded_by(tmp_path, "--help")
    assert code == 0
    assert groups == set()
    assert not {m for m in modules if m.split(".")[0] in HEAVY or m.rsplit(".", 1)[0] in HEAVY}


@pytest.mark.parametrize(
    ("args", "group"),
    [
        (("hosts",), "boxes"),
        (("user", "list", "b.example.test"), "accounts"),
        (("dns", "b.example.test"), "dns"),
        (("relay", "show", "b.example.test"), "relay"),
    ],
)
def test_a_command_loads_its_own_group_only(tmp_path: Path, args: tuple[str, ...], group: str) -> None:
    _code, groups, _modules = loaded_by(tmp_path, *args)
    assert groups == {group}


@pytest.mark.parametrize("args", [("nosuch",), ("user",), ("user", "add")])
def test_usage_errors_are_still_usage_errors(tmp_path: Path, args: tuple[str, ...]) -> None:
    code, _groups, _modules = loaded_by(tmp_path, *args)
    assert code == 2
