"""dovecot: IMAPS (993 only), ManageSieve, LMTP delivery from postfix, SASL for postfix's submission ports.

Spam filtering happens at delivery: a global sieve script pipes each message through spamc, and files it
into Spam when spamassassin says so. Chosen over a milter or an LMTP proxy because a crash of the filter
can never lose or even delay mail: spamc passes the message through unchanged when spamd does not answer
("safe fallback"), and if the filter step itself fails, sieve's implicit keep still delivers to INBOX.
Moving a message into Spam (or out of it) trains spamassassin through IMAPSieve.
"""

from __future__ import annotations

from collections.abc import Iterator

from miab_remote.api import (
    Command,
    Directory,
    File,
    Group,
    Package,
    RecipeContext,
    Resource,
    Service,
    User,
    layout,
    mailmaps,
)

SIEVE_DIR = "/etc/dovecot/sieve"
SCRIPTS = ("before", "learn-spam", "learn-ham")
PROGRAMS = ("spamc-filter", "learn-spam", "learn-ham")
# sievec does not load the plugins dovecot.conf names for the mail processes: name them here.
SIEVEC_OPTIONS = "-P sieve_extprograms -P sieve_imapsieve -x '+vnd.dovecot.pipe +vnd.dovecot.filter'"

MASTER_PID = "/run/dovecot/master.pid"  # in dovecot's base_dir, /run/dovecot on Debian


def resources(ctx: RecipeContext) -> Iterator[Resource]:
    for name in ("dovecot-core", "dovecot-imapd", "dovecot-lmtpd", "dovecot-sieve", "dovecot-managesieved"):
        yield Package(name)
    yield Group("vmail")
    yield User("vmail", home=f"{layout.STATE}/mail", group="vmail")
    yield Directory(layout.MAILBOXES, mode=0o750, owner="vmail", group="vmail")
    yield Directory(layout.SIEVE, mode=0o750, owner="vmail", group="vmail")
    yield File(
        "/etc/dovecot/users",
        content=mailmaps.dovecot_users(ctx.host),
        mode=0o640,
        group="dovecot",
        secret=True,
        tags=("accounts",),
        notify=("command:dovecot-auth-reload",),
    )
    yield File("/etc/dovecot/dovecot.conf", mode=0o644, notify=("service:dovecot",))
    yield Directory(SIEVE_DIR)
    yield Directory(f"{SIEVE_DIR}/bin")
    for name in PROGRAMS:
        yield File(f"{SIEVE_DIR}/bin/{name}", mode=0o755)
    for name in SCRIPTS:
        yield File(f"{SIEVE_DIR}/{name}.sieve", notify=(f"command:sievec-{name}",))
    for name in SCRIPTS:
        # dovecot runs as vmail and cannot write beside these scripts: compile them here.
        yield Command(
            f"sievec-{name}",
            run=f"sievec {SIEVEC_OPTIONS} {SIEVE_DIR}/{name}.sieve",
            on_notify=True,
            creates=f"{SIEVE_DIR}/{name}.svbin",
        )
    # Restarted, not reloaded: a reload keeps old listeners open (port 143 would stay up).
    yield Service("dovecot", validator="doveconf -n >/dev/null")
    # dovecot re-reads a changed passwd-file at most once a second, and caches logins: after a change to
    # the users, restart its auth processes (a reload keeps open IMAP sessions) so the change is live now.
    # The signal `doveadm reload` sends, without doveadm's ~25 ms of reading the whole configuration first
    # (in the wait of every `user add`).
    yield Command("dovecot-auth-reload", run=f"kill -HUP \"$(cat {MASTER_PID})\"", on_notify=True)
