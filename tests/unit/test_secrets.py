"""The per-box secrets store on the laptop (fleet/secrets.py): private modes, atomic replacement, a
lock between writers, and no value in any message."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from miab_remote.errors import InputError
from miab_remote.fleet import secrets

BOX = "box1.example.org"
VALUE = "s3cret-relay-Pa55word"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_put_get_remove_with_private_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIAB_REMOTE_CONFIG_DIR", str(tmp_path / "cfg"))
    assert secrets.get(BOX, secrets.RELAY_PASSWORD) is None
    secrets.put(BOX, secrets.RELAY_PASSWORD, VALUE)
    path = tmp_path / "cfg" / "secrets" / f"{BOX}.toml"
    assert secrets.path_for(BOX) == path
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert mode(path.parent.parent) == 0o700
    assert secrets.get(BOX, secrets.RELAY_PASSWORD) == VALUE
    secrets.put(BOX, "backup_key", "k" * 40)
    assert secrets.read_all(BOX) == {"backup_key": "k" * 40, secrets.RELAY_PASSWORD: VALUE}
    assert secrets.remove(BOX, secrets.RELAY_PASSWORD) is True
    assert secrets.remove(BOX, secrets.RELAY_PASSWORD) is False
    assert secrets.read_all(BOX) == {"backup_key": "k" * 40}
    secrets.remove(BOX, "backup_key")
    assert not path.exists()  # no secrets left: no file


def test_values_that_need_quoting_survive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIAB_REMOTE_CONFIG_DIR", str(tmp_path))
    tricky = "a\"b\\c'd #e =f [g] \u00e9"
    secrets.put(BOX, secrets.RELAY_PASSWORD, tricky)
    assert secrets.get(BOX, secrets.RELAY_PASSWORD) == tricky


def test_a_readable_file_is_refused_and_not_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIAB_REMOTE_CONFIG_DIR", str(tmp_path))
    secrets.put(BOX, secrets.RELAY_PASSWORD, VALUE)
    os.chmod(secrets.path_for(BOX), 0o644)
    with pytest.raises(InputError) as e:
        secrets.get(BOX, secrets.RELAY_PASSWORD)
    assert "0644" in str(e.value) and "chmod 600" in str(e.value)
    assert VALUE not in str(e.value)
    with pytest.raises(InputError):  # nor written over: the operator must see that it was exposed
        secrets.put(BOX, secrets.RELAY_PASSWORD, "another-one")


def test_replacement_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails half-way leaves the old file whole (and no temporary file behind)."""
    monkeypatch.setenv("MIAB_REMOTE_CONFIG_DIR", str(tmp_path))
    secrets.put(BOX, secrets.RELAY_PASSWORD, VALUE)
    path = secrets.path_for(BOX)
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        secrets.put(BOX, secrets.RELAY_PASSWORD, "new-value-123")
    monkeypatch.undo()
    monkeypatch.setenv("MIAB_REMOTE_CONFIG_DIR", str(tmp_path))
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [f".{BOX}.toml.lock", f"{BOX}.toml"]


def test_concurrent_writers_lose_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIAB_REMOTE_CONFIG_DIR", str(tmp_path))
    threads = [threading.Thread(target=secrets.put, args=(BOX, f"key_{i}", f"value-{i}")) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert secrets.read_all(BOX) == {f"key_{i}": f"value-{i}" for i in range(20)}


@pytest.mark.parametrize("box", ["../etc/passwd", "a/b", "", "UPPER CASE"])
def test_a_box_name_cannot_leave_the_folder(box: str) -> None:
    with pytest.raises(InputError, match="not a box name"):
        secrets.path_for(box)


def test_a_damaged_file_is_named_not_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIAB_REMOTE_CONFIG_DIR", str(tmp_path))
    path = secrets.path_for(BOX)
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_text(f"relay_password = 12\nother = {{ x = '{VALUE}' }}\n")
    path.chmod(0o600)
    with pytest.raises(InputError) as e:
        secrets.read_all(BOX)
    assert "other, relay_password: not a secret" in str(e.value)
    assert VALUE not in str(e.value)
