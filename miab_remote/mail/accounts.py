"""Users and aliases of one box: the checks an operator's command must pass, and the inventory edits.

Checks work on the validated `Host` and raise InputError naming what is wrong and what is accepted; the
CLI runs them once before asking for a password and again under the inventory lock (another operator may
have changed the file in between). Edits work on the tomlkit document from `Inventory.edit`, so the
operator's comments and layout survive. Addresses compare without regard to case, as the validator does.
"""

from __future__ import annotations

import tomlkit
from tomlkit.items import AoT, Array, InlineTable, Table

from miab_remote import names
from miab_remote.errors import InputError
from miab_remote.fleet.model import Alias, Host, MailUser
from miab_remote.fleet.rules import quota_problem  # the validator's own rule
from miab_remote.mail import mailmaps

# ------------------------------------------------------------------------------------------ lookups


def find_user(host: Host, email: str) -> MailUser | None:
    return next((u for u in host.users if u.email.lower() == email.lower()), None)


def find_alias(host: Host, source: str) -> Alias | None:
    return next((a for a in host.aliases if a.source.lower() == source.lower()), None)


def listed_aliases(host: Host) -> list[mailmaps.AliasEntry]:
    """What `alias list` shows: exactly the aliases pushed to the box (mailmaps decides which automatic
    postmaster@ / abuse@ exist), so the list and the box never disagree."""
    return mailmaps.aliases(host)


def automatic_aliases(host: Host) -> list[mailmaps.AliasEntry]:
    return [a for a in mailmaps.aliases(host) if a.automatic]


def is_automatic(host: Host, source: str) -> bool:
    """Whether `source` is (or would be, with an administrator) one of the automatic addresses."""
    return source.lower() in mailmaps.automatic_sources(host)


# ------------------------------------------------------------------------------------ checked input


def address(value: str, what: str = "address", host: Host | None = None) -> str:
    """An email address as the inventory stores it: one of the box (its domain is hosted on `host`) in
    lower case, as dovecot and postfix look it up; another server's with its domain in lower case and the
    local part as typed (that server may care about its case)."""
    local, at, domain = value.rpartition("@")
    served = host is None or domain.lower() in host.domains
    if not at or not local or "@" in local or not names.is_fqdn(domain.lower()):
        raise InputError(f"{value!r} is not a valid {what}; expected local@domain, like 'alice@example.org'")
    if (problem := names.email_problem(value, served=served)) is not None:
        raise InputError(problem)
    return names.normal_email(value) if served else f"{local}@{domain.lower()}"


def new_address(value: str) -> str:
    """A new mailbox or alias source on this box: what dovecot, postfix and the Maildir layout serve, in
    lower case, as postfix and dovecot look addresses up."""
    return address(value)


def alias_source(value: str) -> str:
    """An alias source, in lower case: an address, or '@domain' for a catch-all."""
    if value.startswith("@"):
        domain = value[1:].lower()
        if names.fqdn_problem(domain, "a domain name", "example.org") is not None:
            raise InputError(f"{value!r} is not a valid catch-all; expected '@' and a domain, like '@example.org'")
        return f"@{domain}"
    local, at, _domain = value.rpartition("@")
    if not at or not local:
        raise InputError(
            f"{value!r} is not a valid alias source; expected an address like 'info@example.org', "
            "or '@example.org' for a catch-all"
        )
    return address(value, "alias source")


def quota(value: str) -> str:
    """A quota as the inventory wants it ("500M", "2G", "0"); the unit letter may be typed in lower case."""
    normal = value.strip().upper()
    if (problem := quota_problem(normal)) is not None:
        raise InputError(f"--quota {problem}")
    return normal


def hosted(host: Host, value: str) -> None:
    """Refuse an address (or catch-all) outside the box's domains, listing the ones it hosts."""
    domain = value.rpartition("@")[2]
    if domain not in host.domains:
        raise InputError(
            f"{value!r} is not in a domain {host.name} hosts; its domains: {', '.join(host.domains)} "
            f"(add the domain to `domains` in its inventory first)"
        )


def _users_text(host: Host) -> str:
    return ", ".join(u.email for u in host.users) or "none"


def _aliases_text(host: Host) -> str:
    return ", ".join(a.source for a in host.aliases) or "none"


def check_new_user(host: Host, email: str) -> None:
    """`user add`: a new mailbox in a hosted domain, not already a user or an alias."""
    hosted(host, email)
    if (user := find_user(host, email)) is not None:
        raise InputError(
            f"{user.email} is already a user of {host.name}; to change its password: "
            f"miab-remote user password {host.name} {user.email}"
        )
    if (alias := find_alias(host, email)) is not None:
        raise InputError(
            f"{alias.source} is an alias of {host.name} (to {', '.join(alias.destinations)}); an address is "
            f"either a mailbox or an alias: remove the alias first (miab-remote alias remove {host.name} "
            f"{alias.source})"
        )


def check_user(host: Host, email: str) -> MailUser:
    """`user password` / `user remove`: the existing user (its address as the inventory spells it)."""
    user = find_user(host, email)
    if user is not None:
        return user
    if (alias := find_alias(host, email)) is not None:
        raise InputError(
            f"{alias.source} is an alias of {host.name}, not a user (a mailbox); users: {_users_text(host)}"
        )
    raise InputError(f"no user {email} on {host.name}; users: {_users_text(host)}")


def check_new_alias(host: Host, source: str, destinations: list[str]) -> Alias:
    """`alias add`: a source in a hosted domain that is not a user or an alias yet, and distinct,
    valid destinations (here or elsewhere) that are not the source itself."""
    hosted(host, source)
    if (user := find_user(host, source)) is not None:
        raise InputError(
            f"{user.email} is a user (a mailbox) of {host.name}; an address is either a mailbox or an alias"
        )
    if (existing := find_alias(host, source)) is not None:
        raise InputError(
            f"{existing.source} is already an alias of {host.name} (to {', '.join(existing.destinations)}); "
            f"remove it first: miab-remote alias remove {host.name} {existing.source}"
        )
    checked: list[str] = []
    for value in destinations:
        dest = address(value, "destination address", host)
        if dest.lower() == source.lower():
            raise InputError(f"{value!r} is the alias's own source: an alias to itself would loop")
        if dest.lower() in (d.lower() for d in checked):
            raise InputError(f"destination {value!r} is given twice; give each destination once")
        checked.append(dest)
    return Alias(source, tuple(checked))


def check_alias(host: Host, source: str) -> Alias:
    """`alias remove`: the existing alias (its source as the inventory spells it)."""
    alias = find_alias(host, source)
    if alias is not None:
        return alias
    if (user := find_user(host, source)) is not None:
        raise InputError(
            f"{user.email} is a user (a mailbox) of {host.name}, not an alias; aliases: {_aliases_text(host)}"
        )
    if is_automatic(host, source):
        admin = mailmaps.admin_email(host) or "the first user, once there is one"
        raise InputError(
            f"{source} is automatic on {host.name} (to {admin}) and cannot be removed; "
            f"`miab-remote alias add {host.name} {source} ADDRESS...` sends it elsewhere"
        )
    raise InputError(f"no alias {source} on {host.name}; aliases: {_aliases_text(host)}")


def unreachable(host: Host, alias: Alias) -> list[str]:
    """Destinations in a hosted domain that no user, alias or catch-all takes: mail to them would bounce."""
    out = []
    for dest in alias.destinations:
        domain = dest.rpartition("@")[2]
        known = (
            find_user(host, dest) is not None
            or find_alias(host, dest) is not None
            or find_alias(host, f"@{domain}") is not None
            or (is_automatic(host, dest) and mailmaps.admin_email(host) is not None)
        )
        if domain in host.domains and not known:
            out.append(dest)
    return out


def aliases_to(host: Host, email: str) -> list[str]:
    """Sources of the inventory's aliases that deliver to `email`."""
    return [a.source for a in host.aliases if email.lower() in (d.lower() for d in a.destinations)]


# ---------------------------------------------------------------------------------- document edits


def _entries(doc: tomlkit.TOMLDocument, key: str) -> AoT | Array | None:
    """The `[[users]]` / `[[aliases]]` array as written: tables, or an inline array of inline tables
    (the only shapes a validated inventory can have; anything else is refused, never rewritten)."""
    value = doc.get(key)
    if value is None or isinstance(value, AoT | Array):
        return value
    raise InputError(f"`{key}` in the inventory is not an array of tables; nothing was changed")


def _index(entries: AoT | Array, field: str, value: str) -> int:
    for i, entry in enumerate(entries):
        if isinstance(entry, Table | InlineTable) and str(entry.get(field, "")).lower() == value.lower():
            return i
    raise InputError(f"{value} is not in the inventory any more; nothing was changed")


def _append(doc: tomlkit.TOMLDocument, key: str, fields: dict[str, str | list[str]]) -> None:
    """Add one table to an array of tables, laid out like its neighbours (a blank line between tables),
    or one inline table to an inline array, when the operator wrote it that way."""
    entries = _entries(doc, key)
    if isinstance(entries, Array):
        inline = tomlkit.inline_table()
        inline.update(fields)
        entries.append(inline)
        return
    table = tomlkit.table()
    for name, value in fields.items():
        table[name] = value
    if entries is None:  # the first one: a new [[key]] section at the end, after a blank line
        if doc.as_string().strip() and not doc.as_string().endswith("\n\n"):
            table.trivia.indent = "\n"
        new = tomlkit.aot()
        new.append(table)
        doc.append(key, new)
    elif entries[-1].as_string().endswith("\n\n"):
        table.add(tomlkit.nl())  # the last one ends with a blank line: so does the new one
        entries.append(table)
    else:
        table.trivia.indent = "\n"  # a blank line before the new [[key]] header
        entries.append(table)


def _remove(doc: tomlkit.TOMLDocument, key: str, field: str, value: str) -> None:
    entries = _entries(doc, key)
    if entries is None:
        raise InputError(f"{value} is not in the inventory any more; nothing was changed")
    index = _index(entries, field, value)
    if isinstance(entries, AoT) and len(entries) == 1:
        del doc[key]  # tomlkit would turn the last [[key]] into `key = []`, moved to the top
    else:
        del entries[index]


def add_user(doc: tomlkit.TOMLDocument, user: MailUser) -> None:
    fields: dict[str, str | list[str]] = {"email": user.email, "password_hash": user.password_hash}
    if user.quota is not None:
        fields["quota"] = user.quota
    _append(doc, "users", fields)


def set_password_hash(doc: tomlkit.TOMLDocument, email: str, password_hash: str) -> None:
    entries = _entries(doc, "users")
    if entries is None:
        raise InputError(f"{email} is not in the inventory any more; nothing was changed")
    entries[_index(entries, "email", email)]["password_hash"] = password_hash


def remove_user(doc: tomlkit.TOMLDocument, email: str) -> None:
    _remove(doc, "users", "email", email)


def add_alias(doc: tomlkit.TOMLDocument, alias: Alias) -> None:
    _append(doc, "aliases", {"source": alias.source, "destinations": list(alias.destinations)})


def remove_alias(doc: tomlkit.TOMLDocument, source: str) -> None:
    _remove(doc, "aliases", "source", source)
