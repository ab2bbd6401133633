"""postfix (SMTP in and out, submission with STARTTLS-only auth) and postgrey (greylisting on port 25).

Users and aliases are hash maps rebuilt by `postmap` when their text changes: postmap replaces the
table under a lock, so postfix always sees the old or the new table, never an empty one, and picks the
new one up without a reload.
"""

from __future__ import annotations

from collections.abc import Iterator

from miab_remote import layout, mailmaps
from miab_remote.recipes import RecipeContext
from miab_remote.resources import Command, Directory, File, Package, Resource, Service

MAPS = ("virtual_mailboxes", "virtual_aliases", "sender_logins")


def resources(ctx: RecipeContext) -> Iterator[Resource]:
    host = ctx.host
    for name in ("postfix", "postgrey", "postfix-policyd-spf-python"):
        yield Package(name)
    yield File("/etc/postfix-policyd-spf-python/policyd-spf.conf", notify=("service:postfix",))
    # Sender domains normalised and checked on port 25, and the submission ports' anonymised Received
    # header (regexp tables: read as text, no postmap).
    for name in ("command_filter", "sender_checks", "submission_header_checks"):
        yield File(f"/etc/postfix/{name}", notify=("service:postfix",))
    yield Directory(layout.POSTGREY, mode=0o755)
    yield Directory(f"{layout.POSTGREY}/db", mode=0o700, owner="postgrey", group="postgrey")
    yield File("/etc/default/postgrey", notify=("service:postgrey",))
    yield Service("postgrey")

    contents = {
        "virtual_mailboxes": mailmaps.virtual_mailboxes(host),
        "virtual_aliases": mailmaps.virtual_aliases(host),
        "sender_logins": mailmaps.sender_logins(host),
    }
    for name in MAPS:
        path = f"/etc/postfix/{name}"
        yield File(path, content=contents[name], mode=0o644, tags=("accounts",), notify=(f"command:postmap-{name}",))
    yield File("/etc/postfix/main.cf", notify=("service:postfix",))
    yield File("/etc/postfix/master.cf", notify=("service:postfix",))
    for name in MAPS:
        path = f"/etc/postfix/{name}"
        # When the text changed, or when the .db is missing or older than the text (a first run, a deleted
        # .db, or a run killed between moving the text and postmap): guarded by freshness, not existence.
        yield Command(
            f"postmap-{name}",
            run=f"postmap {path}",
            on_notify=True,
            unless=f"test -e {path}.db && ! test {path} -nt {path}.db",
        )
    yield Service("postfix", reload=True, validator="postfix check && postconf -n >/dev/null")
