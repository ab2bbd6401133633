"""The account tables a box needs, computed from its inventory (pure, so they are easy to test).

postfix: which addresses have a mailbox, where aliases forward, and which login may send as which
address; dovecot: the users with their password hashes and quotas. postmaster@ and abuse@ exist for every
hosted domain, pointing at the first user unless the inventory defines them.
"""

from __future__ import annotations

from dataclasses import dataclass

from miab_remote.model import Host

AUTOMATIC = ("postmaster", "abuse")


@dataclass(frozen=True)
class AliasEntry:
    source: str
    destinations: tuple[str, ...]
    automatic: bool = False


def aliases(host: Host) -> list[AliasEntry]:
    """The inventory's aliases plus the automatic postmaster@/abuse@ of every domain."""
    out = [AliasEntry(a.source, a.destinations) for a in host.aliases]
    # An address that is already an alias or a mailbox of its own gets no automatic alias.
    taken = {a.source.lower() for a in host.aliases} | {u.email.lower() for u in host.users}
    if host.users:
        first = host.users[0].email
        for domain in host.domains:
            for local in AUTOMATIC:
                source = f"{local}@{domain}"
                if source not in taken:
                    out.append(AliasEntry(source, (first,), automatic=True))
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
