"""A stand-in of Vultr's API v2 on 127.0.0.1: the subset libcloud 3.9.1's VultrNodeDriverV2 uses (instances, SSH
keys, plans, os, regions, and the empty bare-metal lists its list calls also read), in Vultr's shapes (UUID ids,
`meta.links.next`, `{"error": ...}`), over the real boxes of a StandInCloud (core.py).

    with vultr.start() as api:
        driver = get_driver(Provider.VULTR)(api.token, host=api.host, port=api.port, secure=False)
        node = driver.create_node(name, size, location, image, ex_userdata=user_data, ex_ssh_key_ids=[key_id])

The user data arrives base64-encoded (the driver encodes it) and is seeded decoded; `sshkey_id` keys reach the
box as metadata keys. An instance is "pending" with main_ip 0.0.0.0 while its box boots, then "active" and
running; a box that failed is active but "stopped". The create answers `default_password` as Vultr does (the
tool must never show it). The os ids are this stand-in's own: a client finds Debian by family and name.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import uuid
from typing import Any

from tests.standins.core import BAD_REQUEST_400, JsonFront, Node, Refused, Reply, Route, SSHKey, require

# os_id -> (the local image, its name)
OS = {2625: ("debian-13", "Debian 13 x64 (trixie)"), 2136: ("debian-12", "Debian 12 x64 (bookworm)")}
REGIONS = {"fra": ("Frankfurt", "DE", "Europe"), "ewr": ("New Jersey", "US", "North America")}
# id -> (vcpus, memory MiB, disk GB, bandwidth GB, monthly cost)
PLANS = {
    "vc2-1c-1gb": (1, 1024, 25, 1024, 5.0),
    "vc2-1c-2gb": (1, 2048, 55, 2048, 10.0),
    "vc2-2c-4gb": (2, 4096, 80, 3072, 20.0),
}
CREATED = "2025-08-10T00:00:00+00:00"


def _uuid(number: int) -> str:
    return str(uuid.UUID(int=number))


def _number(ident: str) -> str:
    """The cloud's id behind a UUID of ours ("x" for anything else: not found)."""
    try:
        return str(uuid.UUID(ident).int)
    except ValueError:
        return "x"


def _listing(key: str, items: list[Any]) -> Reply:
    return Reply(200, {key: items, "meta": {"total": len(items), "links": {"next": "", "prev": ""}}})


def _plan(plan_id: str) -> dict[str, Any]:
    vcpus, ram, disk, bandwidth, monthly = PLANS[plan_id]
    return {
        "id": plan_id,
        "vcpu_count": vcpus,
        "ram": ram,
        "disk": disk,
        "disk_count": 1,
        "bandwidth": bandwidth,
        "monthly_cost": monthly,
        "type": "vc2",
        "locations": sorted(REGIONS),
    }


def _os(os_id: int) -> dict[str, Any]:
    return {"id": os_id, "name": OS[os_id][1], "arch": "x64", "family": "debian"}


def _region(region_id: str) -> dict[str, Any]:
    city, country, continent = REGIONS[region_id]
    return {"id": region_id, "city": city, "country": country, "continent": continent, "options": ["ddos_protection"]}


def _key(key: SSHKey) -> dict[str, Any]:
    return {"id": _uuid(key.id), "date_created": CREATED, "name": key.name, "ssh_key": key.public_key}


class VultrStandIn(JsonFront):
    """Vultr v2 over a StandInCloud."""

    STATUS_OF = BAD_REQUEST_400

    def routes(self) -> list[Route]:
        n = r"(?P<ident>[^/]+)"
        return [
            ("POST", "/v2/instances", self.create_instance),
            ("GET", "/v2/instances", lambda _b, _q: _listing("instances", [self.instance(x) for x in self.nodes()])),
            ("GET", f"/v2/instances/{n}", lambda _b, _q, ident: Reply(200, {"instance": self.instance_of(ident)})),
            ("DELETE", f"/v2/instances/{n}", self.delete_instance),
            ("GET", "/v2/bare-metals", lambda _b, _q: _listing("bare_metals", [])),
            ("GET", "/v2/ssh-keys", lambda _b, _q: _listing("ssh_keys", [_key(k) for k in self.keys()])),
            ("POST", "/v2/ssh-keys", self.create_key),
            ("GET", f"/v2/ssh-keys/{n}", lambda _b, _q, ident: Reply(200, {"ssh_key": _key(self.find_key(ident))})),
            ("DELETE", f"/v2/ssh-keys/{n}", self.delete_key),
            ("GET", "/v2/plans", lambda _b, _q: _listing("plans", [_plan(p) for p in PLANS])),
            ("GET", "/v2/plans-metal", lambda _b, _q: _listing("plans_metal", [])),
            ("GET", "/v2/os", lambda _b, _q: _listing("os", [_os(o) for o in OS])),
            ("GET", "/v2/regions", lambda _b, _q: _listing("regions", [_region(r) for r in REGIONS])),
        ]

    def error_body(self, status: int, kind: str, message: str) -> Any:
        messages = {"unauthorized": "Invalid API token.", "not_found": "Not found"}
        if kind == "quota":
            message = "You have reached the maximum monthly fee limit for this account."
        return {"error": messages.get(kind, message), "status": status}

    # ---- instances

    def create_instance(self, body: dict[str, Any], _query: object) -> Reply:
        label, region, plan, os_id = require(body, "label", "region", "plan", "os_id")
        if region not in REGIONS:
            raise Refused("invalid", "Invalid region.")
        if plan not in PLANS:
            raise Refused("invalid", "Invalid plan.")
        image = OS.get(int(os_id)) if str(os_id).isdigit() else None
        if image is None:
            raise Refused("invalid", "Invalid os_id.")
        try:
            user_data = base64.b64decode(body.get("user_data") or "", validate=True).decode()
            keys = [self.find_key(str(k)) for k in body.get("sshkey_id") or []]
        except (binascii.Error, UnicodeDecodeError):
            raise Refused("invalid", "Invalid user_data: must be base64-encoded.") from None
        except Refused:
            raise Refused("invalid", "Invalid SSH key.") from None
        node = self.cloud.create_node(
            str(label),
            image[0],
            region,
            plan,
            user_data,
            [k.public_key for k in keys],
            os_id=int(os_id),
            hostname=body.get("hostname") or str(label),
            tag=body.get("tag") or "",
        )
        instance = self.instance(node)
        instance["default_password"] = secrets.token_urlsafe(12)  # as Vultr's create answer holds one
        return Reply(202, {"instance": instance})

    def delete_instance(self, _body: object, _query: object, ident: str) -> Reply:
        self.cloud.delete_node(_number(ident))
        return Reply(204)

    def instance_of(self, ident: str) -> dict[str, Any]:
        return self.instance(self.cloud.node(_number(ident)))

    def instance(self, node: Node) -> dict[str, Any]:
        """An instance as Vultr shows it (every field libcloud's _to_node reads)."""
        vcpus, ram, disk, bandwidth, _cost = PLANS[node.size]
        booted = node.booted
        return {
            "id": _uuid(node.id),
            "os": OS[node.extra["os_id"]][1],
            "ram": ram,
            "disk": disk,
            "main_ip": "0.0.0.0" if booted is None else booted.address,
            "vcpu_count": vcpus,
            "region": node.region,
            "plan": node.size,
            "date_created": node.created.isoformat(),
            "status": "pending" if node.state == "new" else "active",
            "allowed_bandwidth": bandwidth,
            "netmask_v4": "" if booted is None else booted.netmask,
            "gateway_v4": "0.0.0.0" if booted is None else booted.gateway,
            "power_status": "stopped" if node.state == "failed" else "running",
            "server_status": {"new": "none", "active": "ok", "failed": "locked"}[node.state],
            "v6_network": "",
            "v6_main_ip": "",
            "v6_network_size": 0,
            "label": node.name,
            "internal_ip": "",
            "kvm": "",
            "hostname": node.extra.get("hostname", node.name),
            "tag": node.extra.get("tag", ""),
            "tags": [],
            "os_id": node.extra["os_id"],
            "app_id": 0,
            "image_id": "",
            "firewall_group_id": "",
            "features": [],
        }

    # ---- keys

    def find_key(self, ident: str) -> SSHKey:
        return self.cloud.key(_number(ident))

    def create_key(self, body: dict[str, Any], _query: object) -> Reply:
        name, public_key = require(body, "name", "ssh_key")
        return Reply(201, {"ssh_key": _key(self.cloud.add_key(str(name), str(public_key)))})

    def delete_key(self, _body: object, _query: object, ident: str) -> Reply:
        self.cloud.delete_key(self.find_key(ident).id)
        return Reply(204)


start = VultrStandIn.start
