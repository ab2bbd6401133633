"""The local provider: a real Debian box (13 or 12) on this Linux machine, for trying and testing the tool.

A box is systemd (PID 1) inside systemd-nspawn, in a network namespace of its own, joined to the
other boxes by a bridge, reaching only the Debian mirror (and DNS) through NAT. Its SSH host key is
generated here before boot, so the very first connection is already pinned. A seeded box (`create_seeded`,
what the tests' stand-in clouds make) is booted instead by cloud-init from the user data a cloud would get.

Kernel state (namespaces, veth pairs, the bridge, nft tables) and files under /var outlive the
processes that made them, so `create` cleans up after a dead box of the same name, and `destroy`
works on a box that is half gone. Everything a box owns is recorded in STATE_DIR/NAME/box.json.

The modules, by concern: config (LocalConfig, names), system (tools, locks), rootfs (the Debian tree),
network (bridge, NAT, namespaces, addresses), resolver (the boxes' DNS), machine (nspawn, records,
teardown). This module puts them together as the `Provider` the CLI calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miab_remote.errors import MiabError, ProviderError
from miab_remote.fleet import peers
from miab_remote.fleet.model import Host
from miab_remote.mail import dnssec, dnszones
from miab_remote.profiles import OSProfile
from miab_remote.providers.base import BoxStatus, CreatedBox, Journal, Progress
from miab_remote.providers.local import machine, network, resolver, rootfs, system
from miab_remote.providers.local.config import (
    DEFAULT_IMAGE,
    IMAGES,
    LocalConfig,
    check_authorized_key,
    check_image,
    check_name,
)
from miab_remote.transport.sshkeys import generate_ed25519

__all__ = ["DEFAULT_IMAGE", "IMAGES", "LocalConfig", "LocalProvider", "SeededBox"]


def _quiet(_line: str) -> None:
    """The progress callback when the caller wants none."""


_Prepare = Callable[[LocalConfig, OSProfile, Path, str, str, Progress], None]
"""Writes a box's own part into its copied tree before boot: (config, profile, tree, name, address, progress)."""


@dataclass(frozen=True)
class SeededBox:
    """A box cloud-init booted: where it is and what it runs (its host key is whatever the user data gave)."""

    name: str
    address: str
    os: str
    ipv6: str | None = None  # its address on the bridge's IPv6 /64


SSHD_GRACE = 15.0  # sshd is ordered after cloud-init's network stage: once cloud-init is done, it is up or broken


def _wait_for_cloud_init(paths: machine.BoxPaths, name: str, address: str, pid: int, timeout: float) -> None:
    """sshd's banner, then cloud-init's result (read in the box's tree); either failing names cloud-init's logs."""
    deadline = time.monotonic() + timeout
    finished: list[float] = []

    def sshd_not_coming() -> str | None:
        if not finished and rootfs.cloud_init_result(paths.rootfs) is not None:
            finished.append(time.monotonic())
        if finished and time.monotonic() - finished[0] > SSHD_GRACE:
            return f"cloud-init has finished but sshd on {address}:22 did not answer within {SSHD_GRACE:.0f} s"
        return None

    try:
        machine.wait_for_ssh(paths, name, address, pid, timeout, give_up=sshd_not_coming)
        while (errors := rootfs.cloud_init_result(paths.rootfs)) is None:
            if time.monotonic() >= deadline:
                raise ProviderError(f"cloud-init did not finish within {timeout:.0f} s")
            time.sleep(0.3)
        if errors:
            raise ProviderError("cloud-init reported errors: " + "; ".join(errors))
    except ProviderError as exc:
        raise ProviderError(f"{exc}\ncloud-init's logs in the box:\n{rootfs.cloud_init_logs(paths.rootfs)}") from exc


class LocalProvider:
    """Boxes on this machine. Without a `config`, each call reads it from the MIAB_REMOTE_* variables
    (so a bad variable is reported when it is used, by `validate_config` first)."""

    name = "local"
    images = tuple(IMAGES)
    default_image = DEFAULT_IMAGE

    def __init__(self, config: LocalConfig | None = None) -> None:
        self._config = config

    def config(self) -> LocalConfig:
        """The configuration given, or the environment's (an InputError naming a bad variable)."""
        return self._config or LocalConfig.from_env()

    def check_name(self, name: str) -> str:
        return check_name(name)

    def check_image(self, image: str) -> str:
        return check_image(image).id

    def validate_config(self) -> None:
        self.config().validate()

    def check_requirements(self) -> None:
        system.check_requirements()

    def preflight(self, names: Sequence[str], image: str | None) -> None:
        """Nothing to ask: check_requirements and each create's own checks cover this machine."""

    def create(
        self,
        name: str,
        authorized_key: str,
        progress: Progress | None = None,
        image: str = DEFAULT_IMAGE,
        journal: Journal | None = None,
        boot_timeout: float = 90.0,
    ) -> CreatedBox:
        """Build, network and boot a Debian box of release `image`; return once its sshd sends a banner."""
        authorized_key = check_authorized_key(authorized_key)
        host_key = generate_ed25519(f"root@{check_name(name)}")

        def prepare(cfg: LocalConfig, profile: OSProfile, root: Path, box: str, address: str, say: Progress) -> None:
            say("writing hostname, keys and apt sources")
            rootfs.prepare(cfg, profile, root, box, address, authorized_key, host_key, say)

        made = self._make(name, image, progress, boot_timeout, prepare, {"host_key_public": host_key.public_line})
        return CreatedBox(
            name=made.name,
            address=made.address,
            host_key_public=host_key.public_line,
            os=made.os,
            resolvers=(str(self.config().gateway),),
            ipv6=made.ipv6,
        )

    def create_seeded(
        self,
        name: str,
        user_data: str,
        image: str = DEFAULT_IMAGE,
        progress: Progress | None = None,
        boot_timeout: float = 180.0,
        public_keys: Sequence[str] = (),
    ) -> SeededBox:
        """A box booted by cloud-init from a NoCloud seed holding `user_data` byte for byte, as a cloud's server is:
        its hostname, host keys, users and authorized keys are what the user data asks. Returns once sshd sends
        a banner and cloud-init has finished; a cloud-init that fails (or never lets sshd start) is a
        ProviderError with the tail of its logs, and leaves nothing behind. `public_keys`: the account's keys a
        cloud's metadata would hand over (one public key line each)."""
        keys = [check_authorized_key(key) for key in public_keys]

        def prepare(cfg: LocalConfig, profile: OSProfile, root: Path, box: str, _address: str, say: Progress) -> None:
            say("writing the NoCloud seed and apt sources")
            rootfs.prepare_seeded(cfg, profile, root, box, user_data, keys)

        return self._make(name, image, progress, boot_timeout, prepare, {"seeded": True}, cloud_init=True)

    def _make(
        self,
        name: str,
        image: str,
        progress: Progress | None,
        boot_timeout: float,
        prepare: _Prepare,
        record_extra: dict[str, Any],
        cloud_init: bool = False,
    ) -> SeededBox:
        """The one way a box is made: clean a dead namesake, claim an address, copy the cached tree, let `prepare`
        write into it, network it, boot it, wait; a failure undoes everything."""
        cfg = self.config()
        cfg.validate()
        name = check_name(name)
        profile = check_image(image)
        say: Progress = progress or _quiet
        system.check_requirements()
        paths = machine.box_paths(cfg, name)

        netns, veth = network.net_names(cfg, name)
        with machine.box_lock(cfg, name):
            old_record = machine.read_record(paths)
            if old_record is not None or paths.dir.exists() or network.netns_exists(netns) or network.link_exists(veth):
                if machine.nspawn_pids(paths, old_record or {}):
                    raise ProviderError(f"already exists and is running; destroy it first (miab-remote destroy {name})")
                say("cleaning up what a dead box of the same name left behind")
                machine.teardown(cfg, name, paths, old_record or {}, [], drop_shared=False, graceful=False)

            record: dict[str, Any] = {}
            claimed = False  # from here on, what exists is ours to undo
            try:
                with network.network_lock(cfg):
                    network.check_subnet_free(cfg)
                    address = network.allocate_address(cfg, machine.recorded_addresses(cfg))
                    paths.dir.mkdir(mode=0o700)
                    claimed = True
                    record = {
                        "name": name,
                        "os": profile.id,
                        "address": str(address),
                        "prefixlen": cfg.subnet.prefixlen,
                        "gateway": str(cfg.gateway),
                        "ipv6": str(cfg.ipv6_of(address)),
                        "prefixlen6": cfg.subnet6.prefixlen,
                        "bridge": cfg.bridge,
                        "nft_table": cfg.nft_table,
                        "netns": netns,
                        "veth": veth,
                        "rootfs": str(paths.rootfs),
                        **record_extra,
                        "pid": None,
                        "created": machine.now(),
                    }
                    machine.write_record(paths, record)
                    say(
                        f"preparing bridge {cfg.bridge} ({cfg.gateway}/{cfg.subnet.prefixlen}, "
                        f"{cfg.gateway6}/{cfg.subnet6.prefixlen}) and NAT"
                    )
                    network.ensure_host_network(cfg)
                    resolver.ensure(cfg)

                cache = rootfs.ensure_cache(cfg, profile, say, cloud_init=cloud_init)
                say("copying the root filesystem")
                rootfs.copy_tree(cache, paths.rootfs)
                prepare(cfg, profile, paths.rootfs, name, str(address), say)
                say(f"connecting the box to {cfg.bridge} as {address} and {cfg.ipv6_of(address)}")
                network.setup_box_network(cfg, netns, veth, address)
                say("booting")
                pid = machine.spawn(paths, name, netns)
                record["pid"] = pid
                record["started"] = machine.now()
                machine.write_record(paths, record)
                say(f"waiting for SSH on {address}" + (" and for cloud-init" if cloud_init else ""))
                if cloud_init:
                    _wait_for_cloud_init(paths, name, str(address), pid, boot_timeout)
                else:
                    machine.wait_for_ssh(paths, name, str(address), pid, boot_timeout)
            except BaseException as exc:
                # Leave nothing half made: a failed create undoes itself.
                if claimed:
                    try:
                        machine.teardown(cfg, name, paths, record, [], drop_shared=True, graceful=False)
                    except Exception as cleanup:
                        if isinstance(exc, MiabError):
                            raise ProviderError(
                                f"{exc}\n(cleaning up also failed: {cleanup}; run `miab-remote destroy {name}`)"
                            ) from exc
                if isinstance(exc, OSError):
                    raise ProviderError(str(exc)) from exc
                raise

        say(f"up at {address}")
        return SeededBox(name=name, address=str(address), os=profile.id, ipv6=str(cfg.ipv6_of(address)))

    def destroy(self, name: str, node: Mapping[str, str] | None = None) -> list[str]:
        """Stop the box and remove all it owns; idempotent. Returns one human line per thing removed."""
        cfg = self.config()
        cfg.validate()
        name = check_name(name)
        system.check_requirements()
        paths = machine.box_paths(cfg, name)
        lines: list[str] = []
        with machine.box_lock(cfg, name):
            try:
                machine.teardown(
                    cfg, name, paths, machine.read_record(paths) or {}, lines, drop_shared=True, graceful=True
                )
            except OSError as exc:
                raise ProviderError(str(exc)) from exc
        if machine.box_dirs(cfg) and resolver.publish(cfg, name, [], []):
            lines.append("withdrew its zones from the local resolver")
        return lines or ["nothing to remove"]

    def status(self, name: str) -> BoxStatus:
        """Return "running" (its nspawn is alive), "stopped" (files left, nothing running) or "absent"."""
        cfg = self.config()
        name = check_name(name)
        paths = machine.box_paths(cfg, name)
        record = machine.read_record(paths)
        if record is None and not paths.dir.exists():
            return "absent"
        return "running" if machine.nspawn_pids(paths, record or {}) else "stopped"

    def list_boxes(self) -> list[str]:
        """Names of the boxes that have a folder in the state dir (running or not)."""
        return [path.name for path in machine.box_dirs(self.config())]

    def before_deploy(self, host: Host) -> list[str]:
        """As after, but the DS records published stay: the box's ACME order (during the deploy) needs its
        names delegated already; its keys are read once it is deployed."""
        return self._publish(host, with_keys=False)

    def after_deploy(self, host: Host) -> list[str]:
        """The registrar's part: the local resolver delegates the box's zones to its nsd (and its [dns]
        secondaries') and answers their DS records, as a registrar does once the operator entered them
        (`miab-remote dns`); and the cloud's: it answers the reverse lookups of the box's addresses with its
        hostname."""
        return self._publish(host, with_keys=True)

    def _publish(self, host: Host, with_keys: bool) -> list[str]:
        serves = host.serves_dns
        zones = dnszones.zones_of(host) if serves else []
        addresses = [host.address, *(peer.address for peer in peers.secondaries_of(host))]
        reverse = {ip: host.hostname for ip in dnszones.addresses(host) if ip}
        ds = None  # keep the DS records published: before a deploy, or for a Host without a box to ask
        if with_keys and host.has_box:
            ds = {zone: key.ds for zone, key in dnssec.keys_from_box(host).items()} if serves else {}
        if resolver.publish(self.config(), host.name, zones, addresses, ds, reverse):
            return [
                f"local resolver now delegates {', '.join(zones) or 'nothing'} to {', '.join(addresses)}, "
                f"and answers PTR {host.hostname} for {' and '.join(reverse)}"
            ]
        return []

    def public_resolvers(self) -> tuple[str, ...]:
        """Where the laptop asks the local boxes' internet (their delegations and reverse DNS): the bridge's
        resolver, which this machine, the laptop of its boxes, reaches."""
        return (str(self.config().gateway),)
