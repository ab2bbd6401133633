"""How a box is reached: its `address` through ~/.ssh/config (or $MIAB_REMOTE_SSH_CONFIG), the inventory's
own [ssh] settings winning, and a jump host refused (exit 2, nothing sent) unless its key is pinned.

Real parts: paramiko's ssh_config parser on real files, the inventory validator on real TOML, and the CLI
in-process (`deploy` must stop before it connects anywhere: the alias points at a closed loopback port)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from miab_remote import cli
from miab_remote.errors import InputError
from miab_remote.fleet.schema import validate
from miab_remote.transport.ssh import Route, route, tcp_connect
from miab_remote.transport.target import SSHTarget

NAME = "box1.example.test"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFsdu096fuX3ehLTX3FBmjxFy/DzQYQzK5HcyvHBFZt1 root@box1"
BASTION_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDqogdkvXOyerXkd91+289mKTfE48eD6ii2L+JHqHPvY bastion"
CONFIG = """\
Host mybox
    HostName 192.0.2.10
    Port 2222
    User admin
    IdentityFile ~/.ssh/mybox_key

Host behind
    HostName 10.9.0.5
    ProxyJump ops@bastion.example.org:2200

Host piped
    ProxyCommand nc %h %p

Host *
    ServerAliveInterval 30
"""


def host_of(address: str, ssh: str = "", tmp: Path | None = None) -> SSHTarget:
    text = f'hostname = "{NAME}"\naddress = "{address}"\nhost_keys = ["{KEY}"]\n' + ssh
    return validate(text, (tmp or Path("hosts")) / f"{NAME}.toml").target


@pytest.fixture
def ssh_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ssh_config"
    path.write_text(CONFIG)
    monkeypatch.setenv("MIAB_REMOTE_SSH_CONFIG", str(path))
    monkeypatch.setenv("HOME", str(tmp_path))
    return path


def test_an_alias_takes_hostname_port_user_and_identity_from_the_ssh_config(ssh_config: Path) -> None:
    r = route(host_of("mybox"))
    home = ssh_config.parent
    assert r == Route("192.0.2.10", 2222, "admin", (str(home / ".ssh/mybox_key"),), (), True)
    assert r.plain


def test_the_inventory_s_own_settings_win_over_the_ssh_config(ssh_config: Path) -> None:
    r = route(host_of("mybox", '[ssh]\nuser = "root"\nport = 22\nidentity_file = "/keys/op"\n'))
    # HostName is the alias's; user, port and the key come from the inventory (its key is tried first).
    assert (r.hostname, r.port, r.user) == ("192.0.2.10", 22, "root")
    assert r.identity_files == ("/keys/op", str(ssh_config.parent / ".ssh/mybox_key"))


def test_an_address_the_ssh_config_does_not_name_is_used_as_it_is(ssh_config: Path) -> None:
    r = route(host_of("198.51.100.7"))
    assert r == Route("198.51.100.7", 22, "root", (), (), False)


def test_no_ssh_config_at_all(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MIAB_REMOTE_SSH_CONFIG", "")
    assert route(host_of("mybox")) == Route("mybox", 22, "root", (), (), False)


def test_a_missing_ssh_config_file_is_bad_input(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MIAB_REMOTE_SSH_CONFIG", str(tmp_path / "nope"))
    with pytest.raises(InputError) as info:
        route(host_of("mybox"))
    assert info.value.exit_code == 2
    assert str(info.value).startswith(f"{tmp_path / 'nope'}: cannot read the SSH config")


def test_a_proxyjump_without_a_pinned_jump_key_is_refused(ssh_config: Path) -> None:
    with pytest.raises(InputError) as info:
        route(host_of("behind"))
    assert info.value.exit_code == 2
    assert str(info.value) == (
        f"hosts/{NAME}.toml: ssh.jump_host_keys: {NAME} is reached through the jump host "
        f"ops@bastion.example.org:2200 (ProxyJump in {ssh_config}), whose host key is not pinned; nothing was "
        'sent. Accepted: the jump host\'s public key lines, e.g. jump_host_keys = ["ssh-ed25519 AAAAC3Nza... '
        'bastion"] (check them out of band)'
    )


def test_a_proxyjump_with_its_key_pinned(ssh_config: Path) -> None:
    r = route(host_of("behind", f'[ssh]\njump_host_keys = ["{BASTION_KEY}"]\n'))
    assert (r.hostname, r.jumps, r.plain) == ("10.9.0.5", ("ops@bastion.example.org:2200",), False)


def test_the_inventory_s_jump_wins_over_proxyjump(ssh_config: Path) -> None:
    ssh = f'[ssh]\njump = "root@10.0.0.1, mybox"\njump_host_keys = ["{BASTION_KEY}"]\n'
    assert route(host_of("behind", ssh)).jumps == ("root@10.0.0.1", "mybox")


def test_a_jump_in_the_inventory_needs_its_key_too(ssh_config: Path) -> None:
    expected = r"ssh\.jump_host_keys: .* through the jump host root@10\.0\.0\.1 \(\[ssh\] jump\)"
    with pytest.raises(InputError, match=expected):
        route(host_of("198.51.100.7", '[ssh]\njump = "root@10.0.0.1"\n'))


def test_a_proxycommand_is_refused(ssh_config: Path) -> None:
    with pytest.raises(InputError, match=r"ProxyCommand .* accepted: a ProxyJump"):
        route(host_of("piped"))


def test_deploy_refuses_an_unpinned_jump_before_contacting_anything(
    ssh_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.listen()
    listener.settimeout(0.2)
    ssh_config.write_text(f"Host behind\n    HostName 127.0.0.1\n    Port {port}\n    ProxyJump 127.0.0.1:{port}\n")
    (hosts / f"{NAME}.toml").write_text(
        f'hostname = "{NAME}"\naddress = "behind"\nhost_keys = ["{KEY}"]\nrecipes = ["base"]\n'
    )
    try:
        assert cli.main(["deploy", "--inventory", str(hosts), NAME]) == 2
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing connected
    finally:
        listener.close()
    assert "ssh.jump_host_keys" in capsys.readouterr().err


def test_the_socket_handed_to_paramiko_has_nagle_off() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        sock = tcp_connect("127.0.0.1", listener.getsockname()[1], 5.0)
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            sock.close()
    finally:
        listener.close()


def test_a_connection_opened_in_the_background_reports_its_failure_at_first_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from miab_remote.errors import HostError
    from miab_remote.transport.ssh import Transport

    monkeypatch.setenv("MIAB_REMOTE_SSH_CONFIG", "")
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = Transport(host_of("127.0.0.1", f"[ssh]\nport = {port}\n"), connect_timeout=2)
    transport.start_connecting()
    try:
        with pytest.raises(HostError, match=f"cannot connect to 127.0.0.1:{port}: "):
            transport.exec("true")
    finally:
        transport.close()
