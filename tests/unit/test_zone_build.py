"""remote/zone_build.py as shipped: the conditional _mta-sts line is published only while the box's
certificate (a real one made by openssl here) covers mta-sts.DOMAIN, and that coverage is part of the
zone's source, so the deploy's `--check` guard fails when it changes. The hostname's TLSA records carry
the SHA-256 of the TLS key's public key, and a new key fails the guard too."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import dns.zone
import pytest

from miab_remote.fleet.model import Acme, Host, MailUser
from miab_remote.mail import dnszones, mtasts
from miab_remote.remote import BOOTSTRAP, script, script_input

DKIM_FILE = 'mail._domainkey IN TXT ( "v=DKIM1; h=sha256; k=rsa; " "p=KEY" )  ; ----- DKIM key mail\n'
ACME = Acme("https://ca.test/dir")
DKIM = '"v=DKIM1; h=sha256; k=rsa; p=KEY"'


def host(acme: Acme | None = ACME) -> Host:
    return Host(
        name="mx.alpha.test",
        path=Path("hosts/mx.alpha.test.toml"),
        hostname="mx.alpha.test",
        address="203.0.113.7",
        domains=("alpha.test", "beta.test"),
        users=(MailUser("admin@alpha.test", "{BLF-CRYPT}$2b$04$" + "a" * 53),),
        acme=acme,
    )


def builder() -> dict[str, Any]:
    """zone_build.py's functions, without its final call of main()."""
    source = script("zone_build").decode()
    tail = "sys.exit(main(sys.argv[1:]))"
    assert source.rstrip().endswith(tail)
    namespace: dict[str, Any] = {"__name__": "zone_build"}
    exec(compile(source.rstrip()[: -len(tail)], "zone_build.py", "exec"), namespace)
    return namespace


def certificate(path: Path, names: list[str]) -> Path:
    san = "subjectAltName=" + ",".join(f"DNS:{n}" for n in names)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
         str(path.with_suffix(".key")), "-out", str(path), "-days", "30", "-subj", f"/CN={names[0]}", "-addext", san],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


def tls_key(path: Path) -> Path:
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)],
                   check=True, capture_output=True)  # fmt: skip
    return path


def spki_sha256(key: Path) -> str:
    der = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"], check=True,
                         capture_output=True).stdout  # fmt: skip
    return hashlib.sha256(der).hexdigest()


def check(tmp: Path, zone: str, cert: Path | None) -> int:
    """The deploy's guard, run as the box runs it."""
    argv = ["--check", zone, str(tmp / f"{zone}.body"), str(tmp / f"{zone}.zone"), str(tmp / "mail.txt")]
    argv.append(str(tmp / "tls.key"))
    argv += [str(cert)] if cert else []
    proc = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP, *argv],
        input=script_input("zone_build", b""),
        capture_output=True,
        check=False,
    )
    assert not proc.stderr, proc.stderr
    return proc.returncode


def built(tmp: Path, zone: str, cert: Path | None) -> str:
    """The zone file a build makes (nsd-checkzone aside: it is on the boxes, not here), written as FINAL."""
    zb = builder()
    body = (tmp / f"{zone}.body").read_text()
    dkim = zb["dkim_rdata"](str(tmp / "mail.txt"))
    tlsa = zb["tlsa_rdata"](str(tmp / "tls.key"))
    _source, _serial, text = zb["zone_text"](body, dkim, str(cert) if cert else None, 0, tlsa)
    (tmp / f"{zone}.zone").write_text(text)
    return text


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    (tmp_path / "mail.txt").write_text(DKIM_FILE)
    tls_key(tmp_path / "tls.key")
    for zone in ("alpha.test", "beta.test"):
        (tmp_path / f"{zone}.body").write_text(dnszones.zone_body(host(), zone))
    return tmp_path


COVERAGE = [
    ("covers", ["mx.alpha.test", "mta-sts.alpha.test", "mta-sts.beta.test"], True),
    ("other names", ["mx.alpha.test", "autoconfig.beta.test", "mta-sts.alpha.test"], False),
    ("no certificate", None, False),
]


@pytest.mark.parametrize(("names", "published"), [c[1:] for c in COVERAGE], ids=[c[0] for c in COVERAGE])
def test_mta_sts_is_published_only_while_the_certificate_covers_its_name(
    tmp: Path, names: list[str] | None, published: bool
) -> None:
    cert = certificate(tmp / "cert.pem", names) if names else tmp / "missing.pem"
    text: str = built(tmp, "beta.test", cert)
    zone = dns.zone.from_text(text, origin="beta.test", relativize=False)
    txt = zone.get_rdataset("_mta-sts.beta.test.", "TXT")
    assert (txt is not None) == published
    if txt is not None:
        assert txt[0].to_text() == f'"v=STSv1; id={mtasts.policy_id(host())}"'
    assert "IF-CERT" not in text and "@SERIAL@" not in text and "@DKIM@" not in text
    assert zone.get_rdataset("beta.test.", "CAA") is not None
    assert zone.get_rdataset("_smtp._tls.beta.test.", "TXT") is not None
    assert check(tmp, "beta.test", cert) == 0


def test_the_guard_fails_when_the_coverage_changes(tmp: Path) -> None:
    cert = certificate(tmp / "cert.pem", ["mx.alpha.test", "autoconfig.beta.test"])
    built(tmp, "beta.test", cert)
    assert check(tmp, "beta.test", cert) == 0
    certificate(cert, ["mx.alpha.test", "mta-sts.beta.test"])  # the CA's certificate now covers beta's policy name
    assert check(tmp, "beta.test", cert) == 1
    built(tmp, "beta.test", cert)
    assert check(tmp, "beta.test", cert) == 0
    # alpha's policy name is not covered either way: its zone did not change.
    built(tmp, "alpha.test", tmp / "missing.pem")
    assert check(tmp, "alpha.test", cert) == 0
    cert.unlink()  # no certificate at all: not covered
    assert check(tmp, "beta.test", cert) == 1


def test_a_zone_without_conditions_keeps_its_source_and_needs_no_certificate(tmp: Path) -> None:
    """A box without [acme]: the zone's source is what it always was (an update bumps no serial)."""
    body = dnszones.zone_body(host(acme=None), "beta.test")
    (tmp / "beta.test.body").write_text(body)
    text = built(tmp, "beta.test", None)
    source = hashlib.sha256((body + "\0" + DKIM).encode()).hexdigest()
    assert text.startswith("; miab-remote serial ") and f" source {source}\n" in text
    assert check(tmp, "beta.test", None) == 0
    assert check(tmp, "beta.test", certificate(tmp / "cert.pem", ["mx.alpha.test", "mta-sts.beta.test"])) == 0


def test_the_hostnames_tlsa_records_follow_the_tls_key(tmp: Path) -> None:
    text = built(tmp, "alpha.test", None)
    zone = dns.zone.from_text(text, origin="alpha.test", relativize=False)
    want = f"3 1 1 {spki_sha256(tmp / 'tls.key')}"
    for port in dnszones.TLSA_PORTS:
        tlsa = zone.get_rdataset(f"_{port}._tcp.mx.alpha.test.", "TLSA")
        assert tlsa is not None and [r.to_text() for r in tlsa] == [want], port
    assert "@TLSA@" not in text and check(tmp, "alpha.test", None) == 0
    assert "TLSA" not in built(tmp, "beta.test", None), "only the hostname's zone"
    tls_key(tmp / "tls.key")  # a new key (never made by a renewal: certbot reuses it) changes the records
    assert check(tmp, "alpha.test", None) == 1 and check(tmp, "beta.test", None) == 0
    assert spki_sha256(tmp / "tls.key") in built(tmp, "alpha.test", None)
    (tmp / "tls.key").unlink()  # no key yet: no TLSA at all rather than a broken one
    assert check(tmp, "alpha.test", None) == 1
    assert "TLSA" not in built(tmp, "alpha.test", None)


def test_a_build_waits_for_another_in_the_same_folder(tmp: Path) -> None:
    """The deploy, the re-signing timer and the ACME hook's rebuild may start at once: one at a time."""
    import fcntl
    import os
    import time

    fd = os.open(tmp / ".zone-build.lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    argv = ["--check", "beta.test", str(tmp / "beta.test.body"), str(tmp / "beta.test.zone"), str(tmp / "mail.txt"),
            str(tmp / "tls.key")]  # fmt: skip
    waiting = subprocess.Popen([sys.executable, "-c", BOOTSTRAP, *argv], stdin=subprocess.PIPE)
    assert waiting.stdin is not None
    waiting.stdin.write(script_input("zone_build", b""))
    waiting.stdin.close()
    time.sleep(1.0)
    assert waiting.poll() is None, "it went on while another build held the folder"
    os.close(fd)  # the other build is done
    assert waiting.wait(timeout=30) == 1  # then it answers: FINAL is not built yet
