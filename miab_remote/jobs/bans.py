"""Small jobs on a running box over its pinned SSH connection: fail2ban's bans (list them, lift one).

Each job is one connection and a round trip or two; it reads the box's state before it changes anything,
so the report says exactly what happened ("unbanned from dovecot", "was not banned").
"""

from __future__ import annotations

import ast
import ipaddress
import re
import shlex
from dataclasses import dataclass, field

from miab_remote.engine.converge import ActionReport, HostRun, Report, with_transport
from miab_remote.errors import HostError, InputError
from miab_remote.fleet.model import Host
from miab_remote.transport.ssh import Transport

_JAIL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


def check_address(text: str) -> str:
    """An IPv4 or IPv6 address as fail2ban writes it (normalised), or InputError (exit 2)."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise InputError(f"{text!r} is not an IP address (e.g. 203.0.113.7 or 2001:db8::7)") from None


def check_jail(text: str) -> str:
    """A jail name (letters, digits, _ . @ -), or InputError (exit 2)."""
    if not _JAIL_RE.fullmatch(text):
        raise InputError(f"{text!r} is not a fail2ban jail name (letters, digits, '_', '.', '@', '-')")
    return text


def parse_banned(text: str) -> dict[str, list[str]]:
    """`fail2ban-client banned` prints a Python literal: [{'sshd': []}, {'dovecot': ['203.0.113.7']}, ...]."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        raise HostError(f"unexpected answer from fail2ban-client banned: {text.strip()[:200]!r}") from None
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise HostError(f"unexpected answer from fail2ban-client banned: {text.strip()[:200]!r}")
    jails: dict[str, list[str]] = {}
    for item in value:
        for jail, addresses in item.items():
            if not isinstance(jail, str) or not isinstance(addresses, list | tuple):
                raise HostError(f"unexpected answer from fail2ban-client banned: {text.strip()[:200]!r}")
            jails[jail] = [str(a) for a in addresses]
    return dict(sorted(jails.items()))


def same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


def unban_command(address: str, jails: list[str] | None) -> str:
    """Every jail at once (`unban`), or just the named ones (`set JAIL unbanip`)."""
    if jails is None:
        return f"fail2ban-client unban {shlex.quote(address)}"
    return " && ".join(f"fail2ban-client set {shlex.quote(j)} unbanip {shlex.quote(address)}" for j in jails)


def _fail2ban(host: Host, transport: Transport, command: str) -> str:
    """Run a fail2ban-client command as root; its output, or a HostError that says what is wrong."""
    res = transport.exec(command, idle_timeout=60.0)
    out = (res.stdout + res.stderr).decode(errors="replace").strip()
    if res.exit_code == 127:
        raise HostError(
            f"{host.name}: fail2ban is not installed on the box; deploy it (recipe hardening) first: "
            f"`miab-remote deploy {host.name}`"
        )
    if res.exit_code != 0:
        if "Failed to access socket" in out or "Is fail2ban running" in out:
            raise HostError(f"{host.name}: fail2ban is not running on the box (`systemctl status fail2ban` there)")
        raise HostError(f"{host.name}: `{command}` failed (exit {res.exit_code}): {out[-1000:]}")
    return res.stdout.decode(errors="replace")


@dataclass
class BanList:
    run: HostRun
    jails: dict[str, list[str]] = field(default_factory=dict)


def list_bans(host: Host, progress: Report, connect_timeout: float = 10.0) -> BanList:
    """The addresses each jail currently bans (one round trip)."""
    name = host.name
    result = BanList(HostRun(name))

    def job(host: Host, transport: Transport, run: HostRun) -> None:
        progress(name, "reading fail2ban's bans")
        result.jails = parse_banned(_fail2ban(host, transport, "fail2ban-client banned"))

    result.run = with_transport(host, job, connect_timeout)
    return result


@dataclass
class Unban:
    run: HostRun
    address: str
    # The jails the address was banned in (and is no longer), and all the box's jails.
    lifted: list[str] = field(default_factory=list)
    jails: list[str] = field(default_factory=list)


def unban(
    host: Host,
    address: str,
    jail: str | None,
    progress: Report,
    connect_timeout: float = 10.0,
) -> Unban:
    """Lift the ban of `address` in `jail` (default: every jail that bans it). An unknown jail is an
    InputError (exit 2, nothing changed); an address that is not banned is no error (nothing to do)."""
    name = host.name
    address = check_address(address)
    jail = check_jail(jail) if jail is not None else None
    result = Unban(HostRun(name), address)
    unknown: list[InputError] = []

    def job(host: Host, transport: Transport, run: HostRun) -> None:
        progress(name, "reading fail2ban's bans")
        bans = parse_banned(_fail2ban(host, transport, "fail2ban-client banned"))
        result.jails = list(bans)
        if jail is not None and jail not in bans:
            unknown.append(
                InputError(f"{name}: no fail2ban jail {jail!r} on the box; its jails: {', '.join(bans) or 'none'}")
            )
            return
        banned_in = [j for j, addresses in bans.items() if any(same_address(address, a) for a in addresses)]
        targets = [j for j in banned_in if jail is None or j == jail]
        if not targets:
            where = f"in jail {jail}" if jail else "in any jail"
            elsewhere = f" (it is banned in {', '.join(banned_in)})" if banned_in else ""
            run.notes.append(f"{address} is not banned {where}{elsewhere}; nothing to do")
            return
        progress(name, f"unbanning {address} ({', '.join(targets)})")
        _fail2ban(host, transport, unban_command(address, None if jail is None else targets))
        result.lifted = targets
        run.actions = [ActionReport(f"jail:{j}", f"unban {address}", "changed") for j in targets]
        run.changed = len(targets)

    result.run = with_transport(host, job, connect_timeout)
    if unknown:
        raise unknown[0]
    return result
