"""What the operator enters elsewhere for a box's DNS: glue and delegations at the registrar when the box
serves its zones (nsd), or every record when another DNS host does (dns = "external")."""

from __future__ import annotations

from typing import Any

from miab_remote.fleet.dnsrules import nameserver_names
from miab_remote.fleet.model import Host
from miab_remote.mail import dnszones


def registrar(host: Host) -> dict[str, Any]:
    v4, v6 = dnszones.addresses(host)
    ns = nameserver_names(host.hostname)
    glue = [{"name": n, "type": t, "value": ip} for n in ns for t, ip in (("A", v4), ("AAAA", v6)) if ip]
    return {"glue": glue, "delegations": {zone: ns for zone in dnszones.zones_of(host)}}


def dns_info(host: Host) -> dict[str, Any]:
    """The registrar's part, or (external DNS) every record with the box's DKIM key read from the box."""
    data: dict[str, Any] = {"box": host.name, "dns": host.options["dns"]}
    if host.options["dns"] != "external":
        data.update(registrar(host))
        return data
    from miab_remote.checks.outside import dkim_rdata_from_box  # dnspython's resolver: only this path needs it

    dkim = dkim_rdata_from_box(host)
    zones = dnszones.records(host, dkim or dnszones.DKIM_PLACEHOLDER)
    data["records"] = {
        z: [r.__dict__ for r in recs if r.value != dnszones.DKIM_PLACEHOLDER] for z, recs in zones.items()
    }
    if dkim is None:
        data["warning"] = "the box has no DKIM key yet: deploy it, then run this again"
    return data
