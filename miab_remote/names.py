"""The one copy of the rules for host names and email addresses, used by the inventory, the account
commands, the mailbox layout and the local provider.

An address the box serves (a mailbox, an alias source, a destination in a hosted domain) must be one
that every part of the box handles the same way: dovecot refuses a login with a character outside its
`auth_username_chars` (default: ASCII letters, digits, '.', '-', '_' and the '@'), looks users up in
lower case (`%Lu`) and names the Maildir after the lower-cased local part (`%Ln`); postfix folds its
map keys to lower case. So the local part is a dot-atom of those characters, and addresses are
compared and stored in lower case. A destination elsewhere only has to be a valid RFC 5321 address,
and keeps the case of its local part (another server may care).
"""

from __future__ import annotations

import re
import string

LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
FQDN_RE = re.compile(rf"^{LABEL}(\.{LABEL})+$")
HOST_NAME_RE = re.compile(rf"^{LABEL}(\.{LABEL})*$")  # one label or more: what a box may be called

# dovecot's default auth_username_chars (doveconf -d auth_username_chars), '@' being the separator.
LOGIN_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")
LOGIN_CHARS_TEXT = "ASCII letters, digits, '.', '-' and '_'"
_LOGIN_LOCAL_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
# RFC 5322 dot-atom: what another server's address may be.
_ATEXT_LOCAL_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
MAX_LOCAL = 64  # RFC 5321 4.5.3.1.1
MAX_ADDRESS = 254  # RFC 5321 path limit minus the angle brackets


def is_fqdn(value: str) -> bool:
    """A lower-case name of two labels or more, not an IPv4 address."""
    return (
        len(value) <= 253
        and bool(FQDN_RE.fullmatch(value))
        and not value.rsplit(".", 1)[-1].isdigit()  # "1.2.3.4" is an address, not a name
    )


def fqdn_problem(value: str, what: str, example: str) -> str | None:
    """Why `value` is not a lower-case FQDN (None if it is one)."""
    if is_fqdn(value):
        return None
    if value.endswith(".") and is_fqdn(value[:-1]):
        return f"{value!r} ends with a dot; write {value[:-1]!r}"
    if is_fqdn(value.lower()):
        return f"{value!r} is not lower-case; write {value.lower()!r}"
    return f"{value!r} is not {what}; expected lower-case labels joined by dots, like {example!r}"


def email_problem(value: str, *, served: bool = True) -> str | None:
    """Why `value` is not an address (None if it is one), in any case.

    `served`: the box delivers to it or logs it in (a user, an alias source, a destination in a hosted
    domain), so its local part must be what dovecot, postfix and the Maildir layout all accept.
    """
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or "@" in local:
        return f"{value!r} is not an email address"
    if not is_fqdn(domain.lower()):
        return f"{value!r} is not an email address"
    if len(local) > MAX_LOCAL or len(value) > MAX_ADDRESS:
        return (
            f"{value!r} is too long; accepted: at most {MAX_LOCAL} characters before the '@' and {MAX_ADDRESS} in all"
        )
    if not served:
        if _ATEXT_LOCAL_RE.fullmatch(local):
            return None
        return f"{value!r} is not an email address"
    if _LOGIN_LOCAL_RE.fullmatch(local):
        return None
    bad = sorted({c for c in local if c not in LOGIN_CHARS})
    accepted = f"accepted before the '@': {LOGIN_CHARS_TEXT} (what dovecot accepts in a login)"
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        return f"{value!r} cannot be an address on this box: {shown} in {local!r}; {accepted}"
    return f"{value!r} cannot be an address on this box: a '.' may not start, end or repeat in {local!r}; {accepted}"


def normal_email(value: str) -> str:
    """An address of the box as stored and looked up: all lower case (dovecot's %Lu, postfix's maps)."""
    return value.lower()
