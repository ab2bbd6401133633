"""spamassassin: spamd scores each delivered message (called from dovecot's sieve) and learns from what
users move into and out of Spam. One bayes database per box, in the state tree, owned by spamd's user."""

from __future__ import annotations

from collections.abc import Iterator

from miab_remote.api import Directory, File, Package, RecipeContext, Resource, Service, layout


def resources(ctx: RecipeContext) -> Iterator[Resource]:
    for name in ("spamassassin", "spamc", *ctx.profile.package_names("spamd")):
        yield Package(name)
    yield Directory(layout.SPAMASSASSIN, mode=0o750, owner="debian-spamd", group="debian-spamd")
    yield File("/etc/default/spamd", notify=("service:spamd",))
    yield File("/etc/spamassassin/miab-remote.cf", notify=("service:spamd",))
    yield Service("spamd", validator="spamassassin --lint")
