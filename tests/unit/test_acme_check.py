"""`check` of a box with [acme], from what remote/status.py reads on the box: the ACME status file (written
by the box's ACME script), the certificate in use and certbot.service's last run, judged on the laptop: a
warning under 14 days left, a failure when the last renewal failed (with certbot's last lines), the names
left out; and which _mta-sts records the box's nameserver should then answer."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from miab_remote.checks import box as boxchecks
from miab_remote.checks import outside
from miab_remote.checks.result import Check, warn
from miab_remote.fleet.model import Acme, Host, MailUser
from miab_remote.mail import layout, mtasts
from miab_remote.remote import script

NAME = "mx.alpha.test"
CA = "https://10.78.7.1:14000/dir"
NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
COVERED = [NAME, "autoconfig.alpha.test", "autodiscover.alpha.test", "mta-sts.alpha.test"]
KEY = ec.generate_private_key(ec.SECP256R1())
NAMES_FIX = (
    f"point each name at the box (`miab-remote dns {NAME}` says how), then `miab-remote deploy {NAME}` orders them"
)
RENEW_FIX = "`journalctl -u certbot.service` on the box says more; `systemctl start certbot.service` there tries again"
ORDER_FIX = (
    f"`miab-remote deploy {NAME}` orders one once the names resolve to the box (`miab-remote dns {NAME}` says how)"
)


def box(acme: Acme | None = None, domains: tuple[str, ...] = ("alpha.test",)) -> Host:
    return Host(
        NAME,
        Path(f"hosts/{NAME}.toml"),
        NAME,
        "198.51.200.7",
        domains=domains,
        users=(MailUser("admin@alpha.test", "{BLF-CRYPT}$2b$04$" + "a" * 53),),
        acme=acme or Acme(CA),
    )


def pem(names: list[str], not_after: datetime.datetime, issuer: str = "Pebble Intermediate CA 1b2c3d") -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]) if issuer else subject)
        .public_key(KEY.public_key())
        .serial_number(7)
        .not_valid_before(not_after - 90 * DAY)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(KEY, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def fact(
    days: float = 60,
    names: list[str] | None = None,
    left_out: dict[str, str] | None = None,
    renewal: dict[str, Any] | None = None,
    issuer: str = "Pebble Intermediate CA 1b2c3d",
) -> dict[str, Any]:
    names = COVERED if names is None else names
    return {
        "status": {"status": {"names": names, "left_out": left_out or {}, "directory": CA,
                              "ordered": "2026-11-01T10:00:00+00:00", "installed": "2026-11-01T10:00:03+00:00"}},
        "certificate": pem(names or [NAME], NOW + days * DAY, issuer),
        "renewal": renewal or {"result": "success", "finished": "Tue 2026-12-01 06:12:01 UTC"},
    }  # fmt: skip


FAILED_RUN = {
    "result": "exit-code",
    "finished": "Tue 2026-12-01 06:12:01 UTC",
    "lines": [
        "Failed to renew certificate miab-remote with error: urn:ietf:params:acme:error:connection",
        "All renewals failed. The following certificates could not be renewed:",
        "  /home/user-data/ssl/letsencrypt/live/miab-remote/fullchain.pem (failure)",
    ],
}

CASES: list[tuple[str, dict[str, Any], list[Check]]] = [
    ("fine", fact(), [
        Check("ACME certificate", True, f"from {CA}, 4 names, valid for 60 more days (certbot.service renews it "
              "30 days before it ends)"),
        Check("ACME renewal", True, "certbot.service's last run succeeded (Tue 2026-12-01 06:12:01 UTC)"),
        Check("ACME names", True, "all covered: " + ", ".join(COVERED)),
    ]),
    ("under 14 days", fact(days=13.5), [
        warn("ACME certificate", f"from {CA}, 4 names, expires in 13 days: certbot.service should have renewed it "
             "(30 days before it ends)", RENEW_FIX),
        Check("ACME renewal", True, "certbot.service's last run succeeded (Tue 2026-12-01 06:12:01 UTC)"),
        Check("ACME names", True, "all covered: " + ", ".join(COVERED)),
    ]),
    ("expired, renewal failed", fact(days=-1, renewal=FAILED_RUN), [
        Check("ACME certificate", False, f"from {CA}, expired on 2026-11-30", RENEW_FIX),
        Check("ACME renewal", False, "certbot.service's last run failed (exit-code, Tue 2026-12-01 06:12:01 UTC): "
              + " / ".join(FAILED_RUN["lines"]), RENEW_FIX),
        Check("ACME names", True, "all covered: " + ", ".join(COVERED)),
    ]),
    ("names left out", fact(names=[NAME, "mta-sts.alpha.test"], left_out={
        "autoconfig.alpha.test": "resolves to 192.0.2.1, not this box",
        "autodiscover.alpha.test": "does not resolve"}), [
        Check("ACME certificate", True, f"from {CA}, 2 names, valid for 60 more days (certbot.service renews it "
              "30 days before it ends)"),
        Check("ACME renewal", True, "certbot.service's last run succeeded (Tue 2026-12-01 06:12:01 UTC)"),
        warn("ACME names", "left out: autoconfig.alpha.test (resolves to 192.0.2.1, not this box), "
             "autodiscover.alpha.test (does not resolve)", NAMES_FIX),
    ]),
    ("never run", fact(renewal={"result": "success", "finished": ""}), [
        Check("ACME certificate", True, f"from {CA}, 4 names, valid for 60 more days (certbot.service renews it "
              "30 days before it ends)"),
        Check("ACME renewal", True, "certbot.service has not run yet (its timer runs it twice a day)"),
        Check("ACME names", True, "all covered: " + ", ".join(COVERED)),
    ]),
    ("nothing resolves yet", fact(names=[], issuer="", left_out={NAME: "does not resolve"}), [
        warn("ACME certificate", "none ordered yet: the box serves its self-signed certificate", ORDER_FIX),
        Check("ACME renewal", True, "certbot.service's last run succeeded (Tue 2026-12-01 06:12:01 UTC)"),
        warn("ACME names", f"left out: {NAME} (does not resolve)", NAMES_FIX),
    ]),
    ("no status yet", {"status": {"missing": True}, "certificate": pem([NAME], NOW + 3650 * DAY, ""),
                       "renewal": {"error": "Failed to connect to bus"}}, [
        warn("ACME certificate", "none ordered yet: the box serves its self-signed certificate", ORDER_FIX),
        warn("ACME renewal", "could not ask systemd: Failed to connect to bus", RENEW_FIX),
    ]),
    ("ordered, not installed", fact(issuer=""), [
        Check("ACME certificate", False, f"the box serves a self-signed certificate, not the one ordered from {CA}",
              f"`miab-remote deploy {NAME}` installs it"),
        Check("ACME renewal", True, "certbot.service's last run succeeded (Tue 2026-12-01 06:12:01 UTC)"),
        Check("ACME names", True, "all covered: " + ", ".join(COVERED)),
    ]),
    ("renewed, not installed", {**fact(days=20), "lineage": pem(COVERED, NOW + 80 * DAY)}, [
        Check("ACME certificate", False, "certbot renewed it (valid until 2027-02-19) but the box serves the one "
              "before (valid until 2026-12-21): the install after the renewal failed",
              f"`miab-remote deploy {NAME}` installs it or says why not"),
        Check("ACME renewal", True, "certbot.service's last run succeeded (Tue 2026-12-01 06:12:01 UTC)"),
        Check("ACME names", True, "all covered: " + ", ".join(COVERED)),
    ]),
    ("unreadable", {"status": {"error": "Expecting value"}, "certificate": None, "renewal": {"result": "success"}}, [
        Check("ACME certificate", False, "could not read the ACME status: Expecting value", ORDER_FIX),
        Check("ACME renewal", True, "certbot.service has not run yet (its timer runs it twice a day)"),
    ]),
]  # fmt: skip


@pytest.mark.parametrize(("facts", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_boxs_acme_state_is_judged(facts: dict[str, Any], expected: list[Check]) -> None:
    assert boxchecks.acme_checks(box(), facts, NOW) == expected


def test_no_acme_no_checks() -> None:
    h = Host(NAME, Path(f"hosts/{NAME}.toml"), NAME, "198.51.200.7")
    assert boxchecks.acme_checks(h, None, NOW) == []
    assert boxchecks.acme_checks(box(), None, NOW) == []  # the box could not be asked: said elsewhere


def test_the_box_reads_its_acme_state(tmp_path: Path) -> None:
    """status.py as shipped (its functions): the status file and the certificate as they are; systemd's
    answer (none on this machine, which runs no systemd: the error is the fact)."""
    source = script("status").decode()
    namespace: dict[str, Any] = {"__name__": "status"}
    exec(compile(source.rstrip()[: -len("main()")], "status.py", "exec"), namespace)
    status, cert, lineage = tmp_path / "acme.json", tmp_path / "cert.pem", tmp_path / "fullchain.pem"
    spec = {"status": str(status), "certificate": str(cert), "lineage": str(lineage), "unit": "certbot.service"}
    read = namespace["acme"](spec)
    assert read["status"] == {"missing": True} and read["certificate"] is None and "renewal" in read
    assert read["lineage"] is None
    lineage.write_text("the lineage's chain\n")
    assert namespace["acme"](spec)["lineage"] == "the lineage's chain\n"
    content = fact()["status"]["status"]
    status.write_text(json.dumps(content))
    cert.write_text(fact()["certificate"])
    read = namespace["acme"](spec)
    assert read["status"] == {"status": content} and read["certificate"] == cert.read_text()
    assert set(read["renewal"]) <= {"result", "finished", "lines", "error"}


def test_status_asks_for_acme_only_with_acme() -> None:
    assert outside.status_spec(box(), [])["acme"] == {
        "status": boxchecks.ACME_STATUS,
        "certificate": layout.TLS_CERT,
        "lineage": "/home/user-data/ssl/letsencrypt/live/miab-remote/fullchain.pem",
        "unit": "certbot.service",
    }
    assert "acme" not in outside.status_spec(Host(NAME, Path(f"hosts/{NAME}.toml"), NAME, "198.51.200.7"), [])


def test_the_mta_sts_record_is_expected_only_while_the_certificate_covers_its_name() -> None:
    h = box(domains=("alpha.test", "beta.test"))
    record = ("_mta-sts.alpha.test", "TXT")
    assert outside.expected_records(h, None, {NAME, "mta-sts.alpha.test"})[record] == [
        f'"v=STSv1; id={mtasts.policy_id(h)}"'
    ]
    assert outside.expected_records(h, None, {NAME, "mta-sts.alpha.test"})[("_mta-sts.beta.test", "TXT")] == []
    assert outside.expected_records(h, None, set())[record] == []  # must not be published
    assert record not in outside.expected_records(h, None, None)  # unknown: not checked
    assert outside.expected_records(h, None, None)[("alpha.test", "CAA")] == [
        '0 issue "letsencrypt.org"',
        '0 issuewild ";"',
        '0 iodef "mailto:admin@alpha.test"',
    ]
    assert boxchecks.certificate_names(fact()) == set(COVERED)
    assert boxchecks.certificate_names({"certificate": None}) == set()
    assert boxchecks.certificate_names(None) is None
