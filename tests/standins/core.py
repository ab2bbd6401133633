"""The cloud-independent part of the stand-in clouds: the servers a cloud holds, the real boxes behind them,
the faults a test switches on, the request log, and the small JSON-over-HTTP server each cloud's front
(digitalocean.py, linode.py, vultr.py) fills with its own routes and shapes.

A create returns at once, as a cloud's does: the box is made by a background thread (a LocalProvider box
booted by cloud-init from exactly the user data sent, unless a test switches `wrong_host_key` on), and the
server's state goes from "new" to "active" with its address once sshd answers. Deleting a server removes its
box; `close()` removes every box the cloud made. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

import yaml

from miab_remote.errors import MiabError
from miab_remote.providers.local import LocalConfig, LocalProvider
from miab_remote.transport.sshkeys import KeyPair, generate_ed25519

NodeState = Literal["new", "active", "failed"]
NOT_FOUND = "The resource you were accessing could not be found."
_T = TypeVar("_T")
BOOT_TIMEOUT = 240.0  # a seeded box's first boot: cloud-init runs every stage before the box counts as up


# --------------------------------------------------------------------------- the boxes behind the servers


@dataclass(frozen=True)
class Booted:
    """Where a made box is: its address and the network around it (for the cloud's network fields)."""

    address: str
    prefixlen: int
    gateway: str
    ipv6: str | None = None  # its IPv6 address (a /64 of its own, as the clouds give), when it has one

    @property
    def netmask(self) -> str:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{self.prefixlen}").netmask)


class BoxMaker(Protocol):
    """Makes and removes the box behind one server (the seam the unit tests fill with PaperBoxes)."""

    def make(self, name: str, user_data: str, image: str, public_keys: Sequence[str] = ()) -> Booted: ...

    def remove(self, name: str) -> None: ...


def lane_config() -> LocalConfig:
    """The local provider's configuration of this e2e lane (tests/e2e/helpers.py: bridge, subnet, state dir)."""
    from tests.e2e.helpers import E2E_ENV

    return dataclasses.replace(
        LocalConfig.from_env(),
        state_dir=Path(E2E_ENV["MIAB_REMOTE_LOCAL_DIR"]),
        subnet=ipaddress.IPv4Network(E2E_ENV["MIAB_REMOTE_LOCAL_SUBNET"]),
        bridge=E2E_ENV["MIAB_REMOTE_LOCAL_BRIDGE"],
    )


class LocalBoxes:
    """Real boxes: LocalProvider.create_seeded (cloud-init from a NoCloud seed) and destroy, in the lane's network."""

    def __init__(self, config: LocalConfig | None = None, boot_timeout: float = BOOT_TIMEOUT) -> None:
        self.provider = LocalProvider(config or lane_config())
        self.boot_timeout = boot_timeout

    def make(self, name: str, user_data: str, image: str, public_keys: Sequence[str] = ()) -> Booted:
        box = self.provider.create_seeded(
            name, user_data, image=image, boot_timeout=self.boot_timeout, public_keys=public_keys
        )
        cfg = self.provider.config()
        return Booted(box.address, cfg.subnet.prefixlen, str(cfg.gateway), box.ipv6)

    def remove(self, name: str) -> None:
        self.provider.destroy(name)

    def warm(self, image: str) -> None:
        """Build the release's cloud-init tree now (minutes, once per machine), so a create's wait is only a boot."""
        from miab_remote.providers.local import rootfs
        from miab_remote.providers.local.config import check_image

        rootfs.ensure_cache(self.provider.config(), check_image(image), lambda _line: None, cloud_init=True)


class PaperBoxes:
    """No box at all: an address from TEST-NET-1 at once, for the unit tests of the fronts' shapes."""

    def __init__(self) -> None:
        self.made: dict[str, str] = {}  # name -> the user data it would have been seeded with
        self.public_keys: dict[str, list[str]] = {}  # name -> the account's keys its metadata would hold
        self.removed: list[str] = []
        self._lock = threading.Lock()

    def make(self, name: str, user_data: str, image: str, public_keys: Sequence[str] = ()) -> Booted:
        with self._lock:
            self.made[name] = user_data
            self.public_keys[name] = list(public_keys)
            return Booted(f"192.0.2.{len(self.made)}", 24, "192.0.2.254", f"2001:db8::{len(self.made)}")

    def remove(self, name: str) -> None:
        with self._lock:
            self.removed.append(name)


# --------------------------------------------------------------------------- the cloud's records


class Refused(Exception):
    """The cloud refuses a request; each front turns `kind` into its own status and error body."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "unauthorized", "not_found", "invalid", "quota", "name_in_use"
        self.message = message


@dataclass
class Node:
    """One server of the cloud, and the box behind it."""

    id: int
    name: str
    image: str  # the local image (OS profile id) its box runs
    region: str
    size: str
    user_data: str  # exactly what the client sent
    seeded_user_data: str  # what the box was seeded with (differs only with wrong_host_key)
    created: datetime
    public_keys: list[str] = field(default_factory=list)  # the account's keys the create named (its metadata)
    extra: dict[str, Any] = field(default_factory=dict)  # what else the front keeps of the request
    state: NodeState = "new"
    booted: Booted | None = None
    error: str | None = None
    presented_host_key: str | None = None  # the public key line the box serves, when wrong_host_key replaced it
    _thread: threading.Thread | None = None


@dataclass
class SSHKey:
    id: int
    name: str
    public_key: str


@dataclass(frozen=True)
class Request:
    """One request as the cloud saw it (the token is never kept)."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any  # the parsed JSON body, or None


class StandInCloud:
    """The servers and keys of one stand-in cloud, with the faults a test may switch on.

    Faults: `token` must match every request's bearer token (else 401); `quota` refuses creates beyond that many
    live servers; `names_in_use` are refused as names (a live server's name is too); `wrong_host_key` boots each
    new box with a host key other than the one its user data gives (recorded as `presented_host_key`).
    """

    def __init__(self, boxes: BoxMaker, token: str | None = None, quota: int | None = None) -> None:
        self.boxes = boxes
        self.token = token or "standin-" + secrets.token_hex(16)
        self.quota = quota
        self.names_in_use: set[str] = set()
        self.wrong_host_key = False
        self.requests: list[Request] = []
        self.nodes: dict[int, Node] = {}
        self.keys: dict[int, SSHKey] = {}
        self._next_id = 3164444
        self._lock = threading.RLock()
        self._made: dict[str, threading.Thread] = {}  # every box name a thread was started for
        self._removals: list[threading.Thread] = []

    # ---- requests

    def authorized(self, header: str | None) -> bool:
        return secrets.compare_digest(header or "", f"Bearer {self.token}")

    def log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def requests_to(self, method: str, path_pattern: str) -> list[Request]:
        """The logged requests of `method` whose path matches the regular expression (whole path)."""
        with self._lock:
            return [r for r in self.requests if r.method == method and re.fullmatch(path_pattern, r.path)]

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # ---- servers

    def create_node(
        self,
        name: str,
        image: str,
        region: str,
        size: str,
        user_data: str,
        public_keys: Sequence[str] = (),
        **extra: Any,
    ) -> Node:
        """Record a server and start making its box (returned as it was created, still "new"); refuses a name in
        use or a create beyond the quota.
        `public_keys`: the registered keys the create names, which the box gets as a cloud's metadata."""
        from miab_remote.providers.local.config import check_name

        with self._lock:
            try:
                box_name = check_name(name)
            except MiabError as exc:
                raise Refused("invalid", f"name {name!r}: {exc}") from None
            live = list(self.nodes.values())
            if box_name in self.names_in_use or any(n.name == box_name for n in live):
                raise Refused("name_in_use", f"the name {box_name} is already in use")
            if self.quota is not None and len(live) >= self.quota:
                raise Refused("quota", f"creating this server would exceed your limit of {self.quota}")
            seeded, presented = user_data, None
            if self.wrong_host_key:
                seeded, presented = replace_host_key(user_data, box_name)
            node = Node(
                id=self._new_id(),
                name=box_name,
                image=image,
                region=region,
                size=size,
                user_data=user_data,
                seeded_user_data=seeded,
                created=datetime.now(UTC).replace(microsecond=0),
                public_keys=list(public_keys),
                extra=dict(extra),
                presented_host_key=presented,
            )
            self.nodes[node.id] = node
            node._thread = threading.Thread(target=self._make, args=(node,), name=f"standin-{box_name}", daemon=True)
            self._made[box_name] = node._thread
            as_created = dataclasses.replace(node)  # what the create answers: "new", however fast the box is
            node._thread.start()
            return as_created

    def _make(self, node: Node) -> None:
        try:
            booted = self.boxes.make(node.name, node.seeded_user_data, node.image, node.public_keys)
        except BaseException as exc:  # a failed box is the server's state, for the client to see
            node.error = f"{type(exc).__name__}: {exc}"
            node.state = "failed"
            print(f"stand-in cloud: the box of {node.name} failed: {node.error}", file=sys.stderr)
            return
        node.booted = booted
        node.state = "active"

    def node(self, node_id: int | str) -> Node:
        return self._find(self.nodes, node_id)

    def delete_node(self, node_id: int | str) -> Node:
        """Forget the server at once (as the API does) and remove its box in the background."""
        node = self.node(node_id)
        with self._lock:
            del self.nodes[node.id]
            removal = threading.Thread(target=self._remove, args=(node,), name=f"standin-rm-{node.name}", daemon=True)
            self._removals.append(removal)
        removal.start()
        return node

    def _remove(self, node: Node) -> None:
        if node._thread is not None:
            node._thread.join()  # a box still booting is removed once its create has ended
        try:
            self.boxes.remove(node.name)
        except BaseException as exc:  # reported, and close() tries again
            print(f"stand-in cloud: removing the box of {node.name} failed: {exc}", file=sys.stderr)

    def wait_state(self, node_id: int, state: NodeState = "active", timeout: float = 600.0) -> Node:
        """Wait (bounded) for a server to reach `state`; a box that failed meanwhile fails the wait with its error."""
        deadline = time.monotonic() + timeout
        node = self.node(node_id)
        while node.state != state:
            if node.state == "failed":
                raise AssertionError(f"the box of {node.name} failed: {node.error}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"{node.name} is still {node.state} after {timeout:.0f} s")
            time.sleep(0.05)
        return node

    def wait_removed(self, timeout: float = 120.0) -> None:
        """Wait for every removal started by a delete to end."""
        with self._lock:
            removals = list(self._removals)
        for removal in removals:
            removal.join(timeout)
            if removal.is_alive():
                raise AssertionError(f"{removal.name} still running after {timeout:.0f} s")

    # ---- keys

    def add_key(self, name: str, public_key: str) -> SSHKey:
        with self._lock:
            blob = public_key.split()[:2]
            if any(k.public_key.split()[:2] == blob for k in self.keys.values()):
                raise Refused("invalid", "SSH Key is already in use on your account")
            key = SSHKey(self._new_id(), name, public_key.strip())
            self.keys[key.id] = key
            return key

    def key(self, key_id: int | str) -> SSHKey:
        return self._find(self.keys, key_id)

    def delete_key(self, key_id: int | str) -> None:
        key = self.key(key_id)
        with self._lock:
            self.keys.pop(key.id, None)

    def _find(self, table: Mapping[int, _T], ident: int | str) -> _T:
        """A record by its id (as the URL gives it), or the cloud's 404."""
        with self._lock:
            found = table.get(int(ident)) if str(ident).isdigit() else None
        if found is None:
            raise Refused("not_found", NOT_FOUND)
        return found

    # ---- the end

    def close(self) -> None:
        """Remove every box this cloud made, deleted or not, once its create has ended."""
        with self._lock:
            threads = dict(self._made)
            self.nodes.clear()
        self.wait_removed()
        for name, thread in threads.items():
            thread.join()
            with contextlib.suppress(BaseException):
                self.boxes.remove(name)


def replace_host_key(user_data: str, name: str) -> tuple[str, str]:
    """The user data with its ssh_keys replaced by a fresh ed25519 pair, and that pair's public line: a box that
    presents a host key other than the one the client injected."""
    header, _, _rest = user_data.partition("\n")
    config = yaml.safe_load(user_data) or {}
    if not isinstance(config, dict):
        raise Refused("invalid", "user data is not a cloud-config mapping")
    other: KeyPair = generate_ed25519(f"root@{name}")
    config["ssh_keys"] = {"ed25519_private": other.private_openssh.decode(), "ed25519_public": other.public_line}
    config["ssh_deletekeys"] = True
    first = header if header.startswith("#cloud-config") else "#cloud-config"
    return first + "\n" + yaml.safe_dump(config, sort_keys=False), other.public_line


# --------------------------------------------------------------------------- the HTTP front

# The statuses of a cloud that answers every refused request body with 400 (Linode, Vultr; DigitalOcean: 422).
BAD_REQUEST_400: Mapping[str, int] = {
    "unauthorized": 401,
    "not_found": 404,
    "invalid": 400,
    "quota": 400,
    "name_in_use": 400,
}


@dataclass
class Reply:
    status: int
    body: Any = None  # JSON-able, or None for an empty body


Route = tuple[str, str, Callable[..., Reply]]
"""(method, path regex with named groups, handler(body, query, **groups) -> Reply)."""


class JsonFront:
    """A cloud's API on 127.0.0.1: routes, the bearer token, the request log and the error shape are the
    front's; the listening, parsing and logging are here. Query strings are ignored except by list routes."""

    def __init__(self, cloud: StandInCloud) -> None:
        self.cloud = cloud
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes: no delayed-ACK stall

            def _serve(self) -> None:
                front._handle(self)

            do_GET = do_POST = do_DELETE = do_PUT = _serve

            def log_message(self, format: str, *args: Any) -> None:  # quiet: the cloud keeps its own log
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="standin-http", daemon=True
        )
        self._thread.start()

    # what a front provides
    def routes(self) -> list[Route]:
        raise NotImplementedError

    def error_body(self, status: int, kind: str, message: str) -> Any:
        raise NotImplementedError

    STATUS_OF: ClassVar[Mapping[str, int]] = {"unauthorized": 401, "not_found": 404}  # any other refusal: 422

    def nodes(self) -> list[Node]:
        """The cloud's servers, oldest first (what a list route shows)."""
        with self.cloud._lock:
            return sorted(self.cloud.nodes.values(), key=lambda n: n.id)

    def keys(self) -> list[SSHKey]:
        with self.cloud._lock:
            return sorted(self.cloud.keys.values(), key=lambda k: k.id)

    # what a test uses
    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return self.cloud.token

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.cloud.close()

    @classmethod
    def start(cls, boxes: BoxMaker | None = None, token: str | None = None, quota: int | None = None) -> Self:
        """A running stand-in (close it, or use it in a with block): real boxes in the e2e lane unless `boxes`
        is given (PaperBoxes: none)."""
        return cls(StandInCloud(boxes if boxes is not None else LocalBoxes(), token=token, quota=quota))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # the handling
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        query = parse_qs(parts.query)
        self.cloud.log(Request(handler.command, parts.path, query, body))
        try:
            if not self.cloud.authorized(handler.headers.get("Authorization")):
                raise Refused("unauthorized", "Unable to authenticate you.")
            reply = self._route(handler.command, parts.path, body, query)
        except Refused as exc:
            status = self.STATUS_OF.get(exc.kind, 422)
            reply = Reply(status, self.error_body(status, exc.kind, exc.message))
        payload = b"" if reply.body is None else json.dumps(reply.body).encode()
        handler.send_response(reply.status)
        if payload:
            handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _route(self, method: str, path: str, body: Any, query: dict[str, list[str]]) -> Reply:
        for route_method, pattern, run in self.routes():
            match = re.fullmatch(pattern, path)
            if match and route_method == method:
                return run(body if isinstance(body, dict) else {}, query, **match.groupdict())
        raise Refused("not_found", f"no route {method} {path}")


def require(body: Mapping[str, Any], *names: str) -> list[Any]:
    """The named fields of a request body, or a refusal naming the first one missing."""
    missing = [n for n in names if body.get(n) in (None, "")]
    if missing:
        raise Refused("invalid", f"{missing[0]} is required")
    return [body[n] for n in names]


@contextlib.contextmanager
def started(front: JsonFront) -> Iterator[JsonFront]:
    """A front for the length of a with block; closing it removes every box its cloud made."""
    try:
        yield front
    finally:
        front.close()
