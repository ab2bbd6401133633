"""The Linode adapter through libcloud's real LinodeNodeDriverV4, against Linode's recorded API responses
(libcloud's own fixtures) served on 127.0.0.1: what a create sends (user data, key, label, size, region,
image), the key registered once, the node read back, destroy, and every refusal exit 2 with the token masked."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from miab_remote.errors import InputError, MiabError, ProviderError
from miab_remote.providers.cloud import CloudProvider
from miab_remote.providers.cloud.calls import CloudRefused
from miab_remote.transport.sshkeys import generate_ed25519
from tests.unit.cloudapi import (
    LOOPBACK,
    RecordedAPI,
    Request,
    create_failing_at_first_contact,
    create_until_first_contact,
    fixture,
    make_provider,
    serve_as,
)

TOKEN = "linode-token-7f3a9c1e5b2d4f6a8c0e"  # distinctive, to be looked for in everything printed
NAME = "box.example.com"
OPERATOR_KEY = generate_ed25519("operator@laptop").public_line
INSTANCE = r"/v4/linode/instances/(\d+)"


def images() -> dict[str, Any]:
    """The recorded image list (from 2020) with Debian 12 and 13 added, shaped like its Debian 10 entry."""
    body = fixture("linode_v4", "list_images")
    debian10 = next(i for i in body["data"] if i["id"] == "linode/debian10")
    for release in ("12", "13"):
        body["data"].append(debian10 | {"id": f"linode/debian{release}", "label": f"Debian {release}", "eol": None})
    body["results"] = len(body["data"])
    return body


def regions() -> dict[str, Any]:
    """The recorded regions; the Metadata service (2023) is given to eu-central only, so a region without it
    can be asked for."""
    body = fixture("linode_v4", "list_locations")
    for region in body["data"]:
        if region["id"] == "eu-central":
            region["capabilities"].append("Metadata")
    return body


class Linode:
    """The recorded API plus the state a create and destroy change: registered keys, deleted instances."""

    def __init__(self) -> None:
        self.keys = fixture("linode_v4", "list_key_pairs")
        self.deleted: set[str] = set()

    def routes(self) -> dict[tuple[str, str], Any]:
        return {
            ("GET", "/v4/regions"): (200, regions()),
            ("GET", "/v4/linode/types"): (200, fixture("linode_v4", "list_types")),
            ("GET", "/v4/images"): (200, images()),
            ("GET", "/v4/profile/sshkeys"): lambda req, m: (200, self.keys),
            ("POST", "/v4/profile/sshkeys"): self.add_key,
            ("GET", "/v4/linode/instances"): (200, fixture("linode_v4", "list_nodes")),
            ("POST", "/v4/linode/instances"): self.create,
            ("GET", INSTANCE): self.get,
            ("DELETE", INSTANCE): self.delete,
        }

    def add_key(self, req: Request, m: re.Match[str]) -> tuple[int, Any]:
        key = fixture("linode_v4", "create_key_pair") | {"id": 43, "label": req.body["label"]}
        key["ssh_key"] = req.body["ssh_key"]
        self.keys["data"].append(key)
        return 200, key

    def create(self, req: Request, m: re.Match[str]) -> tuple[int, Any]:
        body = fixture("linode_v4", "create_node")
        return 200, body | {"label": req.body["label"], "region": req.body["region"], "image": req.body["image"]}

    def get(self, req: Request, m: re.Match[str]) -> tuple[int, Any]:
        if m.group(1) in self.deleted:
            return 404, {"errors": [{"reason": "Not found"}]}
        return 200, fixture("linode_v4", "ex_get_node") | {"id": int(m.group(1))}

    def delete(self, req: Request, m: re.Match[str]) -> tuple[int, Any]:
        self.deleted.add(m.group(1))
        return 200, {}


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RecordedAPI, Linode]]:
    state = Linode()
    for api in serve_as("linode", state.routes(), {"LINODE_TOKEN": TOKEN}, tmp_path / "config", monkeypatch):
        yield api, state


def linode(**options: Any) -> CloudProvider:
    made: CloudProvider = make_provider("linode", **options)
    return made


def test_create_sends_the_user_data_key_label_size_region_and_image(
    cloud: tuple[RecordedAPI, Linode], capsys: pytest.CaptureFixture[str]
) -> None:
    api, _ = cloud
    provider = linode()
    made = create_until_first_contact(provider, NAME, OPERATOR_KEY)

    (sent,) = api.sent("POST", "/v4/linode/instances")
    body = sent.body
    assert (body["region"], body["type"], body["image"], body["label"]) == (
        "eu-central",
        "g6-nanode-1",
        "linode/debian13",
        NAME,
    ), "the defaults: Frankfurt, the 1 GB Nanode, the newest Debian offered; labelled with the FQDN"
    assert base64.b64decode(body["metadata"]["user_data"]).decode() == made.user_data, "plain text, encoded once"
    assert made.host_key_public in made.user_data
    assert body["authorized_keys"] == [OPERATOR_KEY]
    password = body["root_pass"]
    assert len(password) >= 32, "the API wants a root password with an image: a long random one"
    assert made.record == {"id": "45501392"}
    assert provider.default_image == "debian-13"

    # the token travels in the Authorization header only; the root password nowhere but that one request
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in api.requests)
    assert not any(TOKEN in r.raw for r in api.requests)
    assert not any(password in r.raw for r in api.requests if r is not sent)
    shown = capsys.readouterr()
    assert TOKEN not in shown.out + shown.err and password not in shown.out + shown.err
    assert password not in repr(made.record)


def test_the_key_is_registered_once_and_found_by_its_material(cloud: tuple[RecordedAPI, Linode]) -> None:
    api, _ = cloud
    provider = linode()
    create_until_first_contact(provider, NAME, OPERATOR_KEY)
    (posted,) = api.sent("POST", "/v4/profile/sshkeys")
    assert posted.body == {"label": "miab-remote operator@laptop", "ssh_key": OPERATOR_KEY}
    # the same key with another comment is the same key: not registered again
    again = " ".join(OPERATOR_KEY.split()[:2]) + " another-comment"
    assert provider.adapter.ensure_key(provider._connect(), again) == again
    assert len(api.sent("POST", "/v4/profile/sshkeys")) == 1


def test_node_reads_state_and_addresses_and_destroy_is_idempotent(cloud: tuple[RecordedAPI, Linode]) -> None:
    api, _ = cloud
    provider = linode()
    driver = provider._connect()
    view = provider.adapter.node(driver, {"id": "22344420"})
    assert (view.state, view.ipv4, view.ipv6) == ("running", "212.71.239.24", "2a01:7e00::f03c:92ff:fe48:dc47")
    assert provider.status(NAME, {"id": "22344420"}) == "running"

    assert provider.destroy(NAME, {"id": "22344420"}) == ["destroyed Linode 22344420"]
    assert [r.path for r in api.sent("DELETE", INSTANCE)] == ["/v4/linode/instances/22344420"]
    assert provider.destroy(NAME, {"id": "22344420"}) == ["Linode 22344420 was already gone"]
    assert len(api.sent("DELETE", INSTANCE)) == 1
    assert provider.status(NAME, {"id": "22344420"}) == "absent"


def test_a_name_in_use_is_refused_before_anything_is_made(cloud: tuple[RecordedAPI, Linode]) -> None:
    api, _ = cloud
    with pytest.raises(CloudRefused, match=r"already has a server named test_2 \(id 22344420\)") as e:
        linode().preflight(["test_2"], None)
    assert e.value.exit_code == 2
    assert not api.sent("POST", ".*")


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        ({"region": "mars-1"}, r"offers no region 'mars-1' \(--region\); offered: ap-northeast, ap-south"),
        ({"region": "us-east"}, r"no region with the Metadata service .* 'us-east' .*; offered: eu-central;"),
        ({"size": "g6-huge-99"}, r"offers no size 'g6-huge-99' \(--size\); offered: g1-gpu-rtx6000-1, "),
    ],
)
def test_an_unknown_region_or_size_is_refused_with_what_is_offered(
    cloud: tuple[RecordedAPI, Linode], options: dict[str, str], refusal: str
) -> None:
    api, _ = cloud
    with pytest.raises(InputError, match=refusal) as e:
        linode(**options).preflight([NAME], None)
    assert e.value.exit_code == 2
    assert not api.sent("POST", ".*")


@pytest.mark.parametrize("name", ["xn--bcher-kva.example", "9box.example.com", "a" * 60 + ".example.com"])
def test_a_label_linode_would_refuse_is_refused_first(name: str) -> None:
    with pytest.raises(InputError, match=name[:20]) as e:
        linode().check_name(name)
    assert e.value.exit_code == 2


def test_the_apis_own_refusal_of_the_create_is_exit_2(cloud: tuple[RecordedAPI, Linode]) -> None:
    api, _ = cloud
    api.routes[("POST", "/v4/linode/instances")] = (
        400,
        {"errors": [{"reason": "Label must be unique among your linodes", "field": "label"}]},
    )
    with pytest.raises(CloudRefused, match="Linode refused creating the server: Label must be unique") as e:
        create_until_first_contact(linode(), NAME, OPERATOR_KEY)
    assert e.value.exit_code == 2


@pytest.mark.parametrize(("status", "kind", "exit_code"), [(401, CloudRefused, 2), (500, ProviderError, 1)])
def test_the_token_never_shows_even_when_the_api_echoes_it(
    cloud: tuple[RecordedAPI, Linode],
    capsys: pytest.CaptureFixture[str],
    status: int,
    kind: type[MiabError],
    exit_code: int,
) -> None:
    api, _ = cloud

    def echo(req: Request, m: re.Match[str]) -> tuple[int, Any]:
        return status, {"errors": [{"reason": f"bad request with {req.headers['authorization']}"}]}

    api.routes[("GET", "/v4/regions")] = echo
    with pytest.raises(kind) as e:
        linode().preflight([NAME], None)
    assert e.value.exit_code == exit_code
    text = str(e.value)
    assert "bad request with Bearer ********" in text
    assert TOKEN not in text + repr(e.value.args) + "".join(capsys.readouterr())


def test_a_create_that_fails_after_the_request_destroys_the_linode(cloud: tuple[RecordedAPI, Linode]) -> None:
    api, state = cloud
    get = state.get

    def on_loopback(req: Request, m: re.Match[str]) -> tuple[int, Any]:
        status, body = get(req, m)
        return status, body | {"ipv4": [LOOPBACK]} if status == 200 else body

    api.routes[("GET", INSTANCE)] = on_loopback
    assert create_failing_at_first_contact(api, linode(timeout=0.0), NAME, OPERATOR_KEY) == [
        "POST /v4/profile/sshkeys",
        "POST /v4/linode/instances",
        "DELETE /v4/linode/instances/45501392",
    ]
