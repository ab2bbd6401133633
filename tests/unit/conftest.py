"""Unit-test settings: bcrypt at its lowest cost, so a hash takes a millisecond instead of a quarter second.

MIAB_REMOTE_BCRYPT_COST is set per module (and undone after it), so it never reaches the e2e tests even
when both run in one session; subprocesses a unit test starts inherit it. The warning a lowered cost gives
(WeakCostWarning) is expected here and filtered; tests/unit/test_passwords.py checks it is given.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.sshbox import ssh_box as ssh_box  # a stand-in SSH server on loopback, for any unit test

TEST_COST = "4"  # bcrypt's lowest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("filterwarnings", "ignore::miab_remote.mail.passwords.WeakCostWarning")


@pytest.fixture(scope="module", autouse=True)
def fast_bcrypt() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIAB_REMOTE_BCRYPT_COST", TEST_COST)
        yield


@pytest.fixture(scope="module", autouse=True)
def private_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The tool's private folder (box secrets, credentials) is a fresh one per module, never the operator's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIAB_REMOTE_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))
        yield


@pytest.fixture
def forkserver() -> multiprocessing.context.ForkServerContext:
    """Processes forked from one server that imported the CLI and the test modules once, so a test about
    several processes at once (file locks between processes) needs no Python start-up per process.

    One server serves the whole session, so every module its children need is named here."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["miab_remote.cli", "tests.unit.test_accounts", "tests.unit.test_inventory"])
    return context


@pytest.fixture(autouse=True)
def environment_unchanged() -> Iterator[None]:
    """A test that changes os.environ must undo it (monkeypatch): a leftover NO_COLOR or inventory path
    would change what every later test sees, and pass or fail them by their order."""
    before = dict(os.environ)
    yield
    after = dict(os.environ)
    for env in (before, after):
        env.pop("PYTEST_CURRENT_TEST", None)  # pytest's own, set for each phase of each test
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the test left os.environ changed: {', '.join(changed)}"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """Where the inventory says SSH is: any connection to it would mean something reached "the box"."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        s.setblocking(False)
        yield s


@pytest.fixture(scope="session")
def files_by_profile() -> dict[str, dict[str, bytes]]:
    """The golden box's files (tests/unit/golden/mail.example.org.toml) as each OS profile renders them."""
    from miab_remote.engine.converge import build
    from miab_remote.fleet.store import Inventory
    from miab_remote.profiles import PROFILES

    inventory = Inventory(Path(__file__).parent / "golden")
    host = inventory.load("mail.example.org")
    return {profile.id: build(host, profile, inventory.root)[1] for profile in PROFILES.values()}
