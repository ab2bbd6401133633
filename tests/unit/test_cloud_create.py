"""`create --provider digitalocean` and `destroy`, the whole flow through the real CLI and libcloud's real
driver, against the DigitalOcean stand-in (tests/standins/digitalocean.py) whose servers here are SSH
servers on loopback addresses (127.0.0.N:22) presenting the host key of the user data they were given, as
cloud-init would install it (LoopbackBoxes). The e2e test (tests/e2e/test_cloud_create.py) does the same
with real boxes booted by cloud-init; this one covers every refusal in seconds.

Runs as root (port 22), as the CI does."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomlkit
import yaml

from miab_remote import cli
from tests.standins import digitalocean
from tests.standins.loopback import LoopbackBoxes, write_operator_key

NAME = "box1.example.org"
TOKEN = "dop_v1_" + "5ecre7" * 10  # distinctive: must appear in no output


def standin_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **variables: str) -> Path:
    """A laptop for creates against the stand-ins: its own config folder and operator key, the cloud
    credentials given, no endpoint or debug variable of the caller's."""
    if os.geteuid() != 0:
        pytest.skip("the stand-in servers listen on port 22 of loopback addresses: run as root (as the CI does)")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("MIAB_REMOTE_CONFIG_DIR", str(tmp_path / "config"))
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)
    for variable in ("MIAB_REMOTE_DIGITALOCEAN_ENDPOINT", "AWS_DEFAULT_REGION", "LIBCLOUD_DEBUG"):
        monkeypatch.delenv(variable, raising=False)
    write_operator_key(tmp_path)
    return tmp_path


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return standin_env(tmp_path, monkeypatch, DIGITALOCEAN_TOKEN=TOKEN)


@pytest.fixture
def standin() -> Iterator[digitalocean.DigitalOceanStandIn]:
    with digitalocean.start(LoopbackBoxes(), token=TOKEN) as front:
        yield front


def run(env: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["--inventory", str(env / "hosts"), *args])
    out = capsys.readouterr()
    text = out.out + out.err
    assert TOKEN not in text
    return code, text


def create(env: Path, capsys: pytest.CaptureFixture[str], url: str, *extra: str) -> tuple[int, str]:
    return run(
        env, capsys, "create", "--provider", "digitalocean", "--endpoint", url,
        "--identity-file", str(env / "id_ed25519"), "--timeout", "20", *extra,
    )  # fmt: skip


def test_create_pins_the_key_it_handed_over_and_destroy_removes_the_droplet(
    env: Path, capsys: pytest.CaptureFixture[str], standin: digitalocean.DigitalOceanStandIn
) -> None:
    code, text = create(env, capsys, standin.url, NAME)
    assert code == 0, text
    cloud = standin.cloud
    [post] = cloud.requests_to("POST", "/v2/droplets")
    sent = yaml.safe_load(post.body["user_data"])
    assert post.body["name"] == NAME and post.body["ipv6"] is True
    assert (post.body["region"], post.body["size"], post.body["image"]) == ("fra1", "s-1vcpu-1gb", "debian-13-x64")
    doc = tomlkit.parse((env / "hosts" / f"{NAME}.toml").read_text()).unwrap()
    assert doc["host_keys"] == [sent["ssh_keys"]["ed25519_public"]], "the key pinned is the key handed over"
    assert sent["ssh_authorized_keys"] == [(env / "id_ed25519.pub").read_text().strip()]
    [node] = cloud.nodes.values()
    assert doc["address"] == doc["ipv4"] == node.booted.address
    assert doc["ipv6"] == node.booted.ipv6, "the droplet's public IPv6 (asked for) is recorded"
    assert doc["provider"] == "digitalocean" and doc["os"] == "debian-13" and doc["ssh"]["user"] == "root"
    assert doc["node"] == {
        "id": str(node.id), "region": "fra1", "size": "s-1vcpu-1gb", "image": "debian-13-x64", "endpoint": standin.url,
    }  # fmt: skip
    assert f"next: miab-remote deploy {NAME}" in text and "port 25" in text
    ip = node.booted.address
    v6 = node.booted.ipv6
    assert f"glue records ns1.{NAME} A {ip}, ns1.{NAME} AAAA {v6}, ns2.{NAME} A {ip}, ns2.{NAME} AAAA {v6}" in text
    assert f"nameservers of example.org: ns1.{NAME}" in text
    assert len(cloud.requests_to("POST", "/v2/account/keys")) == 1
    assert len(cloud.requests_to("GET", "/v2/images")) == 1, "the images are listed once (they are many)"

    code, text = create(env, capsys, standin.url, "box2.example.org")
    assert code == 0, text
    assert len(cloud.requests_to("POST", "/v2/account/keys")) == 1, "the operator's key is found the second time"

    code, text = run(env, capsys, "destroy", "--yes", NAME)
    assert code == 0, text
    assert cloud.requests_to("DELETE", f"/v2/droplets/{node.id}")
    assert f"destroyed droplet {node.id}" in text
    assert not (env / "hosts" / f"{NAME}.toml").exists()
    assert [p.name.split(".2")[0] for p in (env / "hosts" / ".archive").iterdir()] == [NAME]


def test_destroy_keep_inventory_forgets_the_server_for_the_next_create(
    env: Path, capsys: pytest.CaptureFixture[str], standin: digitalocean.DigitalOceanStandIn
) -> None:
    assert create(env, capsys, standin.url, NAME)[0] == 0
    code, text = create(env, capsys, standin.url, NAME)
    assert code == 2 and "may still run; destroy it first" in text, text
    assert run(env, capsys, "destroy", "--yes", "--keep-inventory", NAME)[0] == 0
    doc = tomlkit.parse((env / "hosts" / f"{NAME}.toml").read_text())
    assert "node" not in doc
    code, text = create(env, capsys, standin.url, NAME)
    assert code == 0 and "kept the existing inventory" in text, text
    assert len(standin.cloud.nodes) == 1


def test_a_server_presenting_another_host_key_is_destroyed_and_only_archived(
    env: Path, capsys: pytest.CaptureFixture[str], standin: digitalocean.DigitalOceanStandIn
) -> None:
    standin.cloud.wrong_host_key = True
    code, text = create(env, capsys, standin.url, NAME)
    assert code == 1, text
    assert "presented another SSH host key" in text and "it was destroyed" in text
    assert len(standin.cloud.requests_to("POST", "/v2/droplets")) == 1
    assert standin.cloud.requests_to("DELETE", r"/v2/droplets/\d+")
    assert not standin.cloud.nodes
    assert not (env / "hosts" / f"{NAME}.toml").exists(), "nothing written but the archive record"
    [record] = (env / "hosts" / ".archive").iterdir()
    doc = tomlkit.parse(record.read_text()).unwrap()
    assert doc["host_keys"] == [] and doc["node"]["region"] == "fra1"


def test_a_server_presenting_another_key_can_be_kept_unpinned(
    env: Path, capsys: pytest.CaptureFixture[str], standin: digitalocean.DigitalOceanStandIn
) -> None:
    standin.cloud.wrong_host_key = True
    code, text = create(env, capsys, standin.url, "--on-host-key-mismatch", "keep", NAME)
    assert code == 1 and "it is kept for you to look at" in text, text
    assert not standin.cloud.requests_to("DELETE", r"/v2/droplets/\d+")
    doc = tomlkit.parse((env / "hosts" / f"{NAME}.toml").read_text()).unwrap()
    assert doc["host_keys"] == [] and doc["node"]["id"]
    assert run(env, capsys, "deploy", NAME)[0] != 0, "an unpinned box is refused"
    assert run(env, capsys, "destroy", "--yes", NAME)[0] == 0
    assert not standin.cloud.nodes


def test_a_server_that_never_answers_ssh_is_destroyed(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with digitalocean.start(LoopbackBoxes(answer=False), token=TOKEN) as standin:
        code, text = create(env, capsys, standin.url, "--timeout", "1.5", NAME)
        assert code == 1 and "did not answer SSH" in text, text
        assert standin.cloud.requests_to("DELETE", r"/v2/droplets/\d+") and not standin.cloud.nodes
    assert not (env / "hosts").exists() or not any((env / "hosts").glob("*.toml"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--region", "xyz9"), "DigitalOcean offers no region 'xyz9' (--region); offered: "),
        (("--size", "s-99"), "DigitalOcean offers no size in fra1 's-99' (--size); offered: "),
        (("--size", "s-1vcpu-512mb-10gb"), "no size with at least 1024 MB of memory"),
        (("--image", "ubuntu-14-04-x64"), "'ubuntu-14-04-x64' is not an image miab-remote makes DigitalOcean boxes of"),
    ],
)
def test_what_the_cloud_does_not_offer_is_refused_before_anything_is_made(
    env: Path,
    capsys: pytest.CaptureFixture[str],
    standin: digitalocean.DigitalOceanStandIn,
    args: tuple[str, ...],
    message: str,
) -> None:
    code, text = create(env, capsys, standin.url, *args, NAME)
    assert code == 2 and message in text, text
    assert not standin.cloud.requests_to("POST", ".*") and not (env / "hosts").exists()


def test_a_bad_token_is_exit_2_and_never_shown(
    env: Path, capsys: pytest.CaptureFixture[str], standin: digitalocean.DigitalOceanStandIn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", TOKEN[::-1])
    code, text = create(env, capsys, standin.url, NAME)
    assert code == 2 and "DigitalOcean refused the credentials" in text, text
    assert TOKEN[::-1] not in text
    assert not standin.cloud.requests_to("POST", ".*")


def test_a_quota_refusal_and_a_name_in_use_are_exit_2_with_nothing_made(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with digitalocean.start(LoopbackBoxes(), token=TOKEN, quota=0) as standin:
        code, text = create(env, capsys, standin.url, NAME)
        assert code == 2 and "DigitalOcean refused creating the server" in text and "limit" in text, text
        assert not standin.cloud.nodes
        assert not (env / "hosts" / ".creating" / f"{NAME}.toml").exists(), "a refused create made nothing"
    with digitalocean.start(LoopbackBoxes(), token=TOKEN) as standin:
        assert create(env, capsys, standin.url, NAME)[0] == 0
        (env / "hosts" / f"{NAME}.toml").unlink()  # an operator who lost the inventory: the cloud still has it
        code, text = create(env, capsys, standin.url, NAME)
        assert code == 2 and f"already has a server named {NAME}" in text, text
        assert len(standin.cloud.requests_to("POST", "/v2/droplets")) == 1


def test_without_credentials_nothing_is_asked(env: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.delenv("DIGITALOCEAN_TOKEN")
    code, text = create(env, capsys, "http://127.0.0.1:9", NAME)
    assert code == 2 and "set DIGITALOCEAN_TOKEN in the environment" in text, text


def _orphan(env: Path, standin: digitalocean.DigitalOceanStandIn, answered: bool = True) -> int:
    """A server an earlier create made and was killed (kill -9) before writing the inventory: only its note,
    with the server's id once the cloud had answered, without it when the create was killed before the answer."""
    from miab_remote.fleet.store import Inventory

    node = standin.cloud.create_node(
        NAME, "debian-13", "fra1", "s-1vcpu-1gb", "#cloud-config\n{}\n", slug="debian-13-x64", ssh_keys=[], ipv6=False,
        tags=[],
    )  # fmt: skip
    known = {"id": str(node.id)} if answered else {}
    Inventory(env / "hosts").note_creating(NAME, "digitalocean", {**known, "endpoint": standin.url})
    return node.id


@pytest.mark.parametrize("answered", [True, False])
def test_the_next_create_removes_what_a_killed_create_left(
    env: Path, capsys: pytest.CaptureFixture[str], standin: digitalocean.DigitalOceanStandIn, answered: bool
) -> None:
    orphan = _orphan(env, standin, answered)
    code, text = create(env, capsys, standin.url, NAME)
    assert code == 0, text
    left = f"digitalocean server {orphan}" if answered else "a digitalocean server asked for"
    assert f"{NAME}: an interrupted create had left {left}: destroyed droplet {orphan}" in text
    assert orphan not in standin.cloud.nodes and len(standin.cloud.nodes) == 1
    assert not (env / "hosts" / ".creating" / f"{NAME}.toml").exists()


@pytest.mark.parametrize("answered", [True, False])
def test_destroy_finds_a_server_a_killed_create_left(
    env: Path, capsys: pytest.CaptureFixture[str], standin: digitalocean.DigitalOceanStandIn, answered: bool
) -> None:
    orphan = _orphan(env, standin, answered)
    code, text = run(env, capsys, "destroy", "--yes", NAME)
    assert code == 0 and f"destroyed droplet {orphan}" in text, text
    assert not standin.cloud.nodes and not (env / "hosts" / ".creating" / f"{NAME}.toml").exists()


def test_a_create_in_progress_is_noted_until_the_server_is_recorded_or_gone(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While the create waits for SSH the note names the server (a kill -9 then leaves it findable); a
    create that fails and removes its server forgets the note."""
    note = env / "hosts" / ".creating" / f"{NAME}.toml"
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.append(note.read_text())
            stop.wait(0.05)

    with digitalocean.start(LoopbackBoxes(answer=False), token=TOKEN) as standin:
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            code, text = create(env, capsys, standin.url, "--timeout", "1.5", NAME)
        finally:
            stop.set()
            watcher.join()
        assert code == 1, text
        [delete] = standin.cloud.requests_to("DELETE", r"/v2/droplets/\d+")
        assert seen, "the note was there while the create waited"
        assert tomlkit.parse(seen[-1]).unwrap()["node"]["id"] == delete.path.rsplit("/", 1)[1]
    assert not note.exists(), "the server is gone, and so is its note"


def _destroy_in_terminal(env: Path, answer: str) -> tuple[int, str]:
    """`destroy NAME` on a pseudo-terminal, answering its question with `answer`."""
    argv = [sys.executable, "-m", "miab_remote", "--inventory", str(env / "hosts"), "destroy", NAME]
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execve(sys.executable, argv, {**os.environ, "TERM": "dumb", "COLUMNS": "1000"})
        finally:
            os._exit(127)
    shown, answered = b"", False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                shown += chunk
            if not answered and b"to go on:" in shown:
                os.write(fd, answer.encode() + b"\n")
                answered = True
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_destroy_asks_for_the_name_to_be_typed(
    env: Path, capsys: pytest.CaptureFixture[str], standin: digitalocean.DigitalOceanStandIn
) -> None:
    assert create(env, capsys, standin.url, NAME)[0] == 0
    code, shown = _destroy_in_terminal(env, "yes")
    assert code == 2 and f"Type {NAME} to go on:" in shown and "not confirmed; nothing was changed" in shown, shown
    assert len(standin.cloud.nodes) == 1 and (env / "hosts" / f"{NAME}.toml").exists()
    code, shown = _destroy_in_terminal(env, NAME)
    assert code == 0 and "destroyed droplet" in shown, shown
    assert not standin.cloud.nodes


def test_destroy_goes_to_the_api_the_server_was_made_through(
    env: Path, capsys: pytest.CaptureFixture[str], standin: digitalocean.DigitalOceanStandIn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    assert create(env, capsys, standin.url, NAME)[0] == 0
    monkeypatch.setenv("MIAB_REMOTE_DIGITALOCEAN_ENDPOINT", "http://127.0.0.1:9")  # another API now
    code, text = run(env, capsys, "destroy", "--yes", NAME)
    assert code == 0 and "destroyed droplet" in text, text
    assert not standin.cloud.nodes


def test_a_create_killed_before_the_cloud_made_anything_leaves_nothing_to_remove(
    env: Path, capsys: pytest.CaptureFixture[str], standin: digitalocean.DigitalOceanStandIn
) -> None:
    from miab_remote.fleet.store import Inventory

    Inventory(env / "hosts").note_creating(NAME, "digitalocean", {"endpoint": standin.url})
    code, text = run(env, capsys, "destroy", "--yes", NAME)
    assert code == 0 and f"DigitalOcean has no server named {NAME}: nothing was made" in text, text
    assert Inventory(env / "hosts").creating(NAME) is None
    assert not standin.cloud.requests_to("DELETE", ".*")
