"""The root filesystem of a local box: one Debian tree per release built by debootstrap and cached, copied per
box, then given the box's identity before its first boot (hostname, machine id, resolver, apt sources,
the operator's key and the host key generated here, so the first connection is already pinned).

A seeded box (a cloud's stand-in) comes from a second cache per release with cloud-init installed, and
gets only the machine's part here (machine id, resolver, apt); its identity and SSH keys are cloud-init's
work, from the NoCloud seed that holds the user data as given."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from miab_remote.errors import MiabError, ProviderError
from miab_remote.fsutil import atomic_write, file_lock
from miab_remote.profiles import OSProfile
from miab_remote.providers.base import Progress
from miab_remote.providers.local.config import LocalConfig
from miab_remote.providers.local.system import locked, run
from miab_remote.transport.sshkeys import KeyPair

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
# A seeded box's tree adds cloud-init (25.x talks to its main process through `nc -U`: netcat-openbsd;
# debootstrap resolves no virtual package: python3-cffi-backend provides the cffi ABI python3-cryptography needs).
CLOUD_INIT_PACKAGES = ("cloud-init", "netcat-openbsd", "python3-cffi-backend")
# cloud-init reads only the seed folder, and leaves the network to the local provider (set from outside).
CLOUD_INIT_CONFIG = (
    "# Written by miab-remote: a local box seeded like a cloud's server. The seed folder is the only\n"
    "# datasource; the network is set up from outside the box, not by cloud-init.\n"
    "datasource_list: [ NoCloud, None ]\n"
    "network: {config: disabled}\n"
)
CLOUD_INIT_LOCALE = "en_US.UTF-8"
CLOUD_INIT_CONFIG_FILE = "etc/cloud/cloud.cfg.d/90-miab-remote-local.cfg"
NOCLOUD_SEED = "var/lib/cloud/seed/nocloud"
CLOUD_INIT_LOGS = ("var/log/cloud-init.log", "var/log/cloud-init-output.log")
ROOTFS_LOCK_TIMEOUT = 1800.0  # a parallel create waits for the one that is building the cache


def _rootfs_complete(root: Path, cloud_init: bool = False) -> bool:
    base = (root / "usr/sbin/sshd").is_file() and (root / "usr/lib/systemd/systemd").is_file()
    return base and (not cloud_init or (root / CLOUD_INIT_CONFIG_FILE).is_file())


@contextlib.contextmanager
def _rootfs_lock(lock: Path, say: Progress) -> Iterator[None]:
    """Take the cache lock; say so when another run holds it (it is building: that takes a minute)."""
    what = "the root filesystem cache"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(lock, timeout=0, what=what))
        except MiabError:
            say("waiting for another miab-remote that is building the root filesystem")
            stack.enter_context(locked(lock, ROOTFS_LOCK_TIMEOUT, what))
        yield


def ensure_cache(cfg: LocalConfig, profile: OSProfile, say: Progress, cloud_init: bool = False) -> Path:
    """The shared tree of one release, built once under a lock into a temp dir then renamed (never half there).

    `cloud_init`: the tree of seeded boxes (cache RELEASE+cloud-init, beside the plain one), cloud-init installed.
    """
    target = cfg.rootfs_cache(profile.id + ("+cloud-init" if cloud_init else ""))
    if _rootfs_complete(target, cloud_init):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.lock"
    with _rootfs_lock(lock, say):
        if target.exists():
            if _rootfs_complete(target, cloud_init):
                return target
            raise ProviderError(f"{target}: the root filesystem cache is incomplete; remove it and retry")
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # a build that was killed
        what = profile.description + (" with cloud-init" if cloud_init else "")
        say(f"building the {what} root filesystem (once, ~1 min)")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            tmp.chmod(0o755)
            env = dict(os.environ)
            packages = ROOTFS_PACKAGES + (CLOUD_INIT_PACKAGES if cloud_init else ())
            if cfg.apt_proxy:
                env["http_proxy"] = cfg.apt_proxy
            run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(packages)}",
                    profile.codename,
                    str(tmp),
                    cfg.mirror,
                ],
                timeout=1800,
                env=env,
            )
            if cloud_init:
                _settle_cloud_init(tmp)
            if not _rootfs_complete(tmp, cloud_init):
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


def security_mirror(mirror: str) -> str:
    """deb.debian.org/debian -> deb.debian.org/debian-security (also behind a path like apt-cacher-ng's)."""
    parts = urlsplit(mirror)
    path = parts.path.rstrip("/")
    path = path[: -len("debian")] + "debian-security" if path.endswith("/debian") else "/debian-security"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def prepare(
    cfg: LocalConfig,
    profile: OSProfile,
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
    _put(root, "etc/hosts", f"127.0.0.1\tlocalhost\n{address}\t{hosts_names}\n\n{_HOSTS_IPV6}", 0o644)
    _machine_part(cfg, profile, root)

    _put(root, "root/.ssh/authorized_keys", authorized_key + "\n", 0o600)
    _tree_dir(root, "root/.ssh").chmod(0o700)

    # Only the key generated here may be served: the cached tree's keys are shared by every box.
    _remove_host_keys(root)
    _put(root, "etc/ssh/ssh_host_ed25519_key", host_key.private_openssh, 0o600)
    _put(root, "etc/ssh/ssh_host_ed25519_key.pub", host_key.public_line + "\n", 0o644)
    _put(
        root,
        "etc/ssh/sshd_config.d/miab-remote-hostkey.conf",
        "# Written by miab-remote: serve only the host key pinned in the operator's inventory.\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n",
        0o644,
    )
    _enable_sshd(root)


def prepare_seeded(
    cfg: LocalConfig, profile: OSProfile, root: Path, name: str, user_data: str, public_keys: Sequence[str] = ()
) -> None:
    """A seeded box before its first boot: the machine's part, and the NoCloud seed with `user_data` byte for
    byte. No hostname, host key or authorized key: cloud-init makes those from the user data, as on a cloud.

    `public_keys` go into the seed's meta-data, where a cloud's metadata service puts the keys registered with
    the account that a create names (cloud-init adds them to the default user and root, as the user data says)."""
    _put(root, "etc/hosts", f"127.0.0.1\tlocalhost\n\n{_HOSTS_IPV6}", 0o644)
    _machine_part(cfg, profile, root)
    _remove_host_keys(root)
    for state in ("instance", "instances", "data", "sem"):  # a first boot: no earlier instance's state
        path = root / "var/lib/cloud" / state
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
    _put(root, f"{NOCLOUD_SEED}/user-data", user_data.encode(), 0o600)
    meta = f"instance-id: iid-{secrets.token_hex(8)}\nlocal-hostname: {name}\n"
    if public_keys:
        meta += "public-keys:\n" + "".join(f"  - {json.dumps(key)}\n" for key in public_keys)  # JSON is YAML
    _put(root, f"{NOCLOUD_SEED}/meta-data", meta, 0o600)
    _enable_sshd(root)


def cloud_init_logs(root: Path, lines: int = 25) -> str:
    """The tail of cloud-init's logs in a seeded box's tree, for the error of a box that did not come up."""
    parts: list[str] = []
    for log in CLOUD_INIT_LOGS:
        try:
            text = (root / log).read_text(errors="replace")
        except OSError:
            parts.append(f"  /{log}: (none)")
            continue
        tail = [line for line in text.splitlines() if line.strip()][-lines:]
        parts.append(f"  /{log}:\n" + "\n".join(f"    {line}" for line in tail))
    return "\n".join(parts)


def cloud_init_result(root: Path) -> list[str] | None:
    """None while cloud-init has not finished (its final stage writes result.json), else the errors it reports."""
    try:
        data = json.loads((root / "var/lib/cloud/data/result.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return [f"unreadable result.json: {exc}"]
    errors = data.get("v1", {}).get("errors") if isinstance(data, dict) else None
    return [str(e) for e in errors] if isinstance(errors, list) else ["result.json without v1.errors"]


_HOSTS_IPV6 = "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"


def _machine_part(cfg: LocalConfig, profile: OSProfile, root: Path) -> None:
    """What this machine gives every box, plain or seeded: a fresh machine id, its resolver and apt sources."""
    machine_id = secrets.token_hex(16) + "\n"
    _put(root, "etc/machine-id", machine_id, 0o444)
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_file() and not dbus_id.is_symlink():  # a copy, not the usual symlink: keep it in step
        _put(root, "var/lib/dbus/machine-id", machine_id, 0o444)

    # The local boxes' resolver (resolver.py) on the bridge: other boxes' zones, and the mirror.
    _put(root, "etc/resolv.conf", f"nameserver {cfg.gateway}\n", 0o644)

    security = security_mirror(cfg.mirror)
    suite = profile.codename
    _put(
        root,
        "etc/apt/sources.list",
        f"deb {cfg.mirror} {suite} main\ndeb {cfg.mirror} {suite}-updates main\ndeb {security} {suite}-security main\n",
        0o644,
    )
    proxy_conf = "etc/apt/apt.conf.d/90miab-remote-proxy"
    if cfg.apt_proxy:
        _put(root, proxy_conf, f'Acquire::http::Proxy "{cfg.apt_proxy}";\n', 0o644)
    else:
        (_tree_dir(root, "etc/apt/apt.conf.d") / Path(proxy_conf).name).unlink(missing_ok=True)


def _remove_host_keys(root: Path) -> None:
    """The cached tree's host keys, if any, would be shared by every box made from it."""
    for old in _tree_dir(root, "etc/ssh").glob("ssh_host_*"):
        old.unlink()


def _settle_cloud_init(root: Path) -> None:
    """A fresh cloud-init tree: only the seed as datasource, no network config, no state, no host keys.

    And the locale cloud-init sets by default (en_US.UTF-8) generated, as in Debian's cloud images: bookworm's
    cloud-init runs Debian's `locale-gen`, which makes only what /etc/locale.gen lists, then fails on the rest.
    """
    _put(root, CLOUD_INIT_CONFIG_FILE, CLOUD_INIT_CONFIG, 0o644)
    _put(root, "etc/hostname", "localhost\n", 0o644)  # debootstrap copied this machine's; cloud-init sets the box's
    _put(root, "etc/locale.gen", f"{CLOUD_INIT_LOCALE} UTF-8\n", 0o644)
    run(["chroot", str(root), "locale-gen"], timeout=300)
    _remove_host_keys(root)
    state = root / "var/lib/cloud"
    if state.exists():
        shutil.rmtree(state)


def _enable_sshd(root: Path) -> None:
    """Start sshd at boot the way `systemctl enable ssh` would (no systemctl runs outside the box)."""
    if not any((root / p).is_file() for p in ("usr/lib/systemd/system/ssh.service", "lib/systemd/system/ssh.service")):
        raise ProviderError(f"{root}: openssh-server is not installed in the root filesystem")
    (_tree_dir(root, "etc/ssh") / "sshd_not_to_be_run").unlink(missing_ok=True)
    wants = _tree_dir(root, "etc/systemd/system/multi-user.target.wants")
    for link in (wants / "ssh.service", wants.parent / "sshd.service"):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/lib/systemd/system/ssh.service")


def copy_tree(cache: Path, rootfs: Path) -> None:
    """The box's own copy of the cached tree (a reflink where the file system allows it)."""
    run(["cp", "-a", "--reflink=auto", str(cache), str(rootfs)], timeout=900)
