"""The account tables a box needs, computed from its inventory (pure, so they are easy to test).

postfix: which addresses have a mailbox, where aliases forward, and which login may send as which
address; dovecot: the users with their password hashes and quotas. postmaster@, abuse@ and hostmaster@
exist for every hosted domain, and root@, postmaster@, abuse@ and hostmaster@ for the box's hostname (where
system mail from cron, postfix and unattended-upgrades goes), all pointing at the administrator
(`admin_email`, default the first user) unless the inventory defines them.
"""

from __future__ import annotations

from dataclasses import dataclass

from miab_remote.fleet.model import Host

AUTOMATIC = ("postmaster", "abuse", "hostmaster")
# The box's own addresses: unqualified system mail (to `root`, to `postmaster`) gets the hostname appended.
SYSTEM = ("root", "postmaster", "abuse", "hostmaster")


@dataclass(frozen=True)
class AliasEntry:
    source: str
    destinations: tuple[str, ...]
    automatic: bool = False


def admin_email(host: Host) -> str | None:
    """Who gets the box's system mail and the automatic addresses: `admin_email`, else the first user."""
    chosen: str | None = host.options.get("admin_email")
    if chosen:  # a user's address as the inventory spells it, so that the maps agree with each other
        return next((u.email for u in host.users if u.email.lower() == chosen.lower()), chosen)
    return host.users[0].email if host.users else None


def system_alias_domain(host: Host) -> str | None:
    """The hostname when it is not a mail domain: postfix then takes mail for its system addresses only
    (a virtual alias domain), so that mail to root and postmaster of the box neither loops nor is relayed."""
    return None if host.hostname in host.domains else host.hostname


def automatic_sources(host: Host) -> list[str]:
    """Every automatic address, in a stable order, whether or not the inventory defines it itself."""
    out = [f"{local}@{domain}" for domain in host.domains for local in AUTOMATIC]
    out += [f"{local}@{host.hostname}" for local in SYSTEM if f"{local}@{host.hostname}" not in out]
    return out


def aliases(host: Host) -> list[AliasEntry]:
    """The inventory's aliases plus the automatic addresses, each to the administrator."""
    out = [AliasEntry(a.source, a.destinations) for a in host.aliases]
    # An address that is already an alias or a mailbox of its own gets no automatic alias.
    taken = {a.source.lower() for a in host.aliases} | {u.email.lower() for u in host.users}
    admin = admin_email(host)
    if admin:
        out += [AliasEntry(s, (admin,), automatic=True) for s in automatic_sources(host) if s not in taken]
    return out


def _lines(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"{k} {v}\n" for k, v in pairs)


HEADER = "# Managed by miab-remote from the box's inventory; edits here are overwritten.\n"


def virtual_mailboxes(host: Host) -> str:
    return HEADER + _lines([(u.email, "OK") for u in host.users])


def virtual_aliases(host: Host) -> str:
    # With a catch-all, postfix would send every address of the domain to it, real mailboxes included,
    # unless each mailbox maps to itself first.
    pairs = [(u.email, u.email) for u in host.users]
    pairs += [(a.source, ", ".join(a.destinations)) for a in aliases(host)]
    return HEADER + _lines(pairs)


def sender_logins(host: Host) -> str:
    """Which logins may use which sender address: a user its own address and the aliases that reach it."""
    users = {u.email.lower() for u in host.users}
    pairs = [(u.email, u.email) for u in host.users]
    for a in aliases(host):
        owners = [d.lower() for d in a.destinations if d.lower() in users]
        if owners:
            pairs.append((a.source, ", ".join(owners)))
    return HEADER + _lines(pairs)


def dovecot_users(host: Host) -> str:
    """passwd-file lines: user:password:uid:gid:gecos:home:shell:extra fields (uid, home: dovecot defaults)."""
    lines = []
    for u in host.users:
        extra = f"userdb_quota_rule=*:storage={u.quota}" if u.quota and u.quota != "0" else ""
        lines.append(f"{u.email}:{u.password_hash}::::::{extra}\n")
    return HEADER + "".join(lines)
