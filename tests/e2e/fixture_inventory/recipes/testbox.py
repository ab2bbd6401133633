"""A small recipe that exercises every resource type against a real box (the engine's e2e tests)."""

from __future__ import annotations

from collections.abc import Iterator

from miab_remote.api import Command, Directory, File, Group, Package, RecipeContext, Resource, Service, User


def resources(ctx: RecipeContext) -> Iterator[Resource]:
    for name in ("nginx", "jq", "tree"):
        yield Package(name)
    yield Group("miabtest")
    yield User("miabtest", home="/var/lib/miab-test", group="miabtest")
    yield Directory("/etc/miab-test")
    yield Directory("/var/lib/miab-test", mode=0o750, owner="miabtest", group="miabtest")
    yield File("/etc/miab-test/motd", mode=0o644)
    yield File(
        "/etc/miab-test/secret.conf",
        mode=0o640,
        group="miabtest",
        secret=True,
        context={"api_token": "s3cr3t-token-value"},
    )
    yield File("/etc/nginx/conf.d/miab-test.conf", notify=("service:nginx",))
    # A pause the engine tests control: while /run/miab-test-hold exists, a deploy stops here, after the
    # file above moved into place and before nginx reloads, so that a test can kill it at that point.
    yield Command(
        "hold",
        run="touch /run/miab-test-held; while test -e /run/miab-test-hold; do sleep 0.2; done",
        unless="! test -e /run/miab-test-hold",
    )
    yield Service("nginx", reload=True, validator="nginx -t")
    yield Command(
        "initialize", run="date -u > /var/lib/miab-test/initialized", creates="/var/lib/miab-test/initialized"
    )
