"""The local boxes' view of "the internet's DNS": one dnsmasq on the bridge's address.

It sends the queries for each box's zones to that box's own nsd, the way registrar glue does on the
internet, and everything else to this machine's resolvers (so apt in a box still finds the mirror). Boxes
use it as their only nameserver; that is how two local boxes find each other's MX and DKIM keys.
A box's zones are published after each deploy (`publish`) and withdrawn when it is destroyed.

It also answers the reverse (PTR) lookups of each box's addresses with the box's hostname, as a cloud's
reverse DNS does once the operator has set it: the stand-in that lets `check`'s PTR items say ok.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from miab_remote.errors import ProviderError
from miab_remote.fsutil import atomic_write
from miab_remote.providers.local.config import LocalConfig, check_name
from miab_remote.providers.local.network import network_lock
from miab_remote.providers.local.system import which

if TYPE_CHECKING:
    from dns.rdtypes.ANY.DS import DS


def _dir(cfg: LocalConfig) -> Path:
    return cfg.state_dir / ".resolver"


def _pid(cfg: LocalConfig) -> int | None:
    try:
        pid = int((_dir(cfg) / "dnsmasq.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"dnsmasq" in cmdline and str(_dir(cfg)).encode() in cmdline else None


def _upstreams(cfg: LocalConfig) -> list[str]:
    """This machine's own resolvers (loopback ones too: dnsmasq runs here, not in a box)."""
    out: list[str] = []
    for source in ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"):
        try:
            lines = Path(source).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver" and parts[1] != str(cfg.gateway):
                out.append(parts[1])
        if out:
            break
    return list(dict.fromkeys(out))


def _config(cfg: LocalConfig) -> str:
    upstream = _upstreams(cfg)
    lines = [
        "# Written by miab-remote's local provider.",
        f"listen-address={cfg.gateway}",
        "bind-interfaces",
        "no-resolv",
        "no-hosts",
        # No caching: a zone that a deploy just changed is answered fresh.
        "cache-size=0",
        "no-negcache",
        *(f"server={ns}" for ns in upstream),
        f"conf-dir={_dir(cfg) / 'delegations'},*.conf",
        f"pid-file={_dir(cfg) / 'dnsmasq.pid'}",
        f"log-facility={_dir(cfg) / 'dnsmasq.log'}",
    ]
    return "\n".join(lines) + "\n"


def _restart(cfg: LocalConfig) -> None:
    old = _pid(cfg)
    if old is not None:
        os.kill(old, signal.SIGTERM)
        for _ in range(100):
            if _pid(cfg) is None:
                break
            time.sleep(0.02)
    exe = which("dnsmasq")
    if exe is None:
        raise ProviderError("the local provider needs dnsmasq (apt-get install dnsmasq-base)")
    conf = _dir(cfg) / "dnsmasq.conf"
    proc = subprocess.run([exe, f"--conf-file={conf}"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise ProviderError(f"dnsmasq for the local boxes did not start: {proc.stderr.strip()}")


def ensure(cfg: LocalConfig) -> None:
    """Start the resolver if it is not running (after a reboot, or a killed session). Caller holds the
    network lock and has brought the bridge up."""
    (_dir(cfg) / "delegations").mkdir(parents=True, exist_ok=True, mode=0o755)
    conf = _dir(cfg) / "dnsmasq.conf"
    text = _config(cfg)
    if not conf.exists() or conf.read_text() != text:
        atomic_write(conf, text.encode(), 0o644)
    elif _pid(cfg) is not None:
        return
    _restart(cfg)


def publish(
    cfg: LocalConfig,
    name: str,
    zones: list[str],
    addresses: Sequence[str],
    ds: Mapping[str, DS] | None = None,
    reverse: Mapping[str, str] | None = None,
) -> bool:
    """Delegate `zones` to the nameservers at `addresses`, the box's first, then its [dns] secondaries' (as a
    registrar lists every NS: dnsmasq asks another when one does not answer); an empty list withdraws them.
    Each zone's DS record in `ds` is answered here, as the parent's (dnsmasq's dns-rr: type 43, the rdata
    in hex; None keeps the DS records published for those zones), and PTR for each address of `reverse`
    with its name. Nothing: the box's part is withdrawn. True if anything changed."""
    name = check_name(name)
    path = _dir(cfg) / "delegations" / f"{name}.conf"
    text = "".join(f"server=/{zone}/{address}\n" for zone in zones for address in addresses)
    for ip, target in sorted((reverse or {}).items()):
        text += f"ptr-record={ipaddress.ip_address(ip).reverse_pointer},{check_name(target)}\n"
    with network_lock(cfg):
        current = path.read_text() if path.exists() else ""
        if ds is None:
            kept = [line for line in current.splitlines(True) if line.startswith("dns-rr=")]
            text += "".join(line for line in kept if line[len("dns-rr=") :].partition(",")[0] in zones)
        else:
            text += "".join(f"dns-rr={z},43,{ds[z].to_digestable().hex()}\n" for z in zones if z in ds)
        if current == text and _pid(cfg) is not None:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        if text:
            atomic_write(path, text.encode(), 0o644)
        elif path.exists():
            path.unlink()
        ensure(cfg)
        _restart(cfg)
    return True


def stop(cfg: LocalConfig) -> list[str]:
    """Stop the resolver and remove its files (when the last box is gone). Caller holds the network lock."""
    lines: list[str] = []
    pid = _pid(cfg)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        lines.append(f"stopped the local boxes' resolver (dnsmasq pid {pid})")
    folder = _dir(cfg)
    if folder.exists():
        for p in sorted(folder.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        folder.rmdir()
    return lines
