"""End to end: libcloud's real DigitalOcean driver against the stand-in API (tests/standins) creates a droplet that is
a real local box booted by Debian's cloud-init from exactly the user data sent, on each release.

The user data is built here as a client would: a host key pair made in the test, an authorized key, root login
allowed. The box must then present exactly that host key (pinned by paramiko before authentication), have the
FQDN as hostname, no other host key and no default user, and a `cloud-init status` of done; DELETE removes it.
With the stand-in's wrong_host_key switch, a real sshd presents another key and the pinned connection is refused;
that droplet gets the operator's key as a registered account key (metadata) instead of in the user data.
Boxes live in this lane's network (MIAB_E2E_LANE); traffic goes to 127.0.0.1 and to the boxes only.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from libcloud.compute.providers import get_driver
from libcloud.compute.types import NodeState, Provider

from miab_remote.errors import ProviderError
from miab_remote.providers.local import LocalProvider
from miab_remote.transport.sshkeys import KeyPair, generate_ed25519
from tests.e2e import helpers
from tests.standins import digitalocean, linode, vultr
from tests.standins.core import LocalBoxes, lane_config
from tests.standins.digitalocean import DigitalOceanStandIn

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 300.0


def box_name(image: str, what: str) -> str:
    return f"{what}-{image.replace('debian-', 'd')}.cloudbox.test"


@pytest.fixture(scope="module")
def provider() -> LocalProvider:
    local = LocalProvider(lane_config())
    try:
        local.check_requirements()
    except ProviderError as exc:
        pytest.skip(str(exc))
    return local


@pytest.fixture(scope="module")
def do(provider: LocalProvider, image: str) -> Iterator[DigitalOceanStandIn]:
    """One stand-in per release; closing it removes every box it made."""
    for what in ("do", "wrongkey", "broken", "nosshd", "linode", "vultr"):
        provider.destroy(box_name(image, what))  # what a killed earlier run left behind
    boxes = LocalBoxes(provider.config())
    boxes.warm(image)  # the release's cloud-init tree, built here once so that the tests' waits are only boots
    with digitalocean.start(boxes) as standin:
        yield standin


@pytest.fixture(scope="module")
def operator(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeyPair, Path]:
    folder = tmp_path_factory.mktemp("operator")
    identity = helpers.operator_key(folder)
    return KeyPair(identity.read_bytes(), (folder / "id_ed25519.pub").read_text().strip()), identity


def cloud_config(name: str, host_key: KeyPair, authorized: str | None, **more: str) -> str:
    """The user data a client sends: the host key made on its side, its key for root (or None: an account key
    named in the create brings it), the FQDN as hostname."""
    private = "\n".join("    " + line for line in host_key.private_openssh.decode().splitlines())
    extra = "".join(f"{key}: {value}\n" for key, value in more.items())
    if authorized is not None:
        extra = f"ssh_authorized_keys:\n  - {authorized}\n" + extra
    return (
        "#cloud-config\n"
        f"hostname: {name}\n"
        f"fqdn: {name}\n"
        "prefer_fqdn_over_hostname: true\n"
        "disable_root: false\n"
        "users: []\n"
        "ssh_deletekeys: true\n"
        "ssh_keys:\n"
        f"  ed25519_private: |\n{private}\n"
        f"  ed25519_public: {host_key.public_line}\n"
        f"{extra}"
    )


def do_driver(standin: DigitalOceanStandIn) -> Any:
    driver = get_driver(Provider.DIGITAL_OCEAN)(standin.token)
    standin.attach(driver)
    return driver


def create_droplet(driver: Any, name: str, image: str, user_data: str, **attrs: Any) -> Any:
    """create_node on the stand-in, the droplet image being the slug of the local release `image`."""
    (slug,) = [s for s, (local, _id, _name) in digitalocean.IMAGES.items() if local == image]
    size = next(s for s in driver.list_sizes() if s.id == "s-1vcpu-1gb")
    droplet_image = next(i for i in driver.list_images() if i.extra["slug"] == slug)
    region = next(r for r in driver.list_locations() if r.id == "fra1")
    node = driver.create_node(name, size, droplet_image, region, ex_user_data=user_data, ex_create_attr=attrs)
    assert node.state == NodeState.PENDING and node.public_ips == [], "a create answers at once, the box boots later"
    return node


def wait_running(driver: Any, standin: DigitalOceanStandIn, node: Any) -> Any:
    """Poll the droplet as a client does until it is active; a box that failed names its error at once."""
    found: list[Any] = []

    def running() -> bool:
        record = standin.cloud.node(int(node.id))
        assert record.state != "failed", f"the box failed: {record.error}"
        found[:] = [driver.ex_get_node_details(node.id)]
        return bool(found[0].state == NodeState.RUNNING)

    helpers.wait_until(running, f"droplet {node.name} active", timeout=BOOT_TIMEOUT)
    return found[0]


def test_a_droplet_is_a_box_cloud_init_booted_with_the_injected_host_key(
    do: DigitalOceanStandIn, provider: LocalProvider, operator: tuple[KeyPair, Path], image: str
) -> None:
    name = box_name(image, "do")
    host_key = generate_ed25519(f"root@{name}")
    user_data = cloud_config(name, host_key, operator[0].public_line)
    driver = do_driver(do)
    node = wait_running(driver, do, create_droplet(driver, name, image, user_data))
    (address,) = node.public_ips
    assert provider.status(name) == "running"

    box = helpers.Box(address, host_key.public_line, operator[1])  # pinned to exactly the injected key
    assert box.run("id -u")[1].strip() == "0", "root logs in with the authorized key (disable_root: false)"
    assert box.run("hostname")[1].strip() == name
    assert box.run("cat /etc/hostname")[1] == name + "\n"
    assert "status: done" in box.run("cloud-init status --wait")[1]
    assert box.run("ls /etc/ssh/ | grep ssh_host_")[1].split() == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    assert box.run("cat /etc/ssh/ssh_host_ed25519_key.pub")[1].split()[:2] == host_key.public_line.split()[:2]
    assert box.run("cat /root/.ssh/authorized_keys")[1].strip() == operator[0].public_line, "no 'login as' prefix"
    assert box.run("id debian", check=False)[0] != 0, "users: [] leaves the default user out"
    seeded = box.run("sha256sum /var/lib/cloud/seed/nocloud/user-data")[1].split()[0]
    assert seeded == hashlib.sha256(user_data.encode()).hexdigest(), "seeded with exactly the user data sent"
    resolv = box.run("cat /etc/resolv.conf")[1]
    assert resolv == f"nameserver {helpers.HOST_ADDRESS}\n", "the network is the local provider's, not cloud-init's"

    assert driver.destroy_node(node) is True
    assert [r.path for r in do.cloud.requests_to("DELETE", r"/v2/droplets/\d+")] == [f"/v2/droplets/{node.id}"]
    do.cloud.wait_removed()
    assert provider.status(name) == "absent"


def test_with_wrong_host_key_the_box_presents_another_key_and_pinning_refuses_it(
    do: DigitalOceanStandIn, provider: LocalProvider, operator: tuple[KeyPair, Path], image: str
) -> None:
    """The operator's key comes as an account key this time (DigitalOcean's ssh_keys), through the metadata."""
    name = box_name(image, "wrongkey")
    host_key = generate_ed25519(f"root@{name}")
    driver = do_driver(do)
    account_key = driver.create_key_pair(f"operator-{image}", operator[0].public_line)
    do.cloud.wrong_host_key = True
    try:
        user_data = cloud_config(name, host_key, None)
        node = create_droplet(driver, name, image, user_data, ssh_keys=[account_key.fingerprint])
    finally:
        do.cloud.wrong_host_key = False
    (address,) = wait_running(driver, do, node).public_ips
    presented = do.cloud.node(int(node.id)).presented_host_key
    assert presented is not None and presented.split()[1] != host_key.public_line.split()[1]

    with pytest.raises(paramiko.SSHException, match="host key mismatch"):
        helpers.Box(address, host_key.public_line, operator[1]).run("true")
    other = helpers.Box(address, presented, operator[1])
    assert other.run("cat /etc/ssh/ssh_host_ed25519_key.pub")[1].split()[:2] == presented.split()[:2], (
        "a real sshd serves the key the stand-in swapped in"
    )
    assert other.run("cat /root/.ssh/authorized_keys")[1].strip() == operator[0].public_line, "from the metadata"
    assert driver.delete_key_pair(account_key) is True
    assert driver.destroy_node(node) is True
    do.cloud.wait_removed()
    assert provider.status(name) == "absent"


def test_a_box_whose_cloud_init_fails_is_an_error_with_its_logs_and_leaves_nothing(
    provider: LocalProvider, operator: tuple[KeyPair, Path], image: str
) -> None:
    name = box_name(image, "broken")
    failing = "[ [ sh, -c, 'echo boom-$((6*7)) >&2; exit 3' ] ]"  # the log must show its output: boom-42
    user_data = cloud_config(name, generate_ed25519("k"), operator[0].public_line, runcmd=failing)
    with pytest.raises(ProviderError) as failed:
        provider.create_seeded(name, user_data, image=image, boot_timeout=BOOT_TIMEOUT)
    message = str(failed.value)
    assert "cloud-init reported errors" in message and "scripts_user" in message
    assert "/var/log/cloud-init-output.log" in message and "boom-42" in message, "the tail of the box's log"
    assert provider.status(name) == "absent"


def test_a_box_whose_sshd_never_starts_times_out_with_cloud_inits_logs_and_leaves_nothing(
    provider: LocalProvider, operator: tuple[KeyPair, Path], image: str
) -> None:
    """A host key sshd cannot load: cloud-init installs it, sshd refuses to start without a usable key."""
    name = box_name(image, "nosshd")
    user_data = (
        f"#cloud-config\nhostname: {name}\nssh_deletekeys: true\n"
        "ssh_keys:\n  ed25519_private: 'not a key'\n  ed25519_public: 'ssh-ed25519 AAAA not-a-key'\n"
    )
    with pytest.raises(ProviderError, match=r"cloud-init has finished but sshd on .*:22 did not answer") as failed:
        provider.create_seeded(name, user_data, image=image, boot_timeout=BOOT_TIMEOUT)
    assert "cloud-init's logs in the box" in str(failed.value) and "/var/log/cloud-init.log:\n" in str(failed.value)
    assert provider.status(name) == "absent"


@pytest.mark.parametrize("cloud", ["linode", "vultr"])
def test_linode_and_vultr_instances_are_boxes_cloud_init_booted_too(
    provider: LocalProvider, operator: tuple[KeyPair, Path], image: str, cloud: str
) -> None:
    """Through libcloud's Linode v4 and Vultr v2 drivers: base64 user data on the wire, seeded decoded, the operator's
    key through each API's own way (Linode's authorized_keys, Vultr's registered key), then destroy."""
    name = box_name(image, cloud)
    host_key = generate_ed25519(f"root@{name}")
    user_data = cloud_config(name, host_key, None)
    front = linode if cloud == "linode" else vultr
    with front.start() as api:
        driver = get_driver(Provider.LINODE if cloud == "linode" else Provider.VULTR)(
            api.token, host=api.host, port=api.port, secure=False
        )
        if cloud == "linode":
            (slug,) = [i for i, (local, _label) in linode.IMAGES.items() if local == image]
            node = driver.create_node(
                next(r for r in driver.list_locations() if r.id == "eu-central"),
                name,
                next(s for s in driver.list_sizes() if s.id == "g6-nanode-1"),
                next(i for i in driver.list_images() if i.id == slug),
                root_pass=secrets.token_urlsafe(24),  # Linode wants one; the box's root logs in by key only
                ex_authorized_keys=[operator[0].public_line],
                ex_userdata=user_data,
            )
        else:
            (os_id,) = [str(o) for o, (local, _name) in vultr.OS.items() if local == image]
            key = driver.import_key_pair_from_string("operator", operator[0].public_line)
            node = driver.create_node(
                name,
                next(s for s in driver.list_sizes(ex_list_bare_metals=False) if s.id == "vc2-1c-1gb"),
                next(r for r in driver.list_locations() if r.id == "fra"),
                next(i for i in driver.list_images() if str(i.id) == os_id),
                ex_ssh_key_ids=[key.extra["id"]],
                ex_userdata=user_data,
            )
        (record,) = api.cloud.nodes.values()
        found: list[Any] = []

        def running() -> bool:
            assert record.state != "failed", f"the box failed: {record.error}"
            found[:] = [driver.ex_get_node(node.id)]
            return bool(found[0].state == NodeState.RUNNING)

        helpers.wait_until(running, f"{cloud} instance {name} running", timeout=BOOT_TIMEOUT)
        # libcloud files Linode's 10.x addresses (the local boxes') under private_ips
        (address,) = [ip for ip in found[0].public_ips + found[0].private_ips if ip != "0.0.0.0"]
        box = helpers.Box(address, host_key.public_line, operator[1])
        assert box.run("hostname")[1].strip() == name
        assert box.run("cat /root/.ssh/authorized_keys")[1].strip() == operator[0].public_line
        seeded = box.run("sha256sum /var/lib/cloud/seed/nocloud/user-data")[1].split()[0]
        assert seeded == hashlib.sha256(user_data.encode()).hexdigest()
        assert driver.destroy_node(found[0]) is True
        api.cloud.wait_removed()
        assert provider.status(name) == "absent"
