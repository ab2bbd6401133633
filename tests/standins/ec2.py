"""A stand-in of EC2 on 127.0.0.1: moto's EC2 server (`moto[server]`) answers every call (key pairs, security
groups, instances, Elastic IPs, images), behind a small proxy that records each call, can refuse one as AWS
would, speaks AWS's own XML, and, given a BoxMaker (core.py), gives each instance a real box.

    with ec2.start(LocalBoxes()) as aws:       # ec2.start() alone: moto and the proxy, no boxes
        EC2NodeDriver(KEY, SECRET, host="127.0.0.1", port=aws.port, secure=False, signature_version="4")
        aws.called("RunInstances")             # the parameters of each call (the signature is no secret)
        aws.refuse["RunInstances"] = (400, "InstanceLimitExceeded", "You have requested more instances ...")
        aws.reset()                            # moto's own reset: every backend emptied

- moto runs in a child process, because it reads MOTO_AMIS_PATH once, when its EC2 models are first imported:
  there the AMIs are always the ones given (default: Debian's, owner 136693071363, per release).
- moto 5.2 writes `xmlns="http://ec2.amazonaws.com/doc/2016-11-15"` (botocore's model) where AWS writes it
  with a trailing slash, and puts it on error documents too, which AWS sends as a bare `<Response><Errors>`;
  libcloud looks elements up under AWS's namespace and errors under none, so the proxy answers as AWS does.
- With boxes: on RunInstances a box is made from exactly the UserData sent; DescribeInstances shows the
  instance `pending` until the box's sshd answers, then `running` at the box's address instead of moto's
  made-up one (so the client's SSH goes to the box, never outside this machine); TerminateInstances removes it.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from tests.standins.core import Booted, BoxMaker

NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
MOTO_NAMESPACE = b' xmlns="' + NS.rstrip("/").encode() + b'"'
AWS_NAMESPACE = b' xmlns="' + NS.encode() + b'"'
DEBIAN_OWNER = "136693071363"
# An EC2 error document, as AWS sends it (docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html)
ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}'
    "</Message></Error></Errors><RequestID>ea966190-f9aa-478e-9ede-example</RequestID></Response>"
)

CHILD = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the stand-in closes it
server.stop()
"""


def debian_ami(ami_id: str, name: str, created: str) -> dict[str, Any]:
    """An AMI as MOTO_AMIS_PATH lists them, published by the Debian project's account."""
    return {
        "ami_id": ami_id,
        "state": "available",
        "public": True,
        "owner_id": DEBIAN_OWNER,
        "name": name,
        "image_location": f"{DEBIAN_OWNER}/{name}",
        "root_device_type": "ebs",
        "root_device_name": "/dev/xvda",
        "description": f"Debian ({name})",
        "image_type": "machine",
        "architecture": "x86_64" if "amd64" in name else "arm64",
        "virtualization_type": "hvm",
        "hypervisor": "xen",
        "sriov": "simple",
        "creation_date": created,
    }


DEBIAN_AMIS = [
    debian_ami("ami-0d13d13d13d13d131", "debian-13-amd64-20251117-2299", "2025-11-17T00:00:00.000Z"),
    debian_ami("ami-0d12d12d12d12d121", "debian-12-amd64-20251117-2299", "2025-11-17T00:00:00.000Z"),
    debian_ami("ami-0d13d13d13d13d130", "debian-13-amd64-20250801-2190", "2025-08-01T00:00:00.000Z"),  # older
]


def local_image(ami: Mapping[str, Any]) -> str:
    """The local image a box of this AMI boots: debian-13 for debian-13-amd64-..."""
    return "-".join(str(ami["name"]).split("-")[:2])


@dataclass
class Call:
    action: str
    params: dict[str, str]


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
    """moto behind the proxy; `calls` records each call with its parameters."""

    def __init__(self, boxes: BoxMaker | None = None, amis: list[dict[str, Any]] | None = None) -> None:
        self.boxes = boxes
        self.amis = {a["ami_id"]: a for a in (amis if amis is not None else DEBIAN_AMIS)}
        self.calls: list[Call] = []
        self.refuse: dict[str, tuple[int, str, str]] = {}  # action -> status, AWS code, message
        self.instances: dict[str, Instance] = {}
        self._lock = threading.Lock()
        self._folder = tempfile.TemporaryDirectory(prefix="moto-")
        path = Path(self._folder.name) / "amis.json"
        path.write_text(json.dumps(list(self.amis.values())))
        env = os.environ | {"MOTO_AMIS_PATH": str(path), "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}
        self._moto = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # werkzeug's line per request; the proxy records them
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

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test reads `calls`."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def actions(self) -> list[str]:
        """The Action of every call, in order."""
        return [c.action for c in self.calls]

    def called(self, action: str) -> list[dict[str, str]]:
        """The parameters of every call of `action`, in order."""
        return [c.params for c in self.calls if c.action == action]

    def reset(self) -> None:
        """moto's own reset: every backend emptied (the AMIs come back); the record and refusals cleared."""
        conn = http.client.HTTPConnection("127.0.0.1", self.moto_port, timeout=30)
        conn.request("POST", "/moto-api/reset")
        conn.getresponse().read()
        self.calls.clear()
        self.refuse.clear()

    # ---- the proxy

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        params = {k: v[-1] for k, v in parse_qs(urlsplit(handler.path).query).items()}
        if body and handler.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            params |= {k: v[-1] for k, v in parse_qs(body.decode()).items()}
        action = params.get("Action", "")
        if action:
            with self._lock:
                self.calls.append(Call(action, params))
        if refusal := self.refuse.get(action):
            self._answer(handler, refusal[0], [], ERROR.format(code=refusal[1], message=refusal[2]).encode())
            return
        conn = http.client.HTTPConnection("127.0.0.1", self.moto_port, timeout=60)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(handler.command, handler.path, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read().replace(MOTO_NAMESPACE, AWS_NAMESPACE)
        data = data.replace(b"<Response" + AWS_NAMESPACE + b">", b"<Response>")  # errors: as AWS sends them
        if answer.status == 200 and self.boxes is not None:
            data = self._boxes(action, params, data)
        self._answer(handler, answer.status, answer.getheaders(), data)

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        handler.send_response(status)
        for k, v in headers or [("Content-Type", "text/xml")]:
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _boxes(self, action: str, params: Mapping[str, str], data: bytes) -> bytes:
        if action == "RunInstances":
            self._made(ET.fromstring(data), params)
        if action == "TerminateInstances":
            for key, value in params.items():
                if key.startswith("InstanceId."):
                    self._terminate(value)
        if action in ("RunInstances", "DescribeInstances"):
            return self._rewrite(data, just_made=action == "RunInstances")
        return data

    def _made(self, reply: ET.Element, params: Mapping[str, str]) -> None:
        user_data = base64.b64decode(params.get("UserData", "")).decode()
        name = next(
            (params[k.replace(".Key", ".Value")] for k, v in params.items() if k.endswith(".Key") and v == "Name"),
            "",
        )
        ami = self.amis.get(params.get("ImageId", ""))
        image = local_image(ami) if ami else "debian-13"
        for item in reply.iter(f"{{{NS}}}instanceId"):
            instance = Instance(str(item.text), name, image, user_data)
            instance.thread = threading.Thread(target=self._boot, args=(instance,), daemon=True)
            with self._lock:
                self.instances[instance.id] = instance
            instance.thread.start()

    def _boot(self, instance: Instance) -> None:
        assert self.boxes is not None
        try:
            instance.booted = self.boxes.make(instance.name, instance.user_data, instance.image)
        except BaseException as exc:
            instance.error = f"{type(exc).__name__}: {exc}"
            print(f"stand-in ec2: the box of {instance.name} failed: {instance.error}", file=sys.stderr)

    def _terminate(self, instance_id: str) -> None:
        with self._lock:
            instance = self.instances.pop(instance_id, None)
        if instance is not None and self.boxes is not None:
            if instance.thread is not None:
                instance.thread.join()
            self.boxes.remove(instance.name)

    def _rewrite(self, payload: bytes, just_made: bool = False) -> bytes:
        """Each instance with a box: `pending` while it boots (and in RunInstances' own answer, as AWS's),
        then `running` at the box's address."""
        ET.register_namespace("", NS)
        root = ET.fromstring(payload)
        for item in root.iter(f"{{{NS}}}item"):
            ident = item.find(f"{{{NS}}}instanceId")
            instance = self.instances.get(str(ident.text)) if ident is not None else None
            state = item.find(f"{{{NS}}}instanceState")
            if instance is None or state is None:
                continue
            code, name = state.find(f"{{{NS}}}code"), state.find(f"{{{NS}}}name")
            up = instance.booted is not None and not just_made
            if code is not None and name is not None and name.text == "running":
                code.text, name.text = ("16", "running") if up else ("0", "pending")
            for tag in ("ipAddress", "dnsName"):
                for el in item.findall(f"{{{NS}}}{tag}"):
                    item.remove(el)
            if up and instance.booted is not None:
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
            self._moto.wait(30)
        except subprocess.TimeoutExpired:
            self._moto.kill()
            self._moto.wait()
        self._folder.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def start(boxes: BoxMaker | None = None, amis: list[dict[str, Any]] | None = None) -> EC2StandIn:
    return EC2StandIn(boxes, amis)
