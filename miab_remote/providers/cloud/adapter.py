"""What differs between clouds, behind one interface: a `CloudAdapter` per provider holds its defaults
(region, the smallest size that runs the whole box, images, login user), the keyword arguments its libcloud
driver needs, and how it reads a node. `CloudProvider` (this package's __init__) is the one flow over them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from miab_remote.errors import InputError
from miab_remote.providers.base import CreateOptions
from miab_remote.providers.cloud.credentials import Credentials, Field
from miab_remote.providers.cloud.endpoint import Endpoint

MIN_MEMORY_MB = 1024  # postfix, dovecot, spamassassin, clamav-free: the whole box runs in 1 GiB

NodeState = Literal["pending", "running", "stopped", "gone", "error"]


@dataclass(frozen=True)
class Offer:
    """What a create asks the cloud for, checked against what it offers: region, size and image ids as the
    cloud names them, the OS profile the image is, and the driver's own objects for them."""

    region: str
    size: str
    image: str
    os: str
    objects: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeView:
    id: str
    state: NodeState
    ipv4: str | None = None
    ipv6: str | None = None


def state_of(state: Any) -> NodeState:
    """A libcloud NodeState as the wait understands it (anything in between is still pending)."""
    from libcloud.compute.types import NodeState as LC

    return {LC.RUNNING: "running", LC.STOPPED: "stopped", LC.TERMINATED: "gone", LC.ERROR: "error"}.get(
        state, "pending"
    )  # type: ignore[return-value]


def choose_size(wanted: str, sizes: Mapping[str, Any], label: str, where: str = "") -> str:
    """`wanted` if the cloud offers it (`sizes`: id -> libcloud NodeSize) with enough memory for the box;
    InputError listing the sizes that are big enough, or all of them, otherwise."""
    big = [k for k, s in sizes.items() if int(s.ram or 0) >= MIN_MEMORY_MB]
    if wanted in sizes and wanted not in big:
        choose(f"size with at least {MIN_MEMORY_MB} MB of memory", wanted, big, label, "--size")
    return choose(f"size{where}", wanted, sizes, label, "--size")


def destroy_by_id(adapter: CloudAdapter, driver: Any, record: Mapping[str, str], what: str) -> list[str]:
    """The destroy of a cloud whose driver deletes a server by its id alone (`what`: "droplet", ...);
    a server already gone is no error, so a destroy can be run again."""
    from libcloud.compute.base import Node
    from libcloud.compute.types import NodeState

    if adapter.node(driver, record).state == "gone":
        return [f"{what} {record['id']} was already gone"]
    size: Any = record.get("size")  # Vultr's driver picks its bare-metal route by the size's id
    driver.destroy_node(Node(record["id"], "", NodeState.UNKNOWN, [], [], driver, size=size))
    return [f"destroyed {what} {record['id']}"]


def choose(what: str, wanted: str, offered: Iterable[str], label: str, flag: str) -> str:
    """`wanted` if the cloud offers it, else InputError listing what it offers (sorted, at most 30)."""
    ids = sorted(set(offered))
    if wanted in ids:
        return wanted
    shown = ", ".join(ids[:30]) + (f", ... ({len(ids)} in all)" if len(ids) > 30 else "")
    raise InputError(f"{label} offers no {what} {wanted!r} ({flag}); offered: {shown or 'none'}; nothing was made")


class CloudAdapter(ABC):
    """One cloud. Subclasses set the class attributes and implement the driver calls; every call runs inside
    `calls.api_call`, so they raise libcloud's errors freely."""

    name: str  # the provider's name in an inventory
    label: str  # as the operator knows it
    fields: tuple[Field, ...]  # its credentials
    required: tuple[str, ...]  # the keys of `fields` that must be set
    endpoint_variable: str  # the environment variable that overrides its API address
    default_endpoint: str
    default_region: str
    default_size: str
    images: ClassVar[Mapping[str, str]]  # OS profile id -> the cloud's image, newest first
    ssh_user: str = "root"
    port25: str = ""  # what the operator should know about outbound port 25 on this cloud
    reverse_dns: str = ""  # how the box's reverse DNS gets set (empty: by the cloud, from the server's name)
    label_limit: int = 253  # longest server name the cloud takes

    def check_options(self, options: CreateOptions) -> None:
        """InputError for an option this cloud has no use for."""
        if options.elastic_ip:
            raise InputError(f"--elastic-ip is for the ec2 provider; {self.label} servers keep their address")

    def check_label(self, name: str) -> None:  # noqa: B027 (most clouds take any name of label_limit)
        """InputError for a server name this cloud would refuse (beyond `label_limit`), before anything is made."""

    def region(self, creds: Credentials, chosen: str | None) -> str:
        """The region a create asks for: --region, else this cloud's default (EC2: AWS_DEFAULT_REGION first)."""
        return chosen or self.default_region

    @abstractmethod
    def connect(self, creds: Credentials, endpoint: Endpoint | None, region: str) -> Any:
        """The libcloud driver (no request is made yet)."""

    @abstractmethod
    def offer(self, driver: Any, region: str, size: str, image: str, os_id: str) -> Offer:
        """The region, size and image checked against the cloud's lists (InputError naming what it offers)."""

    def offered_images(self, driver: Any) -> set[str]:
        """The images of `images` the cloud offers (for the default: the newest of them)."""
        return set(self.images.values())

    _listed_images: list[Any] | None = None

    def listed_images(self, driver: Any) -> list[Any]:
        """The cloud's image list, asked once for the adapter's life (one create or destroy): a default image
        is chosen from it and then checked against it, and DigitalOcean's pages through every image there is."""
        if self._listed_images is None:
            self._listed_images = list(driver.list_images())
        return self._listed_images

    @abstractmethod
    def ensure_key(self, driver: Any, public_line: str) -> str:
        """The cloud's reference to the operator's key, registering it the first time (found by fingerprint
        or key afterwards)."""

    @abstractmethod
    def node_names(self, driver: Any) -> dict[str, str]:
        """The servers the account has: name -> id."""

    @abstractmethod
    def create_node(
        self, driver: Any, name: str, offer: Offer, user_data: str, key_ref: str, options: CreateOptions
    ) -> dict[str, str]:
        """Ask for the server; the record of what was made (at least `id`) as soon as the API answers."""

    def finish_node(self, driver: Any, node: dict[str, str], view: NodeView, options: CreateOptions) -> NodeView:
        """Once it runs: what else the box needs (EC2: its Elastic IP); the view to record."""
        return view

    @abstractmethod
    def node(self, driver: Any, record: Mapping[str, str]) -> NodeView:
        """The server's state and public addresses now (`gone` when the cloud no longer has it)."""

    @abstractmethod
    def destroy_node(self, driver: Any, record: Mapping[str, str]) -> list[str]:
        """Remove the server and what was made for it; one line per thing removed. Idempotent."""
