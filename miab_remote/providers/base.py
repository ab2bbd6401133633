"""What every provider offers: the `Provider` protocol and the values it returns.

The CLI's (and later a web UI's) create and destroy are written against this alone, so a cloud
provider (libcloud) slots in by implementing it and registering in `miab_remote.providers`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from miab_remote.errors import ProviderError
from miab_remote.fleet.model import Host

Progress = Callable[[str], None]
"""Called with one short human line per step of a create (shown next to the box's name)."""

Journal = Callable[[Mapping[str, str] | None], None]
"""Told which server exists before the inventory records it (so a killed create is finished by the next run)."""

BoxStatus = Literal["running", "stopped", "absent"]
"""running: the box is up; stopped: something of it is left, nothing runs; absent: nothing is left."""


KeyMismatchChoice = Literal["destroy", "keep"]
"""What a create does with a new server whose first SSH answer is not the key it was given."""


@dataclass(frozen=True)
class CreateOptions:
    """A create's choices beyond the image; the cloud ones are refused by a provider that has no use for them."""

    region: str | None = None
    size: str | None = None
    endpoint: str | None = None  # the provider's API address (an API-compatible cloud, a test's stand-in)
    on_key_mismatch: KeyMismatchChoice = "destroy"
    elastic_ip: bool = False  # EC2: give the box an Elastic IP (a fixed address, and reverse DNS on request)
    timeout: float = 600.0  # seconds from the request until SSH answers with the injected key


@dataclass(frozen=True)
class CreatedBox:
    """What a new box's inventory records: where it is, the host key to pin, its OS and resolvers, and for
    a cloud server the node (id, region, size, image, ...) its destroy needs."""

    name: str
    address: str  # the IPv4 address the operator's SSH reaches it on
    host_key_public: str  # "ssh-ed25519 AAAA... root@NAME", known before the first connection
    os: str  # an OS profile name, e.g. "debian-12"
    resolvers: tuple[str, ...] = ()  # the nameservers the box asks, when the provider sets them
    ssh_user: str = "root"
    node: Mapping[str, str] = field(default_factory=dict)  # the inventory's [node] table
    ipv4: str | None = None  # public addresses, recorded when the provider gives them
    ipv6: str | None = None
    notes: tuple[str, ...] = ()  # the operator's next steps that only the provider knows (reverse DNS, port 25)


class NodeKeyMismatch(ProviderError):
    """A new server's first SSH answer presented another host key than the one handed to it: refused before
    authentication. `box` is what would have been recorded (without a key to pin); `destroyed` says whether
    the server is gone (the default) or was kept for the operator to look at."""

    def __init__(self, message: str, box: CreatedBox, offered: str, destroyed: bool) -> None:
        super().__init__(message)
        self.box = box
        self.offered = offered
        self.destroyed = destroyed


class Provider(Protocol):
    """A place boxes are made. Every check a create needs runs before anything is made:
    `check_name` for each argument, then `validate_config` and `check_requirements` once."""

    name: str  # as written in an inventory's `provider = "..."` and after `--provider`
    images: tuple[str, ...]  # the OS profile ids it can make boxes of (`create --image`)

    @property
    def default_image(self) -> str:
        """The image a create without --image makes."""
        ...

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

    def preflight(self, names: Sequence[str], image: str | None) -> None:
        """The checks that ask the provider (credentials accepted, region, size and image offered, no server
        of these names): InputError before any box is made."""
        ...

    def create(
        self,
        name: str,
        authorized_key: str,
        progress: Progress | None = None,
        image: str = ...,
        journal: Journal | None = None,
    ) -> CreatedBox:
        """Make and boot a box of `image` (one of `images`; default `default_image`) that lets `authorized_key`
        in as root; a failed create leaves nothing behind. A cloud provider calls `journal` with the server's
        [node] record as soon as the cloud made it, and with None once it removed it again."""
        ...

    def destroy(self, name: str, node: Mapping[str, str] | None = None) -> list[str]:
        """Remove the box and all it owns (`node`: the inventory's [node] record, for a cloud server);
        idempotent. One human line per thing removed."""
        ...

    def status(self, name: str) -> BoxStatus:
        """Whether the box runs, is partly left, or is gone."""
        ...

    def before_deploy(self, host: Host) -> list[str]:
        """The provider's part before `host` is deployed (e.g. its DNS delegation, which the box's ACME order
        needs: the CA resolves the box's names through it); notes for the operator."""
        ...

    def after_deploy(self, host: Host) -> list[str]:
        """The provider's part once `host` is deployed (e.g. publishing its DNS delegation); notes for the operator."""
        ...

    def public_resolvers(self) -> tuple[str, ...]:
        """The nameservers through which the laptop sees the DNS of this provider's boxes as the world does
        (delegations, reverse DNS); () for the laptop's own resolvers."""
        ...
