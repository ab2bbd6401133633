"""Amazon EC2 through libcloud's EC2NodeDriver (the query API, signed with Signature V4: libcloud would sign
with V2 in us-east-1 and eu-west-1 otherwise).

- Region: --region, else AWS_DEFAULT_REGION (or `region` in credentials.toml [ec2]), else eu-central-1.
- Image: the newest AMI the Debian project (account 136693071363) publishes as debian-13-amd64-* or
  debian-12-amd64-*; those images log in as `admin` with sudo, which is the login user recorded.
- The operator's key is imported once as a key pair named after its SHA-256, and found again by
  fingerprint: AWS gives an imported ed25519 key the base64 SHA-256 of its blob and an RSA key the MD5 of
  it; moto (the stand-in the tests run) hashes the key's DER form instead, so that form is accepted too.
- Each box gets its own security group opening exactly the ports its firewall opens (miab_remote/mail/ports.py),
  made before the instance and deleted after it; the instance's Name tag is the FQDN.
- `--elastic-ip`: an address allocated in the VPC domain once the instance runs and associated with it
  (a fixed address, and the one AWS sets reverse DNS for, on request).
- Destroy terminates the instance, waits until it is terminated (a security group in use cannot be deleted),
  deletes the group and releases the Elastic IP; the key pair stays, for the operator's next box.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from miab_remote.errors import InputError, ProviderError
from miab_remote.mail.ports import TCP_PORTS, UDP_PORTS
from miab_remote.providers.base import CreateOptions
from miab_remote.providers.cloud.adapter import CloudAdapter, NodeView, Offer, choose, choose_size, state_of
from miab_remote.providers.cloud.calls import CloudRefused
from miab_remote.providers.cloud.credentials import Credentials, Field
from miab_remote.providers.cloud.endpoint import Endpoint, driver_kwargs
from miab_remote.providers.cloud.keys import md5_hex, sha256_base64
from miab_remote.transport.sshkeys import parse_public_line

DEBIAN_OWNER = "136693071363"  # the Debian project's AWS account (wiki.debian.org/Cloud/AmazonEC2Image)
GROUP_PREFIX = "miab-remote "
KEY_PREFIX = "miab-remote-"
ANYWHERE = ["0.0.0.0/0"]
TERMINATE_TIMEOUT = 600.0  # seconds a destroy waits for the instance to be terminated
POLL = 5.0


def key_name(public_line: str) -> str:
    """The key pair's name: derived from the key, so the same key is always found under the same name."""
    _, blob = parse_public_line(public_line)
    return KEY_PREFIX + hashlib.sha256(blob).hexdigest()[:40]


def fingerprints(public_line: str) -> set[str]:
    """Every fingerprint EC2 (or moto) may report for this key once imported, normalised by `_plain`."""
    from cryptography.hazmat.primitives import serialization

    key_type, blob = parse_public_line(public_line)
    der = serialization.load_ssh_public_key(f"{key_type} {base64.b64encode(blob).decode()}".encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    moto = {hashlib.md5(der, usedforsecurity=False).hexdigest(), hashlib.sha256(der).hexdigest()}
    return {_plain(f) for f in (md5_hex(public_line), sha256_base64(public_line), *moto)}


def _plain(fp: str | None) -> str:
    """A fingerprint without its separators and padding (AWS pads base64, moto separates hex with ':')."""
    return (fp or "").strip().replace(":", "").rstrip("=")


def _aws_code(e: Exception, *codes: str) -> bool:
    """Whether libcloud's error carries one of AWS's error codes ("InvalidGroup.NotFound: ...")."""
    return any(str(e).startswith(f"{code}:") or f"\n{code}:" in str(e) for code in codes)


class EC2(CloudAdapter):
    name = "ec2"
    label = "AWS EC2"
    fields = (
        Field("access_key_id", "AWS_ACCESS_KEY_ID"),
        Field("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
        Field("region", "AWS_DEFAULT_REGION", secret=False),
    )
    required = ("access_key_id", "secret_access_key")
    endpoint_variable = "MIAB_REMOTE_EC2_ENDPOINT"
    default_endpoint = "https://ec2.REGION.amazonaws.com"
    default_region = "eu-central-1"  # Frankfurt
    default_size = "t3.micro"  # 1 GiB, 2 vCPUs: the smallest current type that runs the whole box
    images: ClassVar[Mapping[str, str]] = {"debian-13": "debian-13-amd64-*", "debian-12": "debian-12-amd64-*"}
    ssh_user = "admin"  # Debian's AMIs; the transport goes through `sudo -n`
    port25 = (
        "AWS blocks outbound port 25 from EC2 by default: ask to lift it with AWS's 'Request to remove email "
        "sending limitations' form (it wants an Elastic IP with its reverse DNS: create with --elastic-ip), or "
        "send through a relay (`miab-remote relay set`)"
    )
    reverse_dns = (
        "reverse DNS: EC2 sets it only for an Elastic IP, on request: once the box's A record points at the "
        "address, `aws ec2 modify-address-attribute --allocation-id ID --domain-name FQDN` (ID: the inventory's "
        "[node] elastic_ip); without an Elastic IP the box keeps Amazon's name, and a new address after a stop"
    )
    label_limit = 255 - len(GROUP_PREFIX)  # the security group is named after the box

    def __init__(self) -> None:
        self._amis: dict[str, Any] = {}  # name pattern -> the newest AMI, once looked up

    def check_options(self, options: CreateOptions) -> None:
        """--elastic-ip is this cloud's own."""

    def region(self, creds: Credentials, chosen: str | None) -> str:
        return chosen or creds.get("region") or self.default_region

    def connect(self, creds: Credentials, endpoint: Endpoint | None, region: str) -> Any:
        from libcloud.compute.drivers.ec2 import VALID_EC2_REGIONS
        from libcloud.compute.providers import Provider, get_driver

        region = choose("region", region, VALID_EC2_REGIONS, self.label, "--region or AWS_DEFAULT_REGION")
        return get_driver(Provider.EC2)(
            creds["access_key_id"],
            creds["secret_access_key"],
            region=region,
            signature_version="4",
            **driver_kwargs(endpoint),
        )

    def _newest(self, driver: Any, pattern: str) -> Any | None:
        if pattern not in self._amis:
            listed = driver.list_images(
                ex_owner=DEBIAN_OWNER, ex_filters={"name": pattern, "architecture": "x86_64", "state": "available"}
            )
            newest = max(listed, key=lambda i: (str(i.extra.get("creation_date") or ""), i.name), default=None)
            self._amis[pattern] = newest
        return self._amis[pattern]

    def offer(self, driver: Any, region: str, size: str, image: str, os_id: str) -> Offer:
        sizes = {s.id: s for s in driver.list_sizes()}
        size = choose_size(size, sizes, self.label, f" in {driver.region_name}")
        ami = self._newest(driver, image)
        if ami is None:
            raise InputError(
                f"{self.label} in {driver.region_name} has no Debian AMI named {image} (owner {DEBIAN_OWNER}); "
                "try another --region or --image; nothing was made"
            )
        return Offer(driver.region_name, size, ami.id, os_id, {"size": sizes[size], "image": ami})

    def offered_images(self, driver: Any) -> set[str]:
        return {pattern for pattern in self.images.values() if self._newest(driver, pattern) is not None}

    def ensure_key(self, driver: Any, public_line: str) -> str:
        ours, name = fingerprints(public_line), key_name(public_line)
        for kp in driver.list_key_pairs():
            if _plain(kp.fingerprint) in ours:
                return str(kp.name)
            if kp.name == name:
                raise CloudRefused(
                    f"{self.label}'s key pair {name} holds another key than yours; delete it or use another key; "
                    "nothing was made"
                )
        driver.import_key_pair_from_string(name, public_line)
        return name

    def node_names(self, driver: Any) -> dict[str, str]:
        from libcloud.compute.types import NodeState

        return {n.name: str(n.id) for n in driver.list_nodes() if n.state != NodeState.TERMINATED and n.name}

    def create_node(
        self, driver: Any, name: str, offer: Offer, user_data: str, key_ref: str, options: CreateOptions
    ) -> dict[str, str]:
        group_id = self._new_group(driver, GROUP_PREFIX + name, f"miab-remote: the ports {name} serves")
        try:
            for protocol, ports in (("tcp", TCP_PORTS), ("udp", UDP_PORTS)):
                for port in ports:
                    driver.ex_authorize_security_group_ingress(group_id, port, port, ANYWHERE, protocol=protocol)
            node = driver.create_node(
                name,
                offer.objects["size"],
                offer.objects["image"],
                ex_keyname=key_ref,
                ex_userdata=user_data,
                ex_security_groups=[GROUP_PREFIX + name],
            )
        except BaseException:
            # nothing runs in it yet; should this fail too, the run's error is the one to show (and the next
            # create replaces the group)
            with contextlib.suppress(Exception):
                driver.ex_delete_security_group_by_id(group_id)
            raise
        return {"id": str(node.id), "security_group": group_id, "key_name": key_ref}

    def _new_group(self, driver: Any, group: str, description: str) -> str:
        """The box's security group, made anew. One of that name is left only by a create killed before its
        instance ran (the name is checked unused first): it is deleted, and refused by AWS if in use."""
        from libcloud.common.exceptions import BaseHTTPError

        try:
            return str(driver.ex_create_security_group(group, description)["group_id"])
        except BaseHTTPError as e:
            if not _aws_code(e, "InvalidGroup.Duplicate"):
                raise
        for stale in driver.ex_get_security_groups(filters={"group-name": group}):
            driver.ex_delete_security_group_by_id(stale.id)
        return str(driver.ex_create_security_group(group, description)["group_id"])

    def finish_node(self, driver: Any, node: dict[str, str], view: NodeView, options: CreateOptions) -> NodeView:
        if not options.elastic_ip:
            return view
        address = driver.ex_allocate_address(domain="vpc")
        node["elastic_ip"] = address.extra["allocation_id"]  # recorded at once: a failure after this releases it
        driver.ex_associate_address_with_node(self._node(driver, node), address, domain="vpc")
        return NodeView(view.id, view.state, address.ip, view.ipv6)

    def _node(self, driver: Any, record: Mapping[str, str]) -> Any:
        from libcloud.compute.base import Node
        from libcloud.compute.types import NodeState

        return Node(record["id"], "", NodeState.UNKNOWN, [], [], driver)

    def node(self, driver: Any, record: Mapping[str, str]) -> NodeView:
        from libcloud.common.exceptions import BaseHTTPError

        try:
            found = driver.list_nodes(ex_node_ids=[record["id"]])
        except BaseHTTPError as e:
            if _aws_code(e, "InvalidInstanceID.NotFound"):
                return NodeView(record["id"], "gone")
            raise
        if not found:
            return NodeView(record["id"], "gone")
        n = found[0]
        return NodeView(str(n.id), state_of(n.state), n.public_ips[0] if n.public_ips else None)

    def destroy_node(self, driver: Any, record: Mapping[str, str]) -> list[str]:
        done = []
        if self.node(driver, record).state == "gone":
            done.append(f"instance {record['id']} was already terminated")
        else:
            driver.destroy_node(self._node(driver, record))
            self._wait_terminated(driver, record)
            done.append(f"terminated instance {record['id']}")
        if group := record.get("security_group"):
            done.append(self._delete_group(driver, group))
        if allocation := record.get("elastic_ip"):
            done.append(self._release(driver, allocation))
        if key := record.get("key_name"):
            done.append(f"kept key pair {key} (your SSH key, for the next box)")
        return done

    def _wait_terminated(self, driver: Any, record: Mapping[str, str]) -> None:
        deadline = time.monotonic() + TERMINATE_TIMEOUT
        while self.node(driver, record).state != "gone":
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"{self.label} instance {record['id']} was not terminated after {TERMINATE_TIMEOUT:.0f} s; its "
                    "security group and Elastic IP are kept: run the destroy again later"
                )
            time.sleep(POLL)

    def _delete_group(self, driver: Any, group: str) -> str:
        from libcloud.common.exceptions import BaseHTTPError

        deadline = time.monotonic() + TERMINATE_TIMEOUT
        while True:
            try:
                driver.ex_delete_security_group_by_id(group)
                return f"deleted security group {group}"
            except BaseHTTPError as e:
                if _aws_code(e, "InvalidGroup.NotFound"):
                    return f"security group {group} was already deleted"
                # a terminated instance's network interface lets go of its group a little later
                if not _aws_code(e, "DependencyViolation") or time.monotonic() > deadline:
                    raise
                time.sleep(POLL)

    def _release(self, driver: Any, allocation: str) -> str:
        from libcloud.common.exceptions import BaseHTTPError
        from libcloud.compute.drivers.ec2 import ElasticIP

        try:
            address = ElasticIP(None, "vpc", None, {"allocation_id": allocation})  # type: ignore[no-untyped-call]
            driver.ex_release_address(address, domain="vpc")
        except BaseHTTPError as e:
            if _aws_code(e, "InvalidAllocationID.NotFound"):
                return f"Elastic IP {allocation} was already released"
            raise
        return f"released Elastic IP {allocation}"
