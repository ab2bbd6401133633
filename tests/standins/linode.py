"""A stand-in of Linode's API v4 on 127.0.0.1: the subset libcloud 3.9.1's LinodeNodeDriverV4 uses (instances,
profile SSH keys, types, images, regions), in Linode's shapes (`created` without a zone, as the driver parses it;
`{"errors": [{"reason", "field"}]}`), over the real boxes of a StandInCloud (core.py).

    with linode.start() as api:
        driver = get_driver(Provider.LINODE)(api.token, host=api.host, port=api.port, secure=False)
        node = driver.create_node(location, name, size, image, root_pass=..., ex_userdata=user_data)

The user data arrives base64-encoded in `metadata.user_data` (the driver encodes it) and is seeded decoded;
`authorized_keys` reach the box as metadata keys, as Linode puts them in root's authorized_keys. An instance is
"provisioning" with no address while its box boots, then "running"; a box that failed shows as "offline".
Linode answers a create before the address exists here (a real one has it at once). libcloud counts 10.x
addresses, as the local boxes' are, among `private_ips`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from tests.standins.core import BAD_REQUEST_400, JsonFront, Node, Refused, Reply, Route, require

IMAGES = {"linode/debian13": ("debian-13", "Debian 13"), "linode/debian12": ("debian-12", "Debian 12")}
REGIONS = {"eu-central": "de", "us-east": "us", "eu-west": "gb"}
# id -> (label, memory MiB, vcpus, disk MiB, transfer GB, monthly price)
TYPES = {
    "g6-nanode-1": ("Nanode 1GB", 1024, 1, 25600, 1000, 5.0),
    "g6-standard-1": ("Linode 2GB", 2048, 1, 51200, 2000, 12.0),
    "g6-standard-2": ("Linode 4GB", 4096, 2, 81920, 4000, 24.0),
}
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"  # what LinodeNodeDriverV4._to_datetime parses (no zone)
CREATED = "2025-08-10T00:00:00"


def _page(items: list[Any]) -> Reply:
    return Reply(200, {"data": items, "page": 1, "pages": 1, "results": len(items)})


def _type(type_id: str) -> dict[str, Any]:
    label, memory, vcpus, disk, transfer, monthly = TYPES[type_id]
    return {
        "id": type_id,
        "label": label,
        "class": "nanode" if "nanode" in type_id else "standard",
        "price": {"hourly": round(monthly / 720, 4), "monthly": monthly},
        "addons": {"backups": {"price": {"hourly": 0.003, "monthly": 2.0}}},
        "successor": None,
        "transfer": transfer,
        "vcpus": vcpus,
        "gpus": 0,
        "memory": memory,
        "disk": disk,
        "network_out": 1000,
    }


def _image(image_id: str) -> dict[str, Any]:
    return {
        "id": image_id,
        "label": IMAGES[image_id][1],
        "type": "manual",
        "description": "",
        "created": CREATED,
        "created_by": "linode",
        "is_public": True,
        "size": 1300,
        "eol": None,
        "vendor": "Debian",
        "deprecated": False,
    }


def _region(region_id: str) -> dict[str, Any]:
    return {
        "id": region_id,
        "country": REGIONS[region_id],
        "capabilities": ["Linodes", "Metadata"],
        "status": "ok",
        "resolvers": {"ipv4": "192.0.2.53", "ipv6": "2001:db8::53"},
    }


class LinodeStandIn(JsonFront):
    """Linode v4 over a StandInCloud."""

    STATUS_OF = BAD_REQUEST_400

    def routes(self) -> list[Route]:
        n = r"(?P<ident>[^/]+)"
        return [
            ("POST", "/v4/linode/instances", self.create_instance),
            ("GET", "/v4/linode/instances", lambda _b, _q: _page([self.instance(x) for x in self.nodes()])),
            ("GET", f"/v4/linode/instances/{n}", lambda _b, _q, ident: Reply(200, self.instance_of(ident))),
            ("DELETE", f"/v4/linode/instances/{n}", self.delete_instance),
            ("GET", "/v4/profile/sshkeys", lambda _b, _q: _page([self.key(k.id) for k in self.keys()])),
            ("POST", "/v4/profile/sshkeys", self.create_key),
            ("GET", f"/v4/profile/sshkeys/{n}", lambda _b, _q, ident: Reply(200, self.key(ident))),
            ("DELETE", f"/v4/profile/sshkeys/{n}", self.delete_key),
            ("GET", "/v4/linode/types", lambda _b, _q: _page([_type(t) for t in TYPES])),
            ("GET", "/v4/images", lambda _b, _q: _page([_image(i) for i in IMAGES])),
            ("GET", "/v4/regions", lambda _b, _q: _page([_region(r) for r in REGIONS])),
        ]

    def error_body(self, status: int, kind: str, message: str) -> Any:
        reasons = {"unauthorized": "Invalid Token", "not_found": "Not found", "quota": "Account Limit reached"}
        error: dict[str, Any] = {"reason": reasons.get(kind, message)}
        if kind == "name_in_use":
            error = {"reason": "Label must be unique among your Linodes", "field": "label"}
        elif kind == "invalid" and " is required" in message:
            error = {"reason": "This field is required", "field": message.split()[0]}
        elif kind == "invalid" and message.startswith("field "):
            field, _, reason = message.removeprefix("field ").partition(": ")
            error = {"reason": reason, "field": field}
        return {"errors": [error]}

    # ---- instances

    def create_instance(self, body: dict[str, Any], _query: object) -> Reply:
        region, type_id, label = require(body, "region", "type", "label")
        image = body.get("image")
        if image not in IMAGES:
            raise Refused("invalid", f"field image: image is not valid: {image!r}")
        require(body, "root_pass")  # Linode wants one with every image
        if type_id not in TYPES:
            raise Refused("invalid", "field type: A valid plan type by that ID was not found")
        if region not in REGIONS:
            raise Refused("invalid", "field region: region is not valid")
        encoded = (body.get("metadata") or {}).get("user_data") or ""
        try:
            user_data = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise Refused("invalid", "field metadata.user_data: must be base64-encoded") from None
        keys = [str(k) for k in body.get("authorized_keys") or []]
        node = self.cloud.create_node(
            str(label), IMAGES[image][0], region, type_id, user_data, keys, slug=image, tags=body.get("tags") or []
        )
        return Reply(200, self.instance(node))

    def delete_instance(self, _body: object, _query: object, ident: str) -> Reply:
        self.cloud.delete_node(ident)
        return Reply(200, {})

    def instance_of(self, ident: str) -> dict[str, Any]:
        return self.instance(self.cloud.node(ident))

    def instance(self, node: Node) -> dict[str, Any]:
        """An instance as Linode shows it (every field libcloud's _to_node reads)."""
        _label, memory, vcpus, disk, transfer, _price = TYPES[node.size]
        created = node.created.strftime(TIME_FORMAT)
        return {
            "id": node.id,
            "label": node.name,
            "status": {"new": "provisioning", "active": "running", "failed": "offline"}[node.state],
            "created": created,
            "updated": created,
            "region": node.region,
            "type": node.size,
            "image": node.extra["slug"],
            "group": "",
            "ipv4": [] if node.booted is None else [node.booted.address],
            "ipv6": None,
            "tags": node.extra.get("tags", []),
            "hypervisor": "kvm",
            "specs": {"disk": disk, "memory": memory, "vcpus": vcpus, "gpus": 0, "transfer": transfer},
            "alerts": {"cpu": 90, "network_in": 10, "network_out": 10, "transfer_quota": 80, "io": 10000},
            "backups": {"enabled": False, "available": False, "schedule": {"day": None, "window": None}},
            "watchdog_enabled": True,
        }

    # ---- keys

    def key(self, ident: int | str) -> dict[str, Any]:
        key = self.cloud.key(ident)
        return {"id": key.id, "label": key.name, "ssh_key": key.public_key, "created": CREATED}

    def create_key(self, body: dict[str, Any], _query: object) -> Reply:
        label, public_key = require(body, "label", "ssh_key")
        return Reply(200, self.key(self.cloud.add_key(str(label), str(public_key)).id))

    def delete_key(self, _body: object, _query: object, ident: str) -> Reply:
        self.cloud.delete_key(ident)
        return Reply(200, {})


start = LinodeStandIn.start
