"""OS profiles: what differs between supported systems, as data (package names, paths, template variants).

Recipes speak of logical names; a profile maps them to the real ones. Debian 13 (dovecot 2.4, php 8.4,
nginx 1.26) and Debian 12 are the two here; adding Ubuntu 24.04 means adding a profile plus template
variants, never forking a recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from miab_remote.errors import HostError


@dataclass(frozen=True)
class OSProfile:
    id: str
    description: str
    os_release_id: str
    version_id: str
    codename: str  # the release's suite name, as apt sources and debootstrap spell it
    # Logical package name -> real package names on this system (absent key: same name).
    packages: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Logical service name -> systemd unit on this system (absent key: same name).
    services: dict[str, str] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    # Template variant tags tried in order before the plain template: `templates/PATH@TAG`.
    template_variants: tuple[str, ...] = ()

    def package_names(self, logical: str) -> tuple[str, ...]:
        return self.packages.get(logical, (logical,))

    def service_name(self, logical: str) -> str:
        return self.services.get(logical, logical)


DEBIAN_12 = OSProfile(
    id="debian-12",
    description="Debian 12 (bookworm)",
    os_release_id="debian",
    version_id="12",
    codename="bookworm",
    paths={"php_fpm_socket": "/run/php/php8.2-fpm.sock"},
    template_variants=("debian-12", "dovecot-2.3"),
)

DEBIAN_13 = OSProfile(
    id="debian-13",
    description="Debian 13 (trixie)",
    os_release_id="debian",
    version_id="13",
    codename="trixie",
    paths={"php_fpm_socket": "/run/php/php8.4-fpm.sock"},
    template_variants=("debian-13", "dovecot-2.4"),
)

PROFILES: dict[str, OSProfile] = {p.id: p for p in (DEBIAN_13, DEBIAN_12)}


def supported_list() -> str:
    return ", ".join(f"{p.description} [{p.id}]" for p in PROFILES.values())


def profile_for_os_release(os_release: dict[str, str], host: str) -> OSProfile:
    """Pick the profile for a box's /etc/os-release, or refuse it before anything changes."""
    for profile in PROFILES.values():
        if os_release.get("ID") == profile.os_release_id and os_release.get("VERSION_ID") == profile.version_id:
            return profile
    pretty = os_release.get("PRETTY_NAME") or f"{os_release.get('ID', '?')} {os_release.get('VERSION_ID', '?')}"
    raise HostError(f"{host}: unsupported OS {pretty!r}; nothing was changed. Supported: {supported_list()}")


def profile_by_id(profile_id: str) -> OSProfile | None:
    return PROFILES.get(profile_id)


def assumed_profile(host_os: str | None) -> OSProfile:
    """The profile a box is built for before its probe says: the os its inventory records, else the newest
    supported (the probe then corrects it: a box of another supported system is built again for its own)."""
    return (profile_by_id(host_os) if host_os else None) or DEBIAN_13
