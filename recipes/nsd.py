"""nsd: the box is the authoritative DNS server for its zones (unless the inventory says dns = "external").

The laptop renders each zone's body (records from the inventory, checked with dnspython); the box fills in
its DKIM key, the TLSA data of its TLS key and a serial that changes only when the content does
(miab_remote/remote/zone_build.py), checks it with nsd-checkzone, and nsd reloads. With [acme] the builder
also reads the box's certificate: a zone publishes its _mta-sts record only while the certificate covers
mta-sts.DOMAIN, so the ACME deploy hook runs REBUILD (every zone built as the deploy builds it, then nsd
reloaded) after installing one.

Every zone is signed (DNSSEC) on the box with Debian's ldnsutils: small, no daemon, it signs the file the
builder wrote. One key per zone and algorithm ([dns] dnssec_algorithm), made once in the state tree
(layout.DNSSEC_KEYS); signatures hold 30 days and a daily timer runs REBUILD, whose guard fails when fewer
than 14 days remain, so they are renewed well before they expire.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from miab_remote.api import (
    Command,
    Directory,
    File,
    Package,
    RecipeContext,
    Resource,
    Service,
    dnszones,
    layout,
    script,
    secondary,
)

ZONES_DIR = "/etc/nsd/zones"
BUILDER = layout.ZONE_BUILDER
REBUILD = "/usr/local/lib/miab-remote/zones-rebuild"
# A primary's deploy pushes these to its secondaries (jobs/deploy.py): nsd.conf's list of copied zones, keys.
TAGS = (secondary.PUSH_TAG,)
UNITS = "/etc/systemd/system"
RESIGN_SERVICE = "miab-zones-resign.service"
RESIGN_TIMER = "miab-zones-resign.timer"


def sign_args(ctx: RecipeContext) -> str:
    """The builder's signing option: the box's algorithm and where the zones' keys are."""
    return f"--sign {ctx.host.dns.dnssec_algorithm} {layout.DNSSEC_KEYS}"


def build_args(ctx: RecipeContext, zone: str) -> str:
    """The builder's arguments for one zone: the deploy's command, its guard and REBUILD use the same."""
    args = f"{sign_args(ctx)} {zone} {ZONES_DIR}/{zone}.body {ZONES_DIR}/{zone}.zone {layout.DKIM_PUBLIC}"
    args += f" {layout.TLS_KEY}"
    return f"{args} {layout.TLS_CERT}" if ctx.host.acme is not None else args


def rebuild_script(ctx: RecipeContext, zones: list[str]) -> str:
    """Every zone built when its guard fails, then nsd reloaded if one changed; exit 1 if any failed."""
    lines = [
        "#!/bin/sh",
        "# Written by miab-remote (recipes/nsd.py): builds every zone of this box again, as a deploy does, and",
        "# reloads nsd when one changed. The ACME deploy hook runs it after installing a certificate.",
        "changed=0 failed=0",
    ]
    for zone in zones:
        args = build_args(ctx, zone)
        lines.append(f"python3 {BUILDER} --check {args} || {{ python3 {BUILDER} {args} && changed=1 || failed=1; }}")
    lines += [
        'if [ "$changed" = 1 ] && systemctl is-active --quiet nsd; then systemctl reload nsd || failed=1; fi',
        'exit "$failed"',
    ]
    return "\n".join(lines) + "\n"


def _secondary_files(ctx: RecipeContext) -> Iterator[Resource]:
    """[dns] secondaries, both ways (mail/secondary.py): the folder nsd writes its copies of other boxes'
    zones to (always there, so a push of the secondary's zones from a primary's deploy finds it), and the
    TSIG keys nsd.conf includes."""
    yield Directory(secondary.COPIES_DIR, mode=0o750, owner="nsd", group="nsd")
    keys = secondary.key_file(ctx.host)
    if keys is None:
        return
    yield File(
        secondary.KEY_FILE, content=keys, mode=0o640, group="nsd", secret=True, notify=("service:nsd",), tags=TAGS
    )


def resources(ctx: RecipeContext) -> Iterator[Resource]:
    if ctx.host.options["dns"] == "external":
        # Another DNS host publishes the records (`miab-remote dns NAME` lists them): no nameserver here.
        yield Package("nsd", present=False)
        # The ACME deploy hook runs REBUILD when it exists: here there is nothing to rebuild.
        yield Directory("/usr/local/lib/miab-remote")
        nothing = "#!/bin/sh\n# Written by miab-remote: nsd is not on this box (dns = external).\n"
        yield File(REBUILD, content=nothing, mode=0o755)
        return
    yield Package("nsd")
    yield Package("ldnsutils")
    yield Directory("/usr/local/lib/miab-remote")
    yield Directory(layout.DNS, mode=0o755)
    yield Directory(layout.DNSSEC_KEYS, mode=0o700)
    yield File(BUILDER, content=script("zone_build"), mode=0o755)
    yield Directory(ZONES_DIR)
    zones = dnszones.zones_of(ctx.host)
    for zone in zones:
        yield File(
            f"{ZONES_DIR}/{zone}.body", content=dnszones.zone_body(ctx.host, zone), notify=(f"command:zone-{zone}",)
        )
    for zone in zones:
        args = build_args(ctx, zone)
        yield Command(
            f"zone-{zone}",
            run=f"python3 {BUILDER} {args}",
            # Also when the DKIM key changed, or a build failed last time: the zone records its source.
            unless=f"python3 {BUILDER} --check {args}",
            on_notify=True,
            notify=("service:nsd",),
        )
    yield File(REBUILD, content=rebuild_script(ctx, zones), mode=0o755)
    yield from _secondary_files(ctx)
    copies = {
        "copies": secondary.copies(ctx.host),
        "copies_dir": secondary.COPIES_DIR,
        "xfrd_state": secondary.XFRD_STATE,
        "write_after": secondary.WRITE_AFTER,
    }
    yield from units(copies)
    context = {
        "zones": zones,
        "key_file": secondary.KEY_FILE if secondary.key_owners(ctx.host) else None,
        "transfers_to": secondary.transfers_to(ctx.host) if ctx.host.dns.secondaries else [],
        **copies,
    }
    yield File("/etc/nsd/nsd.conf", context=context, notify=("service:nsd",), tags=TAGS)
    # A zone file's change is a reload; nsd.conf's (a new zone, a key) a restart: nsd reads it only then.
    restart_on = ("file:/etc/nsd/nsd.conf", f"file:{secondary.KEY_FILE}")
    yield Service("nsd", reload=True, validator="nsd-checkconf /etc/nsd/nsd.conf", restart_on=restart_on)
    if context["key_file"] is None:  # after the reload that stopped using it
        yield Command("forget-tsig", run=f"rm -f -- {secondary.KEY_FILE}", unless=f"test ! -e {secondary.KEY_FILE}")
    yield Service(RESIGN_TIMER)


def units(copies: dict[str, object]) -> Iterator[Resource]:
    """The units, loaded before nsd (re)starts: the daily run of REBUILD that renews the signatures (its guard
    says when they are due), and nsd's drop-in that keeps a secondary's copies on disk (its template says
    how). The drop-in is pushed with the secondary's nsd.conf; it changes nothing until nsd's next start."""
    reload = "command:nsd-daemon-reload"
    yield File(f"{UNITS}/{RESIGN_SERVICE}", context={"rebuild": REBUILD}, notify=(reload,))
    yield File(f"{UNITS}/{RESIGN_TIMER}", notify=(reload, f"service:{RESIGN_TIMER}"))
    yield Directory(posixpath.dirname(secondary.NSD_DROP_IN))
    yield File(secondary.NSD_DROP_IN, context=copies, notify=(reload,), tags=TAGS)
    yield Command("nsd-daemon-reload", run="systemctl daemon-reload", on_notify=True)
