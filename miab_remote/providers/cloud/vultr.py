"""Vultr through libcloud's VultrNodeDriverV2 (API v2).

- Images are numeric `os_id`s that Vultr does not document: the Debian release is found by listing /v2/os
  (family "debian", arch "x64", the name "Debian 13 x64 (trixie)" starting with the release), and sent as the
  integer the API documents (libcloud's NodeImage would send its id as a string).
- `ex_userdata` is plain text (the driver base64-encodes it); the server is labelled with the FQDN and gets
  it as its hostname (`ex_hostname`).
- The operator's key is registered once (`import_key_pair_from_string`) and found again by its key material:
  libcloud computes Vultr key fingerprints itself, wrongly for ed25519 keys.
- Lists pass `ex_list_bare_metals=False`: the tool makes cloud servers, and a token without bare-metal
  access must not fail on /v2/bare-metals.
- The create's answer holds the server's root password (`default_password`): the driver leaves it out of
  the node, and nothing here reads, prints or records it; the user data turns password logins off.
"""

from __future__ import annotations

import re
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

NO_ADDRESS = "0.0.0.0"  # main_ip while the server is still being made


def _release(image: Any, name: str) -> bool:
    """Whether a /v2/os entry is the Debian `name` ("Debian 13 x64"), not "Debian 130 ..." or i386."""
    extra = image.extra or {}
    return (
        extra.get("family") == "debian"
        and extra.get("arch") == "x64"
        and re.fullmatch(re.escape(name) + r"(\s.*)?", str(image.name)) is not None
    )


class Vultr(CloudAdapter):
    name = "vultr"
    label = "Vultr"
    fields = (Field("token", "VULTR_API_KEY"),)
    required = ("token",)
    endpoint_variable = "MIAB_REMOTE_VULTR_ENDPOINT"
    default_endpoint = "https://api.vultr.com"
    default_region = "fra"  # Frankfurt
    default_size = "vc2-1c-1gb"  # 1 GB, 1 CPU: the smallest that runs the whole box
    # OS profile -> the start of Vultr's name for it; its os_id is looked up (_release)
    images: ClassVar[Mapping[str, str]] = {"debian-13": "Debian 13 x64", "debian-12": "Debian 12 x64"}
    port25 = (
        "Vultr blocks outbound port 25 on new accounts: open a support ticket asking to unblock SMTP for this "
        "server (set its reverse DNS first), or send through a relay (`miab-remote relay set`)"
    )
    reverse_dns = (
        "reverse DNS: Vultr does not set it from the server's name; set it to the FQDN in the server's "
        "Settings > IPv4 (and IPv6) > Reverse DNS, or with the API's /v2/instances/ID/ipv4/reverse"
    )

    def connect(self, creds: Credentials, endpoint: Endpoint | None, region: str) -> Any:
        from libcloud.compute.providers import Provider, get_driver

        return get_driver(Provider.VULTR)(creds["token"], **driver_kwargs(endpoint))

    def offer(self, driver: Any, region: str, size: str, image: str, os_id: str) -> Offer:
        locations = {loc.id: loc for loc in driver.list_locations()}
        region = choose("region", region, locations, self.label, "--region")
        sizes = {s.id: s for s in driver.list_sizes(ex_list_bare_metals=False)}
        here = {k: s for k, s in sizes.items() if region in (s.extra.get("locations") or [])}
        size = choose_size(size, here, self.label, f" in {region}")
        found = sorted((i for i in self.listed_images(driver) if _release(i, image)), key=lambda i: int(i.id))
        if not found:
            listed = self.listed_images(driver)
            debian = sorted({str(i.name) for i in listed if (i.extra or {}).get("family") == "debian"})
            raise InputError(
                f"{self.label} offers no image {image!r} (--image); its Debian images: {', '.join(debian) or 'none'}; "
                "nothing was made"
            )
        chosen = found[-1]  # the newest entry of that release, should Vultr list it twice
        chosen.id = int(chosen.id)  # the API's os_id is an integer; libcloud's NodeImage made it a string
        return Offer(
            region, size, str(chosen.id), os_id, {"location": locations[region], "size": sizes[size], "image": chosen}
        )

    def offered_images(self, driver: Any) -> set[str]:
        listed = self.listed_images(driver)
        return {name for name in self.images.values() if any(_release(i, name) for i in listed)}

    def ensure_key(self, driver: Any, public_line: str) -> str:
        for kp in driver.list_key_pairs():
            if kp.public_key and same_key(kp.public_key, public_line):
                return str(kp.extra["id"])
        words = public_line.split()
        name = f"miab-remote {words[2] if len(words) > 2 else ''}".strip()
        return str(driver.import_key_pair_from_string(name, public_line).extra["id"])

    def node_names(self, driver: Any) -> dict[str, str]:
        return {n.name: str(n.id) for n in driver.list_nodes(ex_list_bare_metals=False)}

    def create_node(
        self, driver: Any, name: str, offer: Offer, user_data: str, key_ref: str, options: CreateOptions
    ) -> dict[str, str]:
        node = driver.create_node(
            name,
            offer.objects["size"],
            offer.objects["location"],
            image=offer.objects["image"],
            ex_ssh_key_ids=[key_ref],
            ex_enable_ipv6=True,
            ex_userdata=user_data,
            ex_hostname=name,
        )
        return {"id": str(node.id)}

    def node(self, driver: Any, record: Mapping[str, str]) -> NodeView:
        from libcloud.common.vultr import VultrException

        try:
            n = driver.ex_get_node(record["id"])
        except VultrException as e:
            if e.code == 404:
                return NodeView(record["id"], "gone")
            raise
        v4 = [ip for ip in n.public_ips if ":" not in ip and ip != NO_ADDRESS]
        v6 = [ip for ip in n.public_ips if ":" in ip]
        return NodeView(str(n.id), state_of(n.state), v4[0] if v4 else None, v6[0] if v6 else None)

    def destroy_node(self, driver: Any, record: Mapping[str, str]) -> list[str]:
        return destroy_by_id(self, driver, record, "Vultr server")
