"""The thin transport: one pinned, time-bounded SSH connection per host, reused for a whole run.

Host keys are checked against the inventory's pinned keys only; ~/.ssh/known_hosts is never read or
written, and nothing is sent before the key matched. Commands get their input on stdin (secrets never on a
command line); non-root users go through `sudo -n`. Every command execution and SFTP session is one
counted round trip.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from fabric import Connection

from miab_remote.errors import HostError, HostKeyMismatch
from miab_remote.fleet.model import Host
from miab_remote.remote import BOOTSTRAP, script_input
from miab_remote.transport.sshkeys import fingerprint, parse_public_line

CONNECT_TIMEOUT = 10.0
# Exit codes the bootstrap uses to tell the laptop what is missing on the box.
NO_PYTHON = 97

# Host key algorithms paramiko negotiates for each pinned key type.
_ALGOS = {
    "ssh-ed25519": {"ssh-ed25519"},
    "ecdsa-sha2-nistp256": {"ecdsa-sha2-nistp256"},
    "ecdsa-sha2-nistp384": {"ecdsa-sha2-nistp384"},
    "ecdsa-sha2-nistp521": {"ecdsa-sha2-nistp521"},
    "ssh-rsa": {"rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"},
}


class PinnedKeyPolicy(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """Accepts exactly the pinned keys; anything else is refused before authentication starts."""

    def __init__(self, host: str, pinned: list[str]) -> None:
        self.host = host
        self.pinned = {parse_public_line(line)[1]: line for line in pinned}
        self.seen: paramiko.PKey | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        self.seen = key
        if key.asbytes() in self.pinned:
            return
        offered = fingerprint(key.get_name(), key.asbytes())
        raise HostKeyMismatch(self.host, offered, [fingerprint(*parse_public_line(p)) for p in self.pinned.values()])


def disabled_host_key_algorithms(pinned: list[str]) -> list[str]:
    """Make the server present a key of a pinned type (paramiko picks the first algorithm both know)."""
    allowed: set[str] = set()
    for line in pinned:
        allowed |= _ALGOS.get(parse_public_line(line)[0], {parse_public_line(line)[0]})
    every = set().union(*_ALGOS.values()) | {
        "ssh-ed25519-cert-v01@openssh.com",
        "ssh-rsa-cert-v01@openssh.com",
        "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    }
    return sorted(every - allowed)


@dataclass
class Result:
    exit_code: int
    stdout: bytes
    stderr: bytes


class Transport:
    """One SSH connection to one host. Not thread-safe; use one per host."""

    def __init__(self, host: Host, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        if not host.host_keys:
            raise HostError(
                f"{host.name}: no pinned host key in {host.path}; pin one with `miab-remote trust {host.name}`"
            )
        self.host = host
        self.round_trips = 0
        self.connect_timeout = connect_timeout
        self.policy = PinnedKeyPolicy(host.name, list(host.host_keys))
        self._conn: Connection | None = None

    # -- connection ---------------------------------------------------------------------------------
    def _connect_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "allow_agent": True,
            "look_for_keys": self.host.ssh.identity_file is None,
            "banner_timeout": self.connect_timeout,
            "auth_timeout": self.connect_timeout,
            "channel_timeout": self.connect_timeout,
            "disabled_algorithms": {"keys": disabled_host_key_algorithms(list(self.host.host_keys))},
        }
        if self.host.ssh.identity_file:
            kw["key_filename"] = [str(Path(self.host.ssh.identity_file).expanduser())]
        return kw

    def connect(self) -> None:
        if self._conn is not None:
            return
        conn = Connection(
            host=self.host.address,
            user=self.host.ssh.user,
            port=self.host.ssh.port,
            connect_timeout=int(self.connect_timeout),
            connect_kwargs=self._connect_kwargs(),
        )
        # Fabric installs AutoAddPolicy and would accept any key: replace it with the pinned policy, and
        # never load ~/.ssh/known_hosts.
        conn.client = paramiko.SSHClient()
        conn.client.set_missing_host_key_policy(self.policy)
        try:
            conn.open()
        except HostKeyMismatch:
            raise
        except paramiko.AuthenticationException as e:
            raise HostError(
                f"{self.host.name}: SSH login as {self.host.ssh.user} refused ({e}); check [ssh] identity_file "
                f"in {self.host.path}"
            ) from None
        except TimeoutError:
            raise HostError(
                f"{self.host.name}: no answer from {self.host.address}:{self.host.ssh.port} within "
                f"{self.connect_timeout:.0f} s"
            ) from None
        except (OSError, paramiko.SSHException) as e:
            raise HostError(
                f"{self.host.name}: cannot connect to {self.host.address}:{self.host.ssh.port}: {e}"
            ) from None
        transport = conn.client.get_transport()
        assert transport is not None
        transport.set_keepalive(15)
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> paramiko.SSHClient:
        self.connect()
        assert self._conn is not None
        return self._conn.client

    def as_root(self, command: str) -> str:
        if self.host.ssh.user == "root":
            return command
        return "sudo -n -H -- sh -c " + shlex.quote(command)

    # -- commands ---------------------------------------------------------------------------------------
    def exec(
        self,
        command: str,
        stdin: bytes = b"",
        *,
        idle_timeout: float = 60.0,
        deadline: float = 3600.0,
        on_line: Callable[[bytes], None] | None = None,
    ) -> Result:
        """Run `command` (as root), feed `stdin`, collect output. Fails when the box says nothing for
        `idle_timeout` seconds (the remote scripts send heartbeats) or runs past `deadline`."""
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise HostError(f"{self.host.name}: the SSH connection was lost")
        self.round_trips += 1
        chan = transport.open_session(timeout=self.connect_timeout)
        try:
            chan.settimeout(idle_timeout)
            chan.exec_command(self.as_root(command))
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            pending = b""
            start = time.monotonic()
            while True:
                if time.monotonic() - start > deadline:
                    raise HostError(f"{self.host.name}: command ran longer than {deadline:.0f} s; abandoned")
                try:
                    if chan.recv_stderr_ready():
                        err += chan.recv_stderr(65536)
                        continue
                    data = chan.recv(65536)
                except TimeoutError:
                    raise HostError(
                        f"{self.host.name}: no word from the box for {idle_timeout:.0f} s; it may have vanished"
                    ) from None
                if not data:
                    break
                out += data
                if on_line is not None:
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        on_line(line)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            code = chan.recv_exit_status()
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            return Result(code, bytes(out), bytes(err))
        finally:
            chan.close()

    def run_script(
        self,
        name: str,
        payload: Mapping[str, Any] | bytes,
        *,
        idle_timeout: float = 60.0,
        on_line: Callable[[bytes], None] | None = None,
    ) -> Result:
        """Run one of the stdlib-only scripts in miab_remote/remote/ as root, with `payload` on stdin: as JSON,
        or bytes as they are (apply's spec and content, framed by remote/wire.py)."""
        inner = f"command -v python3 >/dev/null 2>&1 || exit {NO_PYTHON}; exec python3 -c {shlex.quote(BOOTSTRAP)}"
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        stdin = script_input(name, body)
        res = self.exec(inner, stdin, idle_timeout=idle_timeout, on_line=on_line)
        if res.exit_code == NO_PYTHON:
            raise HostError(f"{self.host.name}: python3 is missing on the box; install it (apt-get install python3)")
        if res.exit_code != 0 and b"sudo:" in res.stderr:
            raise HostError(
                f"{self.host.name}: {self.host.ssh.user} cannot become root without a password "
                f"({res.stderr.decode(errors='replace').strip()}); allow passwordless sudo for it"
            )
        return res

    def run_json(self, name: str, payload: Mapping[str, Any], idle_timeout: float = 60.0) -> Any:
        res = self.run_script(name, payload, idle_timeout=idle_timeout)
        if res.exit_code != 0:
            raise HostError(
                f"{self.host.name}: {name} failed (exit {res.exit_code}): {res.stderr.decode(errors='replace')[-2000:]}"
            )
        return json.loads(res.stdout)

    @contextlib.contextmanager
    def sftp(self) -> Iterator[paramiko.SFTPClient]:
        self.round_trips += 1
        client = self.client.open_sftp()
        try:
            yield client
        finally:
            client.close()


def fetch_host_keys(address: str, port: int, timeout: float = CONNECT_TIMEOUT) -> list[paramiko.PKey]:
    """Read the keys a server offers (one handshake per key type), for a deliberate `trust`. Sends no auth."""
    keys: list[paramiko.PKey] = []
    every = set().union(*_ALGOS.values())
    for algos in (["ssh-ed25519"], ["ecdsa-sha2-nistp256"], ["rsa-sha2-512"]):
        try:
            sock = socket.create_connection((address, port), timeout=timeout)
        except OSError as e:
            raise HostError(f"cannot connect to {address}:{port}: {e}") from None
        t = paramiko.Transport(sock, disabled_algorithms={"keys": sorted(every - set(algos))})
        try:
            t.start_client(timeout=timeout)
            keys.append(t.get_remote_server_key())
        except paramiko.SSHException:
            pass
        finally:
            t.close()
    return keys
