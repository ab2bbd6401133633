"""The stand-in clouds' fronts, through libcloud's real drivers, over boxes that are never made (PaperBoxes): the
shapes the drivers read, the faults a test switches on, and the request log. The boxes themselves (cloud-init
from the user data sent) are tests/e2e/test_cloud_standin.py's."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import paramiko
import pytest
import yaml
from libcloud.common.exceptions import BaseHTTPError
from libcloud.common.types import InvalidCredsError, LibcloudError
from libcloud.common.vultr import VultrException
from libcloud.compute.base import NodeDriver
from libcloud.compute.providers import get_driver
from libcloud.compute.types import NodeState, Provider

from miab_remote.transport.sshkeys import generate_ed25519
from tests.standins import digitalocean, linode, vultr
from tests.standins.core import PaperBoxes, replace_host_key
from tests.standins.digitalocean import DigitalOceanStandIn
from tests.standins.linode import LinodeStandIn
from tests.standins.vultr import VultrStandIn

NAME = "do1.cloudbox.test"


@pytest.fixture
def paper() -> PaperBoxes:
    return PaperBoxes()


@pytest.fixture
def do(paper: PaperBoxes) -> Iterator[DigitalOceanStandIn]:
    with digitalocean.start(paper) as standin:
        yield standin


def do_driver(standin: DigitalOceanStandIn, token: str | None = None) -> Any:  # the DigitalOcean driver
    driver = get_driver(Provider.DIGITAL_OCEAN)(token or standin.token)
    standin.attach(driver)
    return driver


def user_data(name: str = NAME) -> str:
    host = generate_ed25519(f"root@{name}")
    indented = "\n".join("    " + line for line in host.private_openssh.decode().splitlines())
    return (
        f"#cloud-config\nhostname: {name}\nfqdn: {name}\ndisable_root: false\nssh_deletekeys: true\n"
        f"ssh_keys:\n  ed25519_private: |\n{indented}\n  ed25519_public: {host.public_line}\n"
    )


def create(driver: NodeDriver, name: str = NAME, data: str | None = None, **choices: str) -> Any:
    """create_node with the given slugs (default the cheapest 1 GiB size, fra1, Debian 13)."""
    sizes = {s.id: s for s in driver.list_sizes()}
    images = {i.extra["slug"]: i for i in driver.list_images()}
    regions = {r.id: r for r in driver.list_locations()}
    size = sizes.get(choices.get("size", "s-1vcpu-1gb")) or _named(choices["size"], "size")
    image = images.get(choices.get("image", "debian-13-x64")) or _named(choices["image"], "image")
    region = regions.get(choices.get("region", "fra1")) or _named(choices["region"], "region")
    return driver.create_node(name, size, image, region, ex_user_data=data if data is not None else user_data(name))


def _named(slug: str, kind: str) -> Any:
    """An object naming a slug the stand-in does not offer (only .id/.name are sent)."""
    from libcloud.compute.base import NodeImage, NodeLocation, NodeSize

    if kind == "size":
        return NodeSize(slug, slug, 0, 0, 0, 0, None)
    if kind == "image":
        return NodeImage(slug, slug, None)
    return NodeLocation(slug, slug, "", None)


def wait_running(driver: NodeDriver, node_id: str) -> Any:
    deadline = time.monotonic() + 10
    while (node := driver.ex_get_node_details(node_id)).state != NodeState.RUNNING:
        assert time.monotonic() < deadline, f"still {node.state}"
        time.sleep(0.01)
    return node


def test_a_droplet_is_created_from_the_user_data_sent_and_becomes_active(
    do: DigitalOceanStandIn, paper: PaperBoxes
) -> None:
    driver = do_driver(do)
    data = user_data()
    node = create(driver, data=data)
    assert node.name == NAME and node.extra["size_slug"] == "s-1vcpu-1gb"
    assert node.image.extra["slug"] == "debian-13-x64"
    (post,) = do.cloud.requests_to("POST", "/v2/droplets")
    assert post.body == {"name": NAME, "size": "s-1vcpu-1gb", "image": "190000013", "region": "fra1", "user_data": data}
    assert post.query == {"per_page": ["200"]}, "libcloud's query string on a create is ignored"

    up = wait_running(driver, node.id)
    assert up.public_ips == ["192.0.2.1"]
    assert up.extra["networks"]["v6"] == []
    assert paper.made == {NAME: data}, "the box is seeded with exactly the user data sent"
    assert do.cloud.node(int(node.id)).image == "debian-13"
    assert [n.id for n in driver.list_nodes()] == [node.id]
    assert not any(do.token in repr(r) for r in do.cloud.requests), "the request log never holds the token"


def test_a_created_droplet_is_new_without_networks_until_its_box_is_up(paper: PaperBoxes) -> None:
    """A real cloud answers a create at once: the box boots in the background."""
    release = threading.Event()

    class SlowPaper(PaperBoxes):
        def make(self, name: str, user_data: str, image: str, public_keys: Any = ()) -> Any:
            assert release.wait(10)
            return super().make(name, user_data, image, public_keys)

    with digitalocean.start(SlowPaper()) as do:
        driver = do_driver(do)
        node = create(driver)
        assert node.state == NodeState.PENDING and node.public_ips == []
        assert driver.ex_get_node_details(node.id).state == NodeState.PENDING
        release.set()
        assert wait_running(driver, node.id).public_ips == ["192.0.2.1"]


def test_deleting_a_droplet_removes_its_box_and_close_removes_the_rest(paper: PaperBoxes) -> None:
    with digitalocean.start(paper) as do:
        driver = do_driver(do)
        gone, kept = create(driver), create(driver, "do2.cloudbox.test")
        assert driver.destroy_node(gone) is True
        (delete,) = do.cloud.requests_to("DELETE", r"/v2/droplets/\d+")
        assert delete.path == f"/v2/droplets/{gone.id}"
        with pytest.raises(BaseHTTPError, match=r"could not be found.*404"):
            driver.ex_get_node_details(gone.id)
        do.cloud.wait_removed()
        assert paper.removed == [NAME]
        assert [n.id for n in driver.list_nodes()] == [kept.id]
    assert sorted(set(paper.removed)) == [NAME, "do2.cloudbox.test"], "close removes every box the cloud made"


def test_account_keys_carry_digitaloceans_md5_fingerprint_also_for_ed25519(do: DigitalOceanStandIn) -> None:
    driver = do_driver(do)
    line = generate_ed25519("operator@laptop").public_line
    made = driver.create_key_pair("miab-remote", line)
    blob = base64.b64decode(line.split()[1])
    expected = paramiko.Ed25519Key(data=blob).get_fingerprint().hex()  # MD5 of the blob, as ssh-keygen -E md5
    assert made.fingerprint == ":".join(expected[i : i + 2] for i in range(0, 32, 2))
    assert made.fingerprint.replace(":", "") == hashlib.md5(blob).hexdigest()
    assert made.public_key == line and isinstance(made.extra["id"], int)
    assert [(k.name, k.fingerprint) for k in driver.list_key_pairs()] == [("miab-remote", made.fingerprint)]
    assert driver.get_key_pair("miab-remote").extra["id"] == made.extra["id"]
    with pytest.raises(BaseHTTPError, match=r"already in use.*422"):
        driver.create_key_pair("again", line)
    assert driver.delete_key_pair(made) is True
    assert driver.list_key_pairs() == []


def test_the_account_keys_a_create_names_reach_the_box_as_metadata_not_user_data(
    do: DigitalOceanStandIn, paper: PaperBoxes
) -> None:
    driver = do_driver(do)
    by_id = driver.create_key_pair("by-id", generate_ed25519("a").public_line)
    by_fingerprint = driver.create_key_pair("by-fingerprint", generate_ed25519("b").public_line)
    data = user_data()
    sizes, images, regions = driver.list_sizes(), driver.list_images(), driver.list_locations()
    node = driver.create_node(
        NAME,
        sizes[0],
        images[0],
        regions[0],
        ex_user_data=data,
        ex_create_attr={"ssh_keys": [by_id.extra["id"], by_fingerprint.fingerprint]},
    )
    do.cloud.wait_state(int(node.id))
    assert paper.public_keys[NAME] == [by_id.public_key, by_fingerprint.public_key]
    assert paper.made[NAME] == data
    with pytest.raises(BaseHTTPError, match=r"invalid SSH key.*422"):
        driver.create_node("do2.cloudbox.test", sizes[0], images[0], regions[0], ex_create_attr={"ssh_keys": ["00:11"]})


def test_sizes_images_and_regions(do: DigitalOceanStandIn) -> None:
    driver = do_driver(do)
    sizes = {s.id: s for s in driver.list_sizes()}
    assert sizes["s-1vcpu-1gb"].ram == 1024 and "fra1" in sizes["s-1vcpu-1gb"].extra["regions"]
    assert {i.extra["slug"] for i in driver.list_images()} == {"debian-13-x64", "debian-12-x64"}
    assert {r.id for r in driver.list_locations()} >= {"fra1", "nyc3", "ams3"}


def test_a_debian_12_droplet_boots_a_debian_12_box(do: DigitalOceanStandIn) -> None:
    driver = do_driver(do)
    node = create(driver, image="debian-12-x64")
    assert do.cloud.node(int(node.id)).image == "debian-12"


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ({"size": "s-64vcpu-512gb"}, "invalid size"),
        ({"region": "mars1"}, "invalid region"),
        ({"image": "ubuntu-14-04-x64"}, "invalid image"),
    ],
)
def test_an_unknown_size_region_or_image_is_refused_in_digitaloceans_shape(
    do: DigitalOceanStandIn, paper: PaperBoxes, choice: dict[str, str], message: str
) -> None:
    with pytest.raises(BaseHTTPError, match=f"{message} for Droplet creation.*code: 422"):
        create(do_driver(do), **choice)
    assert do.cloud.nodes == {} and paper.made == {}


def test_a_bad_token_is_refused_with_401_and_never_logged(do: DigitalOceanStandIn) -> None:
    driver = do_driver(do, token="wrong-" + "x" * 20)
    with pytest.raises(InvalidCredsError, match="Unable to authenticate you"):
        driver.list_nodes()
    (request,) = do.cloud.requests
    assert request.method == "GET" and request.path == "/v2/droplets"
    assert "wrong-" not in repr(do.cloud.requests)


def test_quota_and_names_in_use_are_refused(do: DigitalOceanStandIn, paper: PaperBoxes) -> None:
    driver = do_driver(do)
    do.cloud.quota = 1
    create(driver)
    with pytest.raises(BaseHTTPError, match=r"exceed your droplet limit.*422"):
        create(driver, "do2.cloudbox.test")
    do.cloud.quota = None
    with pytest.raises(BaseHTTPError, match=r"already in use.*422"):
        create(driver)  # a live droplet's name
    do.cloud.names_in_use.add("taken.cloudbox.test")
    with pytest.raises(BaseHTTPError, match=r"already in use.*422"):
        create(driver, "taken.cloudbox.test")
    assert list(paper.made) == [NAME]


def test_an_unknown_droplet_or_route_is_404(do: DigitalOceanStandIn) -> None:
    driver = do_driver(do)
    with pytest.raises(BaseHTTPError, match=r"could not be found.*404"):
        driver.ex_get_node_details("999")
    with pytest.raises(BaseHTTPError, match="404"):
        driver.connection.request("/v2/volumes")


def test_wrong_host_key_seeds_another_key_and_keeps_the_rest(do: DigitalOceanStandIn, paper: PaperBoxes) -> None:
    do.cloud.wrong_host_key = True
    data = user_data()
    node = do.cloud.node(int(create(do_driver(do), data=data).id))
    assert node.user_data == data
    sent, seeded = yaml.safe_load(data), yaml.safe_load(node.seeded_user_data)
    assert seeded["ssh_keys"]["ed25519_public"] == node.presented_host_key != sent["ssh_keys"]["ed25519_public"]
    assert seeded["ssh_keys"]["ed25519_private"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert {k: v for k, v in seeded.items() if k != "ssh_keys"} == {k: v for k, v in sent.items() if k != "ssh_keys"}
    assert node.seeded_user_data.startswith("#cloud-config\n")
    do.cloud.wait_state(node.id)
    assert paper.made[NAME] == node.seeded_user_data


def test_replace_host_key_adds_keys_to_user_data_without_any() -> None:
    seeded, public = replace_host_key("#cloud-config\nhostname: x.cloudbox.test\n", "x.cloudbox.test")
    private = yaml.safe_load(seeded)["ssh_keys"]["ed25519_private"]
    assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert yaml.safe_load(seeded) == {
        "hostname": "x.cloudbox.test",
        "ssh_keys": {"ed25519_private": private, "ed25519_public": public},
        "ssh_deletekeys": True,
    }


def test_a_box_that_fails_shows_as_off_and_the_wait_names_its_error(paper: PaperBoxes) -> None:
    class Broken(PaperBoxes):
        def make(self, name: str, user_data: str, image: str, public_keys: Any = ()) -> Any:
            raise RuntimeError("cloud-init reported errors: boom")

    with digitalocean.start(Broken()) as do:
        driver = do_driver(do)
        node = create(driver)
        with pytest.raises(AssertionError, match="boom"):
            do.cloud.wait_state(int(node.id))
        assert driver.ex_get_node_details(node.id).state == NodeState.STOPPED


# --------------------------------------------------------------------------- Linode v4


@pytest.fixture
def linode_api(paper: PaperBoxes) -> Iterator[LinodeStandIn]:
    with linode.start(paper) as standin:
        yield standin


def linode_driver(standin: LinodeStandIn, token: str | None = None) -> Any:
    return get_driver(Provider.LINODE)(token or standin.token, host=standin.host, port=standin.port, secure=False)


def linode_create(driver: Any, name: str = NAME, data: str | None = None, **choices: Any) -> Any:
    sizes = {s.id: s for s in driver.list_sizes()}
    images = {i.id: i for i in driver.list_images()}
    regions = {r.id: r for r in driver.list_locations()}
    return driver.create_node(
        regions[choices.pop("region", "eu-central")],
        name,
        sizes[choices.pop("size", "g6-nanode-1")],
        images[choices.pop("image", "linode/debian13")],
        root_pass="thrown-away-" + "x" * 20,
        ex_userdata=data if data is not None else user_data(name),
        **choices,
    )


def test_linode_instances_come_from_the_user_data_sent_base64_on_the_wire(
    linode_api: LinodeStandIn, paper: PaperBoxes
) -> None:
    driver = linode_driver(linode_api)
    data = user_data()
    operator = generate_ed25519("op").public_line
    node = linode_create(driver, data=data, ex_authorized_keys=[operator])
    assert node.state == NodeState.STARTING and node.public_ips == [] and node.created_at.year >= 2025
    (post,) = linode_api.cloud.requests_to("POST", "/v4/linode/instances")
    assert base64.b64decode(post.body["metadata"]["user_data"]).decode() == data
    assert post.body["label"] == NAME and post.body["type"] == "g6-nanode-1" and post.body["image"] == "linode/debian13"
    assert post.query == {"page_size": ["25"]}

    deadline = time.monotonic() + 10
    while (up := driver.ex_get_node(node.id)).state != NodeState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert up.public_ips == ["192.0.2.1"] and up.extra["location"] == "eu-central"
    assert paper.made == {NAME: data} and paper.public_keys[NAME] == [operator], "authorized_keys as metadata"
    assert [n.id for n in driver.list_nodes()] == [node.id]
    assert driver.destroy_node(node) is True
    with pytest.raises(LibcloudError, match="Not found Status code: 404"):
        driver.ex_get_node(node.id)
    linode_api.cloud.wait_removed()
    assert paper.removed == [NAME]


def test_linode_keys_types_images_regions(linode_api: LinodeStandIn) -> None:
    driver = linode_driver(linode_api)
    line = generate_ed25519("op").public_line
    key = driver.create_key_pair("miab-remote", line)
    assert key.public_key == line and key.fingerprint is None, "libcloud gives Linode keys no fingerprint"
    assert [k.public_key for k in driver.list_key_pairs()] == [line]
    assert {s.id: s.ram for s in driver.list_sizes()}["g6-nanode-1"] == 1024
    assert {i.id for i in driver.list_images()} == {"linode/debian13", "linode/debian12"}
    assert {r.id for r in driver.list_locations()} >= {"eu-central", "us-east"}


def test_linode_errors_in_linodes_shape(linode_api: LinodeStandIn, paper: PaperBoxes) -> None:
    with pytest.raises(InvalidCredsError, match="Invalid Token"):
        linode_driver(linode_api, "wrong").list_nodes()
    driver = linode_driver(linode_api)
    from libcloud.compute.base import NodeLocation

    with pytest.raises(LibcloudError, match="region is not valid-region Status code: 400"):
        driver.create_node(
            NodeLocation("mars", "mars", "", driver),
            NAME,
            driver.list_sizes()[0],
            driver.list_images()[0],
            root_pass="x" * 20,
        )
    linode_create(driver)
    with pytest.raises(LibcloudError, match="Label must be unique among your Linodes-label Status code: 400"):
        linode_create(driver)
    linode_api.cloud.quota = 1
    with pytest.raises(LibcloudError, match="Account Limit reached Status code: 400"):
        linode_create(driver, "ln2.cloudbox.test")
    assert list(paper.made) == [NAME]


# --------------------------------------------------------------------------- Vultr v2


@pytest.fixture
def vultr_api(paper: PaperBoxes) -> Iterator[VultrStandIn]:
    with vultr.start(paper) as standin:
        yield standin


def vultr_driver(standin: VultrStandIn, token: str | None = None) -> Any:
    return get_driver(Provider.VULTR)(token or standin.token, host=standin.host, port=standin.port, secure=False)


def vultr_create(driver: Any, name: str = NAME, data: str | None = None, **more: Any) -> Any:
    sizes = {s.id: s for s in driver.list_sizes(ex_list_bare_metals=False)}
    debian = {i.name.split(" x64")[0]: i for i in driver.list_images() if i.extra["family"] == "debian"}
    regions = {r.id: r for r in driver.list_locations()}
    return driver.create_node(
        name,
        sizes[more.pop("size", "vc2-1c-1gb")],
        regions[more.pop("region", "fra")],
        debian[more.pop("image", "Debian 13")],
        ex_userdata=data if data is not None else user_data(name),
        **more,
    )


def test_vultr_instances_come_from_the_user_data_sent_base64_on_the_wire(
    vultr_api: VultrStandIn, paper: PaperBoxes
) -> None:
    driver = vultr_driver(vultr_api)
    key = driver.import_key_pair_from_string("miab-remote", generate_ed25519("op").public_line)
    data = user_data()
    node = vultr_create(driver, data=data, ex_ssh_key_ids=[key.extra["id"]], ex_hostname=NAME)
    assert node.state == NodeState.PENDING and node.public_ips == ["0.0.0.0"], "Vultr's pending shape"
    (post,) = vultr_api.cloud.requests_to("POST", "/v2/instances")
    assert base64.b64decode(post.body["user_data"]).decode() == data
    assert post.body["os_id"] == "2625" and post.body["plan"] == "vc2-1c-1gb" and post.query == {"per_page": ["500"]}

    deadline = time.monotonic() + 10
    while (up := driver.ex_get_node(node.id)).state != NodeState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert up.public_ips == ["192.0.2.1"] and up.extra["location"] == "fra"
    assert paper.made == {NAME: data} and paper.public_keys[NAME] == [key.public_key], "sshkey_id as metadata"
    assert [n.id for n in driver.list_nodes(ex_list_bare_metals=False)] == [node.id]
    assert [n.id for n in driver.list_nodes()] == [node.id], "the bare-metal list is there, and empty"
    assert driver.destroy_node(node) is True
    with pytest.raises(VultrException, match="Not found"):
        driver.ex_get_node(node.id)
    vultr_api.cloud.wait_removed()
    assert paper.removed == [NAME]
    assert driver.delete_key_pair(key) is True and driver.list_key_pairs() == []


def test_vultr_a_debian_12_instance_and_the_errors(vultr_api: VultrStandIn, paper: PaperBoxes) -> None:
    with pytest.raises(VultrException, match="Invalid API token"):
        vultr_driver(vultr_api, "wrong").list_key_pairs()
    driver = vultr_driver(vultr_api)
    node = vultr_create(driver, image="Debian 12")
    assert vultr_api.cloud.node(int(node.id.replace("-", ""), 16)).image == "debian-12"
    with pytest.raises(VultrException, match=r"400.*Invalid region"):
        from libcloud.compute.base import NodeLocation

        driver.create_node(
            NAME, driver.list_sizes()[0], NodeLocation("mars", "mars", "", driver), driver.list_images()[0]
        )
    vultr_api.cloud.quota = 1
    with pytest.raises(VultrException, match="maximum monthly fee limit"):
        vultr_create(driver, "vu2.cloudbox.test")
    assert list(paper.made) == [NAME]
