"""End to end: the local provider builds real Debian 12 boxes (systemd in systemd-nspawn), no mocks.

Uses configurations of its own, inside the e2e lane (MIAB_E2E_LANE=N, tests/e2e/helpers.py): the lane's
subnet 10.78.N.0/24 split in two halves, on bridges named after the lane's, and state dirs beside its own,
so that it never meets the operator's boxes, a leftover of theirs, or another lane's run. The CLI tests at
the end use the lane's own bridge and subnet (the two are never up at the same time). Traffic goes only
to the boxes and, from inside a box, to the Debian mirror through the NAT (the network rule); nothing is
sent anywhere else.
"""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paramiko
import pytest

from miab_remote import providers
from miab_remote.errors import ProviderError
from miab_remote.fleet.model import Host
from miab_remote.profiles import DEBIAN_12, DEBIAN_13
from miab_remote.providers.base import CreatedBox
from miab_remote.providers.local import LocalConfig, LocalProvider, machine, network
from miab_remote.transport.sshkeys import KeyPair, generate_ed25519
from tests.e2e import helpers
from tests.e2e.helpers import E2E_ENV

pytestmark = pytest.mark.e2e

LANE_DIR = E2E_ENV["MIAB_REMOTE_LOCAL_DIR"]
LANE_BRIDGE = E2E_ENV["MIAB_REMOTE_LOCAL_BRIDGE"]
STATE_DIR = Path(LANE_DIR + "-provider")
SUBNET = ipaddress.IPv4Network(f"{helpers.SUBNET_PREFIX}.0/25")
BRIDGE = LANE_BRIDGE + "p"
# A second configuration that must coexist with the first.
OTHER_STATE_DIR = Path(LANE_DIR + "-provider-2")
OTHER_SUBNET = ipaddress.IPv4Network(f"{helpers.SUBNET_PREFIX}.128/25")
OTHER_BRIDGE = LANE_BRIDGE + "q"
COLLIDE_BRIDGE = LANE_BRIDGE + "c"  # a bridge that must never be made
BOX_A = "tpa.example.test"
BOX_B = "tpb.example.test"
IMAGE_OF = {BOX_A: DEBIAN_13, BOX_B: DEBIAN_12}  # one box of each release a local box can run
BOX_DEAD = "tpdead.example.test"


# --------------------------------------------------------------------------- helpers


class PinnedKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Accept exactly one host key (the one the provider returned), reject any other before auth."""

    def __init__(self, expected_line: str) -> None:
        self.expected = expected_line.split()[:2]

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        offered = [key.get_name(), key.get_base64()]
        if offered != self.expected:
            raise paramiko.SSHException(f"{hostname}: host key {offered[0]} is not the pinned one")


def connect(address: str, host_key_line: str, operator: KeyPair) -> paramiko.SSHClient:
    client = paramiko.SSHClient()  # no known_hosts loaded: the policy is the only judge
    client.set_missing_host_key_policy(PinnedKeyPolicy(host_key_line))
    client.connect(
        address,
        username="root",
        pkey=paramiko.Ed25519Key.from_private_key(io.StringIO(operator.private_openssh.decode())),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
        banner_timeout=10,
        auth_timeout=10,
    )
    return client


def run(client: paramiko.SSHClient, command: str, timeout: float = 60) -> tuple[int, str, str]:
    _stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
    rc = stdout.channel.recv_exit_status()
    return rc, stdout.read().decode(), stderr.read().decode()


def record(config: LocalConfig, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((config.state_dir / name / "box.json").read_text())
    return data


def netns_list() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def link_exists(dev: str) -> bool:
    return Path("/sys/class/net", dev).exists()


def nft_table_text(config: LocalConfig) -> str | None:
    proc = subprocess.run(["nft", "list", "table", "ip", config.nft_table], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def assert_box_gone(config: LocalConfig, name: str, rec: dict[str, Any]) -> None:
    assert rec["netns"] not in netns_list()
    assert not link_exists(rec["veth"])
    assert not (config.state_dir / name).exists()
    assert LocalProvider(config).status(name) == "absent"
    assert name not in LocalProvider(config).list_boxes()
    assert machine.container_inits(Path(rec["rootfs"])) == []


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def config() -> Iterator[LocalConfig]:
    try:
        LocalProvider().check_requirements()
    except ProviderError as exc:
        pytest.skip(str(exc))
    # The machine's mirror, apt proxy and rootfs cache; our own state dir, subnet and bridge.
    cfg = dataclasses.replace(LocalConfig.from_env(), state_dir=STATE_DIR, subnet=SUBNET, bridge=BRIDGE)
    clean(cfg)  # leftovers of an earlier, interrupted run
    yield cfg
    clean(cfg)


@pytest.fixture(scope="module")
def other_config(config: LocalConfig) -> Iterator[LocalConfig]:
    cfg = dataclasses.replace(config, state_dir=OTHER_STATE_DIR, subnet=OTHER_SUBNET, bridge=OTHER_BRIDGE)
    clean(cfg)
    yield cfg
    clean(cfg)


def clean(cfg: LocalConfig) -> None:
    for name in {*LocalProvider(cfg).list_boxes(), BOX_A, BOX_B, BOX_DEAD}:
        LocalProvider(cfg).destroy(name)


@pytest.fixture(scope="module")
def operator() -> KeyPair:
    return generate_ed25519("operator@test")


@pytest.fixture(scope="module")
def boxes(config: LocalConfig, operator: KeyPair) -> Iterator[dict[str, CreatedBox]]:
    """Two boxes created in parallel, shared by the tests below (boot is the expensive part)."""
    lines: list[str] = []

    def make(name: str) -> tuple[CreatedBox, float]:
        start = time.monotonic()
        box = LocalProvider(config).create(
            name, operator.public_line, progress=lambda line: lines.append(f"{name}: {line}"), image=IMAGE_OF[name].id
        )
        return box, time.monotonic() - start

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(make, [BOX_A, BOX_B]))
    print(f"\n[timing] parallel create of 2 boxes: {time.monotonic() - start:.1f} s")
    for box, took in results:
        print(f"[timing] create {box.name}: {took:.1f} s")
    print("\n".join(lines))
    yield {box.name: box for box, _ in results}
    for name in (BOX_A, BOX_B):
        LocalProvider(config).destroy(name)


# --------------------------------------------------------------------------- tests


def test_parallel_create(config: LocalConfig, boxes: dict[str, CreatedBox]) -> None:
    a, b = boxes[BOX_A], boxes[BOX_B]
    assert a.address != b.address
    for box in (a, b):
        assert ipaddress.IPv4Address(box.address) in SUBNET
        assert box.address != str(config.gateway)
        assert box.os == IMAGE_OF[box.name].id
        assert box.host_key_public.startswith("ssh-ed25519 ")
        assert box.host_key_public.endswith(f" root@{box.name}")
        assert LocalProvider(config).status(box.name) == "running"
        rec = record(config, box.name)
        assert rec["address"] == box.address
        # Its IPv6 address: the same host part in the bridge's own ULA /64 (derived from the bridge's name).
        assert config.subnet6 == LocalConfig(bridge=BRIDGE).subnet6 and config.subnet6.network_address.packed[0] == 0xFD
        assert box.ipv6 == rec["ipv6"] == str(config.ipv6_of(ipaddress.IPv4Address(box.address)))
        assert ipaddress.IPv6Address(box.ipv6) in config.subnet6
        assert len(rec["veth"]) <= 15
        assert rec["netns"] in netns_list()
        assert link_exists(rec["veth"])
    assert a.host_key_public != b.host_key_public
    assert LocalProvider(config).list_boxes() == sorted([BOX_A, BOX_B])


def test_ssh_pinned_host_key_and_system_running(boxes: dict[str, CreatedBox], operator: KeyPair) -> None:
    for box in boxes.values():
        # Any other key is refused before authentication.
        with pytest.raises(paramiko.SSHException):
            connect(box.address, generate_ed25519("other").public_line, operator).close()
        client = connect(box.address, box.host_key_public, operator)
        try:
            _rc, out, _ = run(client, "systemctl is-system-running --wait", timeout=90)
            assert out.strip() in ("running", "degraded"), out
            assert run(client, "hostname")[1].strip() == box.name
            assert run(client, "cat /etc/hostname")[1].strip() == box.name
            hosts = run(client, "getent hosts " + box.name)[1].split()
            assert hosts[0] == box.address
            # sshd serves only the key generated before boot; the image's shared keys are gone.
            _rc, out, _ = run(client, "ls /etc/ssh/ | grep ssh_host_; sshd -T | grep -i '^hostkey '")
            assert out.split() == [
                "ssh_host_ed25519_key",
                "ssh_host_ed25519_key.pub",
                "hostkey",
                "/etc/ssh/ssh_host_ed25519_key",
            ]
            assert run(client, "systemctl is-enabled ssh")[1].strip() == "enabled"
            assert run(client, "stat -c %a /root/.ssh /root/.ssh/authorized_keys")[1].split() == ["700", "600"]
            assert run(client, "systemd-detect-virt --container")[1].strip() == "systemd-nspawn"
            release = run(client, ". /etc/os-release && echo $ID $VERSION_ID $VERSION_CODENAME")[1].split()
            profile = IMAGE_OF[box.name]
            assert release == [profile.os_release_id, profile.version_id, profile.codename], release
        finally:
            client.close()


def test_machine_ids_differ(boxes: dict[str, CreatedBox], operator: KeyPair) -> None:
    ids = set()
    for box in boxes.values():
        client = connect(box.address, box.host_key_public, operator)
        try:
            ids.add(run(client, "cat /etc/machine-id")[1].strip())
        finally:
            client.close()
    assert len(ids) == 2


def test_boxes_reach_each_other(boxes: dict[str, CreatedBox], operator: KeyPair) -> None:
    a, b = boxes[BOX_A], boxes[BOX_B]
    probe = (
        'python3 -c "import socket,sys; s=socket.create_connection((sys.argv[1], 22), 3); '
        'print(s.recv(64).decode().strip())" '
    )
    for src, dst in ((a, b), (b, a)):
        client = connect(src.address, src.host_key_public, operator)
        try:
            for address in (dst.address, str(dst.ipv6)):
                rc, out, err = run(client, probe + address)
                assert rc == 0, err
                assert out.startswith("SSH-2.0-"), out
            # Over IPv6 a box reaches the bridge's /64 only: no default route, so nothing outside this machine.
            rc, out, err = run(client, "ip -6 route get 2001:db8::1")
            assert rc != 0 and "unreachable" in err.lower(), out + err
        finally:
            client.close()
    # This machine (the laptop of its boxes) reaches each box over IPv6 on the bridge.
    for box in (a, b):
        client = connect(str(box.ipv6), box.host_key_public, operator)
        try:
            assert run(client, "hostname")[1].strip() == box.name
        finally:
            client.close()


@pytest.mark.parametrize("name", [BOX_A, BOX_B])
def test_apt_update_through_nat(boxes: dict[str, CreatedBox], operator: KeyPair, name: str) -> None:
    box = boxes[name]
    suite = IMAGE_OF[name].codename
    client = connect(box.address, box.host_key_public, operator)
    try:
        sources = run(client, "cat /etc/apt/sources.list")[1]
        for line in (f"{suite} main", f"{suite}-updates main", f"{suite}-security main"):
            assert line in sources
        assert f"/debian-security {suite}-security" in sources
        rc, out, err = run(client, "apt-get update", timeout=180)
        assert rc == 0, out + err
        assert f"{suite}-security" in out
    finally:
        client.close()


def test_nat_allows_only_dns_and_http(config: LocalConfig, boxes: dict[str, CreatedBox]) -> None:
    # Checked on the ruleset, not by sending traffic out: no test traffic may leave this machine.
    text = nft_table_text(config)
    assert text is not None
    out = re.escape(f'ip saddr {SUBNET} oifname != "{BRIDGE}"')
    assert re.search(rf"type nat hook postrouting .*\n\s*{out} masquerade", text), text
    forward = text[text.index("chain forward") :]
    assert re.search(r"type filter hook forward priority filter; policy accept;", forward)
    rules = [line.strip() for line in forward.splitlines() if line.strip().startswith("ip saddr")]
    assert len(rules) == 4, text
    assert re.fullmatch(rf"{out} ct state established,related accept", rules[0])
    assert re.fullmatch(rf"{out} tcp dport \{{ 53, 80, 443 \}} accept", rules[1])
    assert re.fullmatch(rf"{out} udp dport 53 accept", rules[2])
    assert re.fullmatch(rf"{out} counter packets \d+ bytes \d+ drop", rules[3])
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    assert Path("/sys/class/net", BRIDGE, "bridge").is_dir()


def test_running_box_cannot_be_created_again(
    config: LocalConfig, boxes: dict[str, CreatedBox], operator: KeyPair
) -> None:
    with pytest.raises(ProviderError, match="already exists"):
        LocalProvider(config).create(BOX_A, operator.public_line)
    assert LocalProvider(config).status(BOX_A) == "running"


def test_second_configuration_coexists(
    config: LocalConfig, other_config: LocalConfig, boxes: dict[str, CreatedBox], operator: KeyPair
) -> None:
    other = other_config
    box = LocalProvider(other).create(BOX_A, operator.public_line)  # same name, other configuration
    try:
        assert box.address == str(OTHER_SUBNET.network_address + 2)
        assert other.subnet6 != config.subnet6 and box.ipv6 == str(other.subnet6.network_address + 2)
        assert record(other, BOX_A)["netns"] != record(config, BOX_A)["netns"]
        client = connect(box.address, box.host_key_public, operator)
        try:
            assert run(client, "hostname")[1].strip() == BOX_A
        finally:
            client.close()
        assert nft_table_text(other) is not None
    finally:
        LocalProvider(other).destroy(BOX_A)
    assert not link_exists(OTHER_BRIDGE)
    assert nft_table_text(other) is None
    # The first configuration is untouched.
    assert link_exists(BRIDGE)
    assert nft_table_text(config) is not None
    assert LocalProvider(config).status(BOX_A) == "running"


@pytest.mark.parametrize("family", [4, 6])
def test_subnet_colliding_with_a_host_route_is_refused(
    config: LocalConfig, operator: KeyPair, tmp_path: Path, family: int
) -> None:
    routes = json.loads(subprocess.run(["ip", "-j", f"-{family}", "route"], capture_output=True, check=True).stdout)
    nets = [
        ipaddress.ip_network(r["dst"], strict=False)
        for r in routes
        if r.get("dst") not in (None, "default") and not str(r.get("dev", "")).startswith("miab")
    ]
    nets = [n for n in nets if n.prefixlen <= (29 if family == 4 else 64) and not n.is_link_local]
    if not nets:
        pytest.skip(f"no host IPv{family} route of {'/29' if family == 4 else '/64'} or larger to collide with")
    # IPv6: with an IPv4 subnet no bridge is on now (the second configuration's), so IPv6 is what collides.
    field = {"subnet": nets[0]} if family == 4 else {"subnet": OTHER_SUBNET, "subnet6_given": nets[0]}
    other = dataclasses.replace(config, state_dir=tmp_path / "state", bridge=COLLIDE_BRIDGE, **field)
    variable = "MIAB_REMOTE_LOCAL_SUBNET" if family == 4 else "MIAB_REMOTE_LOCAL_SUBNET6"
    with pytest.raises(ProviderError, match=f"collides with the host's route .*{variable}$"):
        LocalProvider(other).create("collide.example.test", operator.public_line)
    assert not link_exists(COLLIDE_BRIDGE)
    assert LocalProvider(other).list_boxes() == []


def test_after_deploy_goes_to_the_hosts_provider(
    config: LocalConfig, boxes: dict[str, CreatedBox], monkeypatch: pytest.MonkeyPatch
) -> None:
    """providers.after_deploy (what a deploy calls) finds the local provider through the registry, and its
    hook makes the boxes' resolver delegate the box's zones to it (the box's nsd answers them) and answer the
    reverse lookups of its addresses (a cloud's reverse DNS)."""
    box = boxes[BOX_A]
    monkeypatch.setenv("MIAB_REMOTE_LOCAL_DIR", str(config.state_dir))
    monkeypatch.setenv("MIAB_REMOTE_LOCAL_SUBNET", str(config.subnet))
    monkeypatch.setenv("MIAB_REMOTE_LOCAL_BRIDGE", config.bridge)
    host = Host(
        box.name,
        Path(f"{box.name}.toml"),
        box.name,
        box.address,
        domains=("mail-a.example.test",),
        recipes=("base", "nsd"),
        provider="local",
        options={"dns": "nsd"},
        ipv6=box.ipv6,
    )
    assert box.ipv6 is not None
    zones = ["mail-a.example.test", box.name]
    delegation = config.state_dir / ".resolver" / "delegations" / f"{box.name}.conf"
    ptr = f"and answers PTR {box.name} for {box.address} and {box.ipv6}"
    ptr_lines = "".join(
        f"ptr-record={ipaddress.ip_address(ip).reverse_pointer},{box.name}\n" for ip in (box.address, box.ipv6)
    )
    try:
        assert providers.after_deploy(host) == [
            f"local resolver now delegates {', '.join(zones)} to {box.address}, {ptr}"
        ]
        assert delegation.read_text() == "".join(f"server=/{zone}/{box.address}\n" for zone in zones) + ptr_lines
        assert providers.after_deploy(host) == [], "nothing changed: no restart, no note"
        assert providers.after_deploy(dataclasses.replace(host, provider="manual")) == []
    finally:
        # A box whose DNS is elsewhere keeps its reverse DNS (the cloud's part, not the registrar's).
        assert providers.after_deploy(dataclasses.replace(host, options={"dns": "none"})) == [
            f"local resolver now delegates nothing to {box.address}, {ptr}"
        ]
    assert delegation.read_text() == ptr_lines


def test_destroy_removes_everything_and_is_idempotent(config: LocalConfig, boxes: dict[str, CreatedBox]) -> None:
    records = {name: record(config, name) for name in boxes}
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(boxes, pool.map(lambda n: LocalProvider(config).destroy(n), boxes), strict=True))
    print(f"\n[timing] parallel destroy of 2 boxes: {time.monotonic() - start:.1f} s")
    for name, lines in results.items():
        print(f"{name}: " + "; ".join(lines))
        assert any(line.startswith("stopped the box") for line in lines), lines
        assert any(records[name]["netns"] in line for line in lines), lines
    for name, rec in records.items():
        assert_box_gone(config, name, rec)
    assert not link_exists(BRIDGE)
    assert nft_table_text(config) is None
    for name in boxes:
        assert LocalProvider(config).destroy(name) == ["nothing to remove"]


def test_boot_timeout_fails_clearly_and_cleans_up(config: LocalConfig, operator: KeyPair) -> None:
    with pytest.raises(ProviderError, match="no SSH banner") as info:
        LocalProvider(config).create(BOX_DEAD, operator.public_line, boot_timeout=0)
    assert "last lines of its console" in str(info.value)
    assert LocalProvider(config).status(BOX_DEAD) == "absent"
    assert not (config.state_dir / BOX_DEAD).exists()
    netns, veth = network.net_names(config, BOX_DEAD)
    assert netns not in netns_list()
    assert not link_exists(veth)
    assert not link_exists(BRIDGE)
    assert nft_table_text(config) is None


def test_dead_box_is_cleaned_up_by_create_and_destroy(config: LocalConfig, operator: KeyPair) -> None:
    start = time.monotonic()
    first = LocalProvider(config).create(BOX_DEAD, operator.public_line)
    print(f"\n[timing] create {BOX_DEAD}: {time.monotonic() - start:.1f} s")
    rec = record(config, BOX_DEAD)
    rootfs = Path(rec["rootfs"])

    # A killed session: nspawn gets SIGKILL. Its container's systemd outlives it (reparented to PID 1).
    os.kill(rec["pid"], signal.SIGKILL)
    wait_for(lambda: LocalProvider(config).status(BOX_DEAD) == "stopped", 10, "status stopped")
    orphans = machine.container_inits(rootfs)
    assert len(orphans) == 1

    start = time.monotonic()
    second = LocalProvider(config).create(BOX_DEAD, operator.public_line)
    print(f"[timing] create over a dead box: {time.monotonic() - start:.1f} s")
    assert second.host_key_public != first.host_key_public
    assert LocalProvider(config).status(BOX_DEAD) == "running"
    assert not any(Path(f"/proc/{pid}/root").exists() for pid in orphans), "the dead box's systemd survived"
    client = connect(second.address, second.host_key_public, operator)
    try:
        assert run(client, "hostname")[1].strip() == BOX_DEAD
    finally:
        client.close()

    # Half gone: nspawn killed and its namespace deleted by hand; destroy still removes the rest.
    rec = record(config, BOX_DEAD)
    os.kill(rec["pid"], signal.SIGKILL)
    subprocess.run(["ip", "netns", "delete", rec["netns"]], check=True)
    start = time.monotonic()
    lines = LocalProvider(config).destroy(BOX_DEAD)
    print(f"[timing] destroy of a half-gone box: {time.monotonic() - start:.1f} s: " + "; ".join(lines))
    assert any("killed the box's systemd" in line for line in lines), lines
    assert_box_gone(config, BOX_DEAD, rec)
    assert not link_exists(BRIDGE)
    assert nft_table_text(config) is None
    assert LocalProvider(config).destroy(BOX_DEAD) == ["nothing to remove"]


# --------------------------------------------------------------------------- the CLI's create and destroy
# These run the real CLI on the e2e lane's bridge and subnet (tests/e2e/helpers.py), not this module's own
# configuration above.

CLI_BOX = "tpcli.example.test"
ORPHAN_BOX = "tporphan.example.test"


@pytest.fixture
def cli_config() -> LocalConfig:
    try:
        LocalProvider().check_requirements()
    except ProviderError as exc:
        pytest.skip(str(exc))
    return dataclasses.replace(
        LocalConfig.from_env(),
        state_dir=Path(E2E_ENV["MIAB_REMOTE_LOCAL_DIR"]),
        subnet=ipaddress.IPv4Network(E2E_ENV["MIAB_REMOTE_LOCAL_SUBNET"]),
        bridge=E2E_ENV["MIAB_REMOTE_LOCAL_BRIDGE"],
    )


@pytest.fixture
def cli_inventory(tmp_path: Path) -> tuple[Path, Path]:
    """(inventory folder, operator key) for CLI runs."""
    inv = tmp_path / "hosts"
    inv.mkdir()
    return inv, helpers.operator_key(tmp_path)


def test_create_checks_every_argument_before_anything_is_made(
    cli_config: LocalConfig, cli_inventory: tuple[Path, Path]
) -> None:
    """`MX2.EXAMPLE.TEST` used to boot a box, then fail "not a box name" (exit 1), leaving an orphan with
    no inventory and no pinned key. The inventory wants a lower-case FQDN: so does create, up front."""
    inv, key = cli_inventory
    name = "MX2.EXAMPLE.TEST"
    try:
        res = helpers.cli(inv, "create", "--provider", "local", "--identity-file", str(key), name, timeout=300)
        assert res.code == 2, res.err + res.out
        assert res.err == (
            "miab-remote: 'MX2.EXAMPLE.TEST' is not lower-case; write 'mx2.example.test'; nothing was made\n"
        )
        assert LocalProvider(cli_config).status(name.lower()) == "absent"
        assert list(inv.iterdir()) == []
        for args in (["box1.example.test", "box1.example.test"], ["single"]):
            res = helpers.cli(inv, "create", "--provider", "local", "--identity-file", str(key), *args)
            assert res.code == 2, res.err + res.out
            assert "nothing was made" in res.err
    finally:
        helpers.cli(inv, "destroy", "--yes", name.lower())  # what the unfixed create left behind


def test_create_destroys_its_box_when_the_inventory_cannot_be_written(
    cli_config: LocalConfig, cli_inventory: tuple[Path, Path]
) -> None:
    """Something failing after the box exists (here the inventory folder is replaced by a file while the
    box boots) never leaves an orphan: the new box is destroyed, and the error says so."""
    inv, key = cli_inventory
    env = {**os.environ, **E2E_ENV, "NO_COLOR": "1", "MIAB_REMOTE_INVENTORY": str(inv)}
    command = [sys.executable, "-m", "miab_remote", "create", "--provider", "local", "--identity-file", str(key)]
    proc = subprocess.Popen([*command, ORPHAN_BOX], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (cli_config.state_dir / ORPHAN_BOX / "box.json").exists(), 300, "the box to be made")
        inv.rename(inv.with_name("moved-away"))
        inv.write_text("not a folder any more\n")
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 1, err + out
        assert f"{ORPHAN_BOX}: FAILED: the inventory could not be written (" in out, err + out
        assert "the new box was destroyed" in out
        assert LocalProvider(cli_config).status(ORPHAN_BOX) == "absent"
        assert ORPHAN_BOX not in LocalProvider(cli_config).list_boxes()
    finally:
        if proc.poll() is None:
            proc.kill()
        LocalProvider(cli_config).destroy(ORPHAN_BOX)


def test_destroy_keeps_the_inventory_in_the_archive(cli_config: LocalConfig, cli_inventory: tuple[Path, Path]) -> None:
    """A destroy that destroys keeps the inventory as hosts/.archive/NAME.TIMESTAMP.toml (0600), unless
    --keep-inventory leaves it in place, without the box's pinned key; `hosts` and `--all` never see the archive."""
    inv, key = cli_inventory
    try:
        helpers.create_box(inv, key, CLI_BOX)
        path = inv / f"{CLI_BOX}.toml"
        text = path.read_bytes()
        res = helpers.cli(inv, "destroy", "--yes", "--keep-inventory", CLI_BOX)
        assert res.code == 0, res.err + res.out
        assert LocalProvider(cli_config).status(CLI_BOX) == "absent"
        assert "kept its inventory" in res.out
        before, kept = tomllib.loads(text.decode()), tomllib.loads(path.read_text())
        assert before["host_keys"] and kept["host_keys"] == [], "the box is gone: no key pinned"
        assert kept == before | {"host_keys": []}, "and nothing else changed"
        text = path.read_bytes()
        res = helpers.cli(inv, "destroy", "--yes", CLI_BOX)  # the box is gone already: the file moves
        assert res.code == 0, res.err + res.out
        assert not path.exists()
        archived = list((inv / ".archive").iterdir())
        assert len(archived) == 1 and re.fullmatch(rf"{re.escape(CLI_BOX)}\.\d{{8}}T\d{{6}}Z\.toml", archived[0].name)
        assert archived[0].read_bytes() == text
        assert archived[0].stat().st_mode & 0o777 == 0o600 and (inv / ".archive").stat().st_mode & 0o777 == 0o700
        assert f"its inventory is kept as {archived[0]}" in res.out or ".archive/" in res.out
        hosts = helpers.cli(inv, "hosts", "--json")
        assert (hosts.code, hosts.json()) == (0, {"hosts": {}}), hosts.err
        res = helpers.cli(inv, "deploy", "--all", "--dry-run")
        assert res.code == 2 and "name at least one box" in res.err, res.err + res.out
    finally:
        helpers.cli(inv, "destroy", "--yes", "--keep-inventory", CLI_BOX)
