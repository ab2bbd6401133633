"""The deploy use case (jobs/deploy.py) without a box: each box is loaded and built once, every box
before any is contacted; a box that cannot be reached fails on its own, in the order given, and nothing is
written to the inventory when no box was read. The CLI runs in this process against boxes on loopback:
closed ports, a socket that must never be called, or a real SSH server (paramiko) that lets the operator's
key in and answers every command as a box without python3 does."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from miab_remote import cli
from miab_remote.fleet.store import new_document
from miab_remote.transport.sshkeys import generate_ed25519
from tests.unit.sshbox import SSHBox

NAMES = ["one.example.test", "two.example.test"]
# The operator's recipe notes each time it is asked for its resources (a build of the box).
RECIPE = """\
from miab_remote.engine.resources import File


def resources(ctx):
    with open({log!r}, "a") as f:
        f.write(ctx.host.name + "\\n")
    yield File("/etc/miab-test/conf")
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    root = tmp_path / "hosts"
    (root / "recipes").mkdir(parents=True)
    (root / "templates/etc/miab-test").mkdir(parents=True)
    (root / "recipes/mine.py").write_text(RECIPE.format(log=str(tmp_path / "builds")))
    (root / "templates/etc/miab-test/conf").write_text("fine\n")
    for name in NAMES:  # nothing listens on their ports: a connection is refused at once
        write_box(root, name, closed_port())
    return root


def write_box(root: Path, name: str, port: int, host_key: str | None = None, identity: str | None = None) -> None:
    key = host_key or generate_ed25519("root@nowhere").public_line
    doc = new_document(
        name, "127.0.0.1", provider="manual", host_keys=[key], os="debian-12", ssh_port=port, identity_file=identity
    )
    doc["recipes"] = ["mine"]
    (root / f"{name}.toml").write_text(doc.as_string())


def builds(hosts: Path) -> list[str]:
    return (hosts.parent / "builds").read_text().splitlines()


def test_each_box_is_built_once_and_an_unreachable_box_fails_on_its_own(
    hosts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {n: (hosts / f"{n}.toml").read_bytes() for n in NAMES}
    code = cli.main(["--inventory", "hosts", "deploy", *reversed(NAMES), "--json", "--connect-timeout", "2"])
    assert code == 1
    runs = json.loads(capsys.readouterr().out)["hosts"]
    assert list(runs) == list(reversed(NAMES)), "results keep the order the operator gave"
    for name in NAMES:
        assert runs[name]["failed"] == 1 and "cannot connect to 127.0.0.1:" in runs[name]["error"]
        assert runs[name]["os"] == "debian-12", "the inventory's word when the box said nothing"
    assert sorted(builds(hosts)) == NAMES, "built once each: the build checked first is the one deployed"
    assert {n: (hosts / f"{n}.toml").read_bytes() for n in NAMES} == before


def test_a_bad_template_of_one_box_stops_all_before_any_is_contacted(
    hosts: Path, capsys: pytest.CaptureFixture[str], listener: socket.socket
) -> None:
    write_box(hosts, NAMES[0], listener.getsockname()[1])
    (hosts / "templates/etc/miab-test/conf").write_text("{{ nothing }}\n")
    code = cli.main(["--inventory", "hosts", "deploy", *NAMES])
    assert code == 2
    assert "hosts/templates/etc/miab-test/conf:1: 'nothing' is undefined" in capsys.readouterr().err
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody called


def test_the_build_checked_first_is_the_one_deployed(
    hosts: Path, capsys: pytest.CaptureFixture[str], ssh_box: SSHBox
) -> None:
    port, host_key, identity, server = ssh_box.port, ssh_box.host_key, ssh_box.identity, ssh_box.server
    write_box(hosts, NAMES[0], port, host_key.public_line, str(identity))
    code = cli.main(["--inventory", "hosts", "deploy", NAMES[0], "--json", "--connect-timeout", "5"])
    assert code == 1
    run = json.loads(capsys.readouterr().out)["hosts"][NAMES[0]]
    assert "python3 is missing on the box" in run["error"]
    assert len(server.commands) == 1 and run["round_trips"] == 1, "the probe was the only command"
    assert builds(hosts) == [NAMES[0]], "built once, before connecting, and that build was probed for"
