"""A local box as a machine: systemd (PID 1) in systemd-nspawn, started detached and watched by PID;
its record (STATE_DIR/NAME/box.json: everything it owns), its lock, the wait for its SSH banner, and
the teardown that removes whatever exists of it, however much is already gone."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from miab_remote.errors import ProviderError
from miab_remote.fsutil import atomic_write
from miab_remote.providers.local import network, resolver
from miab_remote.providers.local.config import LocalConfig, is_box_name
from miab_remote.providers.local.system import lock_dir, locked, which

# nspawn turns SIGTERM into a clean systemd shutdown. On a busy 2-core host it took more than 15 s, once more
# than 30 s; systemd itself gives a unit 90 s to stop (DefaultTimeoutStopSec) before it kills it.
STOP_TIMEOUT = 100.0
KILL_TIMEOUT = 5.0
BOX_LOCK_TIMEOUT = 5.0


@dataclass(frozen=True)
class BoxPaths:
    dir: Path
    rootfs: Path
    record: Path
    console: Path


# --------------------------------------------------------------------------- records, locks


def now() -> str:
    """A record's timestamp."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def box_paths(cfg: LocalConfig, name: str) -> BoxPaths:
    box_dir = cfg.state_dir.absolute() / name
    return BoxPaths(box_dir, box_dir / "rootfs", box_dir / "box.json", box_dir / "console.log")


def box_dirs(cfg: LocalConfig) -> list[Path]:
    """The boxes' folders in the state dir (running or not)."""
    try:
        entries = sorted(cfg.state_dir.iterdir())
    except FileNotFoundError:
        return []
    return [e for e in entries if e.is_dir() and not e.is_symlink() and is_box_name(e.name)]


def read_record(paths: BoxPaths) -> dict[str, Any] | None:
    """The box's record; None when there is none, {} when it is unreadable (names are then derived)."""
    try:
        data = json.loads(paths.record.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_record(paths: BoxPaths, record: Mapping[str, Any]) -> None:
    atomic_write(paths.record, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), 0o600)


def recorded_addresses(cfg: LocalConfig) -> list[ipaddress.IPv4Address]:
    """The addresses the boxes' records claim (taken, for the next allocation). Caller holds the network lock."""
    found: list[ipaddress.IPv4Address] = []
    for box_dir in box_dirs(cfg):
        record = read_record(box_paths(cfg, box_dir.name)) or {}
        with contextlib.suppress(ValueError, TypeError):
            found.append(ipaddress.IPv4Address(record.get("address")))
    return found


def box_lock(cfg: LocalConfig, name: str) -> contextlib.AbstractContextManager[None]:
    """One create or destroy per box at a time; flock dies with its process, so a killed run never blocks."""
    return locked(
        lock_dir(cfg) / f"box-{name}.lock",
        BOX_LOCK_TIMEOUT,
        f"box {name}",
        " (another create or destroy of this box is running)",
    )


# --------------------------------------------------------------------------- processes


def _proc_gone(pid: int) -> bool:
    """No such process, or only its zombie (this machine's PID 1 does not always reap)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return True
    return not fields or fields[0] in ("Z", "X")


def _is_nspawn_of(pid: int, rootfs: Path) -> bool:
    """Is `pid` a live systemd-nspawn running this box's tree? (A recycled PID or a zombie is not.)"""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if _proc_gone(pid):
        return False
    return os.path.basename(argv[0]) == b"systemd-nspawn" and b"--directory=" + os.fsencode(rootfs) in argv


def nspawn_pids(paths: BoxPaths, record: Mapping[str, Any]) -> list[int]:
    """The recorded PID if still this box's nspawn, plus any other in /proc (a create killed early)."""
    pids: set[int] = set()
    recorded = record.get("pid")
    if isinstance(recorded, int) and _is_nspawn_of(recorded, paths.rootfs):
        pids.add(recorded)
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _is_nspawn_of(int(entry), paths.rootfs):
                pids.add(int(entry))
    return sorted(pids)


def container_inits(rootfs: Path, netns_names: Iterable[str] = ()) -> list[int]:
    """The box's systemd: a PID namespace's PID 1 rooted at the box's tree or in its network namespace.

    A SIGKILLed nspawn does not take its container with it: systemd goes on running, reparented
    to the host's PID 1, still holding the box's address. Killing it ends every process of the box.
    """
    wanted_roots: set[tuple[int, int]] = set()
    wanted_nets: set[tuple[int, int]] = set()
    with contextlib.suppress(OSError):
        st = os.stat(rootfs)
        wanted_roots.add((st.st_dev, st.st_ino))
    for netns in netns_names:
        with contextlib.suppress(OSError):
            st = os.stat(Path("/run/netns", netns))  # a bind mount of the namespace: its nsfs inode
            wanted_nets.add((st.st_dev, st.st_ino))
    if not wanted_roots and not wanted_nets:
        return []
    found: list[int] = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                proc_root = os.stat(f"/proc/{entry}/root")  # fails for zombies: they hold no root
                proc_net = os.stat(f"/proc/{entry}/ns/net")
                status_text = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            if (proc_root.st_dev, proc_root.st_ino) not in wanted_roots and (
                proc_net.st_dev,
                proc_net.st_ino,
            ) not in wanted_nets:
                continue
            for line in status_text.splitlines():
                fields = line.split()
                if fields and fields[0] == "NSpid:" and len(fields) > 2 and fields[-1] == "1":
                    found.append(int(entry))
    return found


def _wait_gone(pids: list[int], is_alive: Callable[[int], bool], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        for pid in pids:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it happens to be our child
        alive = [pid for pid in pids if is_alive(pid)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop(paths: BoxPaths, pids: list[int], netns_names: Sequence[str], lines: list[str], *, graceful: bool) -> None:
    """SIGTERM makes nspawn shut systemd down cleanly; SIGKILL if it has not after STOP_TIMEOUT.

    Not graceful (a create that failed half-way): SIGKILL at once, a box still booting may ignore
    the shutdown request until STOP_TIMEOUT and there is nothing on it worth a clean shutdown.

    Then any box systemd left without its nspawn (nspawn killed earlier) is killed outright:
    the box is being deleted, there is nothing to shut down cleanly for.
    """
    rootfs = paths.rootfs
    pid_list = ", ".join(map(str, pids))
    if pids:
        _signal(pids, signal.SIGTERM if graceful else signal.SIGKILL)
        alive = _wait_gone(pids, lambda pid: _is_nspawn_of(pid, rootfs), STOP_TIMEOUT if graceful else KILL_TIMEOUT)
        if alive:
            _signal(alive, signal.SIGKILL)
            if _wait_gone(alive, lambda pid: _is_nspawn_of(pid, rootfs), KILL_TIMEOUT):
                raise ProviderError(f"systemd-nspawn (pid {pid_list}) survived SIGKILL")
            lines.append(
                f"killed the box (systemd-nspawn pid {pid_list} did not stop within {STOP_TIMEOUT:.0f} s"
                f"{_waiting_for(paths)})"
            )
        elif graceful:
            lines.append(f"stopped the box (systemd-nspawn pid {pid_list})")
        else:
            lines.append(f"killed the box (systemd-nspawn pid {pid_list})")
    orphans = container_inits(rootfs, netns_names)
    if orphans:
        _signal(orphans, signal.SIGKILL)
        orphan_list = ", ".join(map(str, orphans))
        if _wait_gone(orphans, lambda pid: pid in container_inits(rootfs, netns_names), KILL_TIMEOUT):
            raise ProviderError(f"the box's systemd (pid {orphan_list}) survived SIGKILL")
        lines.append(f"killed the box's systemd left running without its nspawn (pid {orphan_list})")


def spawn(paths: BoxPaths, name: str, netns: str) -> int:
    """Start nspawn detached (own session, stdin /dev/null, output to console.log); return its PID.

    It is started through `sh -c '... &'` so that it is not our child: the CLI may exit while the box runs,
    and no zombie or "still running" warning is left behind in a long-lived Python process.
    """
    nspawn = which("systemd-nspawn")
    if nspawn is None:
        raise ProviderError("systemd-nspawn: command not found (apt-get install systemd-container)")
    command = [
        nspawn,
        "--boot",
        f"--directory={paths.rootfs}",
        f"--machine={name}",
        "--register=no",  # this machine has no systemd to register with (see docs/testbox.md)
        "--keep-unit",
        f"--network-namespace-path=/run/netns/{netns}",
        "--capability=CAP_NET_ADMIN,CAP_NET_RAW",  # ufw, fail2ban; never CAP_SYS_TIME (the host's clock)
        "--resolv-conf=off",  # keep the resolv.conf written before boot
        "--link-journal=no",  # nothing of the box's journal under the host's /var/log
        "--console=read-only",
    ]
    script = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
    sh = which("sh") or "/bin/sh"
    try:
        proc = subprocess.run(
            [sh, "-c", script, "sh", str(paths.console), *command],
            capture_output=True,
            text=True,
            timeout=30,
            start_new_session=True,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProviderError(f"could not start systemd-nspawn: {exc}") from None
    try:
        pid = int(proc.stdout.strip())
    except ValueError:
        raise ProviderError(f"could not start systemd-nspawn: {proc.stderr.strip() or proc.stdout!r}") from None
    # The background shell has forked but may not have exec'd nspawn yet: wait, so that the PID we
    # record and watch is nspawn's own command line, not the shell's.
    deadline = time.monotonic() + 10.0
    while not _is_nspawn_of(pid, paths.rootfs) and time.monotonic() < deadline:
        if _proc_gone(pid):
            break
        time.sleep(0.02)
    return pid


def _waiting_for(paths: BoxPaths) -> str:
    """What the box's shutdown was waiting for, from its console's last "A stop job is running" line."""
    with contextlib.suppress(OSError):
        text = paths.console.read_text(errors="replace")
        jobs = [line for line in text.splitlines() if "stop job is running" in line]
        if jobs:
            return "; its console: " + re.sub(r"\x1b\[[0-9;]*m", "", jobs[-1]).strip()
    return ""


def _console_tail(paths: BoxPaths, lines: int = 30) -> str:
    try:
        text = paths.console.read_text(errors="replace")
    except OSError:
        return "(no console output)"
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(f"    {line}" for line in tail) or "(no console output)"


def _ssh_banner(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=2.0) as conn:
            conn.settimeout(2.0)
            return conn.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def wait_for_ssh(
    paths: BoxPaths, name: str, address: str, pid: int, timeout: float, give_up: Callable[[], str | None] | None = None
) -> None:
    """Booted means sshd answers with its banner; nspawn exiting, the deadline passing or `give_up` saying why
    there is no point waiting any longer is a failure."""
    deadline = time.monotonic() + timeout
    while True:
        if not _is_nspawn_of(pid, paths.rootfs):
            raise ProviderError(
                f"systemd-nspawn exited while booting; last lines of its console:\n{_console_tail(paths)}"
            )
        if _ssh_banner(address):
            return
        if give_up is not None and (reason := give_up()):
            raise ProviderError(f"{reason}; last lines of its console:\n{_console_tail(paths)}")
        if time.monotonic() >= deadline:
            raise ProviderError(
                f"no SSH banner from {address}:22 after {timeout:.0f} s; "
                f"last lines of its console:\n{_console_tail(paths)}"
            )
        time.sleep(0.3)


# --------------------------------------------------------------------------- teardown


def _rmtree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ProviderError(f"could not remove {path}: {exc}") from None


def teardown(
    cfg: LocalConfig,
    name: str,
    paths: BoxPaths,
    record: Mapping[str, Any],
    lines: list[str],
    *,
    drop_shared: bool,
    graceful: bool,
) -> None:
    """Remove whatever exists of the box, in an order that works however much of it is already gone."""
    netns_names, veth_names = network.box_net_names(cfg, name, record)
    stop(paths, nspawn_pids(paths, record), netns_names, lines, graceful=graceful)
    network.remove_box_network(netns_names, veth_names, lines)
    existed = paths.dir.exists()
    if existed:
        _rmtree(paths.rootfs)  # the slow part, outside the network lock; box.json still holds the address
    with network.network_lock(cfg):
        if existed:
            _rmtree(paths.dir)
            lines.append(f"removed {paths.dir} (root filesystem, record and console log)")
        if drop_shared and not box_dirs(cfg):
            # No box left on the bridge: our bridge, nft table and the boxes' resolver go.
            network.remove_shared_network(cfg, lines)
            lines.extend(resolver.stop(cfg))
