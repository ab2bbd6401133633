"""The EC2 stand-in (tests/standins/ec2.py) through libcloud's real EC2 driver: moto answers, each instance
gets a box made from exactly the user data sent, shown pending until it answers and then at its address."""

from __future__ import annotations

import os
import time

import pytest
import yaml
from libcloud.compute.drivers.ec2 import EC2NodeDriver

from miab_remote.providers.cloud import userdata
from miab_remote.transport.sshkeys import generate_ed25519
from tests.standins import ec2
from tests.standins.loopback import LoopbackBoxes

OPERATOR = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGTRIXqSTHnKyIYRyTxjqFAT3oRSI1iIs2uTcMPfu6HE op@laptop"


def test_instances_get_boxes_from_their_user_data() -> None:
    if os.geteuid() != 0:
        pytest.skip("the stand-in servers listen on port 22 of loopback addresses: run as root (as the CI does)")
    boxes = LoopbackBoxes()
    with ec2.start(boxes) as aws:
        driver = EC2NodeDriver("AKIDSTANDIN", "not-checked", host="127.0.0.1", port=aws.port, secure=False,
                               region="us-east-1", signature_version="4")  # fmt: skip
        images = driver.list_images(ex_owner=ec2.DEBIAN_OWNER, ex_filters={"name": "debian-13-amd64-*"})
        assert sorted(i.name for i in images) == ["debian-13-amd64-20250801-2190", "debian-13-amd64-20251117-2299"]
        data = userdata.render("b.example.org", generate_ed25519("root@b.example.org"), OPERATOR, "admin")
        size = next(s for s in driver.list_sizes() if s.id == "t3.micro")
        node = driver.create_node("b.example.org", size, images[0], ex_userdata=data)
        assert (node.state, node.public_ips) == ("pending", [])
        deadline = time.monotonic() + 20
        while not (seen := driver.list_nodes(ex_node_ids=[node.id])[0]).public_ips:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert seen.state == "running" and seen.public_ips[0].startswith("127.")
        assert boxes.seen_user_data == {"b.example.org": data}, "the box got exactly the user data sent"
        assert yaml.safe_load(data)["users"][0]["name"] == "admin"
        [run] = aws.called("RunInstances")
        assert run["TagSpecification.1.Tag.1.Value"] == "b.example.org"
        driver.destroy_node(seen)
        assert driver.list_nodes(ex_node_ids=[node.id])[0].state == "terminated"
        assert aws.instances == {} and boxes.listeners == {}
