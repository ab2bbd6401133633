"""A stand-in of DigitalOcean's API v2 on 127.0.0.1: the subset libcloud 3.9.1's DigitalOcean_v2_NodeDriver uses
(droplets, account keys, sizes, images, regions), in DigitalOcean's shapes and error bodies, over the real
boxes of a StandInCloud (core.py).

    with digitalocean.start() as do:           # real boxes in the e2e lane; start(PaperBoxes()) makes none
        driver = get_driver(Provider.DIGITAL_OCEAN)(do.token)
        do.attach(driver)                      # the driver now talks to do.url
        node = driver.create_node(name, size, image, location, ex_user_data=user_data)
        do.cloud.wait_state(int(node.id))      # "active" once the box's sshd answers
        do.cloud.requests_to("POST", "/v2/droplets")   # the request log (method, path, query, body)
        do.cloud.quota = 0; do.cloud.wrong_host_key = True; do.cloud.names_in_use.add(name)   # faults

The account keys a create names (`ssh_keys`, ids or fingerprints) reach the box as a cloud's metadata does: in
the seed's meta-data, never in the user data. A droplet is "new" with no networks while its box boots, then
"active" with the box's address as its public v4 (v6 stays empty); a box that failed to boot shows as "off".
Query strings are ignored but on list routes, which answer everything on one page.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from tests.standins.core import (
    NOT_FOUND,
    JsonFront,
    Node,
    Refused,
    Reply,
    Route,
    SSHKey,
    require,
)

# slug -> (the local image it boots, its numeric id, its name)
IMAGES = {
    "debian-13-x64": ("debian-13", 190000013, "13 x64"),
    "debian-12-x64": ("debian-12", 140000012, "12 x64"),
}
REGIONS = {"fra1": "Frankfurt 1", "nyc3": "New York 3", "ams3": "Amsterdam 3"}
# slug -> (memory MiB, vcpus, disk GB, transfer TB, price monthly)
SIZES = {
    "s-1vcpu-512mb-10gb": (512, 1, 10, 0.5, 4.0),
    "s-1vcpu-1gb": (1024, 1, 25, 1.0, 6.0),
    "s-1vcpu-2gb": (2048, 1, 50, 2.0, 12.0),
    "s-2vcpu-2gb": (2048, 2, 60, 3.0, 18.0),
}
IMAGE_CREATED = "2025-08-10T00:00:00Z"


def fingerprint(public_key: str) -> str:
    """DigitalOcean's key fingerprint: the MD5 of the key blob, colon hex (`ssh-keygen -E md5`), any key type."""
    try:
        blob = base64.b64decode(public_key.split()[1], validate=True)
    except (IndexError, ValueError):
        raise Refused("invalid", "Key invalid, key should be of the format `type key [comment]`") from None
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, 32, 2))


def _size(slug: str) -> dict[str, Any]:
    memory, vcpus, disk, transfer, monthly = SIZES[slug]
    return {
        "slug": slug,
        "memory": memory,
        "vcpus": vcpus,
        "disk": disk,
        "transfer": transfer,
        "price_monthly": monthly,
        "price_hourly": round(monthly / 672, 5),
        "regions": sorted(REGIONS),
        "available": True,
        "description": "Basic",
    }


def _image(slug: str) -> dict[str, Any]:
    _local, number, name = IMAGES[slug]
    return {
        "id": number,
        "name": name,
        "distribution": "Debian",
        "slug": slug,
        "public": True,
        "regions": sorted(REGIONS),
        "min_disk_size": 10,
        "created_at": IMAGE_CREATED,
        "type": "base",
        "status": "available",
    }


def _region(slug: str) -> dict[str, Any]:
    return {"slug": slug, "name": REGIONS[slug], "sizes": sorted(SIZES), "available": True, "features": ["ipv6"]}


def _key(key: SSHKey) -> dict[str, Any]:
    return {"id": key.id, "fingerprint": fingerprint(key.public_key), "public_key": key.public_key, "name": key.name}


def _listing(name: str, items: list[Any]) -> Reply:
    return Reply(200, {name: items, "links": {}, "meta": {"total": len(items)}})


class DigitalOceanStandIn(JsonFront):
    """DigitalOcean v2 over a StandInCloud."""

    def routes(self) -> list[Route]:
        n = r"(?P<ident>[^/]+)"
        return [
            ("POST", "/v2/droplets", self.create_droplet),
            ("GET", "/v2/droplets", lambda _b, _q: _listing("droplets", [self.droplet(x) for x in self.nodes()])),
            ("GET", f"/v2/droplets/{n}", lambda _b, _q, ident: Reply(200, {"droplet": self.droplet_of(ident)})),
            ("DELETE", f"/v2/droplets/{n}", self.delete_droplet),
            ("GET", "/v2/account/keys", lambda _b, _q: _listing("ssh_keys", [_key(k) for k in self.keys()])),
            ("POST", "/v2/account/keys", self.create_key),
            ("GET", f"/v2/account/keys/{n}", lambda _b, _q, ident: Reply(200, {"ssh_key": _key(self.find_key(ident))})),
            ("DELETE", f"/v2/account/keys/{n}", self.delete_key),
            ("GET", "/v2/sizes", lambda _b, _q: _listing("sizes", [_size(s) for s in SIZES])),
            ("GET", "/v2/images", lambda _b, _q: _listing("images", [_image(s) for s in IMAGES])),
            ("GET", "/v2/regions", lambda _b, _q: _listing("regions", [_region(s) for s in REGIONS])),
        ]

    def error_body(self, status: int, kind: str, message: str) -> Any:
        ids = {401: "Unauthorized", 404: "not_found"}
        if kind == "quota":
            message = "creating this/these droplet(s) will exceed your droplet limit"
        return {"id": ids.get(status, "unprocessable_entity"), "message": message}

    # ---- droplets

    def create_droplet(self, body: dict[str, Any], _query: object) -> Reply:
        name, size, image, region = require(body, "name", "size", "image", "region")
        slug = self._image_slug(image)
        if size not in SIZES:
            raise Refused("invalid", "You specified an invalid size for Droplet creation.")
        if region not in REGIONS:
            raise Refused("invalid", "You specified an invalid region for Droplet creation.")
        try:
            keys = [self.find_key(str(k)) for k in body.get("ssh_keys") or []]
        except Refused:
            raise Refused("invalid", "You specified an invalid SSH key for Droplet creation.") from None
        user_data = body.get("user_data")
        if user_data is not None and not isinstance(user_data, str):
            raise Refused("invalid", "user_data must be a string")
        node = self.cloud.create_node(
            str(name),
            IMAGES[slug][0],
            region,
            size,
            user_data or "",
            [k.public_key for k in keys],
            slug=slug,
            ssh_keys=[k.id for k in keys],
            ipv6=bool(body.get("ipv6")),
            tags=list(body.get("tags") or []),
        )
        links = {"actions": [{"id": node.id + 1, "rel": "create", "href": f"{self.url}/v2/actions/{node.id + 1}"}]}
        return Reply(202, {"droplet": self.droplet(node), "links": links})

    def _image_slug(self, image: object) -> str:
        for slug, (_local, number, _name) in IMAGES.items():
            if image in (slug, number, str(number)):
                return slug
        raise Refused("invalid", "You specified an invalid image for Droplet creation.")

    def delete_droplet(self, _body: object, _query: object, ident: str) -> Reply:
        self.cloud.delete_node(ident)
        return Reply(204)

    def droplet_of(self, ident: str) -> dict[str, Any]:
        return self.droplet(self.cloud.node(ident))

    def droplet(self, node: Node) -> dict[str, Any]:
        """A droplet as DigitalOcean shows it (every field libcloud's _to_node reads)."""
        status = {"new": "new", "active": "active", "failed": "off"}[node.state]
        v4, v6 = [], []
        if (up := node.booted) is not None:
            v4 = [{"ip_address": up.address, "netmask": up.netmask, "gateway": up.gateway, "type": "public"}]
            if node.extra.get("ipv6") and up.ipv6:  # asked for at create, as DigitalOcean gives it
                v6 = [{"ip_address": up.ipv6, "netmask": 64, "gateway": "", "type": "public"}]
        size = _size(node.size)
        return {
            "id": node.id,
            "name": node.name,
            "status": status,
            "created_at": node.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "networks": {"v4": v4, "v6": v6},
            "region": _region(node.region),
            "image": _image(node.extra["slug"]),
            "size": size,
            "size_slug": node.size,
            "memory": size["memory"],
            "vcpus": size["vcpus"],
            "disk": size["disk"],
            "locked": False,
            "kernel": None,
            "backup_ids": [],
            "snapshot_ids": [],
            "features": ["ipv6"] if node.extra.get("ipv6") else [],
            "tags": node.extra.get("tags", []),
            "volume_ids": [],
        }

    # ---- keys

    def create_key(self, body: dict[str, Any], _query: object) -> Reply:
        name, public_key = require(body, "name", "public_key")
        fingerprint(str(public_key))  # refuses what is not a key line
        return Reply(201, {"ssh_key": _key(self.cloud.add_key(str(name), str(public_key)))})

    def find_key(self, ident: str) -> SSHKey:
        """A key by id or by fingerprint, as DigitalOcean accepts both."""
        if ident.isdigit():
            return self.cloud.key(ident)
        for key in self.keys():
            if fingerprint(key.public_key) == ident:
                return key
        raise Refused("not_found", NOT_FOUND)

    def delete_key(self, _body: object, _query: object, ident: str) -> Reply:
        self.cloud.delete_key(self.find_key(ident).id)
        return Reply(204)

    # ---- for tests

    def attach(self, driver: Any) -> None:
        """Point a libcloud DigitalOcean driver at this stand-in (its constructor takes no host or port)."""
        connection = driver.connection
        connection.host = self.host
        connection.port = self.port
        connection.secure = False
        connection.connect()


start = DigitalOceanStandIn.start
