"""An SSH server on loopback (paramiko's) standing in for a box without python3: it lets one key in and
answers each command as `command -v python3 || exit 97` does there, after reading the command's input to
its end. It records each command, what the test's `on_exec` saw when the command was asked for, and the
input each got, so a test can tell what the laptop sent and when. A test that stands in for the box's side
of a script sets `answer`: (command, input) -> (stdout, exit status), given once the input ended."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
import pytest

from miab_remote.transport.ssh import NO_PYTHON
from miab_remote.transport.sshkeys import KeyPair, generate_ed25519


class NoPythonBox(paramiko.ServerInterface):  # type: ignore[misc]
    def __init__(self, operator: paramiko.PKey) -> None:
        self.operator = operator
        self.commands: list[str] = []
        self.inputs: list[bytes] = []  # each command's whole input, once it ended
        self.seen: list[object] = []  # what on_exec returned as each command was asked for
        self.on_exec: Callable[[], object] = lambda: None
        self.answer: Callable[[str, bytes], tuple[bytes, int]] | None = None
        self.lock = threading.Lock()

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = key.asbytes() == self.operator.asbytes()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        with self.lock:
            self.commands.append(command.decode())
            self.seen.append(self.on_exec())
        respond = self.answer

        def answer() -> None:
            data = bytearray()
            while chunk := channel.recv(65536):
                data += chunk
            with self.lock:
                self.inputs.append(bytes(data))
            out, status = respond(command.decode(), bytes(data)) if respond is not None else (b"", NO_PYTHON)
            with contextlib.suppress(EOFError, OSError):  # the laptop may have closed its end first
                if out:
                    channel.sendall(out)
                channel.send_exit_status(status)
            channel.close()

        threading.Thread(target=answer, daemon=True).start()
        return True


def accept_ssh(
    listener: socket.socket,
    host_key: paramiko.PKey,
    server: paramiko.ServerInterface,
    transports: list[paramiko.Transport] | None = None,
) -> None:
    """Serve SSH on `listener` until it is closed: each connection a paramiko server with `host_key`."""
    while True:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        t = paramiko.Transport(sock)
        t.add_server_key(host_key)
        with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
            t.start_server(server=server)
        if transports is not None:
            transports.append(t)


def load_key(pair: KeyPair) -> paramiko.PKey:
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pair.private_openssh.decode()))


@dataclass
class SSHBox:
    port: int
    host_key: KeyPair
    identity: Path  # the operator's private key file
    server: NoPythonBox
    transports: list[paramiko.Transport] = field(default_factory=list)


@pytest.fixture
def ssh_box(tmp_path: Path) -> Iterator[SSHBox]:
    """The server on a loopback port, with a host key and an operator's key made for the test."""
    host, operator = generate_ed25519("root@box"), generate_ed25519("operator")
    identity = tmp_path / "id_ed25519"
    identity.write_bytes(operator.private_openssh)
    identity.chmod(0o600)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    box = SSHBox(listener.getsockname()[1], host, identity, NoPythonBox(load_key(operator)))
    serving = (listener, load_key(host), box.server, box.transports)
    threading.Thread(target=accept_ssh, args=serving, daemon=True).start()
    try:
        yield box
    finally:
        listener.close()
        for t in box.transports:
            t.close()
