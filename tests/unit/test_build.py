"""Building a box on the laptop (recipes loaded, templates rendered): made once per command for an unchanged
box and unchanged templates, made again when either changes, and a push renders only its tagged files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from miab_remote.engine.converge import build
from miab_remote.fleet.store import Inventory, new_document
from miab_remote.profiles import DEBIAN_12

NAME = "box1.example.test"
HASH_TAIL = "L/g3lQ0sz.cNZmOimR30yOF8goi9mg8K0b/RfzeW7Ou58xym2TTGK"
RECIPE = """\
from miab_remote.api import File


def resources(ctx):
    yield File("/etc/miab-test/conf")
    yield File("/etc/miab-test/users", tags=("accounts",))
"""


@pytest.fixture
def hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    doc = new_document(NAME, "192.0.2.10", provider="manual", host_keys=[], os="debian-12")
    doc["recipes"] = ["mine"]
    root = tmp_path / "hosts"
    (root / "recipes").mkdir(parents=True)
    (root / "templates/etc/miab-test").mkdir(parents=True)
    (root / f"{NAME}.toml").write_text(doc.as_string())
    (root / "recipes/mine.py").write_text(RECIPE)
    (root / "templates/etc/miab-test/conf").write_text("conf of {{ host.hostname }}\n")
    (root / "templates/etc/miab-test/users").write_text("{% for u in host.users %}{{ u.email }}\n{% endfor %}")
    return root


def test_a_changed_template_is_rendered_again(hosts: Path) -> None:
    inv = Inventory(hosts)
    build(inv.load(NAME), DEBIAN_12, hosts)
    template = hosts / "templates/etc/miab-test/conf"
    template.write_text("new conf of {{ host.hostname }}\n")
    st = template.stat()
    os.utime(template, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # even within one clock tick
    assert build(inv.load(NAME), DEBIAN_12, hosts)[1]["/etc/miab-test/conf"] == b"new conf of box1.example.test\n"


def test_a_changed_box_is_built_again(hosts: Path) -> None:
    inv = Inventory(hosts)
    build(inv.load(NAME), DEBIAN_12, hosts)
    text = (hosts / f"{NAME}.toml").read_text()
    user = '[[users]]\nemail = "a@example.test"\npassword_hash = "{BLF-CRYPT}$2b$12$' + HASH_TAIL + '"\n'
    (hosts / f"{NAME}.toml").write_text(text + "\n" + user)
    second = build(inv.load(NAME), DEBIAN_12, hosts)
    assert second[1]["/etc/miab-test/users"] == b"a@example.test\n"


def test_a_push_renders_only_the_files_of_its_tag(hosts: Path) -> None:
    resources, rendered = build(Inventory(hosts).load(NAME), DEBIAN_12, hosts, "accounts")
    assert len(resources) == 2
    assert set(rendered) == {"/etc/miab-test/users"}
