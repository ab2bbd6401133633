"""Linode (Akamai) through libcloud's LinodeNodeDriverV4 (API v4).

- `create_node(location, name, size, image, ...)`: the location comes first in this driver.
- The API takes an image only with a root password: a random one is made for the one request and thrown
  away (never logged, printed or stored). The user data turns password logins off (`ssh_pwauth: false`),
  so it opens nothing.
- `ex_userdata` is plain text: the driver base64-encodes it into `metadata.user_data` (its docstring says to
  encode it first, which would encode it twice).
- User data reaches the server through Linode's Metadata service, which only the regions listing "Metadata"
  in their capabilities have: any other region is refused before anything is made.
- The operator's key is registered once in the profile's SSH keys (found again by its key material: that API
  gives no fingerprint) and handed to the server as `authorized_keys`.
- Linodes are labelled with the box's FQDN; Linode does not set reverse DNS from it (see `reverse_dns`).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Mapping
from typing import Any, ClassVar

from miab_remote.errors import InputError
from miab_remote.providers.base import CreateOptions
from miab_remote.providers.cloud.adapter import (
    CloudAdapter,
    NodeView,
    Offer,
    choose,
    choose_size,
    destroy_by_id,
    state_of,
)
from miab_remote.providers.cloud.credentials import Credentials, Field
from miab_remote.providers.cloud.endpoint import Endpoint, driver_kwargs
from miab_remote.providers.cloud.keys import same_key

# The API's rule for a label (3 to 64 characters), as libcloud checks it before sending.
LABEL = re.compile(r"^[a-zA-Z]((?!--|__|\.\.)[a-zA-Z0-9-_.])+$")
METADATA = "Metadata"  # the region capability that carries cloud-init user data


def missing(e: Exception) -> bool:
    """Linode's 404, which its driver raises as a LibcloudError whose text ends "Status code: 404."."""
    return "Status code: 404." in str(getattr(e, "value", None) or e)


class Linode(CloudAdapter):
    name = "linode"
    label = "Linode"
    fields = (Field("token", "LINODE_TOKEN"),)
    required = ("token",)
    endpoint_variable = "MIAB_REMOTE_LINODE_ENDPOINT"
    default_endpoint = "https://api.linode.com"
    default_region = "eu-central"  # Frankfurt
    default_size = "g6-nanode-1"  # 1 GB, 1 CPU: the smallest that runs the whole box
    images: ClassVar[Mapping[str, str]] = {"debian-13": "linode/debian13", "debian-12": "linode/debian12"}
    port25 = (
        "Linode restricts outbound SMTP (ports 25, 465 and 587) on new accounts: once the reverse DNS is set, "
        "open a support ticket asking to lift it for this server, or send through a relay (`miab-remote relay set`)"
    )
    reverse_dns = (
        "reverse DNS: Linode does not set it from the server's name; once the box's A/AAAA records resolve, set "
        "it to the FQDN in Cloud Manager (the Linode's Network tab, Edit RDNS for its IPv4 and IPv6 addresses)"
    )
    label_limit = 64

    def check_label(self, name: str) -> None:
        if len(name) < 3 or not LABEL.match(name):
            raise InputError(
                f"{name}: Linode labels are 3 to 64 characters, start with a letter, hold only letters, digits, "
                "'-', '_' and '.', and never two of '-', '_' or '.' in a row; nothing was made"
            )

    def connect(self, creds: Credentials, endpoint: Endpoint | None, region: str) -> Any:
        from libcloud.compute.providers import Provider, get_driver

        return get_driver(Provider.LINODE)(creds["token"], **driver_kwargs(endpoint))

    def offer(self, driver: Any, region: str, size: str, image: str, os_id: str) -> Offer:
        locations = {loc.id: loc for loc in driver.list_locations()}
        region = choose("region", region, locations, self.label, "--region")
        with_metadata = {k for k, loc in locations.items() if METADATA in (loc.extra.get("capabilities") or [])}
        if region not in with_metadata:
            wanted = "region with the Metadata service (cloud-init user data)"
            choose(wanted, region, with_metadata, self.label, "--region")
        sizes = {s.id: s for s in driver.list_sizes()}
        size = choose_size(size, sizes, self.label)
        images = {i.id: i for i in self.listed_images(driver)}
        image = choose("image", image, images, self.label, "--image")
        return Offer(
            region, size, image, os_id, {"location": locations[region], "size": sizes[size], "image": images[image]}
        )

    def offered_images(self, driver: Any) -> set[str]:
        return {i.id for i in self.listed_images(driver)}

    def ensure_key(self, driver: Any, public_line: str) -> str:
        if not any(kp.public_key and same_key(kp.public_key, public_line) for kp in driver.list_key_pairs()):
            words = public_line.split()
            driver.create_key_pair(f"miab-remote {words[2] if len(words) > 2 else ''}".strip()[:64], public_line)
        return public_line  # handed to the server itself, as authorized_keys

    def node_names(self, driver: Any) -> dict[str, str]:
        return {n.name: str(n.id) for n in driver.list_nodes()}

    def create_node(
        self, driver: Any, name: str, offer: Offer, user_data: str, key_ref: str, options: CreateOptions
    ) -> dict[str, str]:
        node = driver.create_node(
            offer.objects["location"],
            name,
            offer.objects["size"],
            offer.objects["image"],
            root_pass=secrets.token_urlsafe(32),
            ex_authorized_keys=[key_ref],
            ex_userdata=user_data,
        )
        return {"id": str(node.id)}

    def node(self, driver: Any, record: Mapping[str, str]) -> NodeView:
        from libcloud.common.types import LibcloudError

        try:
            n = driver.ex_get_node(record["id"])
        except LibcloudError as e:
            if missing(e):
                return NodeView(record["id"], "gone")
            raise
        except KeyError:  # a status the driver has no name for (its map is a plain dict): still on its way
            return NodeView(record["id"], "pending")
        v6 = str(n.extra.get("ipv6") or "").split("/")[0]
        return NodeView(str(n.id), state_of(n.state), public_ipv4(n.public_ips + n.private_ips), v6 or None)

    def destroy_node(self, driver: Any, record: Mapping[str, str]) -> list[str]:
        return destroy_by_id(self, driver, record, "Linode")


LINODE_PRIVATE = ipaddress.ip_network("192.168.128.0/17")  # Linode's private IPv4 range (its networking docs)


def public_ipv4(addresses: list[str]) -> str | None:
    """The instance's public IPv4: any address outside Linode's private range. libcloud counts every RFC 1918
    address as private, which is not Linode's rule (and would hide a stand-in box's 10.x address)."""
    return next((a for a in addresses if ipaddress.ip_address(a) not in LINODE_PRIVATE), None)
