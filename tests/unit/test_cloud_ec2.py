"""The EC2 adapter through libcloud's real EC2NodeDriver against moto's EC2 server on 127.0.0.1
(tests/standins/ec2.py), with Debian's AMIs: the newest Debian AMI found, the key imported once, the
security group opening exactly the box's ports, RunInstances with the user data (read back from moto), the
Elastic IP, and a destroy that removes the instance, the group and the address but keeps the key pair.

moto's instances get made-up addresses that nothing answers on, so these tests call the adapter the way
CloudProvider.create does up to its first SSH contact, and never connect to a server's address."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from miab_remote.errors import InputError, MiabError, ProviderError
from miab_remote.mail.ports import TCP_PORTS, UDP_PORTS
from miab_remote.providers.base import CreateOptions
from miab_remote.providers.cloud import CloudProvider
from miab_remote.providers.cloud.calls import CloudRefused
from miab_remote.providers.cloud.ec2 import EC2, key_name
from miab_remote.transport.sshkeys import generate_ed25519
from tests.standins import ec2 as standin
from tests.standins.ec2 import ERROR, debian_ami
from tests.standins.ec2 import EC2StandIn as Moto
from tests.unit.cloudapi import Request, create_until_first_contact, make_provider, serve_as

ACCESS_KEY = "AKIAMIABREMOTETEST42"
SECRET = "miab/secret+Key9f8e7d6c5b4a3F2E1D0C9B8A7"  # distinctive, to be looked for in everything printed
NAME = "box.example.com"
OPERATOR_KEY = generate_ed25519("operator@laptop").public_line
NEWEST_13 = "ami-0d13a0a1b2c3d4e5f"
AMIS = [
    debian_ami(NEWEST_13, "debian-13-amd64-20251020-2268", "2025-10-20T12:00:00.000Z"),
    debian_ami("ami-0d13000000000000a", "debian-13-amd64-20250901-2222", "2025-09-01T12:00:00.000Z"),
    debian_ami("ami-0d13000000000000b", "debian-13-arm64-20251101-2290", "2025-11-01T12:00:00.000Z"),
    debian_ami("ami-0d12a0a1b2c3d4e5f", "debian-12-amd64-20251015-2263", "2025-10-15T12:00:00.000Z"),
    # a newer image of the same name pattern, published by another account: never chosen
    debian_ami("ami-0bad000000000000c", "debian-13-amd64-20251201-9999", "2025-12-01T12:00:00.000Z")
    | {"owner_id": "999999999999", "image_location": "999999999999/debian-13-amd64-20251201-9999"},
]


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    with standin.start(amis=AMIS) as aws:
        yield aws


@pytest.fixture
def aws(moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Moto:
    moto.reset()
    monkeypatch.setenv("MIAB_REMOTE_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setenv("MIAB_REMOTE_EC2_ENDPOINT", moto.url)
    monkeypatch.delenv("LIBCLOUD_DEBUG", raising=False)
    return moto


def ec2(**options: Any) -> CloudProvider:
    made: CloudProvider = make_provider("ec2", **options)
    return made


def query(provider: CloudProvider, **params: str) -> Any:
    """One EC2 API call of the test's own, through the provider's driver (its parsed XML answer)."""
    driver = provider._connect()
    return driver.connection.request(driver.path, params=params).object


def texts(element: Any, tag: str) -> list[str]:
    return [e.text for e in element.iter() if e.tag.endswith("}" + tag)]


def ingress(provider: CloudProvider, group_id: str) -> set[tuple[str, int, int, str]]:
    (group,) = provider._connect().ex_get_security_groups(group_ids=[group_id])
    return {
        (r["protocol"], int(r["from_port"]), int(r["to_port"]), cidr)
        for r in group.ingress_rules
        for cidr in r["cidr_ips"]
    }


def test_create_imports_the_key_opens_the_ports_and_runs_with_the_user_data(
    aws: Moto, capsys: pytest.CaptureFixture[str]
) -> None:
    provider = ec2()
    made = create_until_first_contact(provider, NAME, OPERATOR_KEY)
    record = made.record
    assert provider._offer is not None
    assert (provider._offer.region, provider._offer.size, provider._offer.image) == ("eu-west-3", "t3.micro", NEWEST_13)
    assert record == {
        "id": record["id"],
        "security_group": record["security_group"],
        "key_name": key_name(OPERATOR_KEY),
    }

    (imported,) = aws.called("ImportKeyPair")
    assert imported["KeyName"] == key_name(OPERATOR_KEY)
    assert base64.b64decode(imported["PublicKeyMaterial"]).decode() == OPERATOR_KEY

    expected = {("tcp", p, p, "0.0.0.0/0") for p in TCP_PORTS} | {("udp", p, p, "0.0.0.0/0") for p in UDP_PORTS}
    assert ingress(provider, record["security_group"]) == expected, "exactly the box's ports, from anywhere"
    assert len(aws.called("AuthorizeSecurityGroupIngress")) == len(TCP_PORTS) + len(UDP_PORTS)

    (run,) = aws.called("RunInstances")
    assert (run["ImageId"], run["InstanceType"], run["KeyName"]) == (NEWEST_13, "t3.micro", key_name(OPERATOR_KEY))
    assert run["SecurityGroup.1"] == f"miab-remote {NAME}"
    assert (run["TagSpecification.1.Tag.1.Key"], run["TagSpecification.1.Tag.1.Value"]) == ("Name", NAME)

    answer = query(provider, Action="DescribeInstanceAttribute", InstanceId=record["id"], Attribute="userData")
    (stored,) = texts(answer, "value")
    assert base64.b64decode(stored).decode() == made.user_data, "moto holds exactly the user data rendered"
    assert '"name": "admin"' in made.user_data and OPERATOR_KEY in made.user_data, "Debian's AMIs log in as admin"
    assert provider.adapter.ssh_user == "admin"

    view = provider.adapter.node(provider._connect(), record)
    assert view.state == "running" and view.ipv4

    shown = capsys.readouterr()
    assert SECRET not in shown.out + shown.err
    assert not any(SECRET in str(c.params) for c in aws.calls), "SigV4: the secret signs, it never travels"
    assert aws.called("DescribeImages")[0]["Owner.1"] == "136693071363"


def test_the_key_pair_is_imported_once_and_found_by_fingerprint(aws: Moto) -> None:
    first = ec2()
    create_until_first_contact(first, NAME, OPERATOR_KEY)
    again = ec2()
    assert again.adapter.ensure_key(again._connect(), OPERATOR_KEY) == key_name(OPERATOR_KEY)
    assert len(aws.called("ImportKeyPair")) == 1

    # a key the operator imported under a name of their own is found by its fingerprint, not imported again
    own = generate_ed25519("operator@desk").public_line
    again._connect().import_key_pair_from_string("desk", own)
    assert again.adapter.ensure_key(again._connect(), own) == "desk"
    assert len(aws.called("ImportKeyPair")) == 2


def test_the_newest_debian_ami_of_debians_account_is_the_default(aws: Moto) -> None:
    provider = ec2()
    provider.preflight([NAME], None)
    assert provider.default_image == "debian-13"
    assert provider._offer is not None and provider._offer.image == NEWEST_13, "not arm64, not another owner's"
    older = ec2()
    older.preflight([NAME], "debian-12")
    assert older._offer is not None and older._offer.image == "ami-0d12a0a1b2c3d4e5f"


def test_an_elastic_ip_is_allocated_associated_and_released_with_the_rest(aws: Moto) -> None:
    provider = ec2(elastic_ip=True)
    made = create_until_first_contact(provider, NAME, OPERATOR_KEY)
    record = made.record
    driver = provider._connect()
    view = provider.adapter.finish_node(driver, record, provider.adapter.node(driver, record), provider.options)
    (address,) = driver.ex_describe_all_addresses()
    assert record["elastic_ip"] == address.extra["allocation_id"]
    assert address.instance_id == record["id"] and view.ipv4 == address.ip, "the box's address is the Elastic IP"
    assert aws.called("AllocateAddress")[0]["Domain"] == "vpc"

    lines = provider.destroy(NAME, record)
    assert lines == [
        f"terminated instance {record['id']}",
        f"deleted security group {record['security_group']}",
        f"released Elastic IP {record['elastic_ip']}",
        f"kept key pair {key_name(OPERATOR_KEY)} (your SSH key, for the next box)",
    ]
    assert provider.status(NAME, record) == "absent"
    assert driver.ex_describe_all_addresses() == []
    with pytest.raises(CloudRefused, match=r"InvalidGroup\.NotFound"), provider._call("reading the group"):
        driver.ex_get_security_groups(group_ids=[record["security_group"]])
    assert [kp.name for kp in driver.list_key_pairs()] == [key_name(OPERATOR_KEY)]

    # a destroy run again (after an interruption) finds everything gone and says so
    assert ec2().destroy(NAME, record) == [
        f"instance {record['id']} was already terminated",
        f"security group {record['security_group']} was already deleted",
        f"Elastic IP {record['elastic_ip']} was already released",
        f"kept key pair {key_name(OPERATOR_KEY)} (your SSH key, for the next box)",
    ]


def test_a_refused_run_is_exit_2_and_deletes_the_group_it_made(aws: Moto) -> None:
    aws.refuse["RunInstances"] = (400, "InstanceLimitExceeded", "You have requested more instances than allowed")
    provider = ec2()
    with pytest.raises(CloudRefused, match="refused creating the server: InstanceLimitExceeded: You have") as e:
        create_until_first_contact(provider, NAME, OPERATOR_KEY)
    assert e.value.exit_code == 2
    assert aws.called("CreateSecurityGroup") and aws.called("DeleteSecurityGroup")
    groups = provider._connect().ex_get_security_groups(filters={"group-name": f"miab-remote {NAME}"})
    assert groups == []


def test_a_name_in_use_is_refused_and_a_terminated_one_is_free(aws: Moto) -> None:
    made = create_until_first_contact(ec2(), NAME, OPERATOR_KEY)
    with pytest.raises(CloudRefused, match=rf"already has a server named {NAME} \(id {made.record['id']}\)") as e:
        ec2().preflight([NAME], None)
    assert e.value.exit_code == 2
    ec2().destroy(NAME, made.record)
    ec2().preflight([NAME], None)  # terminated instances stay listed for a while: they hold no name


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        ({"region": "mars-1"}, r"offers no region 'mars-1' \(--region or AWS_DEFAULT_REGION\); offered: af-south-1"),
        ({"size": "t3.nano"}, r"offers no size with at least 1024 MB of memory 't3.nano' \(--size\)"),
        ({"size": "t3.galactic"}, r"offers no size in eu-west-3 't3.galactic' \(--size\)"),
    ],
)
def test_an_unknown_region_or_a_small_size_is_refused(aws: Moto, options: dict[str, str], refusal: str) -> None:
    with pytest.raises(InputError, match=refusal) as e:
        ec2(**options).preflight([NAME], None)
    assert e.value.exit_code == 2
    assert not aws.called("RunInstances") and not aws.called("CreateSecurityGroup")


def test_a_region_without_debian_amis_is_refused(aws: Moto, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EC2, "images", {"debian-13": "debian-13-amd64-*", "debian-12": "debian-14-amd64-*"})
    with pytest.raises(InputError, match=r"has no Debian AMI named debian-14-amd64-\* \(owner 136693071363\)"):
        ec2().preflight([NAME], "debian-12")


@pytest.mark.parametrize(
    ("status", "code", "kind", "exit_code"),
    [
        (401, "AuthFailure", CloudRefused, 2),
        (400, "InstanceLimitExceeded", CloudRefused, 2),
        (500, "InternalError", ProviderError, 1),
    ],
)
def test_the_keys_never_show_even_when_the_api_echoes_them(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    status: int,
    code: str,
    kind: type[MiabError],
    exit_code: int,
) -> None:
    def echo(req: Request, m: re.Match[str]) -> tuple[int, bytes]:
        message = f"refused {req.headers['authorization']} and {SECRET}"
        return status, ERROR.format(code=code, message=message).encode()

    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
    for api in serve_as("ec2", {("GET", "/"): echo}, env, tmp_path / "config", monkeypatch):
        with pytest.raises(kind) as e:
            make_provider("ec2").preflight([NAME], None)
        assert e.value.exit_code == exit_code
        text = str(e.value)
        assert f"{code}: refused AWS4-HMAC-SHA256 Credential=********/" in text
        assert ACCESS_KEY not in text and SECRET not in text + "".join(capsys.readouterr())
        assert api.requests and all(SECRET not in r.raw for r in api.requests)


def test_create_options_check() -> None:
    """--elastic-ip is EC2's own; the others refuse it (the framework's check, for the record)."""
    EC2().check_options(CreateOptions(elastic_ip=True))
    with pytest.raises(InputError, match="--elastic-ip is for the ec2 provider"):
        make_provider("linode", elastic_ip=True).validate_config()


def test_destroy_and_status_go_to_the_region_the_box_was_made_in(aws: Moto, monkeypatch: pytest.MonkeyPatch) -> None:
    made = create_until_first_contact(ec2(), NAME, OPERATOR_KEY)
    record = made.record | {"region": "eu-west-3"}  # as the inventory records it
    monkeypatch.delenv("AWS_DEFAULT_REGION")  # a later shell: the default region is another one
    assert ec2().status(NAME, record) == "running", "not 'absent' because eu-central-1 has no such instance"
    assert ec2().destroy(NAME, record)[0] == f"terminated instance {record['id']}"
    assert ec2(region="eu-west-3").status(NAME, record) == "absent"


def test_a_create_that_fails_after_the_run_leaves_nothing_behind(aws: Moto) -> None:
    """CloudProvider.create itself, made to fail at its first SSH contact: a timeout of 0 s gives up before
    any connection is tried (and moto's Elastic IPs are loopback addresses: nothing leaves this machine).
    The instance, its security group and its Elastic IP are all removed again."""
    provider = ec2(elastic_ip=True, timeout=0.0)
    provider.check_name(NAME)
    provider.validate_config()
    provider.preflight([NAME], None)
    said: list[str] = []
    with pytest.raises(ProviderError, match=r"did not answer SSH within 0 s") as e:
        provider.create(NAME, OPERATOR_KEY, said.append)
    assert "the create failed: destroying the new server" in said
    assert "destroying" not in str(e.value), "the undo itself went through"
    driver = provider._connect()
    (instance,) = driver.list_nodes()
    assert instance.state == "terminated"
    assert driver.ex_describe_all_addresses() == []
    assert [g.name for g in driver.ex_get_security_groups()] == ["default"]
    assert len(aws.called("RunInstances")) == len(aws.called("AllocateAddress")) == 1
    assert aws.called("TerminateInstances") and aws.called("DeleteSecurityGroup") and aws.called("ReleaseAddress")


def test_a_group_left_by_a_killed_create_is_replaced(aws: Moto) -> None:
    """A create killed between making the security group and running the instance leaves the group (there
    was no server to note yet): the next create deletes it and makes the box's own again."""
    provider = ec2()
    left = provider._connect().ex_create_security_group(f"miab-remote {NAME}", "left behind")["group_id"]
    made = create_until_first_contact(provider, NAME, OPERATOR_KEY)
    assert made.record["security_group"] != left
    assert [
        g.id for g in provider._connect().ex_get_security_groups(filters={"group-name": f"miab-remote {NAME}"})
    ] == [made.record["security_group"]]
