"""`check` from the box's facts (as miab_remote/remote/status.py reports them) to Check lines: the services
come from the box's own recipes, the firewall's ports from the rendered ufw files, and warnings (low disk or
memory, updates, a reboot, a certificate about to expire) are not failures."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from miab_remote.checks import box as boxchecks
from miab_remote.checks import outside as checks
from miab_remote.checks.result import Check, warn
from miab_remote.fleet.model import DEFAULT_RECIPES, Host

NAME = "mx.alpha.test"


def box(tmp_path: Path, **kw: Any) -> Host:
    base: dict[str, Any] = dict(
        name=NAME,
        path=tmp_path / f"{NAME}.toml",
        hostname=NAME,
        address="198.51.200.7",  # a global address (the documentation ranges are reserved: check flags them)
        domains=("alpha.test",),
        provider="digitalocean",
        options={"dns": "nsd", "message_size_limit": 134217728, "greylist_delay": 180, "resolvers": []},
    )
    base.update(kw)
    return Host(**base)


def by_name(lines: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in lines}


# -- published addresses ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "problem"),
    [
        ({"address": "127.0.0.1"}, "loopback"),
        ({"ipv6": "fe80::1"}, "link-local"),
        ({"address": "203.0.113.7"}, "private or reserved"),
        ({"address": "10.1.2.3"}, "private or reserved"),
        ({"address": "192.168.1.5", "provider": None}, "private or reserved"),
    ],
)
def test_unreachable_published_addresses_are_flagged(tmp_path: Path, kw: dict[str, Any], problem: str) -> None:
    bad = [c for c in boxchecks.address_checks(box(tmp_path, **kw)) if not c.ok]
    assert len(bad) == 1 and bad[0].failed and f"a {problem} address" in bad[0].detail, bad
    assert "set ipv" in bad[0].fix and "README" in bad[0].fix


def test_a_tunnel_address_is_fine_when_the_public_one_is_published(tmp_path: Path) -> None:
    # SSH goes through a tunnel on the laptop's loopback; DNS publishes the box's public addresses.
    h = box(tmp_path, address="127.0.0.1", ipv4="198.51.200.7", ipv6="2a01:4f8::7")
    lines = boxchecks.address_checks(h)
    assert [c.ok for c in lines] == [True, True] and "from ipv4" in lines[0].detail
    assert checks.public_address(h) == "198.51.200.7"
    # A local box lives on this machine's bridge: its private address is the right one to publish.
    assert all(c.ok for c in boxchecks.address_checks(box(tmp_path, address="10.78.5.2", provider="local")))


# -- services, from the recipes -----------------------------------------------------------------------------------
def test_services_come_from_the_box_recipes_including_the_operators_own(tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "extra.py").write_text(
        "from miab_remote.engine.resources import Service\n"
        "def resources(ctx):\n"
        "    yield Service('my-own-daemon')\n"
        "    yield Service('stopped-on-purpose', running=False)\n"
    )
    # No os recorded: built for the newest supported system (Debian 13: php 8.4) until a probe says otherwise.
    resources, _ = checks.desired(box(tmp_path, recipes=(*DEFAULT_RECIPES, "extra")))
    units = boxchecks.running_services(resources)
    for unit in ("postgrey", "spamd", "opendkim", "opendmarc", "dovecot", "postfix", "php8.4-fpm", "fail2ban", "nsd"):
        assert unit in units
    assert units[-1] == "my-own-daemon" and "stopped-on-purpose" not in units and len(units) == len(set(units))


def test_each_service_that_is_not_active_is_one_failure_with_its_fix(tmp_path: Path) -> None:
    facts = {
        "postgrey": {"load": "loaded", "active": "inactive", "sub": "dead"},
        "spamd": {"load": "masked", "active": "inactive", "sub": "dead"},
        "opendkim": {"load": "not-found", "active": "inactive", "sub": "dead"},
        "dovecot": {"load": "loaded", "active": "active", "sub": "running"},
    }
    lines = by_name(boxchecks.service_checks(box(tmp_path), facts, list(facts)))
    assert lines["service dovecot"].ok
    postgrey = lines["service postgrey"]
    assert postgrey.detail == "inactive (dead)" and "journalctl -u postgrey" in postgrey.fix
    assert f"miab-remote deploy {NAME} starts it" in postgrey.fix
    assert lines["service spamd"].detail == "masked" and "systemctl unmask spamd" in lines["service spamd"].fix
    assert "not installed" in lines["service opendkim"].detail
    assert sum(c.failed for c in lines.values()) == 3


def test_lmtp_must_greet(tmp_path: Path) -> None:
    h = box(tmp_path)
    sock = "/var/spool/postfix/private/dovecot-lmtp"
    up = {"transport": "lmtp:unix:private/dovecot-lmtp", "address": sock, "greeting": "220 box Dovecot ready."}
    assert boxchecks.lmtp_check(h, up).ok
    down = boxchecks.lmtp_check(h, {"transport": "t", "address": sock, "error": "[Errno 2] No such file or directory"})
    assert down.failed and sock in down.detail and "restart dovecot" in down.fix


# -- the firewall -------------------------------------------------------------------------------------------------
LIVE = [
    "-A ufw-user-input -p tcp -m tcp --dport 22 -j ACCEPT",
    "-A ufw-user-input -p tcp -m tcp --dport 25 -j ACCEPT",
    "-A ufw-user-input -p tcp -m tcp --dport 53 -j ACCEPT",
    "-A ufw-user-input -p udp -m udp --dport 53 -j ACCEPT",
    *(f"-A ufw-user-input -p tcp -m tcp --dport {p} -j ACCEPT" for p in (80, 443, 465, 587, 993, 4190)),
]


def fw(v4: list[str], v6: list[str] | None = None, policy: str = "DROP") -> dict[str, Any]:
    v6 = [r.replace("ufw-user-input", "ufw6-user-input") for r in (LIVE if v6 is None else v6)]
    return {"v4": {"policy": policy, "rules": v4}, "v6": {"policy": "DROP", "rules": v6}}


def test_firewall_has_exactly_the_ports_the_deploy_renders(tmp_path: Path) -> None:
    h = box(tmp_path)
    _, rendered = checks.desired(h)
    ok = boxchecks.firewall_check(h, fw(LIVE), rendered)
    assert ok is not None and ok.ok and "53/tcp, 53/udp" in ok.detail and "4190/tcp" in ok.detail
    stray = [*LIVE, "-A ufw-user-input -p tcp -m tcp --dport 8080 -j ACCEPT"]
    bad = boxchecks.firewall_check(h, fw(stray, [r.replace("ufw-", "ufw6-") for r in stray]), rendered)
    assert bad is not None and bad.failed
    assert bad.detail == "also allows 8080/tcp (IPv4 and IPv6)" and "hosts/templates/etc/ufw/" in bad.fix
    bad = boxchecks.firewall_check(h, fw([r for r in LIVE if "--dport 25 " not in r], policy="ACCEPT"), rendered)
    assert bad is not None
    assert bad.detail == "not active (incoming ACCEPT, not DROP) (IPv4); does not allow 25/tcp (IPv4)"
    # The SSH port of the inventory is one of the box's ports.
    h2 = box(tmp_path, ssh=type(h.ssh)(port=2222))
    _, rendered2 = checks.desired(h2)
    bad = boxchecks.firewall_check(h2, fw(LIVE), rendered2)
    assert bad is not None and "does not allow 2222/tcp" in bad.detail
    assert boxchecks.firewall_check(h, fw(LIVE), {}) is None  # no hardening recipe: no firewall to judge


# -- resources and upkeep: warnings -------------------------------------------------------------------------------
GB = 1024**3


def test_low_disk_and_memory_warn(tmp_path: Path) -> None:
    h = box(tmp_path)
    facts = {"disk": [{"path": "/", "total": 100 * GB, "free": 50 * GB}], "memory": {"total": 4 * GB, "available": GB}}
    assert all(c.ok for c in boxchecks.resource_checks(h, facts))
    facts = {
        "disk": [{"path": "/", "total": 100 * GB, "free": 9 * GB}],
        "memory": {"total": GB, "available": 150 * 1024**2},
    }
    lines = by_name(boxchecks.resource_checks(h, facts))
    assert lines["disk /"].status == "warning" and "9%, under 10%" in lines["disk /"].detail
    assert lines["memory"].status == "warning" and "150 MB available" in lines["memory"].detail


def test_security_updates_and_a_required_reboot_warn(tmp_path: Path) -> None:
    h = box(tmp_path)
    quiet = {"updates": {"security": [], "other": ["tzdata"]}, "reboot": {"required": False, "packages": []}}
    assert all(c.ok for c in boxchecks.upkeep_checks(h, quiet))
    facts = {
        "updates": {"security": ["libc6", "openssl"], "other": []},
        "reboot": {"required": True, "packages": ["linux-image-amd64"]},
    }
    lines = by_name(boxchecks.upkeep_checks(h, facts))
    updates = lines["security updates"]
    assert updates.status == "warning" and "2 waiting: libc6, openssl" in updates.detail
    assert lines["reboot"].status == "warning" and "linux-image-amd64" in lines["reboot"].detail


def test_a_warning_is_not_a_failure() -> None:
    w = warn("TLS certificate", "expires in 3 days", "renew")
    assert w.status == "warning" and not w.ok and not w.failed
    assert w.as_dict()["status"] == "warning"
    assert Check("x", False, "broken").failed and Check("x", True, "fine").status == "ok"


def certificate(name: str, not_after: datetime.datetime, ca: bool = False) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(not_after - datetime.timedelta(days=3650))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def test_certificate_expiry_warns_within_14_days_and_fails_once_past(tmp_path: Path) -> None:
    h = box(tmp_path)
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    day = datetime.timedelta(days=1)
    assert checks.judge_certificate(h, certificate(NAME, now + 100 * day), now).ok
    soon = checks.judge_certificate(h, certificate(NAME, now + 10 * day), now)
    assert soon.status == "warning" and "expires in 10 days" in soon.detail and "re-issues it" in soon.fix
    past = checks.judge_certificate(h, certificate(NAME, now - day), now)
    assert past.failed and "expired on 2029-12-31" in past.detail
    assert checks.judge_certificate(h, certificate("other.test", now + 100 * day), now).failed
    old = checks.judge_certificate(h, certificate(NAME, now + 100 * day, ca=True), now)
    assert old.failed and "CA:TRUE" in old.detail and f"miab-remote deploy {NAME} re-issues it" in old.fix
