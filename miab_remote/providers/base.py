"""What every provider offers: the `Provider` protocol and the values it returns.

The CLI's (and later a web UI's) create and destroy are written against this alone, so a cloud
provider (libcloud) slots in by implementing it and registering in `miab_remote.providers`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from miab_remote.fleet.model import Host

Progress = Callable[[str], None]
"""Called with one short human line per step of a create (shown next to the box's name)."""

BoxStatus = Literal["running", "stopped", "absent"]
"""running: the box is up; stopped: something of it is left, nothing runs; absent: nothing is left."""


@dataclass(frozen=True)
class CreatedBox:
    """What a new box's inventory records: where it is, the host key to pin, its OS and resolvers."""

    name: str
    address: str  # the IPv4 address the operator's SSH reaches it on
    host_key_public: str  # "ssh-ed25519 AAAA... root@NAME", known before the first connection
    os: str  # an OS profile name, e.g. "debian-12"
    resolvers: tuple[str, ...] = ()  # the nameservers the box asks, when the provider sets them


class Provider(Protocol):
    """A place boxes are made. Every check a create needs runs before anything is made:
    `check_name` for each argument, then `validate_config` and `check_requirements` once."""

    name: str  # as written in an inventory's `provider = "..."` and after `--provider`
    images: tuple[str, ...]  # the OS profile ids it can make boxes of (`create --image`)
    default_image: str  # the one a create without --image makes

    def check_name(self, name: str) -> str:
        """The box name in its normal form, or InputError if this provider cannot make such a box."""
        ...

    def check_image(self, image: str) -> str:
        """The image's OS profile id, or InputError naming the images this provider makes."""
        ...

    def validate_config(self) -> None:
        """InputError naming the setting (environment variable, file) that is wrong; changes nothing."""
        ...

    def check_requirements(self) -> None:
        """ProviderError naming everything this machine (or account) lacks to make boxes."""
        ...

    def create(self, name: str, authorized_key: str, progress: Progress | None = None, image: str = ...) -> CreatedBox:
        """Make and boot a box of `image` (one of `images`; default `default_image`) that lets `authorized_key`
        in as root; a failed create leaves nothing behind."""
        ...

    def destroy(self, name: str) -> list[str]:
        """Remove the box and all it owns; idempotent. One human line per thing removed."""
        ...

    def status(self, name: str) -> BoxStatus:
        """Whether the box runs, is partly left, or is gone."""
        ...

    def after_deploy(self, host: Host) -> list[str]:
        """The provider's part once `host` is deployed (e.g. publishing its DNS delegation); notes for the operator."""
        ...
