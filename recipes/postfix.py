"""postfix (SMTP in and out, submission with STARTTLS-only auth) and postgrey (greylisting on port 25).

Users and aliases are hash maps rebuilt by `postmap` when their text changes: postmap replaces the
table under a lock, so postfix always sees the old or the new table, never an empty one, and picks the
new one up without a reload.
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
    layout,
    mailmaps,
    relay,
    script,
)

MAPS = ("virtual_mailboxes", "virtual_aliases", "sender_logins")
# The submission ports' header From check (miab_remote/remote/sender_guard.py), a milter on loopback.
GUARD = "miab-sender-guard"
GUARD_PROGRAM = f"/usr/local/sbin/{GUARD}"
GUARD_PORT = 8895
# Outgoing MTA-STS (RFC 8461): Debian's postfix-mta-sts-resolver answers postfix's TLS policy lookups on loopback.
MTA_STS = "postfix-mta-sts-resolver"
MTA_STS_CONFIG = "/etc/mta-sts-daemon.yml"
MTA_STS_PORT = 8461


def resources(ctx: RecipeContext) -> Iterator[Resource]:
    host = ctx.host
    for name in ("postfix", "postgrey", "postfix-policyd-spf-python", "python3-milter"):
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
    yield from _sender_guard()
    yield from _relay_files(ctx)
    yield from _mta_sts_client(ctx)
    context = {
        "guard_port": GUARD_PORT,
        "mta_sts_port": MTA_STS_PORT,
        "system_cas": relay.SYSTEM_CAS,  # what a policy's verification checks a server's certificate against
        "system_alias_domain": mailmaps.system_alias_domain(host),
        "relay": relay.postfix_settings(host.relay),
    }
    yield File("/etc/postfix/main.cf", context=context, notify=("service:postfix",))
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
    # After the reload that stopped using them: the relay's files that [relay] no longer asks for.
    if stale := [path for path in (relay.PASSWORD_TABLE, relay.CA_FILE) if path not in _relay_paths(ctx)]:
        tests = " && ".join(f"! test -e {path}" for path in stale)
        yield Command("forget-relay", run=f"rm -f -- {' '.join(stale)}", unless=tests)


def _relay_paths(ctx: RecipeContext) -> tuple[str, ...]:
    r = ctx.host.relay
    if r is None:
        return ()
    return (relay.PASSWORD_TABLE, relay.CA_FILE) if r.ca_file is not None else (relay.PASSWORD_TABLE,)


def _relay_files(ctx: RecipeContext) -> Iterator[Resource]:
    """[relay]: the login's password table (secret: never in a diff, never read back) and a private CA.

    libsasl2-modules holds the PLAIN and LOGIN mechanisms postfix's SASL client (Cyrus) needs; it is only
    a recommendation of libsasl2-2, so it is not installed otherwise ("No worthy mechs found")."""
    host = ctx.host
    if host.relay is None:
        return
    yield Package("libsasl2-modules")
    yield Package("ca-certificates")
    yield File(
        relay.PASSWORD_TABLE, content=relay.password_table(host), mode=0o600, secret=True, notify=("service:postfix",)
    )
    if host.relay.ca_file is not None:
        yield File(relay.CA_FILE, content=relay.ca_pem(host), mode=0o644, notify=("service:postfix",))


def _mta_sts_client(ctx: RecipeContext) -> Iterator[Resource]:
    """Outgoing mail honours the recipient domains' MTA-STS policies: a domain in enforce mode gets TLS with
    a certificate that chains to the system's CAs and names its MX, or no delivery (deferred, then bounced).

    Debian's postfix-mta-sts-resolver (bookworm 1.1, trixie 1.5) rather than code of ours: it fetches and
    caches the policies (sqlite, in /var/lib/mta-sts) and answers postfix's socketmap lookups. DANE, the
    other way a domain asks for verified TLS, needs a DNSSEC-validating resolver on the box, which the box
    does not run yet (postfix stays at `may` for domains without a policy). Through a relay, the relay's own
    verified TLS applies and no policy is looked up."""
    if ctx.host.relay is not None:
        yield Package(MTA_STS, present=False)
        return
    yield Package(MTA_STS)
    yield Package("ca-certificates")
    yield File(MTA_STS_CONFIG, context={"port": MTA_STS_PORT}, notify=(f"service:{MTA_STS}",))
    yield Service(MTA_STS)


def _sender_guard() -> Iterator[Resource]:
    """The milter that refuses a header From the login may not send as. It reads /etc/postfix/sender_logins
    itself (re-read when it changes), so account changes never restart it; only a new program or unit does.

    pymilter (Debian's python3-milter) rather than a milter from PyPI or a second rule engine: it is
    packaged for Debian 12, the box has python3 already, and the rule stays the one postfix's own
    smtpd_sender_login_maps applies to the envelope, read from the same table."""
    unit = f"/etc/systemd/system/{GUARD}.service"
    yield File(GUARD_PROGRAM, content=script("sender_guard"), mode=0o755, notify=(f"service:{GUARD}",))
    yield File(
        unit,
        context={"program": GUARD_PROGRAM, "port": GUARD_PORT},
        notify=(f"command:{GUARD}-daemon-reload", f"service:{GUARD}"),
    )
    yield Command(f"{GUARD}-daemon-reload", run="systemctl daemon-reload", on_notify=True)
    yield Service(GUARD, validator=f"python3 {GUARD_PROGRAM} --check /etc/postfix/sender_logins")
