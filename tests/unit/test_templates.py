"""Template lookup order (operator override, then OS variants, then plain) and diff masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from miab_remote.engine.diffing import plan_diff
from miab_remote.engine.planner import plan
from miab_remote.engine.redact import MASK, SecretMask
from miab_remote.engine.resources import File
from miab_remote.engine.templates import TemplateSet
from miab_remote.errors import InputError


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def builtin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "builtin"
    monkeypatch.setattr("miab_remote.engine.templates.builtin_dir", lambda name: root)
    write(root / "etc/a.conf", "plain {{ x }}\n")
    write(root / "etc/a.conf@dovecot-2.4", "variant {{ x }}\n")
    write(root / "etc/b.conf", "b\n")
    return root


def test_variant_before_plain(builtin: Path, tmp_path: Path) -> None:
    ts = TemplateSet(tmp_path / "override", ("debian-13", "dovecot-2.4"))
    assert ts.render("/etc/a.conf", {"x": 1}) == b"variant 1\n"
    assert TemplateSet(tmp_path / "override", ("debian-12",)).render("etc/a.conf", {"x": 1}) == b"plain 1\n"


def test_operator_override_wins_over_everything(builtin: Path, tmp_path: Path) -> None:
    write(tmp_path / "override/etc/a.conf", "mine {{ x }}\n")
    ts = TemplateSet(tmp_path / "override", ("dovecot-2.4",))
    assert ts.render("etc/a.conf", {"x": 2}) == b"mine 2\n"
    assert ts.render("etc/b.conf", {}) == b"b\n"


def test_missing_template_and_undefined_variable(builtin: Path, tmp_path: Path) -> None:
    ts = TemplateSet(tmp_path / "override", ())
    with pytest.raises(InputError, match="template 'etc/none' not found"):
        ts.render("etc/none", {})
    with pytest.raises(InputError, match="'x' is undefined"):
        ts.render("etc/a.conf", {})


def test_syntax_error_names_file_and_line(builtin: Path, tmp_path: Path) -> None:
    write(tmp_path / "override/etc/b.conf", "ok\n{% if %}\n")
    with pytest.raises(InputError, match=r"etc/b.conf:2: template syntax error"):
        TemplateSet(tmp_path / "override", ()).render("etc/b.conf", {})


def test_diff_masks_secrets_and_hides_secret_files() -> None:
    import base64

    old = b"user = bob\nhash = {BLF-CRYPT}$2b$10$abcdefghijk\n"
    new = b"user = bob\nhash = {BLF-CRYPT}$2b$10$zyxwvutsrqp\n"
    files = [File("/etc/x", content=new), File("/etc/key", content=b"new-key", secret=True)]
    facts = {
        "files": {
            "/etc/x": {
                "exists": True,
                "type": "file",
                "sha256": "0",
                "mode": 0o644,
                "owner": "root",
                "group": "root",
                "content": base64.b64encode(old).decode(),
            },
            "/etc/key": {
                "exists": True,
                "type": "file",
                "sha256": "0",
                "mode": 0o644,
                "owner": "root",
                "group": "root",
            },
        }
    }
    rendered = {"/etc/x": new, "/etc/key": b"new-key"}
    text = plan_diff(
        plan(files, rendered, facts),
        facts,
        rendered,
        SecretMask(["{BLF-CRYPT}$2b$10$abcdefghijk", "{BLF-CRYPT}$2b$10$zyxwvutsrqp"]),
    )
    assert f"-hash = {MASK}" in text and f"+hash = {MASK}" in text
    assert "abcdefghijk" not in text and "zyxwvutsrqp" not in text
    assert "(secret file: content differs, not shown)" in text and "new-key" not in text
