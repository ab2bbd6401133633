"""nsd: the box is the authoritative DNS server for its zones (unless the inventory says dns = "external").

The laptop renders each zone's body (records from the inventory, checked with dnspython); the box fills in
its DKIM key and a serial that changes only when the content does (miab_remote/remote/zone_build.py),
checks it with nsd-checkzone, and nsd reloads.
"""

from __future__ import annotations

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
)

ZONES_DIR = "/etc/nsd/zones"
BUILDER = "/usr/local/lib/miab-remote/zone-build"


def resources(ctx: RecipeContext) -> Iterator[Resource]:
    if ctx.host.options["dns"] == "external":
        # Another DNS host publishes the records (`miab-remote dns NAME` lists them): no nameserver here.
        yield Package("nsd", present=False)
        return
    yield Package("nsd")
    yield Directory("/usr/local/lib/miab-remote")
    yield File(BUILDER, content=script("zone_build"), mode=0o755)
    yield Directory(ZONES_DIR)
    zones = dnszones.zones_of(ctx.host)
    for zone in zones:
        yield File(
            f"{ZONES_DIR}/{zone}.body", content=dnszones.zone_body(ctx.host, zone), notify=(f"command:zone-{zone}",)
        )
    for zone in zones:
        args = f"{zone} {ZONES_DIR}/{zone}.body {ZONES_DIR}/{zone}.zone {layout.DKIM_PUBLIC}"
        yield Command(
            f"zone-{zone}",
            run=f"python3 {BUILDER} {args}",
            # Also when the DKIM key changed, or a build failed last time: the zone records its source.
            unless=f"python3 {BUILDER} --check {args}",
            on_notify=True,
            notify=("service:nsd",),
        )
    yield File("/etc/nsd/nsd.conf", context={"zones": zones}, notify=("service:nsd",))
    yield Service("nsd", reload=True, validator="nsd-checkconf /etc/nsd/nsd.conf")
