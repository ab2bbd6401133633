"""Providers make and remove boxes; `local` builds real Debian boxes on this machine (systemd-nspawn).

The registry: `get(name)` gives the provider an inventory's `provider = "..."` (or `--provider`) names,
`names()` those that exist, `planned()` the cloud ones that are known but not written yet. Each
provider is imported only when it is asked for, so a deploy never loads the local provider's modules.
"""

from __future__ import annotations

from collections.abc import Callable

from miab_remote.errors import InputError
from miab_remote.fleet.model import Host
from miab_remote.providers.base import Provider

PLANNED: tuple[str, ...] = ("digitalocean", "linode", "vultr", "ec2")


def _local() -> Provider:
    from miab_remote.providers.local import LocalProvider

    return LocalProvider()


_FACTORIES: dict[str, Callable[[], Provider]] = {"local": _local}


class ProviderNotAvailable(InputError):
    """A provider that is planned (an inventory may name it) but cannot make or remove boxes yet."""


def names() -> tuple[str, ...]:
    """The providers that can create and destroy boxes."""
    return tuple(_FACTORIES)


def planned() -> tuple[str, ...]:
    """The cloud providers that are known but not available yet."""
    return PLANNED


def get(name: str) -> Provider:
    """The provider called `name`; ProviderNotAvailable for a planned one, InputError for any other."""
    factory = _FACTORIES.get(name)
    if factory is not None:
        return factory()
    if name in PLANNED:
        raise ProviderNotAvailable(f"{name} is not available yet; available: {', '.join(names())}")
    raise InputError(f"{name!r} is not a provider; known: {', '.join((*names(), *PLANNED))}")


def after_deploy(host: Host) -> list[str]:
    """The part of the box's provider once it is deployed (for local boxes, the registrar's: their
    resolver delegates the box's zones to its nsd). No provider, or one not available: no notes."""
    if host.provider not in _FACTORIES:
        return []
    return get(host.provider).after_deploy(host)
