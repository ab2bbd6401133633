"""Providers make and remove boxes: `local` builds real Debian boxes on this machine (systemd-nspawn), the
cloud ones (DigitalOcean, Linode, Vultr, EC2) ask a cloud's API through apache-libcloud.

The registry: `get(name, options)` gives the provider an inventory's `provider = "..."` (or `--provider`)
names, `names()` those that exist. Each provider is imported only when it is asked for, so a deploy never
loads libcloud or the local provider's modules.
"""

from __future__ import annotations

from collections.abc import Callable

from miab_remote.errors import InputError
from miab_remote.fleet.model import Host
from miab_remote.providers.base import CreateOptions, Provider

# The clouds with an adapter in providers/cloud/ (its ADAPTERS); an inventory may name any of fleet.rules.PROVIDERS.
CLOUDS: tuple[str, ...] = ("digitalocean", "linode", "vultr", "ec2")


def _local(options: CreateOptions) -> Provider:
    from miab_remote.providers.local import LocalProvider

    for flag, value in (("--region", options.region), ("--size", options.size), ("--endpoint", options.endpoint)):
        if value is not None:
            raise InputError(f"{flag} is for cloud providers ({', '.join(CLOUDS)}); a local box has none")
    if options.elastic_ip:
        raise InputError("--elastic-ip is for the ec2 provider; a local box has none")
    return LocalProvider()


def _cloud(name: str) -> Callable[[CreateOptions], Provider]:
    def make(options: CreateOptions) -> Provider:
        from miab_remote.providers.cloud import cloud_provider

        return cloud_provider(name, options)

    return make


_FACTORIES: dict[str, Callable[[CreateOptions], Provider]] = {"local": _local} | {c: _cloud(c) for c in CLOUDS}


def names() -> tuple[str, ...]:
    """The providers that can create and destroy boxes."""
    return tuple(_FACTORIES)


def get(name: str, options: CreateOptions | None = None) -> Provider:
    """The provider called `name`, set up with a create's `options`; InputError for an unknown one."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise InputError(f"{name!r} is not a provider; known: {', '.join(names())}")
    return factory(options or CreateOptions())


def before_deploy(host: Host) -> list[str]:
    """The part of the box's provider before it is deployed (for local boxes, the same as after_deploy: the
    box's ACME order during the deploy needs its zones delegated). No provider, or a manual box: no notes."""
    if host.provider not in _FACTORIES:
        return []
    return get(host.provider).before_deploy(host)


def after_deploy(host: Host) -> list[str]:
    """The part of the box's provider once it is deployed (for local boxes, the registrar's: their
    resolver delegates the box's zones to its nsd). No provider, or a manual box: no notes."""
    if host.provider not in _FACTORIES:
        return []
    return get(host.provider).after_deploy(host)


def public_resolvers(host: Host) -> tuple[str, ...]:
    """Where `check` asks the world's DNS about the box (its reverse DNS): the local boxes' own resolver, or ()
    for the laptop's resolvers (a cloud's box, a manual one)."""
    if host.provider not in _FACTORIES:
        return ()
    return get(host.provider).public_resolvers()
