"""The box's ACME program (miab_remote/remote/acme.py) run exactly as shipped (`remote.script("acme")` as a file,
`python3 FILE SUB`), by an unprivileged user (nobody when the tests run as root), against real peers on
loopback: a DNS server answering what each test says (dnspython), Debian's pebble resolving through it, an
HTTP server serving the webroot as nginx does on port 80, and Debian's certbot. Checked: which names resolve
to the box (and why the others do not), what certbot is asked, renew_before_expiry in the renewal conf, the
install into the TLS paths (and the put-back when a validator refuses), the status file, and the guards."""

from __future__ import annotations

import functools
import http.server
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from miab_remote.mail import acme as laptop
from miab_remote.remote import script, wire
from tests.standins.dnsserver import LoopbackDNS
from tests.standins.pebble import Pebble

AS_ROOT = os.geteuid() == 0
USER = pwd.getpwnam("nobody") if AS_ROOT else pwd.getpwuid(os.geteuid())
PYTHON = "/usr/bin/python3" if AS_ROOT and os.path.exists("/usr/bin/python3") else sys.executable
BOX = "127.0.0.1"  # the box's address: pebble's HTTP-01 requests come to the webroot server there
HOSTNAME = "mx.acme.test"
NAMES = [HOSTNAME, "autoconfig.acme.test", "autodiscover.acme.test", "mta-sts.acme.test"]
# Skipped without them, except where the tests are required to run (CI: scripts/setup-host installs both).
pytestmark = pytest.mark.skipif(
    not (shutil.which("certbot") and shutil.which("pebble")) and os.environ.get("MIAB_REMOTE_REQUIRE_E2E") != "1",
    reason="certbot, pebble",
)


class DNSServer(LoopbackDNS):
    """Answers A/AAAA queries from `records` (name -> addresses, or "SERVFAIL"); other names: NXDOMAIN."""

    def __init__(self) -> None:
        self.records: dict[str, list[str] | str] = {}
        super().__init__()

    def answer(self, question: dns.rrset.RRset, response: dns.message.Message) -> None:
        name = question.name.to_text().rstrip(".").lower()
        entry = self.records.get(name)
        if entry is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif entry == "SERVFAIL":
            response.set_rcode(dns.rcode.SERVFAIL)
        else:
            rtype = {dns.rdatatype.A: "A", dns.rdatatype.AAAA: "AAAA"}.get(question.rdtype)
            found = [a for a in entry if rtype and (":" in a) == (rtype == "AAAA")]
            if found:
                response.answer.append(dns.rrset.from_text(question.name, 60, "IN", rtype, *found))


@dataclass
class Box:
    """A folder standing in for the box, owned by the unprivileged user: settings, certbot's directories, the
    webroot, the TLS files, the status; and the peers."""

    root: Path
    dns: DNSServer
    pebble: Pebble

    @property
    def settings_path(self) -> Path:
        return self.root / "settings.json"

    def settings(self, **changes: Any) -> dict[str, Any]:
        s = {
            "directory": self.pebble.directory,
            "email": None,
            "ca_file": str(self.root / "ca.pem"),
            "hostname": HOSTNAME,
            "names": NAMES,
            "addresses": [BOX, "2001:db8::7"],
            "certbot_dir": str(self.root / "letsencrypt"),
            "lineage": laptop.LINEAGE,
            "webroot": str(self.root / "webroot"),
            "tls_cert": str(self.root / "ssl/cert.pem"),
            "tls_key": str(self.root / "ssl/key.pem"),
            "status": str(self.root / "var/acme.json"),
            "trust": str(self.root / "trust.pem"),
            "system_cas": str(self.root / "system-cas.pem"),
            "program": str(self.root / "miab-acme"),
        }
        s.update(changes)
        self.settings_path.write_text(json.dumps(s))
        return s

    def run(self, sub: str, validators: str = "") -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "MIAB_ACME_SETTINGS": str(self.settings_path),
            "MIAB_ACME_RESOLV_CONF": str(self.root / "resolv.conf"),
            "MIAB_ACME_CERTBOT_EXTRA": f"--work-dir {self.root / 'work'} --logs-dir {self.root / 'logs'}",
            "MIAB_ACME_SERVICES": "",
            "MIAB_ACME_VALIDATORS": validators,
            "MIAB_ACME_ZONES_REBUILD": str(self.root / "zones-rebuild"),
        }
        return subprocess.run(
            [PYTHON, str(self.root / "miab-acme"), sub],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.root,
            timeout=300,
            check=False,
            **({"user": USER.pw_uid, "group": USER.pw_gid, "extra_groups": []} if AS_ROOT else {}),
        )

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = json.loads((self.root / "var/acme.json").read_text())
        return status

    def live(self, name: str) -> bytes:
        return (self.root / "letsencrypt/live" / laptop.LINEAGE / name).read_bytes()


def notes(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [x[len(wire.NOTE_PREFIX) :] for x in proc.stdout.splitlines() if x.startswith(wire.NOTE_PREFIX)]


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DNSServer, Pebble, Path]]:
    """The DNS server, pebble and the webroot's HTTP server (pebble's httpPort), for the whole module."""
    webroot = Path(tempfile.mkdtemp(prefix="miab-acme-webroot-"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(webroot))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *_: None  # type: ignore[method-assign]
    web = http.server.ThreadingHTTPServer((BOX, 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    server = DNSServer()
    folder = tmp_path_factory.mktemp("pebble")
    try:
        with Pebble(folder, "127.0.0.1", http_port=web.server_address[1], dns=f"127.0.0.1:{server.port}") as pebble:
            yield server, pebble, webroot
    finally:
        web.shutdown()
        server.close()
        shutil.rmtree(webroot)


@pytest.fixture
def box(peers: tuple[DNSServer, Pebble, Path]) -> Iterator[Box]:
    server, pebble, webroot = peers
    root = Path(tempfile.mkdtemp(prefix="miab-acme-"))
    for sub in ("ssl", "var"):
        (root / sub).mkdir()
    (root / "webroot").symlink_to(webroot)
    (root / "miab-acme").write_bytes(script("acme"))
    shutil.copy(pebble.listener_ca, root / "ca.pem")
    (root / "system-cas.pem").write_bytes(pebble.listener_ca.read_bytes())  # any PEM stands in for Debian's
    (root / "resolv.conf").write_text(f"nameserver 127.0.0.1#{server.port}\n")
    (root / "ssl/cert.pem").write_bytes(b"the self-signed bootstrap\n")
    (root / "ssl/key.pem").write_bytes(b"its key\n")
    (root / "zones-rebuild").write_text(f"#!/bin/sh\necho rebuilt >> {root / 'rebuilt'}\n")
    (root / "zones-rebuild").chmod(0o755)
    if AS_ROOT:
        for path in [root, webroot, *root.rglob("*"), *webroot.rglob("*")]:
            os.chown(path, USER.pw_uid, USER.pw_gid, follow_symlinks=False)
    server.records = {}
    made = Box(root, server, pebble)
    made.settings()
    try:
        yield made
    finally:
        shutil.rmtree(root)


def test_nothing_is_ordered_when_the_hostname_does_not_resolve_here(box: Box) -> None:
    # Both of the box's addresses: it resolves here (the others decide nothing is ordered).
    box.dns.records = {HOSTNAME: ["192.0.2.9"], NAMES[1]: [BOX, "2001:db8::7"], NAMES[2]: "SERVFAIL"}
    proc = box.run("order")
    assert proc.returncode == 0, proc.stderr
    assert notes(proc) == [
        f"left out (resolves to 192.0.2.9, not this box): {HOSTNAME}",
        f"left out (does not resolve: SERVFAIL): {NAMES[2]}",
        f"left out (does not resolve): {NAMES[3]}",
        f"ordered nothing: the certificate must name {HOSTNAME}; the current one stays",
    ]
    assert (box.root / "ssl/cert.pem").read_bytes() == b"the self-signed bootstrap\n"
    assert box.run("--trusted").returncode == 1 and box.run("trust").returncode == 0
    assert (box.root / "trust.pem").read_bytes().endswith(b"\nthe self-signed bootstrap\n")
    assert box.run("--trusted").returncode == 0
    assert box.status()["left_out"] == {
        HOSTNAME: "resolves to 192.0.2.9, not this box",
        NAMES[2]: "does not resolve: SERVFAIL",
        NAMES[3]: "does not resolve",
    }
    assert box.run("--current").returncode == 1 and box.run("--installed").returncode == 1


def test_an_order_covers_the_names_that_resolve_here_installs_and_a_second_keeps_it(box: Box) -> None:
    # Only the box's addresses: a second, foreign address leaves a name out.
    box.dns.records = {HOSTNAME: [BOX], NAMES[1]: [BOX], NAMES[2]: [BOX, "192.0.2.9"]}
    proc = box.run("order")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert notes(proc) == [
        f"left out (resolves to 192.0.2.9, not this box): {NAMES[2]}",
        f"left out (does not resolve): {NAMES[3]}",
        f"ordered a certificate for 2 names from {box.pebble.directory}",
    ]
    assert (box.root / "ssl/cert.pem").read_bytes() == box.live("fullchain.pem")
    assert (box.root / "ssl/key.pem").read_bytes() == box.live("privkey.pem")
    assert (box.root / "ssl/key.pem").stat().st_mode & 0o777 == 0o600
    assert (box.root / "rebuilt").read_text() == "rebuilt\n", "the zones follow what the certificate covers"
    status = box.status()
    assert status["names"] == sorted([HOSTNAME, NAMES[1]]) and status["directory"] == box.pebble.directory
    assert status["ordered"] and status["installed"]
    conf = (box.root / "letsencrypt/renewal" / f"{laptop.LINEAGE}.conf").read_text()
    assert conf.count("renew_before_expiry") == 2 and "\nrenew_before_expiry = 30 days\n" in conf, conf
    assert "reuse_key = True" in conf and "webroot" in conf and "rsa_key_size = 3072" in conf
    assert box.run("--current").returncode == 0 and box.run("--installed").returncode == 0
    ca = (box.root / "ca.pem").read_bytes()
    assert (box.root / "trust.pem").read_bytes() == ca + ca + box.live("fullchain.pem"), "system's, CA file's, own"
    assert box.run("--trusted").returncode == 0

    # Nothing changed: certbot keeps the lineage (not due), nothing is installed again.
    key = box.live("privkey.pem")
    again = box.run("order")
    assert again.returncode == 0 and notes(again) == notes(proc)[:2], again.stdout
    assert box.live("privkey.pem") == key and (box.root / "rebuilt").read_text() == "rebuilt\n"
    assert (box.root / "letsencrypt/renewal" / f"{laptop.LINEAGE}.conf").read_text() == conf

    # A name that came to resolve here is no longer current; the next order adds it, with the same key.
    box.dns.records[NAMES[3]] = [BOX]
    assert box.run("--current").returncode == 1
    more = box.run("order")
    assert more.returncode == 0 and notes(more)[-1] == f"ordered a certificate for 3 names from {box.pebble.directory}"
    assert box.status()["names"] == sorted([HOSTNAME, NAMES[1], NAMES[3]]) and box.live("privkey.pem") == key
    assert (box.root / "ssl/cert.pem").read_bytes() == box.live("fullchain.pem")
    assert box.run("--current").returncode == 0
    # Another contact address: no longer current; the next order updates the account (no new one), and
    # only once.
    box.settings(email="ops@mail.box.test")
    assert box.run("--current").returncode == 1
    account = sorted((box.root / "letsencrypt/accounts").rglob("regr.json"))
    contact = box.run("order")
    assert contact.returncode == 0, contact.stdout + contact.stderr
    assert notes(contact)[-1] == "the ACME account's contact is now ops@mail.box.test", contact.stdout
    assert sorted((box.root / "letsencrypt/accounts").rglob("regr.json")) == account
    assert box.status()["email"] == "ops@mail.box.test" and box.run("--current").returncode == 0
    assert "contact" not in "".join(notes(box.run("order")))
    # Another directory: no longer current.
    box.settings(directory=box.pebble.directory.replace("/dir", "/other"))
    assert box.run("--current").returncode == 1 and box.run("--installed").returncode == 0
    # Another certificate installed (the self-signed one again): neither.
    box.settings()
    (box.root / "ssl/cert.pem").write_bytes(b"the self-signed bootstrap\n")
    assert box.run("--current").returncode == 1 and box.run("--installed").returncode == 1


def test_an_install_a_validator_refuses_puts_the_old_files_back(box: Box) -> None:
    box.dns.records = {HOSTNAME: [BOX]}
    proc = box.run("order", validators="true;sh -c 'echo no such directive >&2 && false'")
    assert proc.returncode == 1
    assert "not installed, the old certificate put back: sh -c echo no such directive" in proc.stderr, proc.stderr
    assert "failed (exit 1):\nno such directive" in proc.stderr
    assert (box.root / "ssl/cert.pem").read_bytes() == b"the self-signed bootstrap\n"
    assert (box.root / "ssl/key.pem").read_bytes() == b"its key\n"
    assert box.run("install").returncode == 0, "installed once nothing refuses it"
    assert (box.root / "ssl/cert.pem").read_bytes() == box.live("fullchain.pem")


def test_a_failed_order_says_why_and_keeps_the_current_certificate(box: Box) -> None:
    """certbot writes the challenge where nothing serves it (not the webroot port 80 serves): pebble refuses."""
    box.dns.records = {HOSTNAME: [BOX]}
    (box.root / "elsewhere").mkdir()
    if AS_ROOT:
        os.chown(box.root / "elsewhere", USER.pw_uid, USER.pw_gid)
    box.settings(webroot=str(box.root / "elsewhere"))
    proc = box.run("order")
    assert proc.returncode == 1, proc.stdout
    assert "miab-acme: certbot failed (exit 1); the current certificate stays:\n" in proc.stderr
    assert "404" in proc.stderr and HOSTNAME in proc.stderr, proc.stderr
    assert "- - -" not in proc.stderr and "Saving debug log" not in proc.stderr, proc.stderr
    assert (box.root / "ssl/cert.pem").read_bytes() == b"the self-signed bootstrap\n"
    assert box.run("--current").returncode == 1


def test_a_certificate_without_the_hostname_is_not_installed(box: Box) -> None:
    box.dns.records = {HOSTNAME: [BOX]}
    assert box.run("order").returncode == 0
    (box.root / "ssl/cert.pem").write_bytes(b"the self-signed bootstrap\n")
    box.settings(hostname="other.acme.test")
    proc = box.run("install")
    assert proc.returncode == 1 and "does not name other.acme.test" in proc.stderr, proc.stderr
    assert (box.root / "ssl/cert.pem").read_bytes() == b"the self-signed bootstrap\n"


def test_the_laptops_settings_name_the_programs_paths() -> None:
    """The program's default settings path is the one the recipe writes (its one copy of the others)."""
    assert f'"{laptop.SETTINGS}"' in script("acme").decode()
