"""The local boxes' network: one bridge with this machine as gateway, NAT out through our own nft table
(DNS and http(s) only: a box can never send mail outside), and per box a network namespace joined to
the bridge by a veth pair. Also the address allocation, under the network lock the parallel runs share.

Kernel state outlives the processes that made it, so every removal here works on what is half gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from miab_remote.errors import ProviderError
from miab_remote.providers.local.config import LocalConfig
from miab_remote.providers.local.system import lock_dir, locked, run

# Set as the bridge's ifalias when we create it, so destroy never removes a bridge someone else made.
BRIDGE_MARK = "miab-remote"
# Boxes may reach the outside only on these ports (apt over http/https, DNS): never SMTP or anything else.
ALLOWED_TCP_PORTS = (53, 80, 443)
ALLOWED_UDP_PORTS = (53,)
NETWORK_LOCK_TIMEOUT = 120.0


def network_lock(cfg: LocalConfig) -> contextlib.AbstractContextManager[None]:
    """Serialises address allocation and the shared bridge/nft state between parallel runs."""
    return locked(lock_dir(cfg) / "network.lock", NETWORK_LOCK_TIMEOUT, "the local boxes' network")


def net_names(cfg: LocalConfig, name: str) -> tuple[str, str]:
    """Namespace and host veth names: short (interfaces: 15 chars at most), stable per bridge and name."""
    digest = hashlib.sha256(f"{cfg.bridge}/{name}".encode()).hexdigest()[:10]
    return f"miab-{digest}", f"vmb-{digest}"


def box_net_names(cfg: LocalConfig, name: str, record: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Every namespace and host veth the box may own: the derived names, and the recorded ones if they
    have the shape we give them (never delete a host's eth0 because a record says so)."""
    derived = net_names(cfg, name)
    netns_names = sorted({derived[0], *_ours(record.get("netns"), "miab-")})
    veth_names = sorted({derived[1], *_ours(record.get("veth"), "vmb-")})
    return netns_names, veth_names


def _ours(value: object, prefix: str) -> list[str]:
    return [value] if isinstance(value, str) and re.fullmatch(re.escape(prefix) + "[0-9a-f]{10}", value) else []


def check_subnet_free(cfg: LocalConfig) -> None:
    """Refuse a subnet (IPv4 or IPv6) that overlaps one of the host's own routes: boxes would hijack real traffic."""
    for family, subnet, variable in (("-4", cfg.subnet, "SUBNET"), ("-6", cfg.subnet6, "SUBNET6")):
        for dst, dev in _routes(family):
            if dst in (None, "default") or dev == cfg.bridge:
                continue
            try:
                net = ipaddress.ip_network(dst, strict=False)
            except ValueError:
                continue
            if net.version == subnet.version and net.overlaps(subnet):
                raise ProviderError(
                    f"subnet {subnet} collides with the host's route `{dst} dev {dev}`; "
                    f"choose another one with MIAB_REMOTE_LOCAL_{variable}"
                )


def _routes(family: str) -> list[tuple[str | None, str | None]]:
    """(destination, device) of the host's routes of one family (`ip -j -4|-6 route show`)."""
    out = run(["ip", "-j", family, "route", "show"]).stdout
    try:
        routes = json.loads(out or "[]")
    except ValueError:
        raise ProviderError(f"could not read `ip -j {family} route show`: {out[:200]!r}") from None
    return [(route.get("dst"), route.get("dev")) for route in routes]


def link_exists(dev: str) -> bool:
    return Path("/sys/class/net", dev).exists()


def netns_exists(netns: str) -> bool:
    return Path("/run/netns", netns).exists()


def _bridge_is_ours(bridge: str) -> bool:
    try:
        return Path("/sys/class/net", bridge, "ifalias").read_text().strip() == BRIDGE_MARK
    except OSError:
        return False


def _addresses(dev: str, family: str = "-4") -> list[str]:
    """The device's addresses of one family (IPv6: global scope only, not its link-local one)."""
    data = json.loads(run(["ip", "-j", family, "addr", "show", "dev", dev]).stdout or "[]")
    return [
        f"{a['local']}/{a['prefixlen']}"
        for link in data
        for a in link.get("addr_info", [])
        if "local" in a and a.get("scope") != "link"
    ]


def nft_table_exists(cfg: LocalConfig) -> bool:
    tables = run(["nft", "list", "tables", "ip"]).stdout.splitlines()
    return f"table ip {cfg.nft_table}" in (t.strip() for t in tables)


def _nft_script(cfg: LocalConfig) -> str:
    """Masquerade the boxes, and let them out only to DNS and http(s): they can never send mail outside;
    over IPv6 they are not let out at all."""
    out = f'ip saddr {cfg.subnet} oifname != "{cfg.bridge}"'
    tcp = ", ".join(str(p) for p in ALLOWED_TCP_PORTS)
    udp = ", ".join(str(p) for p in ALLOWED_UDP_PORTS)
    table, table6 = f"ip {cfg.nft_table}", f"ip6 {cfg.nft_table}"
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
        # IPv6 reaches the other boxes and this machine only: nothing is forwarded to or from the boxes' /64
        # beyond the bridge, whatever this machine's own forwarding says (a box may add its own route).
        f"add table {table6}\n"
        f"delete table {table6}\n"
        f"table {table6} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f'    ip6 saddr {cfg.subnet6} oifname != "{cfg.bridge}" counter drop\n'
        f'    ip6 daddr {cfg.subnet6} iifname != "{cfg.bridge}" counter drop\n'
        "  }\n"
        "}\n"
    )


def ensure_host_network(cfg: LocalConfig) -> None:
    """Bridge with the gateway address, IP forwarding, and our nft table. Caller holds the network lock."""
    gateway = f"{cfg.gateway}/{cfg.subnet.prefixlen}"
    if not link_exists(cfg.bridge):
        run(["ip", "link", "add", cfg.bridge, "type", "bridge"])
        run(["ip", "link", "set", "dev", cfg.bridge, "alias", BRIDGE_MARK])
    elif not Path("/sys/class/net", cfg.bridge, "bridge").is_dir():
        raise ProviderError(f"{cfg.bridge} exists on this machine and is not a bridge; set MIAB_REMOTE_LOCAL_BRIDGE")
    gateway6 = f"{cfg.gateway6}/{cfg.subnet6.prefixlen}"
    for family, want, variable in (("-4", gateway, "SUBNET"), ("-6", gateway6, "SUBNET6")):
        addresses = _addresses(cfg.bridge, family)
        if want in addresses:
            continue
        if addresses:
            raise ProviderError(
                f"bridge {cfg.bridge} already has {', '.join(addresses)}, not {want}: "
                f"another configuration uses it; set MIAB_REMOTE_LOCAL_BRIDGE or MIAB_REMOTE_LOCAL_{variable}"
            )
        # nodad: the address is usable at once (duplicate address detection would hold it back a second or two).
        run(["ip", "addr", "add", want, "dev", cfg.bridge, *(["nodad"] if family == "-6" else [])])
    run(["ip", "link", "set", "dev", cfg.bridge, "up"])
    try:
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    except OSError as exc:
        raise ProviderError(f"could not enable IP forwarding (net.ipv4.ip_forward): {exc}") from None
    run(["nft", "-f", "-"], input_text=_nft_script(cfg))


def allocate_address(cfg: LocalConfig, taken: Iterable[ipaddress.IPv4Address]) -> ipaddress.IPv4Address:
    """The lowest address of the subnet that is not `taken` (the boxes' recorded addresses) nor the
    gateway. Caller holds the network lock."""
    used = {cfg.gateway, *taken}
    for host in cfg.subnet.hosts():
        if host not in used:
            return host
    raise ProviderError(f"no free address left in {cfg.subnet}; destroy a box or use a larger subnet")


def setup_box_network(cfg: LocalConfig, netns: str, veth: str, address: ipaddress.IPv4Address) -> None:
    """The box's own namespace with eth0 on the bridge and a default route via the host, and its IPv6 address
    (cfg.ipv6_of) on the bridge's /64 without a default route: over IPv6 a box reaches the other boxes and this
    machine only, never the outside (our ip6 table drops what would be forwarded beyond the bridge)."""
    remove_box_network([netns], [veth], [])  # leftovers of a box of the same name that nobody recorded
    run(["ip", "netns", "add", netns])
    run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
    run(["ip", "link", "set", "dev", veth, "master", cfg.bridge, "up"])
    run(["ip", "-n", netns, "addr", "add", f"{address}/{cfg.subnet.prefixlen}", "dev", "eth0"])
    six = f"{cfg.ipv6_of(address)}/{cfg.subnet6.prefixlen}"
    run(["ip", "-n", netns, "addr", "add", six, "dev", "eth0", "nodad"])
    run(["ip", "-n", netns, "link", "set", "dev", "lo", "up"])
    run(["ip", "-n", netns, "link", "set", "dev", "eth0", "up"])
    run(["ip", "-n", netns, "route", "add", "default", "via", str(cfg.gateway)])


def remove_box_network(netns_names: Iterable[str], veth_names: Iterable[str], lines: list[str]) -> None:
    """Delete the namespaces, then any host veth that did not go with them."""
    for netns in netns_names:
        if netns_exists(netns):
            run(["ip", "netns", "delete", netns])
            lines.append(f"removed network namespace {netns}")
    for veth in veth_names:
        # The kernel drops the peer of a deleted namespace's eth0 asynchronously: give it a moment.
        deadline = time.monotonic() + 3.0
        while link_exists(veth) and time.monotonic() < deadline:
            time.sleep(0.05)
        if link_exists(veth):
            proc = run(["ip", "link", "delete", veth], check=False)
            if proc.returncode != 0 and link_exists(veth):
                raise ProviderError(f"`ip link delete {veth}` failed: {proc.stderr.strip()}")
            lines.append(f"removed veth {veth}")


def remove_shared_network(cfg: LocalConfig, lines: list[str]) -> None:
    """Our bridge and nft table; the caller has checked that no box is left on them, under the network lock."""
    if link_exists(cfg.bridge) and _bridge_is_ours(cfg.bridge):
        run(["ip", "link", "delete", cfg.bridge])
        lines.append(f"removed bridge {cfg.bridge} (no box left on it)")
    if nft_table_exists(cfg):
        run(["nft", "delete", "table", "ip", cfg.nft_table])
        lines.append(f"removed nft table ip {cfg.nft_table}")
    if run(["nft", "list", "table", "ip6", cfg.nft_table], check=False).returncode == 0:
        run(["nft", "delete", "table", "ip6", cfg.nft_table])
        lines.append(f"removed nft table ip6 {cfg.nft_table}")
