"""Running this machine's tools (ip, nft, debootstrap...) and taking the local provider's file locks:
what the other local modules share, each failure turned into one ProviderError that names the cause."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from miab_remote.errors import MiabError, ProviderError
from miab_remote.fsutil import file_lock
from miab_remote.providers.local.config import LocalConfig

_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def which(tool: str) -> str | None:
    """Find a tool on PATH or in the sbin folders (root's PATH may lack them under `su` or sudo)."""
    path = os.environ.get("PATH", os.defpath) + os.pathsep + os.pathsep.join(_SBIN_DIRS)
    return shutil.which(tool, path=path)


def run(
    args: Sequence[str],
    *,
    check: bool = True,
    input_text: str | None = None,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; a failure becomes a ProviderError naming the command and its stderr."""
    exe = which(args[0])
    if exe is None:
        raise ProviderError(f"{args[0]}: command not found (see `miab-remote` requirements for local boxes)")
    try:
        proc = subprocess.run(
            [exe, *args[1:]],
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ProviderError(f"`{shlex.join(args)}` did not finish within {timeout:.0f} s") from None
    except OSError as exc:
        raise ProviderError(f"`{shlex.join(args)}` could not run: {exc}") from None
    if check and proc.returncode != 0:
        output = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise ProviderError(f"`{shlex.join(args)}` failed (exit {proc.returncode}): {output}")
    return proc


def check_requirements() -> None:
    """Raise ProviderError naming everything this machine lacks to host local boxes."""
    missing: list[str] = []
    if not sys.platform.startswith("linux"):
        missing.append(f"Linux (this is {sys.platform})")
    elif os.geteuid() != 0:
        missing.append("root (run miab-remote as root for local boxes)")
    for tool, package in (
        ("systemd-nspawn", "systemd-container"),
        ("debootstrap", "debootstrap"),
        ("nft", "nftables"),
        ("ip", "iproute2"),
        ("dnsmasq", "dnsmasq-base"),
    ):
        if which(tool) is None:
            missing.append(f"{tool} (apt-get install {package})")
    if missing:
        raise ProviderError("the local provider needs: " + "; ".join(missing))


def lock_dir(cfg: LocalConfig) -> Path:
    """STATE_DIR/.locks, made on first use."""
    locks = cfg.state_dir.absolute() / ".locks"
    locks.mkdir(mode=0o700, parents=True, exist_ok=True)
    return locks


@contextlib.contextmanager
def locked(path: Path, timeout: float, what: str, hint: str = "") -> Iterator[None]:
    """fsutil.file_lock, with only a failure to take the lock turned into a ProviderError (not the body's)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(path, timeout=timeout, what=what))
        except MiabError as exc:
            raise ProviderError(f"{exc}{hint}") from None
        yield
