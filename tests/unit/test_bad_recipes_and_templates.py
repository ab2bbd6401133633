"""A failed template or recipe of the operator's, a bad [[dns.records]] entry or a TOML nested too deeply
is bad input: exit 2, one line naming the file (and line), and nothing sent to the box. The CLI runs in
this process against an inventory whose box "listens" on a loopback socket that must never be called."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from miab_remote import cli
from miab_remote.fleet.store import new_document
from miab_remote.jobs import create

NAME = "box1.example.test"
RECIPE_OK = """\
from miab_remote.engine.resources import File


def resources(ctx):
    yield File("/etc/miab-test/conf")
"""


@pytest.fixture
def root(tmp_path: Path, listener: socket.socket, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    doc = new_document(
        NAME, "127.0.0.1", provider="manual", host_keys=[], os="debian-12", ssh_port=listener.getsockname()[1]
    )
    doc["recipes"] = ["mine"]
    hosts = tmp_path / "hosts"
    (hosts / "recipes").mkdir(parents=True)
    (hosts / "templates/etc/miab-test").mkdir(parents=True)
    (hosts / f"{NAME}.toml").write_text(doc.as_string())
    (hosts / "recipes/mine.py").write_text(RECIPE_OK)
    (hosts / "templates/etc/miab-test/conf").write_text("fine\n")
    return hosts


def deploy(capsys: pytest.CaptureFixture[str], listener: socket.socket) -> tuple[int, str]:
    code = cli.main(["--inventory", "hosts", "deploy", NAME, "--dry-run"])
    err = capsys.readouterr().err
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody called
    return code, err


CASES = [
    (
        "missing-include",
        "templates/etc/miab-test/conf",
        'one\n{% include "etc/miab-test/none" %}\n',
        "hosts/templates/etc/miab-test/conf:2: template 'etc/miab-test/none' (included or imported) not found in",
    ),
    (
        "template-syntax",
        "templates/etc/miab-test/conf",
        "one\ntwo {% if %}\n",
        "hosts/templates/etc/miab-test/conf:2: template syntax error: Expected an expression, got 'end of statement",
    ),
    (
        "template-raises",
        "templates/etc/miab-test/conf",
        "a\nb\n{{ 1 // 0 }}\n",
        "hosts/templates/etc/miab-test/conf:3: rendering failed: ZeroDivisionError: integer division or modulo by zero",
    ),
    (
        "template-undefined",
        "templates/etc/miab-test/conf",
        "{{ nothing }}\n",
        "hosts/templates/etc/miab-test/conf:1: 'nothing' is undefined",
    ),
    (
        "recipe-raises",
        "recipes/mine.py",
        RECIPE_OK + "    raise KeyError('boom')\n",
        "hosts/recipes/mine.py:6: recipe 'mine' failed: KeyError: 'boom'",
    ),
    (
        "recipe-import-fails",
        "recipes/mine.py",
        "import no_such_module_here\n" + RECIPE_OK,
        "hosts/recipes/mine.py:1: recipe 'mine' failed to load: ModuleNotFoundError: No module named "
        "'no_such_module_here'",
    ),
    (
        "recipe-syntax",
        "recipes/mine.py",
        RECIPE_OK + "def broken(:\n",
        "hosts/recipes/mine.py:6: recipe 'mine' failed to load: SyntaxError: invalid syntax",
    ),
    (
        "recipe-yields-junk",
        "recipes/mine.py",
        RECIPE_OK + "    yield 'a string'\n",
        "hosts/recipes/mine.py: recipe 'mine' yielded str 'a string', not a resource (Package, Directory, File, "
        "Service, Group, User or Command)",
    ),
    (
        "dns-record",
        f"{NAME}.toml",
        None,
        f"hosts/{NAME}.toml:{{line}}: dns.records[0].name: 'x y.example.test' is not a DNS name: ' ' not accepted",
    ),
    (
        "deep-toml",
        f"{NAME}.toml",
        "a = " + "[" * 5000 + "]" * 5000 + "\n",
        f"hosts/{NAME}.toml:1: TOML syntax error at column 105: TOML value nested more than 100 levels deep",
    ),
]


@pytest.mark.parametrize(("file", "text", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_exit_2_and_one_line(
    root: Path, capsys: pytest.CaptureFixture[str], listener: socket.socket, file: str, text: str | None, message: str
) -> None:
    path = root / file
    if file.endswith(".toml"):
        if text is None:
            text = path.read_text() + '\n[[dns.records]]\nname = "x y.example.test"\ntype = "A"\nvalue = "192.0.2.1"\n'
            message = message.replace("{line}", str(text.splitlines().index('name = "x y.example.test"') + 1))
        else:
            text = text + path.read_text()
    path.write_text(text)
    code, err = deploy(capsys, listener)
    assert (code, err.count("\n")) == (2, 1), err
    assert err.startswith(f"miab-remote: {message}"), err
    assert "Traceback" not in err


def test_a_good_operator_recipe_and_template_still_plan(
    root: Path, capsys: pytest.CaptureFixture[str], listener: socket.socket
) -> None:
    """The checks refuse nothing good: this run gets as far as SSH (no host key is pinned: exit 1)."""
    code = cli.main(["--inventory", "hosts", "deploy", NAME, "--dry-run", "--connect-timeout", "1"])
    assert code == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.parametrize("target", ["/etc/hostname", "../../../../outside.conf"])
def test_operator_template_symlink_leaving_the_inventory_is_refused(
    root: Path, capsys: pytest.CaptureFixture[str], listener: socket.socket, target: str
) -> None:
    (root.parent / "outside.conf").write_text("laptop secret\n")
    link = root / "templates/etc/miab-test/conf"
    link.unlink()
    link.symlink_to(target)
    code, err = deploy(capsys, listener)
    resolved = Path(os.path.realpath(link))
    assert code == 2, err
    assert err == (
        f"miab-remote: hosts/templates/etc/miab-test/conf: a symlink to {resolved}, outside the inventory folder "
        f"{root.resolve()}; an operator's template must live in the inventory folder: copy the file into "
        "hosts/templates instead of linking it\n"
    )


def test_a_symlink_inside_the_inventory_folder_is_fine(root: Path) -> None:
    from miab_remote.engine.templates import TemplateSet

    (root / "shared.conf").write_text("shared {{ 1 + 1 }}\n")
    link = root / "templates/etc/miab-test/conf"
    link.unlink()
    link.symlink_to("../../../shared.conf")
    assert TemplateSet(root / "templates", ()).render("/etc/miab-test/conf", {}) == b"shared 2\n"


def test_user_add_with_a_failed_template_changes_nothing(
    root: Path, capsys: pytest.CaptureFixture[str], listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The push would render the box's templates: a broken one is found before the inventory is edited."""
    import io

    (root / "templates/etc/miab-test/conf").write_text("{% if %}\n")
    before = (root / f"{NAME}.toml").read_bytes()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"secret-pass-1\n")))
    code = cli.main(["--inventory", "hosts", "user", "add", NAME, "carol@example.test", "--password-stdin"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("miab-remote: hosts/templates/etc/miab-test/conf:1: template syntax error"), err
    assert (root / f"{NAME}.toml").read_bytes() == before
    with pytest.raises(BlockingIOError):
        listener.accept()


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["MX2.EXAMPLE.TEST"], "'MX2.EXAMPLE.TEST' is not lower-case; write 'mx2.example.test'; nothing was made"),
        (
            ["box"],
            "'box' is not a box name; expected lower-case labels joined by dots, like 'box1.example.org'; "
            "nothing was made",
        ),
        (["a.example.test", "a.example.test"], "a.example.test is given twice; nothing was made"),
        ([("x" * 60) + ".example.test"], "is not a valid host name"),
    ],
)
def test_create_checks_its_arguments_first(root: Path, names: list[str], message: str) -> None:
    """Before anything is made (the e2e test proves no box boots): here, the checks themselves (an existing
    inventory's: tests/unit/test_create_move.py)."""
    from miab_remote.errors import InputError
    from miab_remote.fleet.store import Inventory

    with pytest.raises(InputError) as e:
        create.check_new_boxes(Inventory(root), names)
    assert message in str(e.value)


@pytest.mark.parametrize("provider", ['provider = "manual"', "", 'provider = "vultr"'])
def test_destroy_refuses_what_it_cannot_destroy(root: Path, capsys: pytest.CaptureFixture[str], provider: str) -> None:
    path = root / f"{NAME}.toml"
    path.write_text(path.read_text().replace('provider = "manual"', provider))
    before = path.read_bytes()
    assert cli.main(["--inventory", "hosts", "destroy", "--yes", NAME]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"miab-remote: {NAME}: not destroyed: ") and "nothing was touched" in err, err
    assert path.read_bytes() == before
