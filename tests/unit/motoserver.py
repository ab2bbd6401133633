"""moto's EC2 API on 127.0.0.1 for the ec2 adapter's tests, with the Debian AMIs it needs.

moto runs in a child process (`ThreadedMotoServer`, port 0), because it reads MOTO_AMIS_PATH once, when its
EC2 models are first imported: in its own process the AMIs are always the ones given here, whatever else
the test session imported.

In front of it, a small recording proxy on 127.0.0.1: it keeps every request libcloud sends (the query API's
parameters) and gives moto's XML the namespaces AWS itself answers with. moto 5.2 writes
`xmlns="http://ec2.amazonaws.com/doc/2016-11-15"` (botocore's model) where AWS writes it with a trailing
slash, and puts it on error documents too, which AWS sends as a bare `<Response><Errors>...`. libcloud looks
elements up under AWS's namespace and errors up under none, so without the proxy it would read every moto
answer as empty and every refusal as a message-less 400. Nothing else of moto's answers is changed."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

MOTO_NAMESPACE = b' xmlns="http://ec2.amazonaws.com/doc/2016-11-15"'
AWS_NAMESPACE = b' xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"'
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
sys.stdin.read()  # until the test closes it
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


@dataclass
class Call:
    action: str
    params: dict[str, str]


@dataclass
class Moto:
    port: int  # the proxy's: where the adapter's endpoint points
    calls: list[Call] = field(default_factory=list)
    refuse: dict[str, tuple[int, str, str]] = field(default_factory=dict)  # action -> status, AWS code, message

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def actions(self) -> list[str]:
        return [c.action for c in self.calls]

    def called(self, action: str) -> list[dict[str, str]]:
        return [c.params for c in self.calls if c.action == action]

    def reset(self) -> None:
        """moto's own reset: every backend emptied (the AMIs of MOTO_AMIS_PATH come back)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("POST", "/moto-api/reset")
        conn.getresponse().read()
        self.calls.clear()
        self.refuse.clear()


def _proxy(moto_port: int, record: Moto) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            params = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
            if body and self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                params |= {k: v[-1] for k, v in parse_qs(body.decode()).items()}
            if "Action" in params:
                record.calls.append(Call(params["Action"], params))
            if refusal := record.refuse.get(params.get("Action", "")):
                self._answer(refusal[0], [], ERROR.format(code=refusal[1], message=refusal[2]).encode())
                return
            conn = http.client.HTTPConnection("127.0.0.1", moto_port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body, headers=headers)
            answer = conn.getresponse()
            data = answer.read().replace(MOTO_NAMESPACE, AWS_NAMESPACE)
            data = data.replace(b"<Response" + AWS_NAMESPACE + b">", b"<Response>")  # errors: as AWS sends them
            self._answer(answer.status, answer.getheaders(), data)

        def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
            self.send_response(status)
            for k, v in headers or [("Content-Type", "text/xml")]:
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _forward

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads `calls`."""

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def run(amis: list[dict[str, Any]], folder: Path) -> Iterator[Moto]:
    """For a pytest fixture: moto with `amis` (and none of its built-in ones) behind the recording proxy."""
    path = folder / "amis.json"
    path.write_text(json.dumps(amis))
    env = os.environ | {"MOTO_AMIS_PATH": str(path), "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # werkzeug's line per request; the proxy records them
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        moto_port = int(child.stdout.readline())
        record = Moto(0)
        proxy = _proxy(moto_port, record)
        record.port = proxy.server_address[1]
        thread = threading.Thread(target=proxy.serve_forever, daemon=True)
        thread.start()
        try:
            yield record
        finally:
            proxy.shutdown()
            proxy.server_close()
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
