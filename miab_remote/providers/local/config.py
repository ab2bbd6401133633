"""Where local boxes live and how they are networked (LocalConfig, from the MIAB_REMOTE_* variables),
and what a create accepts as a box name and an operator key: checked before anything is made."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from miab_remote import names
from miab_remote.errors import InputError
from miab_remote.profiles import DEBIAN_12, DEBIAN_13, OSProfile
from miab_remote.transport.sshkeys import parse_public_line

# The systems a local box can run, by OS profile id (`create --image`); each has its own cached tree.
IMAGES: dict[str, OSProfile] = {p.id: p for p in (DEBIAN_13, DEBIAN_12)}
DEFAULT_IMAGE = DEBIAN_13.id

DEFAULT_STATE_DIR = Path("/var/lib/miab-remote/local")
DEFAULT_CACHE_DIR = Path("/var/cache/miab-remote")
DEFAULT_SUBNET = ipaddress.IPv4Network("10.77.0.0/24")
DEFAULT_BRIDGE = "miabbr0"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

_NAME_RE = names.HOST_NAME_RE  # the inventory's rule for a box name
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")


def derived_subnet6(bridge: str) -> ipaddress.IPv6Network:
    """The bridge's own ULA /64 (RFC 4193: fd00::/8 and a 40-bit global id), from a hash of its name: stable across
    runs, and different for each bridge, so several configurations (the e2e lanes) never share a prefix."""
    global_id = hashlib.sha256(f"miab-remote/{bridge}".encode()).digest()[:5]
    return ipaddress.IPv6Network((int.from_bytes(b"\xfd" + global_id + b"\0\0", "big") << 64, 64))


@dataclass(frozen=True)
class LocalConfig:
    """Where local boxes live and how they are networked; tests pass their own to stay apart."""

    state_dir: Path = DEFAULT_STATE_DIR
    cache_dir: Path = DEFAULT_CACHE_DIR
    subnet: ipaddress.IPv4Network = DEFAULT_SUBNET
    bridge: str = DEFAULT_BRIDGE
    mirror: str = DEFAULT_MIRROR
    apt_proxy: str | None = None
    subnet6_given: ipaddress.IPv6Network | None = None  # None: derived from the bridge's name (derived_subnet6)

    @classmethod
    def from_env(cls) -> LocalConfig:
        """Read the MIAB_REMOTE_* variables; a bad value is an InputError naming the variable."""
        env = os.environ
        subnet_text = env.get("MIAB_REMOTE_LOCAL_SUBNET") or str(DEFAULT_SUBNET)
        try:
            subnet = ipaddress.IPv4Network(subnet_text, strict=True)
        except ValueError as exc:
            raise InputError(f"MIAB_REMOTE_LOCAL_SUBNET={subnet_text!r} is not an IPv4 network: {exc}") from None
        subnet6_text = env.get("MIAB_REMOTE_LOCAL_SUBNET6")
        subnet6 = None
        if subnet6_text:
            try:
                subnet6 = ipaddress.IPv6Network(subnet6_text, strict=True)
            except ValueError as exc:
                raise InputError(
                    f"MIAB_REMOTE_LOCAL_SUBNET6={subnet6_text!r} is not an IPv6 network: {exc} "
                    "(e.g. fd12:3456:789a:1::/64)"
                ) from None
        config = cls(
            state_dir=Path(env.get("MIAB_REMOTE_LOCAL_DIR") or DEFAULT_STATE_DIR).absolute(),
            cache_dir=Path(env.get("MIAB_REMOTE_CACHE_DIR") or DEFAULT_CACHE_DIR).absolute(),
            subnet=subnet,
            bridge=env.get("MIAB_REMOTE_LOCAL_BRIDGE") or DEFAULT_BRIDGE,
            mirror=env.get("MIAB_REMOTE_DEBIAN_MIRROR") or DEFAULT_MIRROR,
            apt_proxy=env.get("MIAB_REMOTE_APT_PROXY") or None,
            subnet6_given=subnet6,
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
        six = self.subnet6
        if not isinstance(six, ipaddress.IPv6Network) or six.prefixlen > 64 or not _unicast(six):
            raise InputError(
                f"subnet {six}: need a unicast IPv6 network of /64 or larger, such as a ULA prefix "
                "fd12:3456:789a:1::/64 (MIAB_REMOTE_LOCAL_SUBNET6)"
            )
        _check_url(self.mirror, "MIAB_REMOTE_DEBIAN_MIRROR")
        if self.apt_proxy is not None:
            _check_url(self.apt_proxy, "MIAB_REMOTE_APT_PROXY")

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The host's address on the bridge: the subnet's first address, the boxes' default route."""
        return self.subnet.network_address + 1

    @property
    def subnet6(self) -> ipaddress.IPv6Network:
        """The boxes' IPv6 /64 on the bridge: MIAB_REMOTE_LOCAL_SUBNET6, else the bridge's derived ULA prefix."""
        return self.subnet6_given or derived_subnet6(self.bridge)

    @property
    def gateway6(self) -> ipaddress.IPv6Address:
        """The host's IPv6 address on the bridge, the same offset in subnet6 as `gateway` in subnet."""
        return self.ipv6_of(self.gateway)

    def ipv6_of(self, address: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
        """A box's IPv6 address: its IPv4 host part in subnet6 (10.77.0.5 -> PREFIX::5), so it needs no
        allocation of its own and is as unique as the IPv4 one."""
        return self.subnet6.network_address + (int(address) - int(self.subnet.network_address))

    @property
    def nft_table(self) -> str:
        """Our own nft table (family ip), one per bridge so that several configurations coexist."""
        return "miab_" + re.sub(r"[^A-Za-z0-9_]", "_", self.bridge)

    def rootfs_cache(self, image: str) -> Path:
        """The cached root filesystem of one release (`image`: a key of IMAGES)."""
        return self.cache_dir / "rootfs" / image


def check_image(image: str) -> OSProfile:
    """The OS profile a local box of `image` runs, or InputError saying which images there are."""
    profile = IMAGES.get(image)
    if profile is None:
        raise InputError(f"--image {image!r}: a local box runs one of {', '.join(IMAGES)} (default {DEFAULT_IMAGE})")
    return profile


def check_name(name: str) -> str:
    """A box name is a hostname (usually an FQDN); at most 64 characters, systemd's and the kernel's limit."""
    normal = name.lower().removesuffix(".")
    if len(normal) > 64 or not _NAME_RE.fullmatch(normal):
        raise InputError(
            f"box name {name!r} is not a valid host name (letters, digits and '-' in dot-separated "
            "labels, at most 64 characters, e.g. box1.example.test)"
        )
    return normal


def is_box_name(text: str) -> bool:
    """Could `text` (a folder in the state dir) be a box's? The same rule as check_name, without raising."""
    return bool(_NAME_RE.fullmatch(text))


def check_authorized_key(line: str) -> str:
    """One public key line, or InputError: it goes verbatim into the box's authorized_keys."""
    line = line.strip()
    if "\n" in line or "\r" in line:
        raise InputError("the authorized key must be a single public key line")
    parse_public_line(line)
    return line


def _unicast(net: ipaddress.IPv6Network) -> bool:
    address = net.network_address
    return not (address.is_multicast or address.is_link_local or address.is_loopback or address.is_unspecified)


def _check_url(url: str, variable: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"{variable}={url!r}: need an http:// or https:// URL")
