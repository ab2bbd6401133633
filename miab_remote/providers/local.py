"""The local provider: a real Debian 12 box on this Linux machine, for trying and testing the tool.

A box is systemd (PID 1) inside systemd-nspawn, in a network namespace of its own, joined to the
other boxes by a bridge, reaching only the Debian mirror (and DNS) through NAT. Its SSH host key is
generated here before boot, so the very first connection is already pinned.

Kernel state (namespaces, veth pairs, the bridge, nft tables) and files under /var outlive the
processes that made them, so `create` cleans up after a dead box of the same name, and `destroy`
works on a box that is half gone. Everything a box owns is recorded in STATE_DIR/NAME/box.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from miab_remote import names
from miab_remote.errors import InputError, MiabError, ProviderError
from miab_remote.fsutil import atomic_write, file_lock
from miab_remote.transport.sshkeys import KeyPair, generate_ed25519, parse_public_line

OS_NAME = "debian-12"
SUITE = "bookworm"
# What a box needs beyond minbase to boot systemd, be reached over SSH and be driven by the tool.
ROOTFS_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "iproute2",
    "ca-certificates",
    "python3",
    "sudo",
    "locales",
)

DEFAULT_STATE_DIR = Path("/var/lib/miab-remote/local")
DEFAULT_CACHE_DIR = Path("/var/cache/miab-remote")
DEFAULT_SUBNET = ipaddress.IPv4Network("10.77.0.0/24")
DEFAULT_BRIDGE = "miabbr0"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Set as the bridge's ifalias when we create it, so destroy never removes a bridge someone else made.
BRIDGE_MARK = "miab-remote"
# Boxes may reach the outside only on these ports (apt over http/https, DNS): never SMTP or anything else.
ALLOWED_TCP_PORTS = (53, 80, 443)
ALLOWED_UDP_PORTS = (53,)

STOP_TIMEOUT = 15.0  # nspawn turns SIGTERM into a clean systemd shutdown; give it this long
KILL_TIMEOUT = 5.0
ROOTFS_LOCK_TIMEOUT = 1800.0  # a parallel create waits for the one that is building the cache
NETWORK_LOCK_TIMEOUT = 120.0
BOX_LOCK_TIMEOUT = 5.0

Progress = Callable[[str], None]

_NAME_RE = names.HOST_NAME_RE  # the inventory's rule for a box name
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


@dataclass(frozen=True)
class LocalConfig:
    """Where local boxes live and how they are networked; tests pass their own to stay apart."""

    state_dir: Path = DEFAULT_STATE_DIR
    cache_dir: Path = DEFAULT_CACHE_DIR
    subnet: ipaddress.IPv4Network = DEFAULT_SUBNET
    bridge: str = DEFAULT_BRIDGE
    mirror: str = DEFAULT_MIRROR
    apt_proxy: str | None = None

    @classmethod
    def from_env(cls) -> LocalConfig:
        """Read the MIAB_REMOTE_* variables; a bad value is an InputError naming the variable."""
        env = os.environ
        subnet_text = env.get("MIAB_REMOTE_LOCAL_SUBNET") or str(DEFAULT_SUBNET)
        try:
            subnet = ipaddress.IPv4Network(subnet_text, strict=True)
        except ValueError as exc:
            raise InputError(f"MIAB_REMOTE_LOCAL_SUBNET={subnet_text!r} is not an IPv4 network: {exc}") from None
        config = cls(
            state_dir=Path(env.get("MIAB_REMOTE_LOCAL_DIR") or DEFAULT_STATE_DIR).absolute(),
            cache_dir=Path(env.get("MIAB_REMOTE_CACHE_DIR") or DEFAULT_CACHE_DIR).absolute(),
            subnet=subnet,
            bridge=env.get("MIAB_REMOTE_LOCAL_BRIDGE") or DEFAULT_BRIDGE,
            mirror=env.get("MIAB_REMOTE_DEBIAN_MIRROR") or DEFAULT_MIRROR,
            apt_proxy=env.get("MIAB_REMOTE_APT_PROXY") or None,
        )
        config.validate()
        return config

    def validate(self) -> None:
        """Refuse values that would break the network set-up half-way, before anything is changed."""
        if not _IFNAME_RE.fullmatch(self.bridge):
            raise InputError(
                f"bridge name {self.bridge!r}: use 1 to 15 letters, digits, '_', '.' or '-' (MIAB_REMOTE_LOCAL_BRIDGE)"
            )
        if not isinstance(self.subnet, ipaddress.IPv4Network) or self.subnet.prefixlen > 29:
            raise InputError(f"subnet {self.subnet}: need an IPv4 network of /29 or larger (MIAB_REMOTE_LOCAL_SUBNET)")
        _check_url(self.mirror, "MIAB_REMOTE_DEBIAN_MIRROR")
        if self.apt_proxy is not None:
            _check_url(self.apt_proxy, "MIAB_REMOTE_APT_PROXY")

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The host's address on the bridge: the subnet's first address, the boxes' default route."""
        return self.subnet.network_address + 1

    @property
    def nft_table(self) -> str:
        """Our own nft table (family ip), one per bridge so that several configurations coexist."""
        return "miab_" + re.sub(r"[^A-Za-z0-9_]", "_", self.bridge)

    @property
    def rootfs_cache(self) -> Path:
        return self.cache_dir / "rootfs" / OS_NAME


@dataclass(frozen=True)
class CreatedBox:
    name: str
    address: str  # the box's IPv4 on the bridge
    host_key_public: str  # "ssh-ed25519 AAAA... root@NAME", generated here and installed before boot
    os: str = OS_NAME
    resolvers: tuple[str, ...] = ()  # the nameserver the box asks (the local resolver on the bridge)


@dataclass(frozen=True)
class _BoxPaths:
    dir: Path
    rootfs: Path
    record: Path
    console: Path


# --------------------------------------------------------------------------- public API


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
        if _which(tool) is None:
            missing.append(f"{tool} (apt-get install {package})")
    if missing:
        raise ProviderError("the local provider needs: " + "; ".join(missing))


def create(
    name: str,
    authorized_key: str,
    config: LocalConfig | None = None,
    progress: Progress | None = None,
    boot_timeout: float = 90.0,
) -> CreatedBox:
    """Build, network and boot a Debian 12 box; return once its sshd sends a banner."""
    cfg = config or LocalConfig.from_env()
    cfg.validate()
    name = check_name(name)
    authorized_key = _check_authorized_key(authorized_key)
    say: Progress = progress or _quiet
    check_requirements()
    paths = _paths(cfg, name)

    netns, veth = _net_names(cfg, name)
    with _box_lock(cfg, name):
        old_record = _read_record(paths)
        if old_record is not None or paths.dir.exists() or _netns_exists(netns) or _link_exists(veth):
            if _nspawn_pids(paths, old_record or {}):
                raise ProviderError(f"already exists and is running; destroy it first (miab-remote destroy {name})")
            say("cleaning up what a dead box of the same name left behind")
            _teardown(cfg, name, paths, old_record or {}, [], drop_shared=False, graceful=False)

        host_key = generate_ed25519(f"root@{name}")
        record: dict[str, Any] = {}
        claimed = False  # from here on, what exists is ours to undo
        try:
            with _network_lock(cfg):
                _check_subnet_free(cfg)
                address = _allocate_address(cfg)
                paths.dir.mkdir(mode=0o700)
                claimed = True
                record = {
                    "name": name,
                    "os": OS_NAME,
                    "address": str(address),
                    "prefixlen": cfg.subnet.prefixlen,
                    "gateway": str(cfg.gateway),
                    "bridge": cfg.bridge,
                    "nft_table": cfg.nft_table,
                    "netns": netns,
                    "veth": veth,
                    "rootfs": str(paths.rootfs),
                    "host_key_public": host_key.public_line,
                    "pid": None,
                    "created": _now(),
                }
                _write_record(paths, record)
                say(f"preparing bridge {cfg.bridge} ({cfg.gateway}/{cfg.subnet.prefixlen}) and NAT")
                _ensure_host_network(cfg)
                from miab_remote.providers import local_dns

                local_dns.ensure(cfg)

            cache = _ensure_rootfs_cache(cfg, say)
            say("copying the root filesystem")
            _run(["cp", "-a", "--reflink=auto", str(cache), str(paths.rootfs)], timeout=900)
            say("writing hostname, keys and apt sources")
            _prepare_rootfs(cfg, paths.rootfs, name, str(address), authorized_key, host_key, say)
            say(f"connecting the box to {cfg.bridge} as {address}")
            _setup_box_network(cfg, netns, veth, address)
            say("booting")
            pid = _spawn(paths, name, netns)
            record["pid"] = pid
            record["started"] = _now()
            _write_record(paths, record)
            say(f"waiting for SSH on {address}")
            _wait_for_ssh(paths, name, str(address), pid, boot_timeout)
        except BaseException as exc:
            # Leave nothing half made: a failed create undoes itself.
            if claimed:
                try:
                    _teardown(cfg, name, paths, record, [], drop_shared=True, graceful=False)
                except Exception as cleanup:
                    if isinstance(exc, MiabError):
                        raise ProviderError(
                            f"{exc}\n(cleaning up also failed: {cleanup}; run `miab-remote destroy {name}`)"
                        ) from exc
            if isinstance(exc, OSError):
                raise ProviderError(str(exc)) from exc
            raise

    say(f"up at {address}")
    return CreatedBox(
        name=name, address=str(address), host_key_public=host_key.public_line, resolvers=(str(cfg.gateway),)
    )


def destroy(name: str, config: LocalConfig | None = None) -> list[str]:
    """Stop the box and remove all it owns; idempotent. Returns one human line per thing removed."""
    cfg = config or LocalConfig.from_env()
    cfg.validate()
    name = check_name(name)
    check_requirements()
    paths = _paths(cfg, name)
    lines: list[str] = []
    with _box_lock(cfg, name):
        try:
            _teardown(cfg, name, paths, _read_record(paths) or {}, lines, drop_shared=True, graceful=True)
        except OSError as exc:
            raise ProviderError(str(exc)) from exc
    from miab_remote.providers import local_dns

    if _box_dirs(cfg) and local_dns.publish(name, [], "", cfg):
        lines.append("withdrew its zones from the local resolver")
    return lines or ["nothing to remove"]


def status(name: str, config: LocalConfig | None = None) -> str:
    """Return "running" (its nspawn is alive), "stopped" (files left, nothing running) or "absent"."""
    cfg = config or LocalConfig.from_env()
    name = check_name(name)
    paths = _paths(cfg, name)
    record = _read_record(paths)
    if record is None and not paths.dir.exists():
        return "absent"
    return "running" if _nspawn_pids(paths, record or {}) else "stopped"


def list_boxes(config: LocalConfig | None = None) -> list[str]:
    """Names of the boxes that have a folder in the state dir (running or not)."""
    cfg = config or LocalConfig.from_env()
    return [path.name for path in _box_dirs(cfg)]


def check_name(name: str) -> str:
    """A box name is a hostname (usually an FQDN); at most 64 characters, systemd's and the kernel's limit."""
    normal = name.lower().removesuffix(".")
    if len(normal) > 64 or not _NAME_RE.fullmatch(normal):
        raise InputError(
            f"box name {name!r} is not a valid host name (letters, digits and '-' in dot-separated "
            "labels, at most 64 characters, e.g. box1.example.test)"
        )
    return normal


# --------------------------------------------------------------------------- names, records, locks


def _quiet(_line: str) -> None:
    """The progress callback when the caller wants none."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _check_url(url: str, variable: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"{variable}={url!r}: need an http:// or https:// URL")


def _check_authorized_key(line: str) -> str:
    """One public key line, or InputError: it goes verbatim into the box's authorized_keys."""
    line = line.strip()
    if "\n" in line or "\r" in line:
        raise InputError("the authorized key must be a single public key line")
    parse_public_line(line)
    return line


def _paths(cfg: LocalConfig, name: str) -> _BoxPaths:
    box_dir = cfg.state_dir.absolute() / name
    return _BoxPaths(box_dir, box_dir / "rootfs", box_dir / "box.json", box_dir / "console.log")


def _net_names(cfg: LocalConfig, name: str) -> tuple[str, str]:
    """Namespace and host veth names: short (interfaces: 15 chars at most), stable per bridge and name."""
    digest = hashlib.sha256(f"{cfg.bridge}/{name}".encode()).hexdigest()[:10]
    return f"miab-{digest}", f"vmb-{digest}"


def _box_dirs(cfg: LocalConfig) -> list[Path]:
    try:
        entries = sorted(cfg.state_dir.iterdir())
    except FileNotFoundError:
        return []
    return [e for e in entries if e.is_dir() and not e.is_symlink() and _NAME_RE.fullmatch(e.name)]


def _read_record(paths: _BoxPaths) -> dict[str, Any] | None:
    """The box's record; None when there is none, {} when it is unreadable (names are then derived)."""
    try:
        data = json.loads(paths.record.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_record(paths: _BoxPaths, record: Mapping[str, Any]) -> None:
    atomic_write(paths.record, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), 0o600)


def _lock_dir(cfg: LocalConfig) -> Path:
    locks = cfg.state_dir.absolute() / ".locks"
    locks.mkdir(mode=0o700, parents=True, exist_ok=True)
    return locks


@contextlib.contextmanager
def _locked(path: Path, timeout: float, what: str, hint: str = "") -> Iterator[None]:
    """fsutil.file_lock, with only a failure to take the lock turned into a ProviderError (not the body's)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(path, timeout=timeout, what=what))
        except MiabError as exc:
            raise ProviderError(f"{exc}{hint}") from None
        yield


def _box_lock(cfg: LocalConfig, name: str) -> contextlib.AbstractContextManager[None]:
    """One create or destroy per box at a time; flock dies with its process, so a killed run never blocks."""
    return _locked(
        _lock_dir(cfg) / f"box-{name}.lock",
        BOX_LOCK_TIMEOUT,
        f"box {name}",
        " (another create or destroy of this box is running)",
    )


def _network_lock(cfg: LocalConfig) -> contextlib.AbstractContextManager[None]:
    """Serialises address allocation and the shared bridge/nft state between parallel runs."""
    return _locked(_lock_dir(cfg) / "network.lock", NETWORK_LOCK_TIMEOUT, "the local boxes' network")


# --------------------------------------------------------------------------- commands


def _which(tool: str) -> str | None:
    """Find a tool on PATH or in the sbin folders (root's PATH may lack them under `su` or sudo)."""
    path = os.environ.get("PATH", os.defpath) + os.pathsep + os.pathsep.join(_SBIN_DIRS)
    return shutil.which(tool, path=path)


def _run(
    args: Sequence[str],
    *,
    check: bool = True,
    input_text: str | None = None,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; a failure becomes a ProviderError naming the command and its stderr."""
    exe = _which(args[0])
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


# --------------------------------------------------------------------------- root filesystem


def _rootfs_complete(root: Path) -> bool:
    return (root / "usr/sbin/sshd").is_file() and (root / "usr/lib/systemd/systemd").is_file()


@contextlib.contextmanager
def _rootfs_lock(lock: Path, say: Progress) -> Iterator[None]:
    """Take the cache lock; say so when another run holds it (it is building: that takes a minute)."""
    what = "the root filesystem cache"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(lock, timeout=0, what=what))
        except MiabError:
            say("waiting for another miab-remote that is building the root filesystem")
            stack.enter_context(_locked(lock, ROOTFS_LOCK_TIMEOUT, what))
        yield


def _ensure_rootfs_cache(cfg: LocalConfig, say: Progress) -> Path:
    """The shared Debian 12 tree, built once under a lock into a temp dir then renamed (never half there)."""
    target = cfg.rootfs_cache
    if _rootfs_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.lock"
    with _rootfs_lock(lock, say):
        if target.exists():
            if _rootfs_complete(target):
                return target
            raise ProviderError(f"{target}: the root filesystem cache is incomplete; remove it and retry")
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # a build that was killed
        say("building the Debian 12 root filesystem (once, ~1 min)")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            tmp.chmod(0o755)
            env = dict(os.environ)
            if cfg.apt_proxy:
                env["http_proxy"] = cfg.apt_proxy
            _run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(ROOTFS_PACKAGES)}",
                    SUITE,
                    str(tmp),
                    cfg.mirror,
                ],
                timeout=1800,
                env=env,
            )
            if not _rootfs_complete(tmp):
                raise ProviderError(f"debootstrap finished but {tmp} lacks sshd or systemd")
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _tree_dir(root: Path, relative: str) -> Path:
    """A folder of the box's tree, made if missing; refused if any part of it is a symlink.

    We write as root on the host: a symlink in the tree (say /etc -> /etc) would send our writes
    to the host's own files.
    """
    folder = root
    for part in Path(relative).parts:
        folder = folder / part
        if folder.is_symlink():
            raise ProviderError(f"{folder} is a symlink in the box's tree; refusing to write through it")
        if not folder.exists():
            folder.mkdir(mode=0o755)
    return folder


def _put(root: Path, relative: str, data: str | bytes, mode: int) -> None:
    """Write a file inside the box's tree, never through a symlink."""
    folder = _tree_dir(root, str(Path(relative).parent))
    payload = data.encode() if isinstance(data, str) else data
    atomic_write(folder / Path(relative).name, payload, mode)  # replaces a symlink there, never follows it


def _security_mirror(mirror: str) -> str:
    """deb.debian.org/debian -> deb.debian.org/debian-security (also behind a path like apt-cacher-ng's)."""
    parts = urlsplit(mirror)
    path = parts.path.rstrip("/")
    path = path[: -len("debian")] + "debian-security" if path.endswith("/debian") else "/debian-security"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _prepare_rootfs(
    cfg: LocalConfig,
    root: Path,
    name: str,
    address: str,
    authorized_key: str,
    host_key: KeyPair,
    say: Progress,
) -> None:
    """Everything the box must have before its first boot: identity, DNS, apt, and the pinned SSH key."""
    short = name.split(".", 1)[0]
    _put(root, "etc/hostname", name + "\n", 0o644)
    hosts_names = name if short == name else f"{name} {short}"
    _put(
        root,
        "etc/hosts",
        f"127.0.0.1\tlocalhost\n{address}\t{hosts_names}\n\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
        0o644,
    )
    machine_id = secrets.token_hex(16) + "\n"
    _put(root, "etc/machine-id", machine_id, 0o444)
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_file() and not dbus_id.is_symlink():  # a copy, not the usual symlink: keep it in step
        _put(root, "var/lib/dbus/machine-id", machine_id, 0o444)

    # The local boxes' resolver (providers/local_dns.py) on the bridge: other boxes' zones, and the mirror.
    _put(root, "etc/resolv.conf", f"nameserver {cfg.gateway}\n", 0o644)

    security = _security_mirror(cfg.mirror)
    _put(
        root,
        "etc/apt/sources.list",
        f"deb {cfg.mirror} {SUITE} main\ndeb {cfg.mirror} {SUITE}-updates main\ndeb {security} {SUITE}-security main\n",
        0o644,
    )
    proxy_conf = "etc/apt/apt.conf.d/90miab-remote-proxy"
    if cfg.apt_proxy:
        _put(root, proxy_conf, f'Acquire::http::Proxy "{cfg.apt_proxy}";\n', 0o644)
    else:
        (_tree_dir(root, "etc/apt/apt.conf.d") / Path(proxy_conf).name).unlink(missing_ok=True)

    _put(root, "root/.ssh/authorized_keys", authorized_key + "\n", 0o600)
    _tree_dir(root, "root/.ssh").chmod(0o700)

    # Only the key generated here may be served: the cached tree's keys are shared by every box.
    ssh_dir = _tree_dir(root, "etc/ssh")
    for old in ssh_dir.glob("ssh_host_*"):
        old.unlink()
    _put(root, "etc/ssh/ssh_host_ed25519_key", host_key.private_openssh, 0o600)
    _put(root, "etc/ssh/ssh_host_ed25519_key.pub", host_key.public_line + "\n", 0o644)
    _put(
        root,
        "etc/ssh/sshd_config.d/miab-remote-hostkey.conf",
        "# Written by miab-remote: serve only the host key pinned in the operator's inventory.\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n",
        0o644,
    )
    (ssh_dir / "sshd_not_to_be_run").unlink(missing_ok=True)
    _enable_sshd(root)


def _enable_sshd(root: Path) -> None:
    """Start sshd at boot the way `systemctl enable ssh` would (no systemctl runs outside the box)."""
    if not any((root / p).is_file() for p in ("usr/lib/systemd/system/ssh.service", "lib/systemd/system/ssh.service")):
        raise ProviderError(f"{root}: openssh-server is not installed in the root filesystem")
    wants = _tree_dir(root, "etc/systemd/system/multi-user.target.wants")
    for link in (wants / "ssh.service", wants.parent / "sshd.service"):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/lib/systemd/system/ssh.service")


# --------------------------------------------------------------------------- host network


def _check_subnet_free(cfg: LocalConfig) -> None:
    """Refuse a subnet that overlaps one of the host's own routes: boxes would hijack real traffic."""
    out = _run(["ip", "-j", "-4", "route", "show"]).stdout
    try:
        routes = json.loads(out or "[]")
    except ValueError:
        raise ProviderError(f"could not read `ip -j -4 route show`: {out[:200]!r}") from None
    for route in routes:
        dst, dev = route.get("dst"), route.get("dev")
        if dst in (None, "default") or dev == cfg.bridge:
            continue
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv4Network) and net.overlaps(cfg.subnet):
            raise ProviderError(
                f"subnet {cfg.subnet} collides with the host's route `{dst} dev {dev}`; "
                "choose another one with MIAB_REMOTE_LOCAL_SUBNET"
            )


def _link_exists(dev: str) -> bool:
    return Path("/sys/class/net", dev).exists()


def _netns_exists(netns: str) -> bool:
    return Path("/run/netns", netns).exists()


def _bridge_is_ours(bridge: str) -> bool:
    try:
        return Path("/sys/class/net", bridge, "ifalias").read_text().strip() == BRIDGE_MARK
    except OSError:
        return False


def _ipv4_addresses(dev: str) -> list[str]:
    data = json.loads(_run(["ip", "-j", "-4", "addr", "show", "dev", dev]).stdout or "[]")
    return [f"{a['local']}/{a['prefixlen']}" for link in data for a in link.get("addr_info", []) if "local" in a]


def _nft_table_exists(cfg: LocalConfig) -> bool:
    tables = _run(["nft", "list", "tables", "ip"]).stdout.splitlines()
    return f"table ip {cfg.nft_table}" in (t.strip() for t in tables)


def _nft_script(cfg: LocalConfig) -> str:
    """Masquerade the boxes, and let them out only to DNS and http(s): they can never send mail outside."""
    out = f'ip saddr {cfg.subnet} oifname != "{cfg.bridge}"'
    tcp = ", ".join(str(p) for p in ALLOWED_TCP_PORTS)
    udp = ", ".join(str(p) for p in ALLOWED_UDP_PORTS)
    table = f"ip {cfg.nft_table}"
    # "add" then "delete" makes the replacement work whether or not the table exists, in one transaction.
    return (
        f"add table {table}\n"
        f"delete table {table}\n"
        f"table {table} {{\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    {out} masquerade\n"
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f"    {out} ct state established,related accept\n"
        f"    {out} tcp dport {{ {tcp} }} accept\n"
        f"    {out} udp dport {{ {udp} }} accept\n"
        f"    {out} counter drop\n"
        "  }\n"
        "}\n"
    )


def _ensure_host_network(cfg: LocalConfig) -> None:
    """Bridge with the gateway address, IP forwarding, and our nft table. Caller holds the network lock."""
    gateway = f"{cfg.gateway}/{cfg.subnet.prefixlen}"
    if not _link_exists(cfg.bridge):
        _run(["ip", "link", "add", cfg.bridge, "type", "bridge"])
        _run(["ip", "link", "set", "dev", cfg.bridge, "alias", BRIDGE_MARK])
    elif not Path("/sys/class/net", cfg.bridge, "bridge").is_dir():
        raise ProviderError(f"{cfg.bridge} exists on this machine and is not a bridge; set MIAB_REMOTE_LOCAL_BRIDGE")
    addresses = _ipv4_addresses(cfg.bridge)
    if gateway not in addresses:
        if addresses:
            raise ProviderError(
                f"bridge {cfg.bridge} already has {', '.join(addresses)}, not {gateway}: "
                "another configuration uses it; set MIAB_REMOTE_LOCAL_BRIDGE or MIAB_REMOTE_LOCAL_SUBNET"
            )
        _run(["ip", "addr", "add", gateway, "dev", cfg.bridge])
    _run(["ip", "link", "set", "dev", cfg.bridge, "up"])
    try:
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    except OSError as exc:
        raise ProviderError(f"could not enable IP forwarding (net.ipv4.ip_forward): {exc}") from None
    _run(["nft", "-f", "-"], input_text=_nft_script(cfg))


def _allocate_address(cfg: LocalConfig) -> ipaddress.IPv4Address:
    """The lowest address no box record claims. Caller holds the network lock."""
    used = {cfg.gateway}
    for box_dir in _box_dirs(cfg):
        record = _read_record(_paths(cfg, box_dir.name)) or {}
        with contextlib.suppress(ValueError, TypeError):
            used.add(ipaddress.IPv4Address(record.get("address")))
    for host in cfg.subnet.hosts():
        if host not in used:
            return host
    raise ProviderError(f"no free address left in {cfg.subnet}; destroy a box or use a larger subnet")


def _setup_box_network(cfg: LocalConfig, netns: str, veth: str, address: ipaddress.IPv4Address) -> None:
    """The box's own namespace with eth0 on the bridge and a default route via the host."""
    _remove_box_network([netns], [veth], [])  # leftovers of a box of the same name that nobody recorded
    _run(["ip", "netns", "add", netns])
    _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
    _run(["ip", "link", "set", "dev", veth, "master", cfg.bridge, "up"])
    _run(["ip", "-n", netns, "addr", "add", f"{address}/{cfg.subnet.prefixlen}", "dev", "eth0"])
    _run(["ip", "-n", netns, "link", "set", "dev", "lo", "up"])
    _run(["ip", "-n", netns, "link", "set", "dev", "eth0", "up"])
    _run(["ip", "-n", netns, "route", "add", "default", "via", str(cfg.gateway)])


def _remove_box_network(netns_names: Iterable[str], veth_names: Iterable[str], lines: list[str]) -> None:
    """Delete the namespaces, then any host veth that did not go with them."""
    for netns in netns_names:
        if _netns_exists(netns):
            _run(["ip", "netns", "delete", netns])
            lines.append(f"removed network namespace {netns}")
    for veth in veth_names:
        # The kernel drops the peer of a deleted namespace's eth0 asynchronously: give it a moment.
        deadline = time.monotonic() + 3.0
        while _link_exists(veth) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _link_exists(veth):
            proc = _run(["ip", "link", "delete", veth], check=False)
            if proc.returncode != 0 and _link_exists(veth):
                raise ProviderError(f"`ip link delete {veth}` failed: {proc.stderr.strip()}")
            lines.append(f"removed veth {veth}")


def _remove_shared_network(cfg: LocalConfig, lines: list[str]) -> None:
    """When no box is left on the bridge: our bridge and nft table go. Caller holds the network lock."""
    if _box_dirs(cfg):
        return
    if _link_exists(cfg.bridge) and _bridge_is_ours(cfg.bridge):
        _run(["ip", "link", "delete", cfg.bridge])
        lines.append(f"removed bridge {cfg.bridge} (no box left on it)")
    if _nft_table_exists(cfg):
        _run(["nft", "delete", "table", "ip", cfg.nft_table])
        lines.append(f"removed nft table ip {cfg.nft_table}")
    from miab_remote.providers import local_dns

    lines.extend(local_dns.stop(cfg))


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


def _nspawn_pids(paths: _BoxPaths, record: Mapping[str, Any]) -> list[int]:
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


def _container_inits(rootfs: Path, netns_names: Iterable[str] = ()) -> list[int]:
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


def _stop(paths: _BoxPaths, pids: list[int], netns_names: Sequence[str], lines: list[str], *, graceful: bool) -> None:
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
            lines.append(f"killed the box (systemd-nspawn pid {pid_list} did not stop within {STOP_TIMEOUT:.0f} s)")
        elif graceful:
            lines.append(f"stopped the box (systemd-nspawn pid {pid_list})")
        else:
            lines.append(f"killed the box (systemd-nspawn pid {pid_list})")
    orphans = _container_inits(rootfs, netns_names)
    if orphans:
        _signal(orphans, signal.SIGKILL)
        orphan_list = ", ".join(map(str, orphans))
        if _wait_gone(orphans, lambda pid: pid in _container_inits(rootfs, netns_names), KILL_TIMEOUT):
            raise ProviderError(f"the box's systemd (pid {orphan_list}) survived SIGKILL")
        lines.append(f"killed the box's systemd left running without its nspawn (pid {orphan_list})")


def _spawn(paths: _BoxPaths, name: str, netns: str) -> int:
    """Start nspawn detached (own session, stdin /dev/null, output to console.log); return its PID.

    It is started through `sh -c '... &'` so that it is not our child: the CLI may exit while the box runs,
    and no zombie or "still running" warning is left behind in a long-lived Python process.
    """
    nspawn = _which("systemd-nspawn")
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
    sh = _which("sh") or "/bin/sh"
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


def _console_tail(paths: _BoxPaths, lines: int = 30) -> str:
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


def _wait_for_ssh(paths: _BoxPaths, name: str, address: str, pid: int, timeout: float) -> None:
    """Booted means sshd answers with its banner; nspawn exiting or the deadline passing is a failure."""
    deadline = time.monotonic() + timeout
    while True:
        if not _is_nspawn_of(pid, paths.rootfs):
            raise ProviderError(
                f"systemd-nspawn exited while booting; last lines of its console:\n{_console_tail(paths)}"
            )
        if _ssh_banner(address):
            return
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


def _ours(value: object, prefix: str) -> list[str]:
    return [value] if isinstance(value, str) and re.fullmatch(re.escape(prefix) + "[0-9a-f]{10}", value) else []


def _teardown(
    cfg: LocalConfig,
    name: str,
    paths: _BoxPaths,
    record: Mapping[str, Any],
    lines: list[str],
    *,
    drop_shared: bool,
    graceful: bool,
) -> None:
    """Remove whatever exists of the box, in an order that works however much of it is already gone."""
    derived = _net_names(cfg, name)
    # Recorded names are used only if they have the shape we give them: never delete a host's eth0.
    netns_names = sorted({derived[0], *_ours(record.get("netns"), "miab-")})
    veth_names = sorted({derived[1], *_ours(record.get("veth"), "vmb-")})
    _stop(paths, _nspawn_pids(paths, record), netns_names, lines, graceful=graceful)
    _remove_box_network(netns_names, veth_names, lines)
    existed = paths.dir.exists()
    if existed:
        _rmtree(paths.rootfs)  # the slow part, outside the network lock; box.json still holds the address
    with _network_lock(cfg):
        if existed:
            _rmtree(paths.dir)
            lines.append(f"removed {paths.dir} (root filesystem, record and console log)")
        if drop_shared:
            _remove_shared_network(cfg, lines)
