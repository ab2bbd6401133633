"""A box reached only through a jump host (Fabric's gateway, ProxyJump), with a pinned key on every hop.

Two real local boxes: `jump` is the bastion, and `inner` drops SSH from this machine (an nft rule in its
network namespace), so a deploy can only succeed through the bastion. The box's `address` is an alias in
an ssh_config file ($MIAB_REMOTE_SSH_CONFIG) whose ProxyJump names the bastion."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import E2E_ENV, HOST_ADDRESS, Box, CLIResult, cli, create_box, edit_inventory, new_inventory
from tests.e2e.helpers import operator_key as make_operator_key

pytestmark = pytest.mark.e2e

JUMP = "jump.e2e-jump.test"
INNER = "inner.e2e-jump.test"
TABLE = "miab_e2e_jump"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Box, Box, Path]]:
    inv = new_inventory(tmp_path_factory.mktemp("inventory") / "hosts")
    identity = make_operator_key(tmp_path_factory.mktemp("operator"))
    made: list[str] = []
    try:
        jump = create_box(inv, identity, JUMP)
        made.append(JUMP)
        inner = create_box(inv, identity, INNER)
        made.append(INNER)
        netns = json.loads((Path(E2E_ENV["MIAB_REMOTE_LOCAL_DIR"]) / INNER / "box.json").read_text())["netns"]
        # From now on `inner` answers SSH from the bastion only: this machine's own packets to port 22 drop.
        nft = (
            f"add table inet {TABLE}\n"
            f"add chain inet {TABLE} input {{ type filter hook input priority 0; }}\n"
            f"add rule inet {TABLE} input ip saddr {HOST_ADDRESS} tcp dport 22 drop\n"
        )
        subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=nft, text=True, check=True)
        config = inv.parent / "ssh_config"
        config.write_text(f"Host inner-alias\n    HostName {inner.address}\n    ProxyJump root@{jump.address}\n")
        edit_inventory(inv, INNER, address="inner-alias", recipes=["base"])
        yield inv, jump, inner, config
    finally:
        for name in reversed(made):
            cli(inv, "destroy", "--yes", name)


def deploy(inv: Path, config: Path, *args: str) -> CLIResult:
    return cli(inv, "deploy", INNER, "--connect-timeout", "3", *args, env={"MIAB_REMOTE_SSH_CONFIG": str(config)})


def jump_key(inv: Path) -> str:
    import tomlkit

    return str(tomlkit.parse((inv / f"{JUMP}.toml").read_text())["host_keys"][0])


def test_inner_box_is_not_reachable_directly(world: tuple[Path, Box, Box, Path]) -> None:
    inv, _jump, inner, _config = world
    edit_inventory(inv, INNER, address=inner.address)
    try:
        res = cli(inv, "deploy", INNER, "--dry-run", "--connect-timeout", "3", env={"MIAB_REMOTE_SSH_CONFIG": ""})
    finally:
        edit_inventory(inv, INNER, address="inner-alias")
    assert res.code == 1, res.err + res.out
    assert "no answer" in res.out or "cannot connect" in res.out, res.out


def test_a_jump_host_without_a_pinned_key_is_refused(world: tuple[Path, Box, Box, Path]) -> None:
    inv, jump, _inner, config = world
    res = deploy(inv, config, "--dry-run")
    assert res.code == 2, res.err + res.out
    assert f"through the jump host root@{jump.address} (ProxyJump in {config})" in res.err
    assert "ssh.jump_host_keys" in res.err and "nothing was sent" in res.err


def test_a_jump_host_with_another_key_is_refused_before_anything_is_sent(world: tuple[Path, Box, Box, Path]) -> None:
    inv, jump, _inner, config = world
    import tomlkit

    inner_key = str(tomlkit.parse((inv / f"{INNER}.toml").read_text())["host_keys"][0])
    edit_inventory(inv, INNER, ssh={"jump_host_keys": [inner_key]})  # the wrong box's key
    res = deploy(inv, config, "--json", "--dry-run")
    assert res.code == 1, res.err + res.out
    error = res.json()["hosts"][INNER]["error"]
    assert f"{INNER}'s jump host {jump.address}: host key mismatch" in error, error
    assert "jump_host_keys" in error


def test_deploy_through_the_pinned_jump_host(world: tuple[Path, Box, Box, Path]) -> None:
    inv, _jump, _inner, config = world
    edit_inventory(inv, INNER, ssh={"jump_host_keys": [jump_key(inv)]})
    first = deploy(inv, config, "--json")
    assert first.code == 0, first.errors()
    assert first.json()["hosts"][INNER]["changed"] >= 1
    second = deploy(inv, config, "--json")
    assert second.code == 0, second.errors()
    run = second.json()["hosts"][INNER]
    # The probe through the bastion reads back what the apply (SFTP staging included) wrote through it.
    assert (run["changed"], run["round_trips"]) == (0, 1)


def test_the_inventory_s_jump_setting_works_without_an_ssh_config(world: tuple[Path, Box, Box, Path]) -> None:
    inv, jump, inner, _config = world
    edit_inventory(
        inv,
        INNER,
        address=inner.address,
        ssh={"jump": f"root@{jump.address}", "jump_host_keys": [jump_key(inv)]},
    )
    res = cli(inv, "deploy", INNER, "--json", "--connect-timeout", "3", env={"MIAB_REMOTE_SSH_CONFIG": ""})
    assert res.code == 0, res.errors()
    assert res.json()["hosts"][INNER]["changed"] == 0
