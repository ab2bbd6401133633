"""deployed_box never leaks a box: a failed deploy, an interrupted test (Ctrl-C) or a failed create still
ends with the box destroyed, and the error that stopped it is the one raised."""

from __future__ import annotations

from pathlib import Path

import pytest

from miab_remote.providers.local import LocalProvider
from tests.e2e.helpers import E2E_ENV, deployed_box, new_inventory, operator_key

pytestmark = pytest.mark.e2e

NAME = "leak.e2e-helpers.test"


@pytest.fixture
def inv(tmp_path: Path) -> Path:
    return new_inventory(tmp_path / "hosts")


@pytest.fixture
def identity(tmp_path: Path) -> Path:
    return operator_key(tmp_path)


def status(name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """What the local provider of this lane knows of the box: running, stopped or absent."""
    with monkeypatch.context() as mp:
        for key, value in E2E_ENV.items():
            mp.setenv(key, value)
        return LocalProvider().status(name)


def test_a_failed_deploy_still_destroys_the_box(inv: Path, identity: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = {NAME: {"recipes": ["base", "testbox"], "options": {"greylist_delay": "soon"}}}  # exit 2 at deploy
    with pytest.raises(AssertionError, match="greylist_delay"), deployed_box(inv, identity, bad):
        pytest.fail("the body ran although the deploy failed")
    assert status(NAME, monkeypatch) == "absent"  # although destroy refuses a box whose inventory is invalid
    assert (inv / f"{NAME}.toml.invalid").exists()  # set aside for it


def test_an_interrupt_still_destroys_the_box(inv: Path, identity: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KeyboardInterrupt), deployed_box(inv, identity, {NAME: {}}, deploy=False) as made:
        assert status(NAME, monkeypatch) == "running"
        assert made.box.run("hostname")[1].strip() == NAME
        raise KeyboardInterrupt  # what Ctrl-C raises in the test
    assert status(NAME, monkeypatch) == "absent"


def test_a_failed_create_is_the_error_raised(inv: Path, identity: Path) -> None:
    """The destroy after a failed create runs (and fails too, here) without hiding the create's error."""
    with pytest.raises(AssertionError, match="is not a box name"), deployed_box(inv, identity, {"bad_name.test": {}}):
        pytest.fail("the body ran although the create failed")
