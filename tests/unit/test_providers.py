"""The provider registry and the Provider protocol: what the CLI's create and destroy are written against.

Checked on the real registered providers (no box is made: only their pure parts are called), so a
provider that drifts from the protocol, or a registry that forgets one, fails here in a second.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from miab_remote import providers
from miab_remote.errors import InputError
from miab_remote.fleet.model import Host
from miab_remote.fleet.rules import PROVIDERS
from miab_remote.providers.base import CreatedBox, Provider

# The members every provider has, and a call each must accept (by keyword where the protocol names it).
PROTOCOL_CALLS: dict[str, tuple[tuple[object, ...], dict[str, object]]] = {
    "check_name": (("box1.example.test",), {}),
    "check_image": (("debian-13",), {}),
    "validate_config": ((), {}),
    "check_requirements": ((), {}),
    "preflight": ((["box1.example.test"], None), {}),
    "create": (("box1.example.test", "ssh-ed25519 AAAA op"), {"progress": print, "image": "debian-13"}),
    "destroy": (("box1.example.test",), {}),
    "status": (("box1.example.test",), {}),
    "before_deploy": ((Host("b.example.test", Path("b.toml"), "b.example.test", "192.0.2.1"),), {}),
    "after_deploy": ((Host("b.example.test", Path("b.toml"), "b.example.test", "192.0.2.1"),), {}),
    "public_resolvers": ((), {}),
}


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local provider reads its configuration from the environment: point it at an empty folder."""
    monkeypatch.setenv("MIAB_REMOTE_LOCAL_DIR", str(tmp_path / "state"))
    for var in (
        "MIAB_REMOTE_LOCAL_SUBNET",
        "MIAB_REMOTE_LOCAL_SUBNET6",
        "MIAB_REMOTE_LOCAL_BRIDGE",
        "MIAB_REMOTE_DEBIAN_MIRROR",
    ):
        monkeypatch.delenv(var, raising=False)


def test_registry_knows_local_and_the_clouds() -> None:
    assert providers.names() == ("local", *providers.CLOUDS)
    assert set(providers.CLOUDS) <= set(PROVIDERS), "an inventory can name every provider"
    for name in providers.names():
        assert providers.get(name).name == name
    with pytest.raises(InputError, match="'aws' is not a provider"):
        providers.get("aws")


def test_check_sees_a_local_boxs_dns_through_the_bridges_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """`check` asks the world's DNS (reverse DNS) of a local box at the bridge's dnsmasq, the one resolver that
    knows the boxes; of a cloud's or a manual box, through the laptop's own resolvers."""
    host = Host("b.example.test", Path("b.toml"), "b.example.test", "192.0.2.1", provider="local")
    assert providers.public_resolvers(host) == ("10.77.0.1",)
    monkeypatch.setenv("MIAB_REMOTE_LOCAL_SUBNET", "10.78.7.0/24")
    assert providers.public_resolvers(host) == ("10.78.7.1",)
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", "a-token-for-the-test")
    for other in ("digitalocean", "manual", None):
        assert providers.public_resolvers(dataclasses.replace(host, provider=other)) == ()


@pytest.mark.parametrize("name", providers.names())
def test_each_provider_has_the_protocol(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DIGITALOCEAN_TOKEN", "LINODE_TOKEN", "VULTR_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "a-token-for-the-test")
    provider = providers.get(name)
    members = {m for m in dir(Provider) if not m.startswith("_")} | set(Provider.__annotations__)
    assert members == {"name", "images", "default_image", *PROTOCOL_CALLS}, (
        "PROTOCOL_CALLS must list every member of the protocol"
    )
    assert provider.default_image in provider.images
    for image in provider.images:
        assert provider.check_image(image) == image
    for member, (args, kwargs) in PROTOCOL_CALLS.items():
        method = getattr(provider, member)
        assert callable(method), member
        inspect.signature(method).bind(*args, **kwargs)  # TypeError if the provider's signature differs
        declared = inspect.signature(getattr(Provider, member)).return_annotation
        assert inspect.signature(method).return_annotation == declared, member


def test_local_through_the_registry() -> None:
    """The pure parts, called as the CLI calls them: name rule, configuration check, status of nothing."""
    local = providers.get("local")
    assert local.check_name("Box1.Example.Test.") == "box1.example.test"
    for bad in ("-box.example.test", "box_1.example.test", "a..b", "x" * 70, "../etc", ""):
        with pytest.raises(InputError, match="not a valid host name"):
            local.check_name(bad)
    local.validate_config()
    assert local.status("box1.example.test") == "absent"
    with pytest.raises(InputError, match="not a valid host name"):
        local.status("../etc")


def test_bad_configuration_is_refused_through_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIAB_REMOTE_LOCAL_SUBNET", "10.77.0.0/30")
    with pytest.raises(InputError, match="MIAB_REMOTE_LOCAL_SUBNET"):
        providers.get("local").validate_config()


def test_created_box_is_the_value_create_returns() -> None:
    box = CreatedBox(name="b.example.test", address="10.77.0.2", host_key_public="ssh-ed25519 AAAA root@b", os="x")
    assert box.resolvers == ()
    assert inspect.signature(providers.get("local").create).return_annotation in (CreatedBox, "CreatedBox")


@pytest.mark.parametrize("provider", [None, "manual"])
def test_after_deploy_without_a_registered_provider_has_no_notes(provider: str | None) -> None:
    host = Host("b.example.test", Path("b.toml"), "b.example.test", "192.0.2.1", provider=provider)
    assert providers.after_deploy(host) == []
    assert providers.before_deploy(host) == []
