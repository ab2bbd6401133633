"""Debian's Chromium for the e2e tests, trusting one certificate of the test's choosing besides the system's
roots: a CA's root (a box with a certificate from ACME), or a self-signed box's own certificate, trusted as
that one server's. No certificate error is ignored and no key is pinned by a flag: the browser verifies a
box's certificate as a user's browser verifies a real one, names and dates included.

Chromium on Linux takes locally added trust from the NSS database in $HOME/.pki/nssdb, so each launch gets a
HOME of its own holding a database (made with NSS's `certutil`, Debian's libnss3-tools) with that one
certificate; the browser's profile is a fresh temporary one anyway (Playwright's). Names are mapped to the
boxes' addresses by `--host-resolver-rules`: the browser asks no DNS.
"""

from __future__ import annotations

import http.server
import os
import ssl
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from playwright.sync_api import Browser, Error, Page, Response, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def trusting_home(folder: Path, trusted_pem: str) -> Path:
    """A HOME in `folder` whose NSS database trusts `trusted_pem` for TLS servers: a CA certificate to issue
    server certificates (NSS's trust "C"), any other as a server's own (a trusted peer, "P": Chromium refuses an
    end-entity certificate as a CA, so a self-signed box's is trusted as itself)."""
    database = folder / ".pki" / "nssdb"
    database.mkdir(parents=True)
    cert = folder / "trusted.pem"
    cert.write_text(trusted_pem)
    parsed = x509.load_pem_x509_certificate(trusted_pem.encode())
    try:
        is_ca = parsed.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    nss = f"sql:{database}"
    subprocess.run(["certutil", "-N", "-d", nss, "--empty-password"], check=True, capture_output=True)
    # The flags are for TLS, e-mail and code signing: TLS only.
    argv = ["certutil", "-A", "-d", nss, "-n", "e2e trusted", "-t", "C,," if is_ca else "P,,", "-i", str(cert)]
    subprocess.run(argv, check=True, capture_output=True)
    return folder


@contextmanager
def chromium(folder: Path, trusted_pem: str, hosts: Mapping[str, str]) -> Iterator[Browser]:
    """A headless Chromium trusting `trusted_pem` (see trusting_home), reaching each name of `hosts` at its
    address; closed on leaving."""
    home = trusting_home(folder, trusted_pem)
    rules = ", ".join(f"MAP {name} {address}" for name, address in hosts.items())
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[*ARGS, f"--host-resolver-rules={rules}"],
            env={**os.environ, "HOME": str(home)},
        )
        try:
            yield browser
        finally:
            browser.close()


def goto(page: Page, url: str, attempts: int = 5) -> Response | None:
    """page.goto, again when Chromium gave up because this machine's network changed (ERR_NETWORK_CHANGED: an
    interface came or went, as every local box's does when it is made or destroyed, by any test run here);
    any other error at once."""
    for attempt in range(1, attempts + 1):
        try:
            return page.goto(url)
        except Error as e:
            if "net::ERR_NETWORK_CHANGED" not in str(e) or attempt == attempts:
                raise
    raise AssertionError("unreachable")


@contextmanager
def https_page(context: ssl.SSLContext, host: str = "127.0.0.1") -> Iterator[int]:
    """A page served over HTTPS on `host` with the server context's certificate, while inside: its port."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html><body>a page</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a browser that refuses the certificate ends the handshake: expected here

    server = Server((host, 0), Page)
    # The handshake in each connection's own thread, so a connection that never sends one blocks nothing.
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
