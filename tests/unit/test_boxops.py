"""`miab-remote bans` / `unban` without a box: input checks (exit 2, nothing reached), fail2ban's answers,
the commands sent, an unreachable box (exit 1); and the hardening recipe's rendered firewall, jails and
sshd check."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import tomlkit

from miab_remote import cli
from miab_remote.engine.converge import build
from miab_remote.errors import HostError, InputError
from miab_remote.fleet.store import Inventory, new_document
from miab_remote.jobs import bans as boxops
from miab_remote.profiles import DEBIAN_12

NAME = "box1.example.test"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFsdu096fuX3ehLTX3FBmjxFy/DzQYQzK5HcyvHBFZt1 root@box1"


@pytest.fixture
def inv(tmp_path: Path) -> Inventory:
    """A box whose SSH points at a closed port on loopback: any connection fails at once."""
    doc = new_document(NAME, "127.0.0.1", provider="manual", host_keys=[KEY], os="debian-12", ssh_port=1)
    inventory = Inventory(tmp_path / "hosts")
    inventory.create(NAME, doc)
    return inventory


def run_cli(inv: Inventory, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.MonkeyPatch.context() as mp:  # NO_COLOR for this call only, not for the tests after it
        mp.setenv("NO_COLOR", "1")
        code = cli.main(["--inventory", str(inv.root), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 10.78.0.1 ", "10.78.0.1"),
        ("2001:DB8:0:0::7", "2001:db8::7"),
        ("::ffff:203.0.113.7", "::ffff:cb00:7107"),
    ],
)
def test_addresses_accepted_and_normalised(text: str, normal: str) -> None:
    assert boxops.check_address(text) == normal


@pytest.mark.parametrize(
    "text", ["", "10.78.0.300", "10.78.0", "203.0.113.0/24", "example.org", "1.2.3.4; reboot", "$(id)"]
)
def test_bad_addresses_are_input_errors(text: str) -> None:
    with pytest.raises(InputError, match="is not an IP address"):
        boxops.check_address(text)


@pytest.mark.parametrize("jail", ["sshd", "postfix-sasl", "roundcube-auth", "dovecot", "my_jail.2", "a@b"])
def test_jail_names_accepted(jail: str) -> None:
    assert boxops.check_jail(jail) == jail


@pytest.mark.parametrize("jail", ["", "-sshd", "ss hd", "sshd;reboot", "$(id)", "a/b", "x" * 65])
def test_bad_jail_names_are_input_errors(jail: str) -> None:
    with pytest.raises(InputError, match="not a fail2ban jail name"):
        boxops.check_jail(jail)


@pytest.mark.parametrize(
    "args",
    [
        ("unban", NAME, "10.78.0.300"),
        ("unban", NAME, "not-an-address"),
        ("unban", NAME, "10.78.0.1", "--jail", "bad jail"),
        ("unban", "nobox.example.test", "10.78.0.1"),
        ("bans", "nobox.example.test"),
    ],
)
def test_bad_input_exits_2_before_reaching_the_box(
    inv: Inventory, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    code, out, err = run_cli(inv, *args, capsys=capsys)
    assert code == 2, out + err
    assert err.startswith("miab-remote: ") and len(err.strip().splitlines()) == 1, err


def test_unreachable_box_exits_1(inv: Inventory, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(inv, "unban", NAME, "10.78.0.1", "--connect-timeout", "2", capsys=capsys)
    assert code == 1, out + err
    assert f"{NAME}: FAILED: " in out and "cannot connect to 127.0.0.1:1" in out, out

    code, out, err = run_cli(inv, "bans", NAME, "--json", "--connect-timeout", "2", capsys=capsys)
    assert code == 1, out + err
    host = json.loads(out)["hosts"][NAME]
    assert host["jails"] is None and "cannot connect" in host["error"]


# -- fail2ban's answers and the commands sent -----------------------------------------------------------------
def test_parse_banned() -> None:
    text = "[{'sshd': []}, {'roundcube-auth': []}, {'dovecot': ['10.78.0.1', '2001:db8::1']}, {'postfix-sasl': []}]\n"
    assert boxops.parse_banned(text) == {
        "dovecot": ["10.78.0.1", "2001:db8::1"],
        "postfix-sasl": [],
        "roundcube-auth": [],
        "sshd": [],
    }
    assert boxops.parse_banned("[]") == {}


@pytest.mark.parametrize("text", ["", "Sorry but the jail does not exist", "{'sshd': []}", "[{'sshd': 3}]", "[1]"])
def test_parse_banned_refuses_anything_else(text: str) -> None:
    with pytest.raises(HostError, match="unexpected answer"):
        boxops.parse_banned(text)


def test_same_address_compares_normalised_forms() -> None:
    assert boxops.same_address("2001:db8::7", "2001:0db8:0:0:0:0:0:7")
    assert not boxops.same_address("10.78.0.1", "10.78.0.10")


def test_unban_commands_are_quoted() -> None:
    assert boxops.unban_command("10.78.0.1", None) == "fail2ban-client unban 10.78.0.1"
    assert boxops.unban_command("10.78.0.1", ["dovecot", "postfix-sasl"]) == (
        "fail2ban-client set dovecot unbanip 10.78.0.1 && fail2ban-client set postfix-sasl unbanip 10.78.0.1"
    )


# -- the hardening recipe ------------------------------------------------------------------------------------------
def rendered_for(tmp_path: Path, **top: object) -> dict[str, bytes]:
    doc = new_document(NAME, "192.0.2.10", provider="manual", host_keys=[KEY], os="debian-12")
    for key, value in top.items():
        doc[key] = value
    inventory = Inventory(tmp_path / "hosts")
    inventory.create(NAME, tomlkit.parse(doc.as_string()))
    _, rendered = build(inventory.load(NAME), DEBIAN_12, inventory.root)
    return rendered


def allowed_in(rules: str) -> set[tuple[str, int]]:
    out = set()
    for line in rules.splitlines():
        if line.startswith(("-A ufw-user-input ", "-A ufw6-user-input ")):
            parts = line.split()
            out.add((parts[parts.index("-p") + 1], int(parts[parts.index("--dport") + 1])))
    return out


def test_firewall_allows_exactly_the_mail_ports(tmp_path: Path) -> None:
    rendered = rendered_for(tmp_path, recipes=["base", "hardening"])
    want = {("tcp", p) for p in (22, 25, 53, 80, 443, 465, 587, 993, 4190)} | {("udp", 53)}
    for name in ("user.rules", "user6.rules"):
        text = rendered[f"/etc/ufw/{name}"].decode()
        assert allowed_in(text) == want
        assert text.count("### tuple ### allow any 53 ") == 1  # one tuple for TCP+UDP, as `ufw allow 53` writes
    assert b"ENABLED=yes" in rendered["/etc/ufw/ufw.conf"]
    assert b'DEFAULT_INPUT_POLICY="DROP"' in rendered["/etc/default/ufw"]


def test_a_non_default_ssh_port_is_allowed_too(tmp_path: Path) -> None:
    rendered = rendered_for(tmp_path, recipes=["base", "hardening"], ssh={"port": 2222})
    assert ("tcp", 2222) in allowed_in(rendered["/etc/ufw/user.rules"].decode())
    assert "\nport = 22,2222\n" in rendered["/etc/fail2ban/jail.d/miab-remote.local"].decode()


def test_roundcube_jail_only_with_webmail(tmp_path: Path) -> None:
    without = rendered_for(tmp_path / "a", recipes=["base", "hardening"])
    assert b"[roundcube-auth]" not in without["/etc/fail2ban/jail.d/miab-remote.local"]
    jails = rendered_for(tmp_path / "b")["/etc/fail2ban/jail.d/miab-remote.local"].decode()  # default recipes
    for jail in ("[sshd]", "[postfix-sasl]", "[dovecot]", "[roundcube-auth]"):
        assert jail in jails
    assert "backend = systemd" in jails and "banaction = nftables-multiport" in jails


SSHD_T_GOOD = "port 22\npermitrootlogin without-password\npasswordauthentication no\nkbdinteractiveauthentication no\n"


@pytest.mark.parametrize(
    ("effective", "ok"),
    [
        (SSHD_T_GOOD, True),
        (SSHD_T_GOOD.replace("passwordauthentication no", "passwordauthentication yes"), False),
        (SSHD_T_GOOD.replace("permitrootlogin without-password", "permitrootlogin yes"), False),
    ],
)
def test_sshd_validator_refuses_an_overridden_setting(tmp_path: Path, effective: str, ok: bool) -> None:
    from miab_remote.engine.recipes import _load_module, find_recipe

    hardening = _load_module(find_recipe("hardening", tmp_path))
    fake = tmp_path / "sshd"
    (tmp_path / "effective").write_text(effective)
    fake.write_text(f'#!/bin/sh\n[ "$1" = -T ] && cat {tmp_path / "effective"}\nexit 0\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    proc = subprocess.run(["/bin/sh", "-c", hardening.sshd_validator()], capture_output=True, text=True, env=env)
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    if not ok:
        assert "another file in /etc/ssh/sshd_config.d" in proc.stdout
        assert "yes" in proc.stdout
