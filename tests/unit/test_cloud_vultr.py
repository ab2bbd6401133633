"""The Vultr adapter through libcloud's real VultrNodeDriverV2, against Vultr's recorded API responses
(libcloud's own fixtures) served on 127.0.0.1: the Debian os_id found by listing /v2/os across pages, what a
create sends, the key registered once, the node read back, destroy, and refusals exit 2 with the key masked."""

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

TOKEN = "VULTRKEY4C7A1E9B3D5F7A9C1E3B5D7F9A"  # distinctive, to be looked for in everything printed
NAME = "box.example.com"
OPERATOR_KEY = generate_ed25519("operator@laptop").public_line
INSTANCE = r"/v2/instances/([\w-]+)"
# Not in the 2021 fixture: shaped like its Debian 11 entry. The ids are made up (Vultr documents none),
# which is why the adapter looks them up by name.
DEBIAN = [
    {"id": 2136, "name": "Debian 12 x64 (bookworm)", "arch": "x64", "family": "debian"},
    {"id": 2625, "name": "Debian 13 x64 (trixie)", "arch": "x64", "family": "debian"},
    {"id": 2626, "name": "Debian 13 i386 (trixie)", "arch": "i386", "family": "debian"},
]


def os_pages(req: Request, m: re.Match[str]) -> tuple[int, Any]:
    """The recorded /v2/os, then a second page (meta.links.next) holding the Debian releases the tool uses."""
    if req.query.get("cursor") == ["page2"]:
        return 200, {"os": DEBIAN, "meta": {"total": 33, "links": {"next": "", "prev": "page1"}}}
    body = fixture("vultr_v2", "list_images")
    body["meta"]["links"]["next"] = "page2"
    return 200, body


class Vultr:
    def __init__(self) -> None:
        self.keys = fixture("vultr_v2", "list_key_pairs")
        self.deleted: set[str] = set()

    def routes(self) -> dict[tuple[str, str], Any]:
        return {
            ("GET", "/v2/regions"): (200, fixture("vultr_v2", "list_locations")),
            ("GET", "/v2/plans"): (200, fixture("vultr_v2", "list_sizes")),
            ("GET", "/v2/os"): os_pages,
            ("GET", "/v2/ssh-keys"): lambda req, m: (200, self.keys),
            ("POST", "/v2/ssh-keys"): self.add_key,
            ("GET", "/v2/instances"): (200, fixture("vultr_v2", "list_nodes")),
            ("POST", "/v2/instances"): self.create,
            ("GET", INSTANCE): self.get,
            ("DELETE", INSTANCE): self.delete,
        }

    def add_key(self, req: Request, m: re.Match[str]) -> tuple[int, Any]:
        body = fixture("vultr_v2", "import_key_pair_from_string")
        body["ssh_key"] |= {"id": "cb676a46-66fd-4dfb-b839-443f2e6c0b60", **req.body}
        self.keys["ssh_keys"].append(body["ssh_key"])
        return 201, body

    def create(self, req: Request, m: re.Match[str]) -> tuple[int, Any]:
        body = fixture("vultr_v2", "create_node")
        body["instance"] |= {"label": req.body["label"], "region": req.body["region"], "plan": req.body["plan"]}
        return 202, body

    def get(self, req: Request, m: re.Match[str]) -> tuple[int, Any]:
        if m.group(1) in self.deleted:
            return 404, {"error": "Invalid instance-id.", "status": 404}
        body = fixture("vultr_v2", "ex_get_node")
        body["instance"] |= {"id": m.group(1), "v6_main_ip": "2001:19f0:6c01:1c3e:5400:3ff:fe9c:ab12"}
        return 200, body

    def delete(self, req: Request, m: re.Match[str]) -> tuple[int, Any]:
        self.deleted.add(m.group(1))
        return 204, None


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RecordedAPI, Vultr]]:
    state = Vultr()
    for api in serve_as("vultr", state.routes(), {"VULTR_API_KEY": TOKEN}, tmp_path / "config", monkeypatch):
        yield api, state


def vultr(**options: Any) -> CloudProvider:
    made: CloudProvider = make_provider("vultr", **options)
    return made


def test_create_sends_the_user_data_key_hostname_size_region_and_os_id(
    cloud: tuple[RecordedAPI, Vultr], capsys: pytest.CaptureFixture[str]
) -> None:
    api, _ = cloud
    provider = vultr()
    made = create_until_first_contact(provider, NAME, OPERATOR_KEY)

    (sent,) = api.sent("POST", "/v2/instances")
    body = sent.body
    assert body["os_id"] == 2625, "Debian 13 x64 found on the second page of /v2/os, not its i386 twin"
    assert (body["region"], body["plan"], body["label"], body["hostname"]) == ("fra", "vc2-1c-1gb", NAME, NAME)
    assert base64.b64decode(body["user_data"]).decode() == made.user_data
    assert made.host_key_public in made.user_data
    assert body["sshkey_id"] == ["cb676a46-66fd-4dfb-b839-443f2e6c0b60"] == [made.key_ref]
    assert body["enable_ipv6"] is True
    assert "/v2/bare-metals" not in {r.path for r in api.requests}, "no bare-metal lists"
    assert made.record == {"id": "123"}
    assert provider.default_image == "debian-13"

    shown = capsys.readouterr()
    recorded_password = fixture("vultr_v2", "create_node")["instance"]["default_password"]
    for secret in (TOKEN, recorded_password):
        assert secret not in shown.out + shown.err + repr(made.record)
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in api.requests)
    assert not any(TOKEN in r.raw for r in api.requests)


@pytest.mark.usefixtures("cloud")
def test_debian_12_is_found_by_name_too() -> None:
    provider = vultr()
    provider.preflight([NAME], "debian-12")
    assert provider._offer is not None
    assert (provider._offer.image, provider._offer.os) == ("2136", "debian-12")


def test_the_key_is_registered_once_and_found_by_its_material(cloud: tuple[RecordedAPI, Vultr]) -> None:
    api, _ = cloud
    provider = vultr()
    create_until_first_contact(provider, NAME, OPERATOR_KEY)
    (posted,) = api.sent("POST", "/v2/ssh-keys")
    assert posted.body == {"name": "miab-remote operator@laptop", "ssh_key": OPERATOR_KEY}
    again = " ".join(OPERATOR_KEY.split()[:2]) + " renamed"
    assert provider.adapter.ensure_key(provider._connect(), again) == "cb676a46-66fd-4dfb-b839-443f2e6c0b60"
    assert len(api.sent("POST", "/v2/ssh-keys")) == 1


def test_node_reads_state_and_addresses_and_destroy_is_idempotent(cloud: tuple[RecordedAPI, Vultr]) -> None:
    api, _ = cloud
    provider = vultr()
    view = provider.adapter.node(provider._connect(), {"id": "123"})
    assert (view.state, view.ipv4, view.ipv6) == ("running", "45.76.36.72", "2001:19f0:6c01:1c3e:5400:3ff:fe9c:ab12")

    node = {"id": "123", "size": "vc2-1c-1gb"}
    assert provider.destroy(NAME, node) == ["destroyed Vultr server 123"]
    assert [r.path for r in api.sent("DELETE", INSTANCE)] == ["/v2/instances/123"]
    assert provider.destroy(NAME, node) == ["Vultr server 123 was already gone"]
    assert provider.status(NAME, node) == "absent"


def test_a_pending_server_has_no_address_yet(cloud: tuple[RecordedAPI, Vultr]) -> None:
    api, _ = cloud
    api.routes[("GET", INSTANCE)] = (200, fixture("vultr_v2", "create_node"))
    view = vultr().adapter.node(vultr()._connect(), {"id": "123"})
    assert (view.state, view.ipv4, view.ipv6) == ("pending", None, None), "main_ip 0.0.0.0 is no address"


def test_a_name_in_use_is_refused_before_anything_is_made(cloud: tuple[RecordedAPI, Vultr]) -> None:
    api, _ = cloud
    with pytest.raises(CloudRefused, match=r"already has a server named test1 \(id 123\)") as e:
        vultr().preflight(["test1"], None)
    assert e.value.exit_code == 2
    assert not api.sent("POST", ".*")


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        ({"region": "mars"}, r"offers no region 'mars' \(--region\); offered: ams, atl"),
        ({"size": "vc2-99c"}, r"offers no size in fra 'vc2-99c' \(--size\); offered: vc2-16c-64gb"),
    ],
)
@pytest.mark.usefixtures("cloud")
def test_an_unknown_region_or_size_is_refused_with_what_is_offered(options: dict[str, str], refusal: str) -> None:
    with pytest.raises(InputError, match=refusal) as e:
        vultr(**options).preflight([NAME], None)
    assert e.value.exit_code == 2


def test_a_release_vultr_does_not_list_is_refused(cloud: tuple[RecordedAPI, Vultr]) -> None:
    api, _ = cloud
    api.routes[("GET", "/v2/os")] = (200, fixture("vultr_v2", "list_images"))  # the 2021 list alone
    with pytest.raises(InputError, match=r"no image 'Debian 12 x64' .*Debian 11 x64 \(bullseye\)") as e:
        vultr().preflight([NAME], "debian-12")
    assert e.value.exit_code == 2


@pytest.mark.parametrize(("status", "kind", "exit_code"), [(401, CloudRefused, 2), (500, ProviderError, 1)])
def test_the_api_key_never_shows_even_when_the_api_echoes_it(
    cloud: tuple[RecordedAPI, Vultr],
    capsys: pytest.CaptureFixture[str],
    status: int,
    kind: type[MiabError],
    exit_code: int,
) -> None:
    api, _ = cloud

    def echo(req: Request, m: re.Match[str]) -> tuple[int, Any]:
        return status, {"error": f"refused {req.headers['authorization']}", "status": status}

    api.routes[("GET", "/v2/regions")] = echo
    with pytest.raises(kind) as e:
        vultr().preflight([NAME], None)
    assert e.value.exit_code == exit_code
    assert "refused Bearer ********" in str(e.value)
    assert TOKEN not in str(e.value) + repr(e.value.args) + "".join(capsys.readouterr())


def test_a_size_too_small_for_the_box_is_refused(cloud: tuple[RecordedAPI, Vultr]) -> None:
    api, _ = cloud
    plans = fixture("vultr_v2", "list_sizes")
    plans["plans"].append(plans["plans"][0] | {"id": "vc2-1c-0.5gb", "ram": 512})  # Vultr's 512 MB plan
    api.routes[("GET", "/v2/plans")] = (200, plans)
    with pytest.raises(InputError, match=r"no size with at least 1024 MB of memory 'vc2-1c-0.5gb'") as e:
        vultr(size="vc2-1c-0.5gb").preflight([NAME], None)
    assert e.value.exit_code == 2


def test_a_create_that_fails_after_the_request_destroys_the_server(cloud: tuple[RecordedAPI, Vultr]) -> None:
    api, state = cloud
    get = state.get

    def on_loopback(req: Request, m: re.Match[str]) -> tuple[int, Any]:
        status, body = get(req, m)
        if status == 200:
            body["instance"]["main_ip"] = LOOPBACK
        return status, body

    api.routes[("GET", INSTANCE)] = on_loopback
    assert create_failing_at_first_contact(api, vultr(timeout=0.0), NAME, OPERATOR_KEY) == [
        "POST /v2/ssh-keys",
        "POST /v2/instances",
        "DELETE /v2/instances/123",
    ]
