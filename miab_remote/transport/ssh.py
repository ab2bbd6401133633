"""The thin transport: one pinned, time-bounded SSH connection per host, reused for a whole run.

Host keys are checked against the inventory's pinned keys only; ~/.ssh/known_hosts is never read or
written, and nothing is sent before the key matched. Commands get their input on stdin (secrets never on a
command line); non-root users go through `sudo -n`. Every command execution and SFTP session is one
counted round trip.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paramiko

from miab_remote.errors import HostError, HostKeyMismatch, InputError
from miab_remote.remote import BOOTSTRAP, script_head
from miab_remote.transport.sshkeys import fingerprint, parse_public_line
from miab_remote.transport.target import SSHTarget

if TYPE_CHECKING:
    from fabric import Connection

CONNECT_TIMEOUT = 10.0
# paramiko logs a failed handshake with its traceback; with no handler configured, Python would print it on
# stderr beside the one clear error this module raises for it.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
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

    def __init__(self, host: str, pinned: list[str], hint: str | None = None) -> None:
        self.host = host
        self.hint = hint
        self.pinned = {parse_public_line(line)[1]: line for line in pinned}
        self.seen: paramiko.PKey | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        self.seen = key
        if key.asbytes() in self.pinned:
            return
        offered = fingerprint(key.get_name(), key.asbytes())
        raise HostKeyMismatch(
            self.host, offered, [fingerprint(*parse_public_line(p)) for p in self.pinned.values()], self.hint
        )


def pinned_client(policy: PinnedKeyPolicy) -> paramiko.SSHClient:
    """An SSH client that knows no host key but the pinned ones (~/.ssh/known_hosts is never loaded)."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(policy)
    return client


def tcp_connect(address: str, port: int, timeout: float) -> socket.socket:
    """The TCP connection handed to paramiko, with Nagle's algorithm off (TCP_NODELAY) and quick ACKs.

    SSH sends small packets and waits for the answer: with Nagle on (paramiko sets nothing), a second small
    write waits for the ACK of the first, which the other side delays up to 40 ms. That cost two such stalls
    per connect (userauth and the first channel open), measured in bench/startup.py."""
    sock = socket.create_connection((address, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    quickack = getattr(socket, "TCP_QUICKACK", None)  # Linux only
    if quickack is not None:
        sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
    return sock


# -- ~/.ssh/config: host aliases and jump hosts ---------------------------------------------------------------
# What is honoured from ssh_config for a box's `address` (and for each jump host). Everything else in it
# (ciphers, ControlMaster, ...) is OpenSSH's business and ignored here.
HONOURED = ("hostname", "port", "user", "identityfile", "proxyjump")


def ssh_config_path() -> Path | None:
    """$MIAB_REMOTE_SSH_CONFIG (empty: none), else ~/.ssh/config when it exists."""
    value = os.environ.get("MIAB_REMOTE_SSH_CONFIG")
    if value is not None:
        return Path(value).expanduser() if value.strip() else None
    path = Path("~/.ssh/config").expanduser()
    return path if path.is_file() else None


def load_ssh_config(path: Path | None) -> paramiko.SSHConfig:
    if path is None:
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(str(path))
    except OSError as e:
        raise InputError(
            f"{path}: cannot read the SSH config ({e.strerror}); accepted: an ssh_config(5) file, set with "
            "MIAB_REMOTE_SSH_CONFIG (empty for none)"
        ) from None
    except Exception as e:  # paramiko's parser: a malformed line
        raise InputError(f"{path}: not a valid ssh_config(5) file: {e}") from None


@dataclass(frozen=True)
class Route:
    """How to reach a box: the first hop's TCP address, and the jump hosts (outermost first), if any."""

    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    jumps: tuple[str, ...]
    from_config: bool  # the ssh_config said something about this box

    @property
    def plain(self) -> bool:
        """No jump: one TCP connection straight to the box, without Fabric."""
        return not self.jumps


def route(target: SSHTarget, config: paramiko.SSHConfig | None = None) -> Route:
    """The box's address resolved through ssh_config, with the inventory's explicit [ssh] settings winning.

    Precedence, per setting: the inventory's `[ssh]` value if it sets one (`user`, `port`, `identity_file`,
    `jump`), else the ssh_config's (`User`, `Port`, `IdentityFile`, `ProxyJump` of the `Host` block(s)
    matching `address`), else the default (root, 22, the SSH agent and ~/.ssh/id_*, no jump). `HostName`
    comes from the ssh_config only: `address` is the alias. A jump host must have its key pinned in
    `[ssh] jump_host_keys`, or the deploy is refused (exit 2) before anything is sent."""
    if config is None:
        config = load_ssh_config(ssh_config_path())
    found = config.lookup(target.address)
    renamed = found.get("hostname", target.address) != target.address
    said = renamed or any(k in found for k in HONOURED if k != "hostname")
    given = target.ssh.given
    user = target.ssh.user if "user" in given or "user" not in found else str(found["user"])
    port = target.ssh.port if "port" in given or "port" not in found else int(found["port"])
    identities: list[str] = [target.ssh.identity_file] if target.ssh.identity_file else []
    identities += [str(Path(p).expanduser()) for p in found.get("identityfile", [])]
    if target.ssh.jump is not None:
        jumps = tuple(j.strip() for j in target.ssh.jump.split(",") if j.strip())
    elif "proxyjump" in found and str(found["proxyjump"]).lower() != "none":
        jumps = tuple(j.strip() for j in str(found["proxyjump"]).split(",") if j.strip())
    else:
        jumps = ()
    if "proxycommand" in found and not jumps:
        raise InputError(
            f"{target.path}: address: {target.address!r} has a ProxyCommand in {ssh_config_path()}, which miab-remote "
            "cannot pin a key for; accepted: a ProxyJump (or [ssh] jump) with the jump host's key in "
            "[ssh] jump_host_keys"
        )
    if jumps and not target.ssh.jump_host_keys:
        source = "[ssh] jump" if target.ssh.jump is not None else f"ProxyJump in {ssh_config_path()}"
        raise InputError(
            f"{target.path}: ssh.jump_host_keys: {target.name} is reached through the jump host {', '.join(jumps)} "
            f"({source}), whose host key is not pinned; nothing was sent. Accepted: the jump host's public key "
            "lines, e.g. jump_host_keys = [\"ssh-ed25519 AAAAC3Nza... bastion\"] (check them out of band)"
        )
    return Route(
        hostname=str(found.get("hostname", target.address)),
        port=port,
        user=user,
        identity_files=tuple(dict.fromkeys(identities)),
        jumps=jumps,
        from_config=said,
    )


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


class Running:
    """A command started on the box that waits for (the rest of) its input: `finish` sends it and collects
    the output. A script started ahead of time (Transport.start_connecting's `warm`) is one of these."""

    def __init__(self, box: str, chan: paramiko.Channel) -> None:
        self.box = box
        self.chan = chan

    def finish(
        self,
        stdin: bytes = b"",
        *,
        idle_timeout: float = 60.0,
        deadline: float = 3600.0,
        on_line: Callable[[bytes], None] | None = None,
    ) -> Result:
        """Send `stdin` and end the input, collect output. Fails when the box says nothing for `idle_timeout`
        seconds (the remote scripts send heartbeats) or runs past `deadline`."""
        chan = self.chan
        try:
            chan.settimeout(idle_timeout)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            pending = b""
            start = time.monotonic()
            while True:
                if time.monotonic() - start > deadline:
                    raise HostError(f"{self.box}: command ran longer than {deadline:.0f} s; abandoned")
                try:
                    if chan.recv_stderr_ready():
                        err += chan.recv_stderr(65536)
                        continue
                    data = chan.recv(65536)
                except TimeoutError:
                    raise HostError(
                        f"{self.box}: no word from the box for {idle_timeout:.0f} s; it may have vanished"
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

    def close(self) -> None:
        """Never finished: the box's end reads the end of its input (a script then exits, changing nothing)."""
        self.chan.close()


class Transport:
    """One SSH connection to one box. Not thread-safe; use one per box."""

    def __init__(self, target: SSHTarget, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        if not target.host_keys:
            raise HostError(
                f"{target.name}: no host key is pinned in {target.path}, so it cannot be reached. A box destroyed with "
                f"`destroy --keep-inventory` leaves no box: `miab-remote create --provider PROVIDER {target.name}` "
                f"makes the new one; for a server you made, check its key out of band and pin it with "
                f"`miab-remote trust {target.name}`"
            )
        self.target = target
        self.round_trips = 0
        self.connect_timeout = connect_timeout
        self.policy = PinnedKeyPolicy(target.name, list(target.host_keys))
        self.route = route(target)
        self._client: paramiko.SSHClient | None = None
        self._gateway: Connection | None = None
        self._connecting: threading.Thread | None = None
        self._connect_error: BaseException | None = None
        self._warm: dict[str, Running] = {}  # scripts started ahead of time, waiting for their input

    # -- connection ---------------------------------------------------------------------------------
    def _connect_kwargs(self, pinned: list[str]) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "allow_agent": True,
            "look_for_keys": self.target.ssh.identity_file is None,
            "banner_timeout": self.connect_timeout,
            "auth_timeout": self.connect_timeout,
            "channel_timeout": self.connect_timeout,
            "disabled_algorithms": {"keys": disabled_host_key_algorithms(pinned)},
        }
        if self.route.identity_files:
            kw["key_filename"] = list(self.route.identity_files)
        return kw

    def start_connecting(self, warm: Sequence[str] = ()) -> None:
        """Connect in a thread, so that work on the laptop (a password's bcrypt, building the box) overlaps
        the handshakes; the first use (connect, exec, sftp) waits for it and raises what it raised.

        `warm`: remote scripts to start as soon as the connection is up, so that the box's python3 has
        started and compiled them by the time run_script sends their input (a box-side start-up of
        ~40-100 ms taken off the operator's wait)."""
        if self._client is not None or self._connecting is not None:
            return

        def run() -> None:
            try:
                self.connect()
            except BaseException as e:
                self._connect_error = e
                return
            for name in warm:
                try:
                    self._warm[name] = self._start_script(name)
                except Exception:  # run_script starts it again when it is needed, and reports why it fails
                    break

        self._connecting = threading.Thread(target=run, name=f"connect {self.target.name}", daemon=True)
        self._connecting.start()

    def _join_connecting(self) -> None:
        thread = self._connecting
        if thread is None or thread is threading.current_thread():
            return
        thread.join()
        self._connecting = None
        error, self._connect_error = self._connect_error, None
        if error is not None:
            raise error

    def connect(self) -> None:
        try:
            self._join_connecting()
        except HostKeyMismatch:
            raise
        except HostError:
            # The connection opened ahead of time is a guess that it will be needed: when it failed (sshd
            # drops unauthenticated connections beyond MaxStartups when many commands start at once), the
            # real attempt is made now.
            pass
        if self._client is not None:
            return
        r = self.route
        where = f"{r.hostname}:{r.port}" + (f" through {', '.join(r.jumps)}" if r.jumps else "")
        try:
            if r.plain:
                client = pinned_client(self.policy)
                client.connect(
                    r.hostname,
                    r.port,
                    r.user,
                    sock=tcp_connect(r.hostname, r.port, self.connect_timeout),
                    timeout=self.connect_timeout,
                    **self._connect_kwargs(list(self.target.host_keys)),
                )
            else:
                client = self._connect_through_jumps()
        except HostKeyMismatch:
            raise
        except paramiko.AuthenticationException as e:
            raise HostError(
                f"{self.target.name}: SSH login as {r.user} refused ({e}); "
                f"check [ssh] identity_file in {self.target.path}"
            ) from None
        except TimeoutError:
            raise HostError(f"{self.target.name}: no answer from {where} within {self.connect_timeout:.0f} s") from None
        except (OSError, paramiko.SSHException) as e:
            raise HostError(f"{self.target.name}: cannot connect to {where}: {e}") from None
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(15)
        self._client = client

    def _connect_through_jumps(self) -> paramiko.SSHClient:
        """Fabric's gateway: a Connection per jump host (ProxyJump's order), the box over a direct-tcpip
        channel of the last one. Every hop's client is replaced by one that accepts only pinned keys (Fabric
        would install AutoAddPolicy): the jump hosts' keys from [ssh] jump_host_keys, the box's from host_keys.
        Fabric is imported here only, so a plain deploy does not pay for it (and for invoke)."""
        import fabric

        cfg = fabric.Config(ssh_config=load_ssh_config(ssh_config_path()), lazy=True)
        jump_keys = list(self.target.ssh.jump_host_keys)
        gateway: fabric.Connection | None = None
        for hop in self.route.jumps:
            conn = fabric.Connection(
                hop,
                config=cfg,
                gateway=gateway if gateway is not None else False,
                connect_timeout=int(self.connect_timeout),
                connect_kwargs=self._connect_kwargs(jump_keys),
            )
            label = f"{self.target.name}'s jump host {conn.host}"
            conn.client = pinned_client(
                PinnedKeyPolicy(label, jump_keys, f"re-pin it in [ssh] jump_host_keys of {self.target.path}")
            )
            if gateway is None:  # the first hop is a TCP connection of ours (TCP_NODELAY)
                conn.connect_kwargs["sock"] = tcp_connect(conn.host, int(conn.port), self.connect_timeout)
            gateway = conn
        self._gateway = gateway
        box = fabric.Connection(
            self.route.hostname,
            user=self.route.user,
            port=self.route.port,
            config=cfg,
            gateway=gateway,
            connect_timeout=int(self.connect_timeout),
            connect_kwargs=self._connect_kwargs(list(self.target.host_keys)),
        )
        box.client = pinned_client(self.policy)
        box.open()
        client: paramiko.SSHClient = box.client
        return client

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._join_connecting()
        for running in self._warm.values():
            running.close()
        self._warm.clear()
        if self._client is not None:
            self._client.close()
            self._client = None
        gateway = self._gateway
        while gateway is not None:
            gateway.close()
            gateway = gateway.gateway or None
        self._gateway = None

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> paramiko.SSHClient:
        self.connect()
        assert self._client is not None
        return self._client

    def as_root(self, command: str) -> str:
        if self.route.user == "root":
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
        """Run `command` (as root), feed `stdin`, collect output (Running.finish says when it fails)."""
        return self.start(command).finish(stdin, idle_timeout=idle_timeout, deadline=deadline, on_line=on_line)

    def start(self, command: str, stdin: bytes = b"") -> Running:
        """Start `command` (as root) and send the first part of its input; Running.finish sends the rest."""
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise HostError(f"{self.target.name}: the SSH connection was lost")
        self.round_trips += 1
        chan = transport.open_session(timeout=self.connect_timeout)
        try:
            chan.exec_command(self.as_root(command))
            if stdin:
                chan.sendall(stdin)
        except BaseException:
            chan.close()
            raise
        return Running(self.target.name, chan)

    def _start_script(self, name: str) -> Running:
        """Script `name` started on the box (python3 reading its source), waiting for its input."""
        inner = f"command -v python3 >/dev/null 2>&1 || exit {NO_PYTHON}; exec python3 -c {shlex.quote(BOOTSTRAP)}"
        return self.start(inner, script_head(name))

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
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.connect()  # waits for a connection (and the scripts) opening ahead of time
        running = self._warm.pop(name, None) or self._start_script(name)
        res = running.finish(body, idle_timeout=idle_timeout, on_line=on_line)
        if res.exit_code == NO_PYTHON:
            raise HostError(f"{self.target.name}: python3 is missing on the box; install it (apt-get install python3)")
        if res.exit_code != 0 and b"sudo:" in res.stderr:
            raise HostError(
                f"{self.target.name}: {self.route.user} cannot become root without a password "
                f"({res.stderr.decode(errors='replace').strip()}); allow passwordless sudo for it"
            )
        return res

    def run_json(self, name: str, payload: Mapping[str, Any], idle_timeout: float = 60.0) -> Any:
        res = self.run_script(name, payload, idle_timeout=idle_timeout)
        if res.exit_code != 0:
            raise HostError(
                f"{self.target.name}: {name} failed (exit {res.exit_code}): "
                f"{res.stderr.decode(errors='replace')[-2000:]}"
            )
        return json.loads(res.stdout)


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
