"""What the operator enters elsewhere for a box's DNS: glue and delegations at the registrar when the box
serves its zones (nsd), or every record when another DNS host does (dns = "external")."""

from __future__ import annotations

from typing import Any

from miab_remote.errors import HostError
from miab_remote.fleet import peers
from miab_remote.fleet.dnsrules import nameserver_names
from miab_remote.fleet.model import Host
from miab_remote.mail import dnszones


def registrar(host: Host) -> dict[str, Any]:
    """The glue of the box's nameserver names and of its [dns] secondaries' (each entered at the registrar
    of the domain the name is in: `box` says whose), and each zone's nameservers."""
    glue = [g for box in (host, *peers.secondaries_of(host)) for g in _glue(box)]
    ns = dnszones.zone_nameservers(host)
    return {"glue": glue, "delegations": {zone: ns for zone in dnszones.zones_of(host)}}


def _glue(box: Host) -> list[dict[str, Any]]:
    v4, v6 = dnszones.addresses(box)
    pairs = (("A", v4), ("AAAA", v6))
    return [
        {"name": n, "type": t, "value": ip, "box": box.name}
        for n in nameserver_names(box.hostname)
        for t, ip in pairs
        if ip
    ]


def dns_info(host: Host) -> dict[str, Any]:
    """The registrar's part, or (external DNS) every record with the box's DKIM key read from the box."""
    data: dict[str, Any] = {"box": host.name, "dns": host.options["dns"]}
    if host.options["dns"] != "external":
        data.update(registrar(host))
        data["dnssec"], warning = dnssec_info(host)
        if warning:
            data["warning"] = warning
        return data
    from miab_remote.checks.outside import dkim_rdata_from_box, served_tlsa  # dnspython: only this path needs it

    dkim = dkim_rdata_from_box(host)
    tlsa, self_signed = served_tlsa(host)
    data["records"] = external_records(host, dkim, tlsa)
    warnings = ["the box has no DKIM key yet: deploy it, then run this again"] if dkim is None else []
    if host.acme is not None and self_signed:
        warnings.append(
            "the box still serves its self-signed certificate, and the first ACME certificate comes with a key "
            "of its own: the TLSA records change with the deploy that installs it, so enter them after that "
            "(run this again)"
        )
    if warnings:
        data["warning"] = "; ".join(warnings)
    return data


def dnssec_info(host: Host) -> tuple[dict[str, Any], str | None]:
    """zone -> its DS (`keytag algorithm 2 digest`) and DNSKEY for the registrar, read from the box; and a
    warning when a zone has no key yet (or the box has none, or cannot be reached: the glue still holds)."""
    if not host.has_box:
        return {}, "no box yet: the DS records are made on the box, so create and deploy it, then run this again"
    from miab_remote.mail.dnssec import keys_from_box  # dnspython's dnssec and the SSH transport

    try:
        keys = keys_from_box(host)
    except HostError as e:
        return {}, f"the DS records are read from the box, which did not answer: {e}"
    info = {zone: keys[zone].as_dict() for zone in dnszones.zones_of(host) if zone in keys}
    missing = [zone for zone in dnszones.zones_of(host) if zone not in keys]
    if missing:
        return info, f"no DNSSEC key yet for {', '.join(missing)}: deploy the box, then run this again"
    return info, None


def external_records(host: Host, dkim: str | None, tlsa: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every record of every zone, for another DNS host: name, type, value, ttl, and `when_cert_covers` for a
    record to publish only while the box's certificate covers that name (_mta-sts). Without the DKIM key
    or the TLSA data of the TLS key (None) their records are left out."""
    zones = dnszones.records(host, dkim or dnszones.DKIM_PLACEHOLDER, tlsa or dnszones.TLSA_PLACEHOLDER)
    shown = {z: [r for r in recs if r.value not in dnszones.PLACEHOLDERS] for z, recs in zones.items()}
    return {z: [{k: v for k, v in r.__dict__.items() if v is not None} for r in recs] for z, recs in shown.items()}


def zone_file_lines(host: Host, records: list[dict[str, Any]]) -> list[str]:
    """One zone's records in zone-file syntax, a conditional one after a comment that says when it holds."""
    out = []
    for r in records:
        if r.get("when_cert_covers"):
            out.append(
                f"; only while the box's certificate covers {r['when_cert_covers']} "
                f"(`miab-remote check {host.name}` says so):"
            )
        out.append(f"{r['name']}. {r['ttl']} IN {r['type']} {r['value']}")
    return out
