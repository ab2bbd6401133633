"""Providers make and remove boxes; `local` builds real Debian boxes on this machine (systemd-nspawn)."""

from __future__ import annotations

from miab_remote.fleet.model import Host
from miab_remote.mail import dnszones


def after_deploy(host: Host) -> list[str]:
    """A provider's part once a box is deployed. For local boxes it is the registrar's: their resolver
    delegates the box's zones to its nsd. Returns notes for the operator."""
    if host.provider != "local":
        return []
    from miab_remote.providers import local_dns

    serves = host.options["dns"] == "nsd" and "nsd" in host.recipes
    zones = dnszones.zones_of(host) if serves else []
    if local_dns.publish(host.name, zones, host.address):
        return [f"local resolver now delegates {', '.join(zones) or 'nothing'} to {host.address}"]
    return []
