"""A stand-in of EC2 on 127.0.0.1: moto's EC2 server (`moto[server]`, in its own process) answers every call
(key pairs, security groups, instances, Elastic IPs, images), behind a small proxy that gives each instance
a real box: on RunInstances it makes one from exactly the UserData sent (a BoxMaker, core.py: LocalBoxes
boots it with cloud-init), and in DescribeInstances it shows the instance `pending` until the box's sshd
answers, then `running` at the box's address instead of moto's made-up one (so the client's SSH goes to the
box, never to an address outside this machine). TerminateInstances removes the box.

    with ec2.start(LocalBoxes()) as aws:        # aws.url, aws.calls (Action and parameters, no secrets)
        EC2NodeDriver(KEY, SECRET, host="127.0.0.1", port=aws.port, secure=False, signature_version="4")

moto's images: Debian's own (owner 136693071363), one per release, from DEBIAN_AMIS (MOTO_AMIS_PATH).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from tests.standins.core import Booted, BoxMaker

NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
DEBIAN_OWNER = "136693071363"
# AMI id -> (the local image it boots, its name as Debian publishes them)
DEBIAN_AMIS = {
    "ami-0d13d13d13d13d131": ("debian-13", "debian-13-amd64-20251117-2299"),
    "ami-0d12d12d12d12d121": ("debian-12", "debian-12-amd64-20251117-2299"),
    "ami-0d13d13d13d13d130": ("debian-13", "debian-13-amd64-20250801-2190"),  # an older build of 13
}

_SERVER = """
import sys, threading
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


def _amis_json() -> str:
    return json.dumps(
        [
            {
                "ami_id": ami,
                "state": "available",
                "public": True,
                "owner_id": DEBIAN_OWNER,
                "name": name,
                "image_location": f"{DEBIAN_OWNER}/{name}",
                "root_device_type": "ebs",
                "root_device_name": "/dev/xvda",
                "description": f"Debian {name.split('-')[1]} (amd64)",
                "image_type": "machine",
                "architecture": "x86_64",
                "virtualization_type": "hvm",
                "hypervisor": "xen",
                "sriov": "simple",
                "creation_date": f"{name.rsplit('-', 2)[1][:4]}-{name.rsplit('-', 2)[1][4:6]}-17T00:00:00.000Z",
            }
            for ami, (_image, name) in DEBIAN_AMIS.items()
        ]
    )


@dataclass
class Instance:
    id: str
    name: str
    image: str
    user_data: str
    booted: Booted | None = None
    error: str | None = None
    thread: threading.Thread | None = field(default=None, repr=False)


class EC2StandIn:
    """moto behind the proxy; `calls` logs each Action with its parameters (signature and key id dropped)."""

    def __init__(self, boxes: BoxMaker) -> None:
        self.boxes = boxes
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.instances: dict[str, Instance] = {}
        self._lock = threading.Lock()
        self._amis = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)  # noqa: SIM115
        self._amis.write(_amis_json())
        self._amis.close()
        env = {**os.environ, "MOTO_AMIS_PATH": self._amis.name, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}
        self._moto = subprocess.Popen(
            [sys.executable, "-c", _SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        assert self._moto.stdout is not None
        self.moto_port = int(self._moto.stdout.readline())
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                front._handle(self)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def actions(self, name: str) -> list[dict[str, str]]:
        """The parameters of every call of Action `name`, in order."""
        return [params for action, params in self.calls if action == name]

    def moto(self, action: str, **params: str) -> ET.Element:
        """Ask moto directly (as the test's own view of the account), unsigned: moto does not check."""
        query = "&".join(f"{k}={urllib.request.quote(v)}" for k, v in {"Action": action, **params}.items())
        req = urllib.request.Request(f"http://127.0.0.1:{self.moto_port}/?{query}", headers=_AUTH)
        with urllib.request.urlopen(req, timeout=30) as res:
            return ET.fromstring(res.read())

    # ---- the proxy

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if handler.command == "POST" and body:
            params.update({k: v[-1] for k, v in parse_qs(body.decode()).items()})
        action = params.get("Action", "")
        with self._lock:
            self.calls.append((action, {k: v for k, v in params.items() if not k.startswith("X-Amz-")}))
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.moto_port}{handler.path}",
            data=body or None,
            method=handler.command,
            headers={k: v for k, v in handler.headers.items() if k.lower() not in ("host", "content-length")},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as res:
                status, payload, ctype = res.status, res.read(), res.headers.get("Content-Type", "text/xml")
        except urllib.error.HTTPError as e:
            status, payload, ctype = e.code, e.read(), e.headers.get("Content-Type", "text/xml")
        # moto 5.2's serializer writes botocore's namespace, without the trailing slash EC2 itself sends (and
        # libcloud looks for): the stand-in answers as EC2 does.
        payload = payload.replace(b'xmlns="' + NS.rstrip("/").encode() + b'"', b'xmlns="' + NS.encode() + b'"')
        if status == 200 and action == "RunInstances":
            self._made(ET.fromstring(payload), params)
        if status == 200 and action == "TerminateInstances":
            for key, value in params.items():
                if key.startswith("InstanceId."):
                    self._terminate(value)
        if status == 200 and action in ("RunInstances", "DescribeInstances"):
            payload = self._rewrite(payload)
        handler.send_response(status)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _made(self, reply: ET.Element, params: Mapping[str, str]) -> None:
        user_data = base64.b64decode(params.get("UserData", "")).decode()
        name = next(
            (params[k.replace(".Key", ".Value")] for k, v in params.items() if k.endswith(".Key") and v == "Name"),
            "",
        )
        image = DEBIAN_AMIS.get(params.get("ImageId", ""), ("debian-13", ""))[0]
        for item in reply.iter(f"{{{NS}}}instanceId"):
            instance = Instance(str(item.text), name, image, user_data)
            instance.thread = threading.Thread(target=self._boot, args=(instance,), daemon=True)
            with self._lock:
                self.instances[instance.id] = instance
            instance.thread.start()

    def _boot(self, instance: Instance) -> None:
        try:
            instance.booted = self.boxes.make(instance.name, instance.user_data, instance.image)
        except BaseException as exc:
            instance.error = f"{type(exc).__name__}: {exc}"
            print(f"stand-in ec2: the box of {instance.name} failed: {instance.error}", file=sys.stderr)

    def _terminate(self, instance_id: str) -> None:
        with self._lock:
            instance = self.instances.pop(instance_id, None)
        if instance is not None:
            if instance.thread is not None:
                instance.thread.join()
            self.boxes.remove(instance.name)

    def _rewrite(self, payload: bytes) -> bytes:
        """Each instance with a box: `pending` while it boots, then `running` at the box's address."""
        ET.register_namespace("", NS)
        root = ET.fromstring(payload)
        for item in root.iter(f"{{{NS}}}item"):
            ident = item.find(f"{{{NS}}}instanceId")
            instance = self.instances.get(str(ident.text)) if ident is not None else None
            state = item.find(f"{{{NS}}}instanceState")
            if instance is None or state is None:
                continue
            code, name = state.find(f"{{{NS}}}code"), state.find(f"{{{NS}}}name")
            up = instance.booted is not None
            if code is not None and name is not None and name.text == "running":
                code.text, name.text = ("16", "running") if up else ("0", "pending")
            for tag in ("ipAddress", "dnsName"):
                for el in item.findall(f"{{{NS}}}{tag}"):
                    item.remove(el)
            if up:
                assert instance.booted is not None
                ET.SubElement(item, f"{{{NS}}}ipAddress").text = instance.booted.address
        return ET.tostring(root, xml_declaration=True, encoding="UTF-8")

    # ---- the end

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self._lock:
            left = list(self.instances)
        for ident in left:
            with contextlib.suppress(BaseException):
                self._terminate(ident)
        if self._moto.stdin is not None:
            self._moto.stdin.close()
        try:
            self._moto.wait(10)
        except subprocess.TimeoutExpired:
            self._moto.kill()
        Path(self._amis.name).unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# moto reads the region from the signature's credential scope
_AUTH = {"Authorization": "AWS4-HMAC-SHA256 Credential=AKIDSTANDIN/20260101/us-east-1/ec2/aws4_request"}


def start(boxes: BoxMaker) -> EC2StandIn:
    return EC2StandIn(boxes)
