"""`check`'s view from inside the box: the facts miab_remote/remote/status.py reads in one round trip, judged
here on the laptop (pure: facts in, Check lines out), plus the addresses the box publishes.

What is expected comes from the box's own recipes, never from a list kept here: the services are the
recipes' `Service` resources (a recipe added later is covered by itself), and the firewall's ports are
the rules the deploy renders into ufw's files (recipes/hardening.py's list, or the operator's own
user.rules).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509

from miab_remote.checks.result import Check, warn
from miab_remote.engine.resources import Resource, Service
from miab_remote.fleet.model import Host
from miab_remote.mail import acme, dnszones

DISK_MIN_FREE = 0.10
MEMORY_MIN = 200 * 1024 * 1024
# ufw's chains of allowed incoming traffic, per address family, and the files the deploy renders them from.
UFW_CHAINS = {"v4": "ufw-user-input", "v6": "ufw6-user-input"}
UFW_FILES = {"v4": "/etc/ufw/user.rules", "v6": "/etc/ufw/user6.rules"}
_ALLOW = re.compile(r"-A \S+ -p (tcp|udp) --dport (\d+) -j ACCEPT")
CERT_MIN_DAYS = 14  # a certificate closer to its end than this is a warning
# [acme]: the status the box's ACME program writes after each order or install ({"names": [...], "left_out":
# {NAME: why}, "directory", "ordered", "installed"}), the unit Debian's certbot.timer starts to renew, and
# how long before the end it renews (the program sets renew_before_expiry so).
ACME_STATUS = acme.STATUS
ACME_UNIT = "certbot.service"
ACME_LINEAGE = acme.LIVE_CHAIN
ACME_RENEW_DAYS = 30


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def running_services(resources: Sequence[Resource]) -> list[str]:
    """The units the box's recipes keep running, in recipe order."""
    return list(dict.fromkeys(r.name for r in resources if isinstance(r, Service) and r.running))


# -- addresses ----------------------------------------------------------------------------------------------------
def address_checks(host: Host) -> list[Check]:
    """A published address the world cannot reach makes the box's DNS point nowhere: loopback, link-local or
    unspecified ones always, private or reserved ones unless the box is a local one (on this machine's bridge)."""
    v4, v6 = dnszones.addresses(host)
    if not v4 and not v6:
        fix = f"set ipv4 (and ipv6) in {host.path}"
        return [Check("published address", False, f"`address` {host.address} is a name", fix)]
    out = []
    for ip, field in ((v4, "ipv4"), (v6, "ipv6")):
        if not ip:
            continue
        source = field if getattr(host, field) else "address"
        a = ipaddress.ip_address(ip)
        if a.is_loopback or a.is_link_local or a.is_unspecified:
            problem = "loopback" if a.is_loopback else "link-local" if a.is_link_local else "unspecified"
        elif not a.is_global and host.provider != "local":
            problem = "private or reserved"
        else:
            out.append(Check(f"published {field}", True, f"{ip} (from {source})"))
            continue
        out.append(
            Check(
                f"published {field}",
                False,
                f"DNS publishes {ip} (from {source}), a {problem} address that others cannot reach",
                f"set {field} in {host.path} to the box's public address; `address` may stay what reaches it "
                "over SSH (a tunnel or jump host, see the README)",
            )
        )
    return out


# -- services -----------------------------------------------------------------------------------------------------
def service_checks(host: Host, facts: Mapping[str, Any], units: Sequence[str]) -> list[Check]:
    out = []
    for unit in units:
        f = facts.get(unit) or {}
        load, active, sub = f.get("load", "unknown"), f.get("active", "unknown"), f.get("sub", "")
        name = f"service {unit}"
        if f.get("error"):
            out.append(Check(name, False, f"systemctl could not say: {f['error']}", ""))
        elif load == "masked":
            fix = f"`systemctl unmask {unit}` on the box, then miab-remote deploy {host.name}"
            out.append(Check(name, False, "masked", fix))
        elif load != "loaded":
            out.append(Check(name, False, f"not installed ({load})", f"miab-remote deploy {host.name} installs it"))
        elif active != "active":
            out.append(
                Check(
                    name,
                    False,
                    f"{active} ({sub})" if sub else active,
                    f"miab-remote deploy {host.name} starts it; `journalctl -u {unit}` on the box says why it stopped",
                )
            )
        else:
            out.append(Check(name, True, f"active ({sub})" if sub else "active"))
    return out


def lmtp_check(host: Host, fact: Mapping[str, Any]) -> Check:
    """postfix hands every incoming message to dovecot over LMTP: the address must answer with a greeting."""
    name = "LMTP delivery to dovecot"
    if "transport" not in fact:
        return Check(name, False, f"could not read postfix's virtual_transport: {fact.get('error', '?')}", "")
    if "address" not in fact:
        return Check(name, True, f"postfix delivers by {fact['transport'] or 'its default transport'}")
    fix = f"`systemctl restart dovecot` on the box (`journalctl -u dovecot` says why) or miab-remote deploy {host.name}"
    if "error" in fact:
        return Check(name, False, f"{fact['address']} does not answer: {fact['error']}", fix)
    if not str(fact.get("greeting", "")).startswith("220"):
        return Check(name, False, f"{fact['address']} greets with {fact.get('greeting')!r}, not 220", fix)
    return Check(name, True, f"{fact['address']} answers")


# -- firewall -----------------------------------------------------------------------------------------------------
def _rule_key(line: str) -> str:
    """A rule as ufw's files write it: `iptables -S` adds the protocol's match module."""
    return re.sub(r" -m (tcp|udp)(?= )", "", line.strip())


def _describe(rules: set[str]) -> str:
    """Allow rules as PORT/PROTO, in port order; any other rule as it is."""
    ports = sorted((int(m.group(2)), m.group(1)) for r in rules if (m := _ALLOW.fullmatch(r)))
    others = sorted(r for r in rules if not _ALLOW.fullmatch(r))
    return ", ".join([f"{port}/{proto}" for port, proto in ports] + others)


def expected_rules(rendered: Mapping[str, bytes], family: str) -> set[str] | None:
    """The allow rules the deploy installs for one address family, read from the rendered ufw file."""
    text = rendered.get(UFW_FILES[family])
    if text is None:
        return None
    prefix = f"-A {UFW_CHAINS[family]} "
    return {_rule_key(line) for line in text.decode().splitlines() if line.startswith(prefix)}


def firewall_check(host: Host, facts: Mapping[str, Any], rendered: Mapping[str, bytes]) -> Check | None:
    """ufw active (incoming dropped) with exactly the box's ports open, for IPv4 and IPv6."""
    deploy = f"miab-remote deploy {host.name}"
    problems: dict[str, list[str]] = {}  # what is wrong -> the address families it is wrong for
    fixes: list[str] = []
    summary = ""
    for family, label in (("v4", "IPv4"), ("v6", "IPv6")):
        want = expected_rules(rendered, family)
        if want is None:
            continue
        summary = summary or _describe(want)
        fact = facts.get(family) or {}
        if fact.get("error"):
            problems.setdefault(f"could not read the rules ({fact['error']})", []).append(label)
            fixes.append(deploy)
            continue
        if fact.get("policy") != "DROP":
            problems.setdefault(f"not active (incoming {fact.get('policy') or 'unknown'}, not DROP)", []).append(label)
            fixes.append(deploy)
        live = {_rule_key(line) for line in fact.get("rules", [])}
        if stray := live - want:
            problems.setdefault(f"also allows {_describe(stray)}", []).append(label)
            fixes.append(
                f"{deploy} removes what is not the box's (so does `ufw delete allow PORT/PROTO` on the box); to keep "
                "a port open, put your user.rules and user6.rules in hosts/templates/etc/ufw/"
            )
        if missing := want - live:
            problems.setdefault(f"does not allow {_describe(missing)}", []).append(label)
            fixes.append(deploy)
    if not summary:
        return None  # the box's recipes render no firewall
    name = "firewall (ufw)"
    if problems:
        detail = "; ".join(f"{what} ({' and '.join(labels)})" for what, labels in problems.items())
        return Check(name, False, detail, "; ".join(dict.fromkeys(fixes)))
    return Check(name, True, f"active; incoming dropped except {summary}")


# -- resources and upkeep -----------------------------------------------------------------------------------------
def resource_checks(host: Host, facts: Mapping[str, Any]) -> list[Check]:
    out = []
    for disk in facts.get("disk") or []:
        total, free = disk["total"], disk["free"]
        detail = f"{disk['path']}: {size(free)} free of {size(total)}"
        if total and free / total < DISK_MIN_FREE:
            out.append(
                warn(
                    f"disk {disk['path']}",
                    f"{detail} ({free / total:.0%}, under {DISK_MIN_FREE:.0%})",
                    "free space on the box (old logs, large mailboxes) or grow its disk",
                )
            )
        else:
            out.append(Check(f"disk {disk['path']}", True, detail))
    mem = facts.get("memory") or {}
    if mem.get("available") is None:
        out.append(warn("memory", f"could not read /proc/meminfo: {mem.get('error', '?')}"))
    elif mem["available"] < MEMORY_MIN:
        out.append(
            warn(
                "memory",
                f"{size(mem['available'])} available of {size(mem['total'] or 0)} (under {size(MEMORY_MIN)})",
                "give the box more memory; spamd and php-fpm are the largest users",
            )
        )
    else:
        out.append(Check("memory", True, f"{size(mem['available'])} available of {size(mem['total'] or 0)}"))
    return out


def upkeep_checks(host: Host, facts: Mapping[str, Any]) -> list[Check]:
    out = []
    upd = facts.get("updates") or {}
    if "error" in upd:
        out.append(warn("security updates", f"could not ask apt: {upd['error']}", "`apt-get -s upgrade` on the box"))
    elif upd.get("security"):
        names = upd["security"]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        out.append(
            warn(
                "security updates",
                f"{len(names)} waiting: {shown}",
                "unattended-upgrades installs them within a day; now: `apt-get upgrade` on the box",
            )
        )
    else:
        other = len(upd.get("other") or [])
        out.append(Check("security updates", True, "none waiting" + (f" ({other} other updates)" if other else "")))
    boot = facts.get("reboot") or {}
    if boot.get("required"):
        by = ", ".join(boot.get("packages") or []) or "an upgrade"
        out.append(warn("reboot", f"required by {by}", "reboot the box when it suits you (`systemctl reboot`)"))
    else:
        out.append(Check("reboot", True, "not required"))
    return out


def box_checks(
    host: Host, facts: Mapping[str, Any], resources: Sequence[Resource], rendered: Mapping[str, bytes]
) -> list[Check]:
    """Every check of the box's own state, from the facts status.py read."""
    units = running_services(resources)
    out = service_checks(host, facts.get("services") or {}, units)
    if "dovecot" in units and "postfix" in units:
        out.append(lmtp_check(host, facts.get("lmtp") or {}))
    fw = firewall_check(host, facts.get("firewall") or {}, rendered)
    if fw is not None:
        out.append(fw)
    return out + resource_checks(host, facts) + upkeep_checks(host, facts)


# -- backups ------------------------------------------------------------------------------------------------------
BACKUP_MAX_AGE = datetime.timedelta(hours=36)  # a daily timer with up to 3 h of random delay, and one miss


def _when(text: str | None) -> datetime.datetime | None:
    """An ISO 8601 time (a naive one is UTC), or None when there is none or it is not one."""
    try:
        t = datetime.datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return t if t is None or t.tzinfo else t.replace(tzinfo=datetime.UTC)


def _ago(then: datetime.datetime, now: datetime.datetime) -> str:
    hours = (now - then).total_seconds() / 3600
    age = f"{hours:.0f} h ago" if hours < 72 else f"{hours / 24:.0f} days ago"
    return f"{then.astimezone(datetime.UTC):%Y-%m-%d %H:%M} UTC, {age}"


def backup_check(
    host: Host, fact: Mapping[str, Any] | None, since: str | None, now: datetime.datetime
) -> Check | None:
    """[backup]: the last good backup at most 36 h old; none yet is a failure 36 h after the backups became
    due (`since`: the first deploy with [backup], or the last restore). Says when, and the last error."""
    if host.backup is None or fact is None:
        return None
    name = "backup"
    fix = f"`miab-remote backup {host.name}` runs one now and says why it fails; `journalctl -u miab-backup` on the box"
    if "error" in fact:
        return Check(name, False, f"could not read the backup status: {fact['error']}", fix)
    status = fact.get("status") or {}
    attempt = status.get("last_attempt") or {}
    error = f"; the last attempt ({_ago(t, now)}) failed: {attempt.get('error')}" if (
        attempt and not attempt.get("ok") and (t := _when(attempt.get("time"))) is not None
    ) else ""  # fmt: skip
    success = status.get("last_success") or {}
    last = _when(success.get("time"))
    if last is not None:
        detail = f"last good backup {_ago(last, now)} (snapshot {str(success.get('snapshot', '?'))[:8]})"
        if now - last > BACKUP_MAX_AGE:
            return Check(name, False, f"{detail}: older than 36 h{error}", fix)
        if error:
            return warn(name, detail + error, fix)
        return Check(name, True, detail)
    due = _when(since)
    if due is None or now - due > BACKUP_MAX_AGE:
        at = f" (due since {_ago(due, now)})" if due else ""
        return Check(name, False, f"no good backup yet{at}{error}", fix)
    return Check(name, True, f"none yet: due since {_ago(due, now)}, the timer runs one within a day{error}")


def restore_check(host: Host, fact: Mapping[str, Any] | None) -> Check | None:
    """A restore that was interrupted (its journal is still on the box) keeps port 25 closed until the same
    command runs again: a failure naming that command; None when no restore is under way."""
    if fact is None:
        return None
    fix = f"`miab-remote restore {host.name}` finishes it"
    if "error" in fact:
        return Check("restore", False, f"an unreadable restore journal on the box: {fact['error']}", fix)
    return Check(
        "restore",
        False,
        f"the restore of snapshot {str(fact.get('snapshot') or '?')[:8]} is unfinished (it came to "
        f"{fact.get('phase')}): port 25 stays closed meanwhile",
        fix,
    )


# -- ACME ---------------------------------------------------------------------------------------------------------
def _certificate(pem: str | None) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(pem.encode()) if pem else None
    except ValueError:
        return None


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in san.get_values_for_type(x509.DNSName)]


def certificate_names(fact: Mapping[str, Any] | None) -> set[str] | None:
    """The names of the certificate the box serves (from status.py's [acme] facts); None when unknown."""
    if fact is None:
        return None
    cert = _certificate(fact.get("certificate"))
    return set(_dns_names(cert)) if cert is not None else set()


def acme_checks(host: Host, fact: Mapping[str, Any] | None, now: datetime.datetime) -> list[Check]:
    """[acme]: the certificate ordered and in use with days to spare, certbot's last renewal, the names left
    out of it (they do not resolve to the box); nothing when the box could not be asked (said elsewhere)."""
    if host.acme is None or fact is None:
        return []
    read = fact.get("status") or {}
    status = read.get("status") or {}
    out = [_acme_certificate(host, fact, now), _acme_renewal(fact.get("renewal") or {})]
    if status:
        left = status.get("left_out") or {}
        if left:
            fix = (
                f"point each name at the box (`miab-remote dns {host.name}` says how), then `miab-remote deploy "
                f"{host.name}` orders them"
            )
            out.append(warn("ACME names", "left out: " + ", ".join(f"{n} ({w})" for n, w in sorted(left.items())), fix))
        else:
            out.append(Check("ACME names", True, "all covered: " + ", ".join(status.get("names") or [])))
    return out


_RENEW_FIX = "`journalctl -u certbot.service` on the box says more; `systemctl start certbot.service` there tries again"


def self_signed(cert: x509.Certificate) -> bool:
    """The box's own certificate (made before ACME, or without it): its issuer is itself."""
    return cert.issuer == cert.subject


def _acme_certificate(host: Host, fact: Mapping[str, Any], now: datetime.datetime) -> Check:
    name = "ACME certificate"
    order = (
        f"`miab-remote deploy {host.name}` orders one once the names resolve to the box (`miab-remote dns "
        f"{host.name}` says how)"
    )
    read = fact.get("status") or {}
    if "error" in read:
        return Check(name, False, f"could not read the ACME status: {read['error']}", order)
    status = read.get("status") or {}
    cert = _certificate(fact.get("certificate"))
    made_here = cert is not None and self_signed(cert)
    if not status.get("names") and (cert is None or made_here):
        return warn(name, "none ordered yet: the box serves its self-signed certificate", order)
    directory = status.get("directory") or (host.acme.directory if host.acme else "?")
    if cert is None:
        return Check(name, False, "could not read the certificate in use", f"miab-remote deploy {host.name}")
    if made_here:
        detail = f"the box serves a self-signed certificate, not the one ordered from {directory}"
        return Check(name, False, detail, f"`miab-remote deploy {host.name}` installs it")
    end = cert.not_valid_after_utc
    newer = _certificate(fact.get("lineage"))
    if newer is not None and fact.get("lineage") != fact.get("certificate") and newer.not_valid_after_utc > end:
        # certbot renewed, but its deploy hook (the box's install) failed: certbot.service still succeeds.
        detail = (
            f"certbot renewed it (valid until {newer.not_valid_after_utc:%Y-%m-%d}) but the box serves the one "
            f"before (valid until {end:%Y-%m-%d}): the install after the renewal failed"
        )
        return Check(name, False, detail, f"`miab-remote deploy {host.name}` installs it or says why not")
    if end <= now:
        return Check(name, False, f"from {directory}, expired on {end:%Y-%m-%d}", _RENEW_FIX)
    days, count = (end - now).days, len(_dns_names(cert))
    if days < CERT_MIN_DAYS:
        detail = f"from {directory}, {count} names, expires in {days} days: certbot.service should have renewed it"
        return warn(name, f"{detail} ({ACME_RENEW_DAYS} days before it ends)", _RENEW_FIX)
    detail = f"from {directory}, {count} names, valid for {days} more days"
    return Check(name, True, f"{detail} (certbot.service renews it {ACME_RENEW_DAYS} days before it ends)")


def _acme_renewal(fact: Mapping[str, Any]) -> Check:
    name = "ACME renewal"
    if "error" in fact:
        return warn(name, f"could not ask systemd: {fact['error']}", _RENEW_FIX)
    result, finished = fact.get("result") or "", fact.get("finished") or ""
    if result in ("", "success"):
        if not finished:
            return Check(name, True, "certbot.service has not run yet (its timer runs it twice a day)")
        return Check(name, True, f"certbot.service's last run succeeded ({finished})")
    said = " / ".join(fact.get("lines") or [])
    detail = f"certbot.service's last run failed ({result}, {finished or 'time unknown'})"
    return Check(name, False, f"{detail}: {said}" if said else detail, _RENEW_FIX)
