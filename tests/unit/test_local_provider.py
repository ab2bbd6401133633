"""The local provider's pure parts: its configuration, the names and keys it accepts, and the root
filesystem it prepares (on a small fake tree), plus destroy's refusals. No box, no root, no network:
the boxes themselves are tests/e2e/test_local_provider.py's."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from miab_remote import cli
from miab_remote.errors import InputError, ProviderError
from miab_remote.fleet.store import new_document
from miab_remote.profiles import DEBIAN_12, DEBIAN_13, OSProfile
from miab_remote.providers.local import LocalConfig, LocalProvider, network, rootfs
from miab_remote.transport.sshkeys import generate_ed25519

CLI_BOX = "tpcli.example.test"


@pytest.fixture
def config(tmp_path: Path) -> LocalConfig:
    """A configuration whose state dir is empty and private to the test (nothing in it is ever made)."""
    return dataclasses.replace(LocalConfig(), state_dir=tmp_path / "state")


def test_invalid_names_are_refused(config: LocalConfig) -> None:
    operator = generate_ed25519("operator@test")
    for bad in ("-box.example.test", "box_1.example.test", "a..b", "x" * 70, "../etc", ""):
        with pytest.raises(InputError):
            LocalProvider(config).create(bad, operator.public_line)
    with pytest.raises(InputError):
        LocalProvider(config).create("ok.example.test", "not a key")


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MIAB_REMOTE_LOCAL_DIR", "MIAB_REMOTE_CACHE_DIR", "MIAB_REMOTE_LOCAL_SUBNET", "MIAB_REMOTE_APT_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MIAB_REMOTE_LOCAL_BRIDGE", "miabx0")
    monkeypatch.setenv("MIAB_REMOTE_DEBIAN_MIRROR", "http://10.77.0.1:3142/deb.debian.org/debian")
    cfg = LocalConfig.from_env()
    assert cfg.state_dir == Path("/var/lib/miab-remote/local")
    assert cfg.rootfs_cache("debian-12") == Path("/var/cache/miab-remote/rootfs/debian-12")
    assert cfg.rootfs_cache("debian-13") == Path("/var/cache/miab-remote/rootfs/debian-13")
    assert cfg.subnet == ipaddress.IPv4Network("10.77.0.0/24")
    assert str(cfg.gateway) == "10.77.0.1"
    assert cfg.bridge == "miabx0"
    assert cfg.nft_table == "miab_miabx0"
    assert cfg.apt_proxy is None
    assert rootfs.security_mirror(cfg.mirror) == "http://10.77.0.1:3142/deb.debian.org/debian-security"
    assert rootfs.security_mirror("http://deb.debian.org/debian/") == "http://deb.debian.org/debian-security"
    for var, bad in (
        ("MIAB_REMOTE_LOCAL_SUBNET", "10.77.0.1/24"),
        ("MIAB_REMOTE_LOCAL_SUBNET", "10.77.0.0/30"),
        ("MIAB_REMOTE_LOCAL_BRIDGE", "a-bridge-name-too-long"),
        ("MIAB_REMOTE_DEBIAN_MIRROR", "ftp://deb.debian.org/debian"),
        ("MIAB_REMOTE_APT_PROXY", "10.77.0.1:3142"),
        ("MIAB_REMOTE_LOCAL_SUBNET6", "fd12:3456:789a:1::1/64"),
        ("MIAB_REMOTE_LOCAL_SUBNET6", "10.77.0.0/24"),
        ("MIAB_REMOTE_LOCAL_SUBNET6", "fd12:3456:789a:1::/96"),
        ("MIAB_REMOTE_LOCAL_SUBNET6", "fe80::/64"),
        ("MIAB_REMOTE_LOCAL_SUBNET6", "ff02::/64"),
    ):
        with monkeypatch.context() as m:
            m.setenv(var, bad)
            with pytest.raises(InputError, match=var):
                LocalConfig.from_env()


def test_ipv6_subnet_is_derived_from_the_bridge_or_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each bridge its own ULA /64 (RFC 4193: fd00::/8), the same on every run; a box's IPv6 address is its
    IPv4 host part in it; MIAB_REMOTE_LOCAL_SUBNET6 sets another."""
    for var in ("MIAB_REMOTE_LOCAL_SUBNET", "MIAB_REMOTE_LOCAL_SUBNET6"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MIAB_REMOTE_LOCAL_BRIDGE", "miabx0")
    cfg = LocalConfig.from_env()
    assert cfg.subnet6 == LocalConfig(bridge="miabx0").subnet6 == ipaddress.IPv6Network("fd0c:c6fa:9109::/64")
    assert LocalConfig(bridge="miabx1").subnet6 != cfg.subnet6
    assert cfg.subnet6.prefixlen == 64 and cfg.subnet6.network_address in ipaddress.IPv6Network("fd00::/8")
    assert str(cfg.gateway6) == "fd0c:c6fa:9109::1"
    assert str(cfg.ipv6_of(ipaddress.IPv4Address("10.77.0.9"))) == "fd0c:c6fa:9109::9"
    monkeypatch.setenv("MIAB_REMOTE_LOCAL_SUBNET", "10.77.4.0/22")
    monkeypatch.setenv("MIAB_REMOTE_LOCAL_SUBNET6", "fd12:3456:789a:1::/64")
    cfg = LocalConfig.from_env()
    assert cfg.subnet6 == ipaddress.IPv6Network("fd12:3456:789a:1::/64")
    assert str(cfg.gateway6) == "fd12:3456:789a:1::1"
    assert str(cfg.ipv6_of(ipaddress.IPv4Address("10.77.5.3"))) == "fd12:3456:789a:1::103"


@pytest.mark.parametrize("profile", [DEBIAN_13, DEBIAN_12], ids=lambda p: p.id)
def test_root_filesystem_is_prepared_before_boot(config: LocalConfig, tmp_path: Path, profile: OSProfile) -> None:
    """What goes into the tree, checked on a small fake tree (the boxes below check it live)."""
    root = tmp_path / "rootfs"
    for folder in ("etc/ssh/sshd_config.d", "usr/lib/systemd/system", "var/lib/dbus", "root"):
        (root / folder).mkdir(parents=True)
    (root / "usr/lib/systemd/system/ssh.service").write_text("[Service]\n")
    for old in ("rsa", "ecdsa", "ed25519"):
        (root / f"etc/ssh/ssh_host_{old}_key").write_text("shared\n")
        (root / f"etc/ssh/ssh_host_{old}_key.pub").write_text("shared\n")
    (root / "var/lib/dbus/machine-id").write_text("0" * 32 + "\n")
    (root / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")  # must be replaced, not followed
    cfg = dataclasses.replace(config, apt_proxy="http://10.79.0.1:3142")
    key = generate_ed25519("root@fake.example.test")
    operator_line = generate_ed25519("op").public_line
    rootfs.prepare(cfg, profile, root, "fake.example.test", "10.79.0.9", operator_line, key, lambda _l: None)

    assert (root / "etc/hostname").read_text() == "fake.example.test\n"
    assert "10.79.0.9\tfake.example.test fake\n" in (root / "etc/hosts").read_text()
    assert "127.0.0.1\tlocalhost\n" in (root / "etc/hosts").read_text()
    machine_id = (root / "etc/machine-id").read_text()
    assert re.fullmatch(r"[0-9a-f]{32}\n", machine_id) and machine_id != "0" * 32 + "\n"
    assert (root / "var/lib/dbus/machine-id").read_text() == machine_id
    resolv = root / "etc/resolv.conf"
    assert not resolv.is_symlink()
    assert resolv.read_text() == f"nameserver {cfg.gateway}\n", "boxes use the local resolver on the bridge"
    suite = profile.codename
    assert (root / "etc/apt/sources.list").read_text() == (
        f"deb {cfg.mirror} {suite} main\ndeb {cfg.mirror} {suite}-updates main\n"
        f"deb http://deb.debian.org/debian-security {suite}-security main\n"
    ), "the box's apt follows its own release"
    assert (
        'Acquire::http::Proxy "http://10.79.0.1:3142";' in (root / "etc/apt/apt.conf.d/90miab-remote-proxy").read_text()
    )
    assert sorted(p.name for p in (root / "etc/ssh").glob("ssh_host_*")) == [
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
    ]
    assert (root / "etc/ssh/ssh_host_ed25519_key").read_bytes() == key.private_openssh
    assert (root / "etc/ssh/ssh_host_ed25519_key").stat().st_mode & 0o777 == 0o600
    assert (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text() == key.public_line + "\n"
    assert (root / "etc/ssh/sshd_config.d/miab-remote-hostkey.conf").read_text().splitlines()[-1] == (
        "HostKey /etc/ssh/ssh_host_ed25519_key"
    )
    assert (root / "root/.ssh/authorized_keys").read_text() == operator_line + "\n"
    assert (root / "root/.ssh").stat().st_mode & 0o777 == 0o700
    assert (root / "root/.ssh/authorized_keys").stat().st_mode & 0o777 == 0o600
    wants = root / "etc/systemd/system/multi-user.target.wants/ssh.service"
    assert os.readlink(wants) == "/lib/systemd/system/ssh.service"

    # A symlinked folder in the tree could send root's writes to the host: refused.
    evil = tmp_path / "evil"
    (evil / "etc").mkdir(parents=True)
    (evil / "root").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ProviderError, match="symlink"):
        rootfs.prepare(cfg, profile, evil, "fake.example.test", "10.79.0.9", operator_line, key, lambda _l: None)
    assert not (tmp_path / "elsewhere").exists()


def test_an_image_the_provider_cannot_make_is_refused_before_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`create --image` takes the provider's OS profiles only: anything else is exit 2, naming them, with no
    box, no cache and no inventory made (the check runs before the operator's key is even looked for)."""
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("MIAB_REMOTE_LOCAL_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MIAB_REMOTE_CACHE_DIR", str(tmp_path / "cache"))
    inv = tmp_path / "hosts"
    for bad in ("ubuntu-24.04", "debian-11", "bookworm"):
        code = cli.main(["--inventory", str(inv), "create", "--provider", "local", "--image", bad, CLI_BOX])
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"--image {bad!r}" in err and "debian-13, debian-12" in err, err
    assert not any(tmp_path.iterdir()), "nothing made"
    assert LocalProvider().images == ("debian-13", "debian-12")


def test_cloud_options_are_refused_for_a_local_box(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    args = ["--inventory", str(tmp_path / "hosts"), "create", "--provider", "local", "--region", "fra1", CLI_BOX]
    code = cli.main(args)
    assert code == 2
    assert capsys.readouterr().err.startswith("miab-remote: --region is for cloud providers (digitalocean")
    assert not any(tmp_path.iterdir()), "nothing made"


@pytest.mark.parametrize("provider", [None, "manual", "digitalocean"])
def test_destroy_refuses_a_box_it_cannot_destroy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, provider: str | None
) -> None:
    """An inventory is the operator's record (every user's hash, every alias): destroy used to delete the
    file of a box it did not make, and destroy nothing. Now: exit 2, nothing touched."""
    monkeypatch.setenv("NO_COLOR", "1")
    inv = tmp_path / "hosts"
    inv.mkdir()
    path = inv / f"{CLI_BOX}.toml"
    path.write_text(new_document(CLI_BOX, "192.0.2.10", provider=provider, host_keys=[], os=None).as_string())
    before = path.read_bytes()
    code = cli.main(["--inventory", str(inv), "destroy", "--yes", CLI_BOX])
    res = capsys.readouterr()
    assert code == 2, res.err + res.out
    assert res.err.startswith(f"miab-remote: {CLI_BOX}: not destroyed: ") and res.err.count("\n") == 1, res.err
    assert "nothing was touched" in res.err
    assert path.read_bytes() == before
    assert sorted(p.name for p in inv.iterdir()) == [path.name]


@pytest.mark.parametrize("profile", [DEBIAN_13, DEBIAN_12], ids=lambda p: p.id)
def test_a_seeded_tree_gets_the_seed_and_no_identity_of_ours(
    config: LocalConfig, tmp_path: Path, profile: OSProfile
) -> None:
    """A seeded box's hostname, host keys and authorized keys are cloud-init's, from the user data as given."""
    root = tmp_path / "rootfs"
    for folder in ("etc/ssh", "usr/lib/systemd/system", "var/lib/cloud/instances/iid-old", "root"):
        (root / folder).mkdir(parents=True)
    (root / "usr/lib/systemd/system/ssh.service").write_text("[Service]\n")
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("shared\n")
    (root / "var/lib/cloud/instance").symlink_to("/var/lib/cloud/instances/iid-old")
    (root / "etc/hostname").write_text("vm\n")
    user_data = "#cloud-config\r\nhostname: s.example.test\n# ünïcode, no newline at the end"
    rootfs.prepare_seeded(config, profile, root, "s.example.test", user_data)

    seed = root / "var/lib/cloud/seed/nocloud"
    assert (seed / "user-data").read_bytes() == user_data.encode(), "byte for byte what the client sent"
    meta = (seed / "meta-data").read_text()
    assert re.fullmatch(r"instance-id: iid-[0-9a-f]{16}\nlocal-hostname: s\.example\.test\n", meta)
    account_key = generate_ed25519("op: #1").public_line
    rootfs.prepare_seeded(config, profile, root, "s.example.test", user_data, [account_key])
    again = (seed / "meta-data").read_text()
    assert again.split("\n")[0] != meta.split("\n")[0], "every box is a new instance: cloud-init's first boot"
    assert again.endswith(f'public-keys:\n  - "{account_key}"\n'), "the account's keys, as a cloud's metadata"
    assert not (root / "var/lib/cloud/instance").is_symlink() and not (root / "var/lib/cloud/instances").exists()
    assert list((root / "etc/ssh").glob("ssh_host_*")) == [], "cloud-init writes the host keys"
    assert not (root / "root/.ssh").exists(), "and the authorized keys"
    assert (root / "etc/hostname").read_text() == "vm\n", "and the hostname"
    assert "s.example.test" not in (root / "etc/hosts").read_text()
    assert (root / "etc/resolv.conf").read_text() == f"nameserver {config.gateway}\n"
    assert f" {profile.codename}-security main" in (root / "etc/apt/sources.list").read_text()
    assert (root / "etc/systemd/system/multi-user.target.wants/ssh.service").is_symlink()
    assert config.rootfs_cache(profile.id + "+cloud-init").name == f"{profile.id}+cloud-init"


def test_cloud_init_result_and_logs_are_read_in_the_tree(tmp_path: Path) -> None:
    assert rootfs.cloud_init_result(tmp_path) is None, "not finished"
    data = tmp_path / "var/lib/cloud/data"
    data.mkdir(parents=True)
    (data / "result.json").write_text('{"v1": {"datasource": "DataSourceNoCloud", "errors": []}}')
    assert rootfs.cloud_init_result(tmp_path) == []
    (data / "result.json").write_text('{"v1": {"errors": ["(\'locale\', ProcessExecutionError())"]}}')
    assert rootfs.cloud_init_result(tmp_path) == ["('locale', ProcessExecutionError())"]
    (tmp_path / "var/log").mkdir(parents=True)
    (tmp_path / "var/log/cloud-init.log").write_text("".join(f"line {i}\n" for i in range(100)))
    logs = rootfs.cloud_init_logs(tmp_path)
    assert "line 99" in logs and "line 74" not in logs and "/var/log/cloud-init-output.log: (none)" in logs


def test_the_cloud_init_tree_keeps_no_state_keys_or_host_name_and_reads_only_the_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What _settle_cloud_init leaves in the cached tree of seeded boxes (locale-gen itself runs in the e2e build)."""
    root = tmp_path / "tree"
    for folder in ("etc/ssh", "var/lib/cloud/instances/iid-x", "etc/cloud/cloud.cfg.d"):
        (root / folder).mkdir(parents=True)
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("made by the package\n")
    (root / "etc/hostname").write_text("the-build-machine\n")
    ran: list[list[str]] = []
    monkeypatch.setattr(rootfs, "run", lambda args, **_kw: ran.append(list(args)))
    rootfs._settle_cloud_init(root)

    config = (root / rootfs.CLOUD_INIT_CONFIG_FILE).read_text()
    assert "datasource_list: [ NoCloud, None ]\n" in config and "network: {config: disabled}\n" in config
    assert list((root / "etc/ssh").glob("ssh_host_*")) == [] and not (root / "var/lib/cloud").exists()
    assert (root / "etc/hostname").read_text() == "localhost\n"
    assert (root / "etc/locale.gen").read_text() == "en_US.UTF-8 UTF-8\n"
    assert ran == [["chroot", str(root), "locale-gen"]]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="nft's check mode needs root")
def test_the_nft_script_parses_and_keeps_ipv6_on_the_bridge() -> None:
    """nft itself checks the script (`nft -c`: nothing is applied); IPv6 is dropped beyond the bridge both ways."""
    cfg = LocalConfig(bridge="miabx0")
    script = network._nft_script(cfg)
    proc = subprocess.run(["nft", "-c", "-f", "-"], input=script, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f'ip6 saddr {cfg.subnet6} oifname != "miabx0" counter drop' in script
    assert f'ip6 daddr {cfg.subnet6} iifname != "miabx0" counter drop' in script


def test_a_box_killed_after_its_stop_timeout_says_what_its_shutdown_waited_for(tmp_path: Path) -> None:
    from miab_remote.providers.local import machine

    paths = machine.BoxPaths(tmp_path, tmp_path / "rootfs", tmp_path / "box.json", tmp_path / "console.log")
    assert machine._waiting_for(paths) == ""  # no console log: nothing to add
    paths.console.write_text(
        "[  OK  ] Stopped ssh.service.\n"
        "[ \x1b[0;31m*\x1b[0m] A stop job is running for Postfix (1min 2s / 1min 30s)\n"
        "[\x1b[0;1;31m***\x1b[0m ] A stop job is running for Postfix (1min 3s / 1min 30s)\n"
    )
    assert machine._waiting_for(paths) == "; its console: [*** ] A stop job is running for Postfix (1min 3s / 1min 30s)"
