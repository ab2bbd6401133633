"""`miab-remote dns` (what to set at the registrar, or the full record set for another DNS host) and
`miab-remote check` (is the box working, seen from outside)."""

from __future__ import annotations

import argparse
import json

from rich.markup import escape
from rich.table import Table

from miab_remote.cli.commands import summary
from miab_remote.cli.common import inventory_of
from miab_remote.cli.output import stdout_console
from miab_remote.jobs.dns import dns_info, zone_file_lines


def cmd_dns(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    host = inv.load(args.name)
    out = stdout_console()
    external = host.options["dns"] == "external"
    data = dns_info(host)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if "warning" in data:
        out.print(f"warning: {data['warning']}", style="yellow", markup=False)
    if not external:
        reg = data
        out.print(f"{host.name} is the DNS server of its domains. At each domain's registrar:", markup=False)
        out.print("1. Glue records (also called host records or child nameservers):", markup=False)
        for g in reg["glue"]:
            whose = "" if g["box"] == host.name else f"   (at the registrar of {g['box']}'s domain: its secondary)"
            out.print(f"     {g['name']}  {g['type']}  {g['value']}{whose}", markup=False)
        out.print("2. Nameservers of the domain:", markup=False)
        for zone, ns in reg["delegations"].items():
            out.print(f"     {zone}: {', '.join(ns)}", markup=False)
        if reg["dnssec"]:
            out.print("3. DNSSEC: the DS record of each domain (or its DNSKEY, if the registrar asks for that):")
            for zone, key in reg["dnssec"].items():
                # One line each, never wrapped: they are copied into the registrar's form as they are.
                out.print(f"     {zone}  (key tag {key['keytag']}, algorithm {key['algorithm_name']})", markup=False)
                out.print(f"       DS      {key['ds']}", markup=False, soft_wrap=True)
                out.print(f"       DNSKEY  {key['dnskey']}", markup=False, soft_wrap=True)
        out.print(f"Then `miab-remote check {host.name}` verifies what the world sees.", markup=False)
        return 0
    out.print(f'{host.name} uses another DNS host (dns = "external"). Enter these records there.', markup=False)
    for zone, recs in data["records"].items():
        out.print(f"\n; zone {zone}, in zone-file syntax", markup=False)
        for line in zone_file_lines(host, recs):
            out.print(line, markup=False)
        table = Table("name", "type", "value", "TTL", "when", box=None, title=f"zone {zone}", title_justify="left")
        for r in recs:
            when = f"only while the box's certificate covers {r['when_cert_covers']}" if "when_cert_covers" in r else ""
            table.add_row(r["name"], r["type"], r["value"], str(r["ttl"]), when)
        out.print(table)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    inv = inventory_of(args)
    names = inv.names() if args.all else args.names
    hosts = [inv.load(n) for n in names]
    from miab_remote.jobs.check import check_hosts  # dnspython and x509: loaded only for `check`

    results = check_hosts(hosts)
    failed = {n: sum(c.failed for c in checks) for n, checks in results.items()}
    warnings = {n: sum(c.status == "warning" for c in checks) for n, checks in results.items()}
    if args.json:
        print(
            json.dumps(
                {
                    "hosts": {
                        n: {"failed": failed[n], "warnings": warnings[n], "checks": [c.as_dict() for c in checks]}
                        for n, checks in results.items()
                    }
                },
                indent=2,
            )
        )
    else:
        out = stdout_console()
        shown = {"ok": "[green]ok[/]", "warning": "[yellow]WARN[/]", "failed": "[bold red]FAIL[/]"}
        for n, checks in results.items():
            title = f"{n}: {failed[n]} failed, {warnings[n]} warnings"
            table = Table("check", "", "detail", "fix", box=None, title=title, title_justify="left")
            for c in checks:
                table.add_row(escape(c.name), shown[c.status], escape(c.detail), escape(c.fix))
            out.print(table)
    # Warnings (something to do soon) show but do not fail: exit 1 means something is broken now.
    return 1 if any(failed.values()) else 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("dns", parents=[common], help=summary("dns"))
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dns)
    p = sub.add_parser("check", parents=[common], help=summary("check"))
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--all", action="store_true", help="every box in the inventory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)
