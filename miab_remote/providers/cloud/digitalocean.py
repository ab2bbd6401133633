"""DigitalOcean through libcloud's DigitalOcean_v2_NodeDriver.

Its constructor takes no host or port (it drops them), so an endpoint is set on the connection it made.
User data goes as `ex_user_data` (plain text), the operator's key and IPv6 through `ex_create_attr`. The
droplet is named with the box's FQDN, from which DigitalOcean sets its reverse DNS (PTR)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

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
from miab_remote.providers.cloud.endpoint import Endpoint
from miab_remote.providers.cloud.keys import md5_hex, same_key


class DigitalOcean(CloudAdapter):
    name = "digitalocean"
    label = "DigitalOcean"
    fields = (Field("token", "DIGITALOCEAN_TOKEN"),)
    required = ("token",)
    endpoint_variable = "MIAB_REMOTE_DIGITALOCEAN_ENDPOINT"
    default_endpoint = "https://api.digitalocean.com"
    default_region = "fra1"
    default_size = "s-1vcpu-1gb"
    images: ClassVar[Mapping[str, str]] = {"debian-13": "debian-13-x64", "debian-12": "debian-12-x64"}
    port25 = (
        "DigitalOcean blocks outbound port 25 on new accounts: ask its support to lift it, or send through a "
        "relay (`miab-remote relay set`)"
    )
    label_limit = 255

    def connect(self, creds: Credentials, endpoint: Endpoint | None, region: str) -> Any:
        from libcloud.compute.providers import Provider, get_driver

        driver = get_driver(Provider.DIGITAL_OCEAN)(creds["token"])
        if endpoint is not None:
            conn = driver.connection
            conn.host, conn.port, conn.secure = endpoint.host, endpoint.port, endpoint.secure
            conn.connect()  # type: ignore[no-untyped-call]
        return driver

    def offer(self, driver: Any, region: str, size: str, image: str, os_id: str) -> Offer:
        locations = {loc.id: loc for loc in driver.list_locations()}
        region = choose("region", region, locations, self.label, "--region")
        sizes = {s.id: s for s in driver.list_sizes(location=locations[region])}
        size = choose_size(size, sizes, self.label, f" in {region}")
        images = {i.id: i for i in self._images(driver)}
        image = choose("image", image, images, self.label, "--image")
        return Offer(
            region, size, image, os_id, {"location": locations[region], "size": sizes[size], "image": images[image]}
        )

    def _images(self, driver: Any) -> list[Any]:
        from libcloud.compute.base import NodeImage

        # The API takes a distribution image's slug as its id; libcloud's ids are numeric, its slugs in extra.
        listed = self.listed_images(driver)
        return [NodeImage(id=i.extra.get("slug") or i.id, name=i.name, driver=driver) for i in listed]

    def offered_images(self, driver: Any) -> set[str]:
        return {i.id for i in self._images(driver)}

    def ensure_key(self, driver: Any, public_line: str) -> str:
        fingerprint = md5_hex(public_line)
        for kp in driver.list_key_pairs():
            if kp.fingerprint == fingerprint or (kp.public_key and same_key(kp.public_key, public_line)):
                return str(kp.fingerprint or fingerprint)
        comment = public_line.split()[2] if len(public_line.split()) > 2 else fingerprint
        driver.create_key_pair(f"miab-remote {comment}"[:255], public_line)
        return fingerprint

    def node_names(self, driver: Any) -> dict[str, str]:
        return {n.name: str(n.id) for n in driver.list_nodes()}

    def create_node(
        self, driver: Any, name: str, offer: Offer, user_data: str, key_ref: str, options: CreateOptions
    ) -> dict[str, str]:
        node = driver.create_node(
            name,
            offer.objects["size"],
            offer.objects["image"],
            offer.objects["location"],
            ex_create_attr={"ssh_keys": [key_ref], "ipv6": True},
            ex_user_data=user_data,
        )
        return {"id": str(node.id)}

    def node(self, driver: Any, record: Mapping[str, str]) -> NodeView:
        from libcloud.common.exceptions import BaseHTTPError

        try:
            n = driver.ex_get_node_details(record["id"])
        except BaseHTTPError as e:
            if getattr(e, "code", None) == 404:
                return NodeView(record["id"], "gone")
            raise
        v6 = [a["ip_address"] for a in (n.extra.get("networks") or {}).get("v6", []) if a.get("type") == "public"]
        return NodeView(
            str(n.id),
            state_of(n.state),
            n.public_ips[0] if n.public_ips else None,
            v6[0] if v6 else None,
        )

    def destroy_node(self, driver: Any, record: Mapping[str, str]) -> list[str]:
        return destroy_by_id(self, driver, record, "droplet")
