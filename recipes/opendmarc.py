"""opendmarc: applies the sender domain's DMARC policy to mail arriving on port 25.

Debian's opendmarc milter, chosen because it is the packaged reference implementation and plugs into
postfix beside opendkim. opendkim verifies signatures (and removes Authentication-Results headers that
an outside sender wrote in this box's name), then opendmarc checks SPF itself and reads only opendkim's
result: `p=reject` is refused with a 5xx, `p=quarantine` is marked in its Authentication-Results header
and filed into Spam by dovecot's sieve "before" script. Mail from authenticated users and local
programs is not checked (it is signed instead).
"""

from __future__ import annotations

from collections.abc import Iterator

from miab_remote.api import Directory, File, Package, RecipeContext, Resource, Service


def resources(ctx: RecipeContext) -> Iterator[Resource]:
    # dbconfig-no-thanks satisfies "dbconfig-mysql | dbconfig-no-thanks": no report database, no MySQL.
    for name in ("opendmarc", "dbconfig-no-thanks", "publicsuffix"):
        yield Package(name)
    yield Directory("/etc/opendmarc")
    yield File("/etc/opendmarc/ignore.hosts", notify=("service:opendmarc",))
    yield File("/etc/opendmarc.conf", notify=("service:opendmarc",))
    yield Service("opendmarc", validator="opendmarc -n -c /etc/opendmarc.conf")
