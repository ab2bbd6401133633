"""Servers without a box, for the unit tests of `create`: each is paramiko's SSH server on its own loopback
address (127.0.x.y, port 22, so root only) presenting the host key its user data carries, as cloud-init
would install it. Nothing logs in: the tool's first contact is a handshake, which is what these prove."""

from __future__ import annotations

import io
import itertools
import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

import paramiko
import yaml

from miab_remote.transport.sshkeys import generate_ed25519
from tests.standins.core import Booted
from tests.unit.sshbox import NoPythonBox, accept_ssh

_ADDRESSES = itertools.count(250 * (os.getpid() % 200))  # each box of the session its own loopback address


class LoopbackBoxes:
    """Each server: paramiko's SSH server on 127.0.0.N:22 with the host key its user data carries."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer  # False: the address never answers SSH
        self.listeners: dict[str, socket.socket] = {}
        self.seen_user_data: dict[str, str] = {}

    def make(self, name: str, user_data: str, image: str, public_keys: Sequence[str] = ()) -> Booted:
        n = next(_ADDRESSES)
        address = f"127.0.{n // 250}.{n % 250 + 2}"
        self.seen_user_data[name] = user_data
        keys = (yaml.safe_load(user_data) or {}).get("ssh_keys")
        if self.answer and keys:
            host_key = paramiko.Ed25519Key.from_private_key(io.StringIO(keys["ed25519_private"]))
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((address, 22))
            listener.listen()
            self.listeners[name] = listener
            # no login happens: the handshake is all
            threading.Thread(target=accept_ssh, args=(listener, host_key, NoPythonBox(host_key)), daemon=True).start()
        return Booted(address, 8, "127.0.0.1", f"2001:db8::{n + 2:x}")  # IPv6 is only recorded: nothing dials it

    def remove(self, name: str) -> None:
        listener = self.listeners.pop(name, None)
        if listener is not None:
            listener.close()




def write_operator_key(folder: Path) -> None:
    """The operator's key pair a test's creates authorise: `folder/id_ed25519` (0600) and its `.pub`."""
    key = generate_ed25519("operator@laptop")
    (folder / "id_ed25519").write_bytes(key.private_openssh)
    (folder / "id_ed25519").chmod(0o600)
    (folder / "id_ed25519.pub").write_text(key.public_line + "\n")
