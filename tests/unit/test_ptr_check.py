"""check's reverse DNS items (checks/outside.ptr_checks), against a real DNS server on loopback that answers
PTR from a table: the box's hostname is ok; none, another name, or no answer at all is a warning that says
where reverse DNS is set; a private address of a cloud's box is not asked about."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.reversename
import dns.rrset
import pytest

from miab_remote.checks.outside import ptr_checks
from miab_remote.checks.result import Check
from miab_remote.fleet.model import Host
from tests.standins.dnsserver import LoopbackDNS

NAME = "mx.example.org"


class PTRServer(LoopbackDNS):
    """Answers PTR queries from `names` (address -> the names to answer; absent: NXDOMAIN) on 127.0.0.1."""

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {}
        super().__init__()

    def answer(self, question: dns.rrset.RRset, response: dns.message.Message) -> None:
        found = {str(dns.reversename.from_address(ip)): n for ip, n in self.names.items()}.get(str(question.name))
        if found is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif found:
            response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "PTR", *(f"{n}." for n in found)))


@pytest.fixture
def server() -> Iterator[PTRServer]:
    s = PTRServer()
    yield s
    s.close()


def host(address: str = "5.9.10.7", provider: str = "digitalocean", **kw: Any) -> Host:
    return Host(NAME, Path(f"{NAME}.toml"), NAME, address, provider=provider, **kw)


def by_name(checks: list[Check]) -> dict[str, tuple[str, str, str]]:
    return {c.name: (c.status, c.detail, c.fix) for c in checks}


def test_the_hostname_is_ok_and_a_missing_or_other_name_a_warning(server: PTRServer) -> None:
    server.names = {"5.9.10.7": [NAME], "2001:db8::7": []}
    got = by_name(ptr_checks(host(ipv6="2a01:4f8::7"), server.resolver()))
    assert got["reverse DNS 5.9.10.7"] == ("ok", NAME, "")
    status, detail, fix = got["reverse DNS 2a01:4f8::7"]
    assert (status, detail) == ("warning", "no PTR record: receivers may refuse the box's mail")
    assert fix == f"set the reverse DNS (PTR) of 2a01:4f8::7 to {NAME} at the provider (its console or API)"
    server.names = {"5.9.10.7": ["droplet-1.example.net"], "2a01:4f8::7": [NAME.upper()]}
    got = by_name(ptr_checks(host(ipv6="2a01:4f8::7"), server.resolver()))
    assert got["reverse DNS 5.9.10.7"][:2] == ("warning", f"names droplet-1.example.net, not {NAME}")
    assert got["reverse DNS 2a01:4f8::7"][:2] == ("ok", NAME), "DNS names are case-insensitive"


def test_no_answer_is_a_warning_and_a_private_address_of_a_cloud_box_is_not_asked(server: PTRServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mute:  # bound, never read: queries time out
        mute.bind(("127.0.0.1", 0))
        silent = server.resolver()
        silent.port, silent.lifetime = mute.getsockname()[1], 0.5
        [item] = ptr_checks(host(), silent)
    assert item.name == "reverse DNS 5.9.10.7" and item.status == "warning" and "could not ask" in item.detail
    assert ptr_checks(host(address="10.0.0.5", ipv6="fd12::5"), server.resolver()) == []
    server.names = {"10.78.7.2": [NAME], "fd12::2": [NAME]}
    local = by_name(ptr_checks(host(address="10.78.7.2", ipv6="fd12::2", provider="local"), server.resolver()))
    assert [v[0] for v in local.values()] == ["ok", "ok"], "a local box's private addresses are its real ones"
