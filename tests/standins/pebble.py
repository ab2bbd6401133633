"""Let's Encrypt's ACME test server, Debian's `pebble`, as the boxes' certificate authority in the e2e tests.

It listens on this machine's address on the lane's bridge (tests.e2e.helpers.HOST_ADDRESS, which exists once a
box of the lane is up), with a listener certificate from a test CA for that address: that CA's PEM file
(`listener_ca`) is what the inventory's `[acme] ca_file` names, so a box's certbot verifies the directory as it
would Let's Encrypt's. Pebble resolves the names it validates with `dns` (the lane's dnsmasq on HOST_ADDRESS:53,
which delegates each box's zones to its nsd) and fetches HTTP-01 challenges on `http_port` (80: the box's
nginx). Its root changes at every start: `root()` fetches it from the management port, for the clients that
verify a box's certificate. `validity` (seconds) is the issued certificates' lifetime, short for a renewal test.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.request
from pathlib import Path

from tests.standins.backuptargets import Server, free_port
from tests.standins.testca import CA

OCSP_PORT = 4002  # nothing answers there: pebble only writes the address into its certificates (testssl asks)
TLS_ALPN_PORT = 5001  # the boxes do not answer TLS-ALPN-01: certbot asks for HTTP-01 only


class Pebble(Server):
    """One pebble process for a test module: `with Pebble(folder, host, validity=3600) as pebble:` ...
    `pebble.directory` is the [acme] directory URL and `pebble.listener_ca` its ca_file."""

    name = "pebble"

    def __init__(
        self, folder: Path, host: str, validity: int = 90 * 86400, http_port: int = 80, dns: str | None = None
    ) -> None:
        super().__init__(folder, host)
        self.validity = validity
        self.http_port = http_port
        self.dns = dns or f"{host}:53"
        self.management_port = 0
        self.listener_ca = folder / "listener-ca.pem"

    @property
    def directory(self) -> str:
        return f"https://{self.host}:{self.port}/dir"

    def prepare(self) -> None:
        ca = CA.make("pebble listener CA")
        self.listener_ca.write_bytes(ca.pem())
        self.cert, self.key = ca.issue(self.folder, [], [self.host], stem="listener")

    def argv(self) -> list[str]:
        """Written here, as the port (chosen by Server for each start) is only known now."""
        self.management_port = free_port(self.host)
        config = {
            "pebble": {
                "listenAddress": f"{self.host}:{self.port}",
                "managementListenAddress": f"{self.host}:{self.management_port}",
                "certificate": str(self.cert),
                "privateKey": str(self.key),
                "httpPort": self.http_port,
                "tlsPort": TLS_ALPN_PORT,
                "ocspResponderURL": f"http://{self.host}:{OCSP_PORT}",
                "certificateValidityPeriod": self.validity,
                "externalAccountBindingRequired": False,
            }
        }
        path = self.folder / "pebble-config.json"
        path.write_text(json.dumps(config, indent=2))
        return ["pebble", "-config", str(path), "-dnsserver", self.dns]

    def env(self) -> dict[str, str]:
        # No artificial waits before validating, every nonce accepted (certbot retries a rejected one, but a
        # test's timing should not depend on it), and every order validated afresh (a renewal too).
        return {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}

    def root(self) -> str:
        """The root that signs this run's certificates (PEM), from the management port (up a moment after the
        directory's port)."""
        context = ssl.create_default_context(cafile=str(self.listener_ca))
        deadline = time.monotonic() + 10
        while True:
            try:
                url = f"https://{self.host}:{self.management_port}/roots/0"
                with urllib.request.urlopen(url, context=context, timeout=5) as answer:
                    return str(answer.read().decode())
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        self.stop()
