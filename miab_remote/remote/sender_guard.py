"""A milter on the box: on the submission ports, every header From address must be one the login may send as.

postfix checks only the envelope sender against the login (reject_authenticated_sender_login_mismatch);
the header From is what people read and what DMARC aligns with, so without this a user could send mail
"From: bob" that the box then signs with the domain's DKIM key. The rule is the one of postfix's
smtpd_sender_login_maps, read from the same text file that map is built from (/etc/postfix/sender_logins,
made by miab_remote/mailmaps.py), looked up the way postfix looks it up: the full address, the address
without its +extension, then @domain (a catch-all), case-insensitively; the first key found decides.
The file is re-read when it changes (user add, alias add), without a restart.

Runs on the box with python3 and Debian's python3-milter (pymilter); the table logic is plain stdlib so it
can be tested anywhere. Python >= 3.8.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from email import errors, policy
from typing import Any

DELIMITER = "+"  # postfix's recipient_delimiter (templates/etc/postfix/main.cf)
NOT_SPLIT = ("postmaster", "mailer-daemon", "double-bounce")  # postfix never strips these (split_addr)
_FOLD = re.compile(r"\r?\n[ \t]*")


def parse_table(text: str) -> dict[str, tuple[str, ...]]:
    """The postmap source text as {lower-case key: (lower-case logins, ...)}; the first entry of a key wins."""
    logical: list[str] = []
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0] in " \t" and logical:  # a continuation line, as postmap reads it
            logical[-1] += " " + raw.strip()
        else:
            logical.append(raw.strip())
    table: dict[str, tuple[str, ...]] = {}
    for line in logical:
        parts = line.split(None, 1)
        key = parts[0].lower()
        value = parts[1] if len(parts) > 1 else ""
        if key not in table:
            table[key] = tuple(v.lower() for v in re.split(r"[\s,]+", value) if v)
    return table


def lookup_keys(address: str) -> list[str]:
    """The keys postfix tries for a sender address, in order."""
    address = address.lower()
    local, at, domain = address.rpartition("@")
    if not at:
        return [address]
    keys = [address]
    cut = local.find(DELIMITER) if DELIMITER else -1
    if cut > 0 and local not in NOT_SPLIT:
        keys.append(local[:cut] + "@" + domain)
    keys.append("@" + domain)
    return keys


def may_send_as(table: dict[str, tuple[str, ...]], login: str, address: str) -> bool:
    """True when `login` owns `address` in the table (first key found decides, like postfix)."""
    for key in lookup_keys(address):
        if key in table:
            return login.lower() in table[key]
    return False


def header_addresses(value: str) -> list[str] | None:
    """The addresses of a From header value, or None when it does not parse as a list of addresses."""
    value = _FOLD.sub(" ", value).strip()
    try:
        header = policy.default.header_factory("from", value)
        addresses = [a.addr_spec for a in header.addresses]
    except Exception:  # the email package raises various errors on hostile input
        return None
    # A header the parser had to guess at ("alice@d <bob@d>", "<alice@d> <bob@d>") may be read otherwise
    # by the recipient's mail program: refuse it rather than check another address than the one shown.
    # Obsolete but unambiguous syntax (an unquoted "." in a name) is fine.
    if any(not isinstance(d, errors.ObsoleteHeaderDefect) for d in header.defects):
        return None
    if not addresses or any(not a.username or not a.domain for a in header.addresses):
        return None
    return addresses


def refusal(table: dict[str, tuple[str, ...]], login: str | None, from_values: list[str]) -> str | None:
    """Why this message must be refused (a reply text), or None when every header From address is allowed."""
    if not login:
        return "authentication required"
    for value in from_values:
        addresses = header_addresses(value)
        if addresses is None:
            return "the header From does not parse as an address; write it as Name <address>"
        for address in addresses:
            if not may_send_as(table, login, address):
                return f"header From <{_shown(address)}> is an address {_shown(login)} may not send as"
    return None


def _shown(text: str) -> str:
    """Safe inside an SMTP reply: printable ASCII, no '%' (libmilter reads it as a format)."""
    return "".join(c for c in text if " " < c < "\x7f" and c != "%")[:200]


class Table:
    """The sender_logins table, re-read when the file's identity, size or time changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.stamp: tuple[int, int, int] | None = None
        self.table: dict[str, tuple[str, ...]] = {}

    def get(self) -> dict[str, tuple[str, ...]]:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None
        with self.lock:
            if stamp != self.stamp:
                try:
                    with open(self.path, encoding="utf-8", errors="replace") as f:
                        self.table = parse_table(f.read())
                except OSError:
                    self.table = {}  # no table: nobody may send as anything, like an empty postfix map
                self.stamp = stamp
            return self.table


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def main(argv: list[str]) -> int:
    import Milter  # Debian's python3-milter; imported here so the functions above need only the stdlib

    if len(argv) != 3:
        sys.stderr.write("usage: sender-guard SOCKET TABLE   (SOCKET like inet:8895@127.0.0.1)\n")
        sys.stderr.write("       sender-guard --check TABLE   (the deploy's validator: it starts and reads TABLE)\n")
        return 2
    socket, path = argv[1], argv[2]
    table = Table(path)
    if socket == "--check":
        with open(path, encoding="utf-8") as f:
            entries = len(parse_table(f.read()))
        sys.stdout.write(f"ok: pymilter {Milter.__version__}, {entries} entries in {path}\n")
        return 0

    class SenderGuard(Milter.Base):  # type: ignore[misc]  # untyped library
        def __init__(self) -> None:
            self.login: str | None = None
            self.froms: list[str] = []

        def envfrom(self, sender: str, *params: str) -> Any:
            self.login = _text(self.getsymval("{auth_authen}") or "")
            self.froms = []
            return Milter.CONTINUE

        @Milter.noreply  # type: ignore[untyped-decorator]
        def header(self, name: str | bytes, value: str | bytes) -> Any:
            if _text(name).lower() == "from":
                self.froms.append(_text(value))
            return Milter.CONTINUE

        def eoh(self) -> Any:
            why = refusal(table.get(), self.login, self.froms)
            if why is None:
                return Milter.ACCEPT  # nothing else to look at in this message
            sys.stdout.write(f"refused: login={_shown(self.login or '-')}: {why}\n")
            sys.stdout.flush()
            self.setreply("550", "5.7.1", why)
            return Milter.REJECT

    Milter.factory = SenderGuard
    sys.stdout.write(f"sender-guard on {socket}, table {path}\n")
    sys.stdout.flush()
    Milter.runmilter("sender-guard", socket, timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
