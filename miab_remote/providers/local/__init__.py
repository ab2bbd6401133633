"""The local provider: a real Debian box (13 or 12) on this Linux machine, for trying and testing the tool.

A box is systemd (PID 1) inside systemd-nspawn, in a network namespace of its own, joined to the
other boxes by a bridge, reaching only the Debian mirror (and DNS) through NAT. Its SSH host key is
generated here before boot, so the very first connection is already pinned.

Kernel state (namespaces, veth pairs, the bridge, nft tables) and files under /var outlive the
processes that made them, so `create` cleans up after a dead box of the same name, and `destroy`
works on a box that is half gone. Everything a box owns is recorded in STATE_DIR/NAME/box.json.

The modules, by concern: config (LocalConfig, names), system (tools, locks), rootfs (the Debian tree),
network (bridge, NAT, namespaces, addresses), resolver (the boxes' DNS), machine (nspawn, records,
teardown). This module puts them together as the `Provider` the CLI calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from miab_remote.errors import MiabError, ProviderError
from miab_remote.fleet.model import Host
from miab_remote.mail import dnszones
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

__all__ = ["DEFAULT_IMAGE", "IMAGES", "LocalConfig", "LocalProvider"]


def _quiet(_line: str) -> None:
    """The progress callback when the caller wants none."""


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
        cfg = self.config()
        cfg.validate()
        name = check_name(name)
        profile = check_image(image)
        authorized_key = check_authorized_key(authorized_key)
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

            host_key = generate_ed25519(f"root@{name}")
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
                        "bridge": cfg.bridge,
                        "nft_table": cfg.nft_table,
                        "netns": netns,
                        "veth": veth,
                        "rootfs": str(paths.rootfs),
                        "host_key_public": host_key.public_line,
                        "pid": None,
                        "created": machine.now(),
                    }
                    machine.write_record(paths, record)
                    say(f"preparing bridge {cfg.bridge} ({cfg.gateway}/{cfg.subnet.prefixlen}) and NAT")
                    network.ensure_host_network(cfg)
                    resolver.ensure(cfg)

                cache = rootfs.ensure_cache(cfg, profile, say)
                say("copying the root filesystem")
                rootfs.copy_tree(cache, paths.rootfs)
                say("writing hostname, keys and apt sources")
                rootfs.prepare(cfg, profile, paths.rootfs, name, str(address), authorized_key, host_key, say)
                say(f"connecting the box to {cfg.bridge} as {address}")
                network.setup_box_network(cfg, netns, veth, address)
                say("booting")
                pid = machine.spawn(paths, name, netns)
                record["pid"] = pid
                record["started"] = machine.now()
                machine.write_record(paths, record)
                say(f"waiting for SSH on {address}")
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
        return CreatedBox(
            name=name,
            address=str(address),
            host_key_public=host_key.public_line,
            os=profile.id,
            resolvers=(str(cfg.gateway),),
        )

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
        if machine.box_dirs(cfg) and resolver.publish(cfg, name, [], ""):
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

    def after_deploy(self, host: Host) -> list[str]:
        """The registrar's part: the local resolver delegates the box's zones to its nsd."""
        serves = host.options["dns"] == "nsd" and "nsd" in host.recipes
        zones = dnszones.zones_of(host) if serves else []
        if resolver.publish(self.config(), host.name, zones, host.address):
            return [f"local resolver now delegates {', '.join(zones) or 'nothing'} to {host.address}"]
        return []
