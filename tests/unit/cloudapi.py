"""A cloud API on 127.0.0.1 that answers from recorded responses (tests/unit/fixtures/libcloud/) and keeps
every request, so a test drives the real libcloud driver through the adapter's endpoint and then reads what
was sent: method, path, query, headers and JSON body."""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).parent / "fixtures" / "libcloud"


def fixture(cloud: str, name: str) -> Any:
    """A recorded response body, parsed (a fresh copy each time, so a test may change it)."""
    return json.loads((FIXTURES / cloud / f"{name}.json").read_text())


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any  # the JSON body, or None

    @property
    def raw(self) -> str:
        """Everything the client sent, as text: for asserting that a secret never travelled somewhere."""
        return json.dumps([self.method, self.path, self.query, self.body])


Answer = tuple[int, Any]  # HTTP status, JSON body (None: empty; bytes: sent as they are, as XML)
Route = Answer | Callable[[Request, re.Match[str]], Answer]


@dataclass
class RecordedAPI:
    """`routes` maps (METHOD, path regex) to an answer or a function of the request and the path's match."""

    routes: dict[tuple[str, str], Route]
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                text = self.rfile.read(length).decode() if length else ""
                req = Request(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    json.loads(text) if text else None,
                )
                api.requests.append(req)
                status, body = api.answer(req)
                raw = isinstance(body, bytes)  # an XML API's answer, as is
                data = body if raw else b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/xml" if raw else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test reads `requests` instead."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def answer(self, req: Request) -> Answer:
        for (method, pattern), route in self.routes.items():
            found = re.fullmatch(pattern, req.path)
            if method == req.method and found:
                return route(req, found) if callable(route) else (route[0], copy.deepcopy(route[1]))
        return 404, {"error": f"no route for {req.method} {req.path}"}

    def sent(self, method: str, pattern: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.path)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve(routes: Mapping[tuple[str, str], Route]) -> Iterator[RecordedAPI]:
    """For a pytest fixture: the API while the test runs."""
    api = RecordedAPI(dict(routes))
    try:
        yield api
    finally:
        api.close()


def serve_as(
    cloud: str, routes: Mapping[tuple[str, str], Route], credentials: Mapping[str, str], config: Path, mp: Any
) -> Iterator[RecordedAPI]:
    """For a pytest fixture: the API, with the `cloud` provider pointed at it through its endpoint variable,
    the credentials in the environment and an empty config folder (`mp`: the test's MonkeyPatch)."""
    from miab_remote.providers.cloud import adapter_for

    for api in serve(routes):
        mp.setenv("MIAB_REMOTE_CONFIG_DIR", str(config))
        for variable, value in credentials.items():
            mp.setenv(variable, value)
        mp.setenv(adapter_for(cloud).endpoint_variable, api.url)
        mp.delenv("LIBCLOUD_DEBUG", raising=False)
        yield api


def make_provider(cloud: str, **options: Any) -> Any:
    """The registry's provider for `cloud` with a create's options (a CloudProvider)."""
    from miab_remote import providers
    from miab_remote.providers.base import CreateOptions
    from miab_remote.providers.cloud import CloudProvider

    made = providers.get(cloud, CreateOptions(**options))
    assert isinstance(made, CloudProvider)
    return made


@dataclass
class Made:
    """What the first half of a create sent and got: everything before the first SSH contact."""

    record: dict[str, str]
    user_data: str
    key_ref: str
    host_key_public: str


def create_until_first_contact(provider: Any, name: str, authorized_key: str) -> Made:
    """The calls `CloudProvider.create` makes before it waits for SSH, in its order and through its error
    handling (`_call`): the fixtures' addresses are made up, so nothing may connect to them."""
    from miab_remote.providers.cloud import userdata
    from miab_remote.transport.sshkeys import generate_ed25519

    provider.check_name(name)
    provider.validate_config()
    provider.preflight([name], None)
    driver = provider._connect()
    adapter = provider.adapter
    host_key = generate_ed25519(f"root@{name}")
    with provider._call("registering your SSH key"):
        key_ref = adapter.ensure_key(driver, authorized_key)
    data = userdata.render(name, host_key, authorized_key, adapter.ssh_user)
    with provider._call("creating the server"):
        record = adapter.create_node(driver, name, provider._offer, data, key_ref, provider.options)
    return Made(record, data, key_ref, host_key.public_line)


LOOPBACK = "127.0.0.2"  # the address a test's server reports, so that nothing could ever leave this machine


def create_failing_at_first_contact(api: RecordedAPI, provider: Any, name: str, authorized_key: str) -> list[str]:
    """`CloudProvider.create` itself (`provider` made with timeout 0), failing at its first SSH contact: it
    gives up before any connection is tried, and the server's address is LOOPBACK anyway. The requests that
    changed something, in order ("POST /path")."""
    import pytest

    from miab_remote.errors import ProviderError

    provider.preflight([name], None)
    with pytest.raises(ProviderError, match=re.escape(f"{LOOPBACK} did not answer SSH within 0 s")):
        provider.create(name, authorized_key)
    return [f"{r.method} {r.path}" for r in api.requests if r.method != "GET"]
