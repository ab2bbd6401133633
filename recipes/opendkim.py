"""opendkim: one 2048-bit key per box, made once on the box and never regenerated; it signs mail from
authenticated users for every hosted domain (d=that domain, selector "mail") and verifies incoming mail."""

from __future__ import annotations

from collections.abc import Iterator

from miab_remote.api import Command, Directory, File, Package, RecipeContext, Resource, Service, layout


def resources(ctx: RecipeContext) -> Iterator[Resource]:
    for name in ("opendkim", "opendkim-tools"):
        yield Package(name)
    yield Directory(layout.DKIM, mode=0o750, owner="opendkim", group="opendkim")
    yield Command(
        "dkim-key",
        run=(
            f"opendkim-genkey -b 2048 -s {layout.DKIM_SELECTOR} -D {layout.DKIM} -d {ctx.host.hostname} "
            f"&& chown opendkim:opendkim {layout.DKIM_KEY} {layout.DKIM_PUBLIC} && chmod 600 {layout.DKIM_KEY}"
        ),
        creates=layout.DKIM_KEY,
        notify=("service:opendkim",),
    )
    yield Directory("/etc/opendkim")
    for name in ("KeyTable", "SigningTable", "TrustedHosts", "unbound.conf"):
        yield File(f"/etc/opendkim/{name}", notify=("service:opendkim",))
    yield File("/etc/opendkim.conf", notify=("service:opendkim",))
    yield Service("opendkim", validator="opendkim -n")
