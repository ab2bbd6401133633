"""The inventory: one TOML file per box, `hosts/NAME.toml`, validated into a `Host`.

Operators edit these files by hand, so every problem is reported as `file:line: field: what is wrong`
(all of them at once, in file order), and the tool's own edits go through `Inventory.edit`, which keeps
comments and formatting, validates before writing, and serialises writers with a lock.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime
import difflib
import errno
import functools
import ipaddress
import itertools
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import tomlkit
import tomlkit.exceptions

from miab_remote import dnszones, fsutil, names, sshkeys
from miab_remote.errors import InputError
from miab_remote.model import DEFAULT_RECIPES, Alias, DNSRecord, Host, MailUser, SSHSettings
from miab_remote.profiles import PROFILES

PROVIDERS: tuple[str, ...] = ("local", "digitalocean", "linode", "vultr", "ec2", "manual")
# The committed, documented example lives among the real inventories but is not a box.
EXAMPLE_STEM = "example"
# Where `destroy` keeps the inventories of destroyed boxes (never listed as boxes).
ARCHIVE_DIR = ".archive"

TOP_KEYS: tuple[str, ...] = (
    "hostname",
    "address",
    "provider",
    "ssh",
    "host_keys",
    "os",
    "domains",
    "recipes",
    "users",
    "aliases",
    "options",
    "ipv4",
    "ipv6",
    "dns",
)
DNS_KEYS: tuple[str, ...] = ("records",)
DNS_RECORD_KEYS: tuple[str, ...] = ("name", "type", "value", "ttl")
SSH_KEYS: tuple[str, ...] = ("user", "port", "identity_file", "jump", "jump_host_keys")
USER_KEYS: tuple[str, ...] = ("email", "password_hash", "quota")
ALIAS_KEYS: tuple[str, ...] = ("source", "destinations")

# Dovecot scheme prefixes we accept, with the full shape of each hash: a truncated hash would lock the
# user out silently, so it is refused here rather than discovered at the first failed login.
PASSWORD_SCHEMES: dict[str, re.Pattern[str]] = {
    "{SHA512-CRYPT}$6$": re.compile(r"^\{SHA512-CRYPT\}\$6\$(rounds=\d+\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}$"),
    "{BLF-CRYPT}$2": re.compile(r"^\{BLF-CRYPT\}\$2[abxy]?\$\d\d\$[./0-9A-Za-z]{53}$"),
    "{ARGON2ID}$argon2id$": re.compile(
        r"^\{ARGON2ID\}\$argon2id\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+={0,2}\$[A-Za-z0-9+/]+={0,2}$"
    ),
}

_ANY_CASE_HOST_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")
_POSIX_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,30}[a-z0-9_$-]?$")
# One jump host as ProxyJump writes it: [user@]host[:port], the host a name, an ssh_config alias or an address.
_JUMP_RE = re.compile(
    r"^(?:(?P<user>[^@\s]+)@)?(?P<host>[A-Za-z0-9_][A-Za-z0-9_.-]*|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{1,5}))?$"
)
_RECIPE_RE = re.compile(r"^[a-z0-9_-]+$")
_QUOTA_RE = re.compile(r"^(0|[1-9][0-9]*[KMGT]?)$")
# dovecot 2.3 reads `storage=N[KMGT]` (no unit: KiB) into a signed 64-bit count of bytes: 8388608T is
# refused ("Bytes limit can't be negative") and the user cannot log in or receive mail.
_QUOTA_UNITS = {"": 1024, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
QUOTA_MAX_BYTES = 2**63 - 1
# postfix 3.7 parses message_size_limit as a signed 64-bit `long` (`postfix check` refuses 2**63).
# roundcube, PHP and nginx derive their limits from it and take as much.
MESSAGE_SIZE_MAX = 2**63 - 1
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_RE = re.compile(r"[^,\]}#\r\n]+")  # a number, boolean or date/time (which may contain a space)


# --------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class OptionSpec:
    """One per-box option: adding an option is adding an entry to OPTION_SPECS, nothing else."""

    type: type[Any]
    default: Any
    doc: str
    # Returns what is wrong with an already type-checked value, with what is accepted; None if fine.
    check: Callable[[Any], str | None] = lambda value: None
    accepted: str = ""


def _int_range(low: int, high: int | None, unit: str) -> Callable[[Any], str | None]:
    """A checker for an integer option that must lie in [low, high] (no upper bound when high is None)."""

    def check(value: Any) -> str | None:
        if value < low or (high is not None and value > high):
            bounds = f"{low}..{high}" if high is not None else f">= {low}"
            return f"{value!r} is out of range; accepted: {bounds} {unit}"
        return None

    return check


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    """A checker for a string option with a fixed set of values."""

    def check(value: Any) -> str | None:
        if value not in choices:
            return f"{value!r} is not accepted; accepted: {_or_list(choices)}"
        return None

    return check


OPTION_SPECS: dict[str, OptionSpec] = {
    "message_size_limit": OptionSpec(
        type=int,
        default=134217728,
        doc="largest message accepted, in bytes (postfix message_size_limit)",
        check=_int_range(
            1048576,
            MESSAGE_SIZE_MAX,
            "bytes (postfix's largest is 2**63 - 1; it takes mail only while its disk has 1.5 times the limit free)",
        ),
        accepted=f"an integer number of bytes, 1048576..{MESSAGE_SIZE_MAX}",
    ),
    "greylist_delay": OptionSpec(
        type=int,
        default=180,
        doc="seconds a first-time sender must wait before its retry is accepted; 0 turns greylisting off",
        check=_int_range(0, 3600, "seconds"),
        accepted="an integer number of seconds, 0..3600",
    ),
    "dns": OptionSpec(
        type=str,
        default="nsd",
        doc='who serves the domains\' DNS: "nsd" on the box, or "external" (you publish the records)',
        check=_one_of("nsd", "external"),
        accepted='"nsd" or "external"',
    ),
    "resolvers": OptionSpec(
        type=list,
        default=(),
        doc="nameservers the box's mail filters ask (DKIM keys); empty: they resolve from the DNS root",
        check=lambda value: _ip_list_problem(value),
        accepted='a list of IP addresses, like ["10.77.0.1"]',
    ),
    "admin_email": OptionSpec(
        type=str,
        default=None,
        doc="who gets system mail (root, cron) and postmaster@, abuse@, hostmaster@; default: the first user",
        check=lambda value: names.email_problem(value, served=False),
        accepted='an email address, like "admin@example.org"',
    ),
}


def _ip_list_problem(value: list[Any]) -> str | None:
    for item in value:
        try:
            ipaddress.ip_address(item)
        except (ValueError, TypeError):
            return f"{item!r} is not an IP address; accepted: a list of IP addresses"
    return None


# ---------------------------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    """One thing wrong in an inventory file, located by line and field path."""

    line: int
    field: str  # "users[2].email"; empty for a TOML syntax error
    message: str


class InventoryError(InputError):
    """Every problem found in one inventory file, one per line: `path:line: field: message`."""

    def __init__(self, path: Path, problems: list[Problem]) -> None:
        self.path = path
        self.problems = sorted(problems, key=lambda p: p.line)  # stable: same line keeps check order
        shown = display_path(path)
        lines = [
            f"{shown}:{p.line}: {p.field}: {p.message}" if p.field else f"{shown}:{p.line}: {p.message}"
            for p in self.problems
        ]
        super().__init__("\n".join(lines))


def display_path(path: Path) -> str:
    """The path as the operator would type it: relative to the current folder when under it."""
    try:
        absolute = Path(os.path.abspath(path))
    except OSError:  # the current folder is gone
        return str(path)
    try:
        return str(absolute.relative_to(Path.cwd()))
    except (ValueError, OSError):
        return str(absolute)


# ------------------------------------------------------------------------------------- line positions

_KeyPath = tuple[str | int, ...]
_T = TypeVar("_T")


class _ScanError(Exception):
    """The scanner met something it does not understand; the positions found so far are still used."""


class _LineScanner:
    """Maps every key path of a TOML text to the line where its value (or table header) starts.

    tomlkit items carry no positions, so this walks the text itself. It runs only on text that
    tomllib already accepted, so it can be lenient; it needs to know only where values start and
    how to skip strings, arrays and inline tables, and how `[[x]]` headers number their elements.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.lines: dict[_KeyPath, int] = {(): 1}
        self._newlines = [m.start() for m in re.finditer("\n", text)]
        self._aot_len: dict[_KeyPath, int] = {}

    def scan(self) -> dict[_KeyPath, int]:
        with contextlib.suppress(_ScanError, IndexError):
            self._document()
        return self.lines

    # -- helpers

    def _line(self, pos: int) -> int:
        return bisect.bisect_left(self._newlines, pos) + 1

    def _peek(self, n: int = 1) -> str:
        return self.text[self.i : self.i + n]

    def _skip_ws(self) -> None:
        while self.i < len(self.text) and self.text[self.i] in " \t":
            self.i += 1

    def _skip_blank(self) -> None:
        """Whitespace, newlines and comments: what may separate items in arrays and statements."""
        while self.i < len(self.text):
            c = self.text[self.i]
            if c in " \t\r\n":
                self.i += 1
            elif c == "#":
                end = self.text.find("\n", self.i)
                self.i = len(self.text) if end < 0 else end
            else:
                break

    def _expect(self, token: str) -> None:
        if not self.text.startswith(token, self.i):
            raise _ScanError(token)
        self.i += len(token)

    # -- grammar

    def _document(self) -> None:
        table: _KeyPath = ()
        while True:
            self._skip_blank()
            if self.i >= len(self.text):
                return
            start = self.i
            if self._peek(2) == "[[":
                self.i += 2
                parts = self._key()
                self._skip_ws()
                self._expect("]]")
                table = self._header(parts, self._line(start), array=True)
            elif self._peek() == "[":
                self.i += 1
                parts = self._key()
                self._skip_ws()
                self._expect("]")
                table = self._header(parts, self._line(start), array=False)
            else:
                self._key_value(table)

    def _header(self, parts: list[str], line: int, *, array: bool) -> _KeyPath:
        """Resolve a table header to its concrete path: `[[a]]` gets the next index of array `a`."""
        concrete: list[str | int] = []
        for n, part in enumerate(parts):
            concrete.append(part)
            key = tuple(concrete)
            if n < len(parts) - 1:
                self.lines.setdefault(key, line)
                if key in self._aot_len:  # `[a.b]` under `[[a]]` belongs to a's latest element
                    concrete.append(self._aot_len[key] - 1)
            elif array:
                index = self._aot_len.get(key, 0)
                self._aot_len[key] = index + 1
                self.lines.setdefault(key, line)
                concrete.append(index)
                self.lines[tuple(concrete)] = line
            else:
                self.lines[key] = line  # an explicit header wins over an earlier implicit mention
        return tuple(concrete)

    def _key_value(self, table: _KeyPath) -> None:
        key_line = self._line(self.i)
        parts = self._key()
        for n in range(1, len(parts)):  # `a.b.c = 1` implicitly makes tables a and a.b
            self.lines.setdefault(table + tuple(parts[:n]), key_line)
        self._skip_ws()
        self._expect("=")
        self._skip_ws()
        self._value(table + tuple(parts))

    def _key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self._skip_ws()
            c = self._peek()
            if c == '"':
                parts.append(_unescape(self._string_body('"')))
            elif c == "'":
                parts.append(self._string_body("'"))
            else:
                m = _BARE_KEY_RE.match(self.text, self.i)
                if not m:
                    raise _ScanError("key")
                parts.append(m.group())
                self.i = m.end()
            self._skip_ws()
            if self._peek() != ".":
                return parts
            self.i += 1

    def _string_body(self, quote: str) -> str:
        """Skip a one-line string starting at its quote and return its raw content."""
        self.i += 1
        start = self.i
        while self.text[self.i] != quote:
            if quote == '"' and self.text[self.i] == "\\":
                self.i += 1
            if self.text[self.i] == "\n":
                raise _ScanError("newline in string")
            self.i += 1
        self.i += 1
        return self.text[start : self.i - 1]

    def _skip_multiline_string(self, quote: str) -> None:
        self.i += 3
        while True:
            c = self.text[self.i]
            if quote == '"' and c == "\\":
                self.i += 2
            elif c == quote:
                run = 0
                while self.i + run < len(self.text) and self.text[self.i + run] == quote:
                    run += 1
                if run >= 3:  # up to two quotes may belong to the content, just before the closing three
                    self.i += min(run, 5)
                    return
                self.i += run
            else:
                self.i += 1

    def _value(self, path: _KeyPath) -> None:
        self.lines[path] = self._line(self.i)
        c = self._peek()
        if c in "\"'":
            if self._peek(3) == c * 3:
                self._skip_multiline_string(c)
            else:
                self._string_body(c)
        elif c == "[":
            self._array(path)
        elif c == "{":
            self._inline_table(path)
        else:  # number, boolean, date/time: runs up to the next separator (a date may contain a space)
            m = _SCALAR_RE.match(self.text, self.i)
            if not m:
                raise _ScanError("value")
            self.i = m.end()

    def _array(self, path: _KeyPath) -> None:
        self.i += 1
        index = 0
        while True:
            self._skip_blank()
            if self._peek() == "]":
                self.i += 1
                return
            self._value((*path, index))
            index += 1
            self._skip_blank()
            if self._peek() == ",":
                self.i += 1
            elif self._peek() != "]":
                raise _ScanError("array")

    def _inline_table(self, path: _KeyPath) -> None:
        self.i += 1
        while True:
            self._skip_blank()
            if self._peek() == "}":
                self.i += 1
                return
            self._key_value(path)
            self._skip_blank()
            if self._peek() == ",":
                self.i += 1
            elif self._peek() != "}":
                raise _ScanError("inline table")


_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\", "e": "\x1b"}


def _unescape(raw: str) -> str:
    """Decode the escapes of a TOML basic string (used for quoted keys)."""

    def one(m: re.Match[str]) -> str:
        s = m.group(1)
        if s[0] in "uUx":
            return chr(int(s[1:], 16))
        return _ESCAPES.get(s, s)

    return re.sub(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|.)", one, raw)


def line_map(text: str) -> dict[_KeyPath, int]:
    """Line of every key path in a TOML text: `("users", 2, "email") -> 12`, `() -> 1`."""
    return _LineScanner(text).scan()


# ------------------------------------------------------------------------------------------ validation


def _field(path: _KeyPath) -> str:
    """`("users", 2, "email")` -> `users[2].email`, quoting keys that are not bare."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if _BARE_KEY_RE.fullmatch(part) else json.dumps(part)
            out += f".{name}" if out else name
    return out


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    for kind, name in (
        (str, "a string"),
        (int, "an integer"),
        (float, "a float"),
        (list, "an array"),
        (dict, "a table"),
    ):
        if isinstance(value, kind):
            return name
    return "a date/time"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 70 else text[:67] + "..."


def _or_list(items: tuple[str, ...] | list[str]) -> str:
    quoted = [json.dumps(i) for i in items]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


_fqdn_problem = names.fqdn_problem
# One rule for every address (miab_remote/names.py); kept under its old name for the modules that import it.
_email_problem = names.email_problem


def quota_problem(value: str) -> str | None:
    """Why `value` is not a quota dovecot accepts (None if it is one)."""
    if not _QUOTA_RE.fullmatch(value):
        return f'{value!r} is not a quota; expected a size like "500M" or "2G" (suffix K, M, G or T), or "0" for none'
    number, unit = (value[:-1], value[-1]) if value[-1] in _QUOTA_UNITS else (value, "")
    if int(number) * _QUOTA_UNITS[unit] > QUOTA_MAX_BYTES:
        return (
            f"{value!r} is too large; accepted: at most {QUOTA_MAX_BYTES // 1024**4}T ({QUOTA_MAX_BYTES} bytes, "
            "dovecot's limit: a signed 64-bit count of bytes)"
        )
    return None


def _served(address: str, domains: tuple[str, ...] | None) -> bool:
    """Whether the box itself delivers to `address` (its domain is hosted here)."""
    return domains is not None and address.rpartition("@")[2].lower() in domains


def _destination(address: str, domains: tuple[str, ...] | None) -> str:
    """An alias destination as the maps want it: an address of the box all in lower case, another
    server's with its domain in lower case and its local part as written (that server may care)."""
    if _served(address, domains):
        return names.normal_email(address)
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def _address_problem(value: str) -> str | None:
    """Why `value` is neither an IP address nor a DNS name (None if it is one)."""
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if value.startswith("[") and value.endswith("]"):
        return f"{value!r}: write the IPv6 address without brackets"
    labels = value.rstrip(".").split(".")
    if all(label.isdigit() for label in labels):
        return f"{value!r} is not a valid IPv4 address"
    if len(value) <= 253 and _ANY_CASE_HOST_RE.fullmatch(value):
        return None
    examples = "'203.0.113.10', '2001:db8::10' or 'box1.example.org'"
    return f"{value!r} is not an IP address or DNS name; expected like {examples}"


def _password_problem(value: str) -> str | None:
    """Why `value` is not a supported Dovecot hash; never echoes what may be a clear password."""
    accepted = ", ".join(PASSWORD_SCHEMES)
    for prefix, shape in PASSWORD_SCHEMES.items():
        scheme = prefix.split("}")[0] + "}"
        if value.startswith(scheme):
            if shape.fullmatch(value):
                return None
            return (
                f"malformed or truncated {scheme} hash; expected {prefix}..., the whole hash "
                "(for example from doveadm pw)"
            )
    if value.startswith("$"):
        hint = "prefix it with {SHA512-CRYPT}" if value.startswith("$6$") else f"accepted: {accepted}"
        hint = "prefix it with {BLF-CRYPT}" if value.startswith("$2") else hint
        hint = "prefix it with {ARGON2ID}" if value.startswith("$argon2id$") else hint
        return f"a crypt hash without its {{SCHEME}} prefix; {hint}"
    m = re.match(r"^\{([A-Za-z0-9.-]+)\}", value)
    if m:
        return f"unsupported hash scheme {{{m.group(1)}}}; accepted: {accepted}"
    return (
        "looks like a clear-text password (not shown); store a hash instead, "
        f"for example from `doveadm pw -s BLF-CRYPT`; accepted: {accepted}"
    )


def default_domain(hostname: str) -> str:
    """The mail domain a box serves when `domains` is absent: box1.example.test -> example.test."""
    labels = hostname.split(".")
    return ".".join(labels[1:]) if len(labels) > 2 else hostname


class _Checker:
    """Checks a parsed inventory against the schema, collecting every problem with its line."""

    def __init__(self, data: dict[str, Any], lines: dict[_KeyPath, int], path: Path) -> None:
        self.data = data
        self.lines = lines
        self.path = path
        self.problems: list[Problem] = []
        self.user_index: dict[str, int] = {}  # lower-cased user email -> index in users

    def line(self, key: _KeyPath) -> int:
        """Line of a value, or of the nearest enclosing table when the value itself is not there."""
        while key not in self.lines:
            key = key[:-1]
        return self.lines[key]

    def fail(self, key: _KeyPath, message: str) -> None:
        self.problems.append(Problem(self.line(key), _field(key), message))

    def unknown_keys(self, table: dict[str, Any], at: _KeyPath, accepted: tuple[str, ...], what: str) -> None:
        for name in table:
            if name not in accepted:
                close = difflib.get_close_matches(name, accepted, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.fail((*at, name), f"unknown {what}{hint}; accepted: {', '.join(accepted)}")

    def typed(
        self,
        table: dict[str, Any],
        at: _KeyPath,
        name: str,
        kind: type[_T],
        expected: str,
        *,
        required: bool = False,
    ) -> _T | None:
        """The value of `name` if present and of the right TOML type; None (and a problem) otherwise."""
        key = (*at, name)
        if name not in table:
            if required:
                self.fail(key, f"required key is missing; expected {expected}")
            return None
        value = table[name]
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            self.fail(key, f"expected {expected}, got {_toml_type(value)} {_short(value)}")
            return None
        return value

    def string_list(self, table: dict[str, Any], at: _KeyPath, name: str, expected: str) -> list[tuple[int, str]]:
        """The (index, string) elements of an array of strings, with a problem for each non-string."""
        items = self.typed(table, at, name, list, f"an array of {expected}")
        out: list[tuple[int, str]] = []
        for index, item in enumerate(items or []):
            if isinstance(item, str):
                out.append((index, item))
            else:
                self.fail((*at, name, index), f"expected {expected}, got {_toml_type(item)} {_short(item)}")
        return out

    def tables(self, name: str, what: str) -> list[tuple[int, dict[str, Any]]]:
        """The (index, table) elements of an array of tables such as [[users]]."""
        items = self.typed(self.data, (), name, list, f"an array of tables ([[{name}]] sections)")
        out: list[tuple[int, dict[str, Any]]] = []
        for index, item in enumerate(items or []):
            if isinstance(item, dict):
                out.append((index, item))
            else:
                self.fail((name, index), f"expected a table ({what}), got {_toml_type(item)} {_short(item)}")
        return out

    # -- the schema

    def check(self) -> Host | None:
        data = self.data
        self.unknown_keys(data, (), TOP_KEYS, "key")
        hostname = self.check_hostname()
        address = self.typed(data, (), "address", str, "an IP address or DNS name to reach the box at", required=True)
        if address is not None and (problem := _address_problem(address)):
            self.fail(("address",), problem)
        provider = self.typed(data, (), "provider", str, f"one of {_or_list(PROVIDERS)}")
        if provider is not None and provider not in PROVIDERS:
            self.fail(("provider",), f"{provider!r} is not a provider; accepted: {_or_list(PROVIDERS)}")
        ssh = self.check_ssh()
        host_keys = self.check_host_keys()
        os_id = self.typed(data, (), "os", str, "an OS profile id")
        if os_id is not None and os_id not in PROFILES:
            supported = ", ".join(PROFILES)
            self.fail(("os",), f"{os_id!r} is not a supported OS profile; supported: {supported}")
        domains = self.check_domains(hostname)
        recipes = self.check_recipes()
        users = self.check_users(domains)
        aliases = self.check_aliases(domains)
        options = self.check_options()
        self.check_admin_email(options.get("admin_email"), hostname, domains, users, aliases)
        ipv4 = self.check_ip("ipv4", 4)
        ipv6 = self.check_ip("ipv6", 6)
        dns_records = self.check_dns_records(hostname, domains)
        if self.problems or hostname is None or address is None:
            return None
        return Host(
            name=self.path.stem,
            path=self.path,
            hostname=hostname,
            address=address,
            ssh=ssh,
            host_keys=host_keys,
            os=os_id,
            domains=domains or (),
            users=users,
            aliases=aliases,
            recipes=recipes,
            provider=provider,
            options=options,
            ipv4=ipv4,
            ipv6=ipv6,
            dns_records=dns_records,
        )

    def check_ip(self, name: str, version: int) -> str | None:
        value = self.typed(self.data, (), name, str, f"the box's public IPv{version} address")
        if value is None:
            return None
        try:
            parsed = ipaddress.ip_address(value)
        except ValueError:
            parsed = None
        if parsed is None or parsed.version != version:
            self.fail((name,), f"{value!r} is not an IPv{version} address")
            return None
        return str(parsed)

    def check_dns_records(self, hostname: str | None, domains: tuple[str, ...] | None) -> tuple[DNSRecord, ...]:
        """[[dns.records]]: extra records, each checked with dnspython as data of one of the box's zones;
        types limited to what makes sense."""
        zones = dnszones.zones_for(hostname, domains) if hostname is not None and domains is not None else None
        table = self.typed(self.data, (), "dns", dict, "a table ([dns] section)")
        if table is None:
            return ()
        self.unknown_keys(table, ("dns",), DNS_KEYS, "key in [dns]")
        items = self.typed(table, ("dns",), "records", list, "an array of tables ([[dns.records]] sections)")
        out: list[DNSRecord] = []
        for index, item in enumerate(items or []):
            at = ("dns", "records", index)
            if not isinstance(item, dict):
                self.fail(at, f"expected a table, got {_toml_type(item)} {_short(item)}")
                continue
            self.unknown_keys(item, at, DNS_RECORD_KEYS, "key in [[dns.records]]")
            name = self.typed(item, at, "name", str, "an absolute name like 'www.example.org'", required=True)
            rtype = self.typed(item, at, "type", str, f"one of {_or_list(dnszones.EXTRA_TYPES)}", required=True)
            value = self.typed(item, at, "value", str, "the record's data, as in a zone file", required=True)
            ttl = self.typed(item, at, "ttl", int, "seconds, 60 to 86400")
            if ttl is not None and not 60 <= ttl <= 86400:
                self.fail((*at, "ttl"), f"{ttl} is out of range; expected 60 to 86400 seconds")
            if name is None or rtype is None or value is None:
                continue
            problem = dnszones.record_problem(name, rtype, value, zones)
            if problem:
                self.fail((*at, problem[0]), problem[1])
                continue
            out.append(DNSRecord(name.lower().rstrip("."), rtype.upper(), value, ttl or 1800))
        return tuple(out)

    def check_hostname(self) -> str | None:
        hostname = self.typed(self.data, (), "hostname", str, "the box's FQDN, like 'box1.example.org'", required=True)
        if hostname is None:
            return None
        problem = _fqdn_problem(hostname, "a fully qualified domain name", "box1.example.org")
        if problem:
            self.fail(("hostname",), problem)
            return None
        if hostname != self.path.stem:
            self.fail(
                ("hostname",),
                f"{hostname!r} does not match the file name {self.path.name}; "
                f"an inventory file is named after its box: {hostname}.toml",
            )
        return hostname  # still used for the default domain, so one mistake does not cascade

    def check_ssh(self) -> SSHSettings:
        ssh = self.typed(self.data, (), "ssh", dict, "a table ([ssh] section)")
        if ssh is None:
            return SSHSettings()
        at: _KeyPath = ("ssh",)
        self.unknown_keys(ssh, at, SSH_KEYS, "key in [ssh]")
        user = self.typed(ssh, at, "user", str, "a POSIX user name like 'root'")
        if user is not None and not _POSIX_USER_RE.fullmatch(user):
            self.fail(
                (*at, "user"),
                f"{user!r} is not a POSIX user name; expected lower-case letters, digits, "
                "'_' or '-', starting with a letter or '_', at most 32 characters, like 'root'",
            )
            user = None
        port = self.typed(ssh, at, "port", int, "an integer port 1..65535")
        if port is not None and not 1 <= port <= 65535:
            self.fail((*at, "port"), f"{port} is out of range; accepted: 1..65535")
            port = None
        identity = self.typed(ssh, at, "identity_file", str, "a path to an SSH private key")
        if identity is not None and (not identity.strip() or "\0" in identity):
            self.fail((*at, "identity_file"), f"{identity!r} is not a path; expected like '~/.ssh/id_ed25519'")
            identity = None
        if identity is not None:
            # `~` is the operator's home; a relative path is relative to the inventory folder.
            identity = str(Path(os.path.abspath(self.path.parent)) / Path(identity).expanduser())
        jump = self.check_jump(ssh, at)
        return SSHSettings(
            user=user or "root",
            port=port or 22,
            identity_file=identity,
            jump=jump,
            jump_host_keys=self.check_host_keys(ssh, at, "jump_host_keys"),
            given=frozenset(k for k in ("user", "port", "identity_file", "jump") if k in ssh),
        )

    def check_jump(self, ssh: dict[str, Any], at: _KeyPath) -> str | None:
        """`jump`: ProxyJump's syntax, one or more `[user@]host[:port]` separated by commas."""
        jump = self.typed(ssh, at, "jump", str, "jump hosts like 'admin@bastion.example.org:22'")
        if jump is None:
            return None
        accepted = "accepted: [user@]host[:port], several separated by commas, like 'admin@bastion.example.org:22'"
        hops = jump.split(",")
        for hop in hops:
            m = _JUMP_RE.fullmatch(hop.strip())
            if m is None:
                self.fail((*at, "jump"), f"{hop.strip()!r} is not a jump host; {accepted}")
                return None
            if m["user"] is not None and not _POSIX_USER_RE.fullmatch(m["user"]):
                self.fail((*at, "jump"), f"{m['user']!r} in {hop.strip()!r} is not a POSIX user name; {accepted}")
                return None
            if m["port"] is not None and not 1 <= int(m["port"]) <= 65535:
                self.fail((*at, "jump"), f"port {m['port']} in {hop.strip()!r} is out of range 1..65535; {accepted}")
                return None
        return ",".join(h.strip() for h in hops)

    def check_host_keys(
        self, table: dict[str, Any] | None = None, at: _KeyPath = (), name: str = "host_keys"
    ) -> tuple[str, ...]:
        keys: list[str] = []
        seen: dict[bytes, int] = {}
        for index, line in self.string_list(self.data if table is None else table, at, name, "SSH public key lines"):
            key: _KeyPath = (*at, name, index)
            if "\n" in line.strip():
                self.fail(key, "an SSH public key is one line; put each key in its own string")
                continue
            try:
                _type, blob = sshkeys.parse_public_line(line)
            except InputError as e:
                self.fail(key, f"{e}; expected a line like 'ssh-ed25519 AAAAC3Nza... root@box'")
                continue
            if blob in seen:
                self.fail(key, f"the same key as {name}[{seen[blob]}]; pin each key once")
                continue
            seen[blob] = index
            keys.append(line.strip())
        return tuple(keys)

    def check_domains(self, hostname: str | None) -> tuple[str, ...] | None:
        """The hosted domains, or None when they cannot be known because of a problem already reported."""
        if "domains" not in self.data:
            return (default_domain(hostname),) if hostname else None
        before = len(self.problems)
        entries = self.string_list(self.data, (), "domains", "domain names")
        if isinstance(self.data["domains"], list) and not self.data["domains"]:
            default = f" ({default_domain(hostname)!r})" if hostname else ""
            self.fail(
                ("domains",),
                f"is empty; list at least one mail domain, or remove the key to use the "
                f"hostname's parent domain{default}",
            )
        domains: dict[str, int] = {}
        for index, domain in entries:
            problem = _fqdn_problem(domain, "a domain name", "example.org")
            if problem:
                self.fail(("domains", index), problem)
            elif domain in domains:
                self.fail(("domains", index), f"{domain!r} is listed twice (also domains[{domains[domain]}])")
            else:
                domains[domain] = index
        return tuple(domains) if len(self.problems) == before else None

    def check_recipes(self) -> tuple[str, ...]:
        if "recipes" not in self.data:
            return DEFAULT_RECIPES
        recipes: dict[str, int] = {}
        for index, name in self.string_list(self.data, (), "recipes", "recipe names"):
            if not _RECIPE_RE.fullmatch(name):
                self.fail(
                    ("recipes", index),
                    f"{name!r} is not a recipe name; expected lower-case letters, digits, '_' and '-'",
                )
            elif name in recipes:
                self.fail(("recipes", index), f"{name!r} is listed twice (also recipes[{recipes[name]}])")
            else:
                recipes[name] = index
        return tuple(recipes)

    def hosted(self, key: _KeyPath, address: str, domain: str, domains: tuple[str, ...] | None) -> bool:
        """Whether `domain` is served here; None domains means unknown (already reported), so no noise."""
        if domains is None or domain in domains:
            return True
        hosted = ", ".join(domains) or "none"
        self.fail(key, f"{address!r} is not in a domain this box hosts; domains: {hosted}")
        return False

    def check_users(self, domains: tuple[str, ...] | None) -> tuple[MailUser, ...]:
        """The users; also fills `user_index` so aliases can check that they do not shadow a mailbox."""
        users: list[MailUser] = []
        first = self.user_index
        for index, table in self.tables("users", "one mailbox"):
            at: _KeyPath = ("users", index)
            self.unknown_keys(table, at, USER_KEYS, "key in a user")
            email = self.typed(table, at, "email", str, "the mailbox address, like 'bob@example.org'", required=True)
            if email is not None:
                problem = _email_problem(email)
                if problem:
                    self.fail((*at, "email"), problem)
                    email = None
                elif not self.hosted((*at, "email"), email, email.rpartition("@")[2].lower(), domains):
                    email = None
                elif names.normal_email(email) in first:
                    self.fail(
                        (*at, "email"),
                        f"{email!r} is listed twice (also users[{first[names.normal_email(email)]}].email)",
                    )
                    email = None
                else:
                    email = names.normal_email(email)  # dovecot and postfix look addresses up in lower case
            password_hash = self.typed(
                table,
                at,
                "password_hash",
                str,
                f"a password hash starting with {', '.join(PASSWORD_SCHEMES)}",
                required=True,
            )
            if password_hash is not None and (problem := _password_problem(password_hash)):
                self.fail((*at, "password_hash"), problem)
                password_hash = None
            quota = self.typed(table, at, "quota", str, 'a size like "500M" or "2G", or "0" for none')
            if quota is not None and (problem := quota_problem(quota)):
                self.fail((*at, "quota"), problem)
            if email is not None:
                first[email] = index
                if password_hash is not None:
                    users.append(MailUser(email, password_hash, quota))
        return tuple(users)

    def check_aliases(self, domains: tuple[str, ...] | None) -> tuple[Alias, ...]:
        aliases: list[Alias] = []
        sources: dict[str, int] = {}  # lower-cased source -> alias index
        for index, table in self.tables("aliases", "one alias"):
            at: _KeyPath = ("aliases", index)
            self.unknown_keys(table, at, ALIAS_KEYS, "key in an alias")
            source = self.typed(table, at, "source", str, "an address, or '@domain' for a catch-all", required=True)
            if source is not None:
                source = self.check_source((*at, "source"), source, domains, sources)
                if source is not None:
                    sources[source] = index
            destinations = self.typed(table, at, "destinations", list, "a non-empty array of addresses", required=True)
            if destinations is not None and not destinations:
                self.fail((*at, "destinations"), "is empty; list at least one address to deliver to")
            checked: list[str] = []
            seen: dict[str, int] = {}
            for n, dest in enumerate(destinations or []):
                key = (*at, "destinations", n)
                if not isinstance(dest, str):
                    self.fail(key, f"expected an address, got {_toml_type(dest)} {_short(dest)}")
                elif problem := _email_problem(dest, served=_served(dest, domains)):
                    self.fail(key, problem)
                elif source is not None and dest.lower() == source:
                    self.fail(key, f"{dest!r} is the alias's own source: an alias to itself")
                elif dest.lower() in seen:
                    self.fail(key, f"{dest!r} is listed twice (also destinations[{seen[dest.lower()]}])")
                else:
                    seen[dest.lower()] = n
                    checked.append(_destination(dest, domains))
            if source is not None and destinations and len(checked) == len(destinations):
                aliases.append(Alias(source, tuple(checked)))
        return tuple(aliases)

    def check_source(
        self, key: _KeyPath, source: str, domains: tuple[str, ...] | None, sources: dict[str, int]
    ) -> str | None:
        """The alias source, in lower case, if it is an address or '@domain' in a hosted domain, used once,
        not a user."""
        if source.startswith("@"):
            domain = source[1:].lower()
            problem = _fqdn_problem(domain, "a domain name", "example.org")
            if problem:
                self.fail(key, f"catch-all {source!r}: {problem}")
                return None
        else:
            problem = _email_problem(source)
            if problem:
                self.fail(key, f"{problem}; expected an address, or '@domain' for a catch-all")
                return None
            domain = source.rpartition("@")[2].lower()
        if not self.hosted(key, source, domain, domains):
            return None
        normal = names.normal_email(source)
        if normal in sources:
            self.fail(key, f"{source!r} is listed twice (also aliases[{sources[normal]}].source)")
            return None
        if normal in self.user_index:
            self.fail(
                key,
                f"{source!r} is also a user (users[{self.user_index[normal]}].email); "
                "an address is either a mailbox or an alias",
            )
            return None
        return normal

    def check_admin_email(
        self,
        admin: str | None,
        hostname: str | None,
        domains: tuple[str, ...] | None,
        users: tuple[MailUser, ...],
        aliases: tuple[Alias, ...],
    ) -> None:
        """An admin address on this box must be a mailbox or an alias of the inventory: the automatic
        addresses forward to it, so anything else would bounce, or loop back to itself."""
        if admin is None or hostname is None:
            return
        domain = admin.rpartition("@")[2]
        if domain != hostname and domain not in (domains or ()):
            return  # elsewhere: the box forwards system mail there
        known = {u.email.lower() for u in users} | {a.source.lower() for a in aliases}
        if admin.lower() not in known:
            self.fail(
                ("options", "admin_email"),
                f"{admin!r} is on this box but is neither a user nor an alias of it; "
                "accepted: a user's address, an alias's source, or an address elsewhere",
            )

    def check_options(self) -> dict[str, Any]:
        options = {name: spec.default for name, spec in OPTION_SPECS.items()}
        table = self.typed(self.data, (), "options", dict, "a table ([options] section)")
        if table is None:
            return options
        self.unknown_keys(table, ("options",), tuple(OPTION_SPECS), "option")
        for name, spec in OPTION_SPECS.items():
            value = self.typed(table, ("options",), name, spec.type, spec.accepted)
            if value is None:
                continue
            problem = spec.check(value)
            if problem:
                self.fail(("options", name), problem)
            else:
                options[name] = value
        return options


_TOMLLIB_POSITION = re.compile(r"^(?P<msg>.*) \((?:at line (?P<line>\d+), column (?P<col>\d+)|at end of document)\)$")
_TOMLKIT_POSITION = re.compile(r" at line \d+ col \d+$")


def _syntax_problem(text: str, error: Exception) -> Problem:
    """A TOML syntax error as a Problem with its line (tomllib's message, or tomlkit's)."""
    if isinstance(error, tomlkit.exceptions.ParseError):
        message = _TOMLKIT_POSITION.sub("", str(error))
        return Problem(max(error.line, 1), "", f"TOML syntax error at column {error.col + 1}: {message}")
    m = _TOMLLIB_POSITION.match(str(error))
    if not m:
        return Problem(1, "", f"TOML syntax error: {error}")
    if m.group("line") is None:
        return Problem(text.count("\n") + 1, "", f"TOML syntax error at the end of the file: {m.group('msg')}")
    return Problem(int(m.group("line")), "", f"TOML syntax error at column {m.group('col')}: {m.group('msg')}")


def parse_document(text: str, path: Path) -> tomlkit.TOMLDocument:
    """Parse for editing: tomllib first (it checks the TOML standard strictly and places errors well),
    then tomlkit, which keeps comments and formatting."""
    try:
        try:
            tomllib.loads(text)
        except RecursionError:
            # tomllib recurses once per level of nesting; tomlkit stops at 100 levels with a line and a
            # column, so let it say where (and the fallback below covers whatever it does not).
            tomlkit.parse(text)
            raise
        return tomlkit.parse(text)
    except (tomllib.TOMLDecodeError, tomlkit.exceptions.TOMLKitError) as e:
        raise InventoryError(path, [_syntax_problem(text, e)]) from None
    except RecursionError:
        raise InventoryError(
            path, [Problem(1, "", "TOML nested too deeply to read; an inventory needs a few levels")]
        ) from None


@functools.lru_cache(maxsize=16)
def _editable(document_text: str, path: str) -> None:
    """parse_document's verdict on a text, remembered: a command loads the same file several times, and
    tomlkit took ~10 ms per parse of a box with a few dozen users (an error is not remembered: it is raised
    again from a fresh parse)."""
    parse_document(document_text, Path(path))


def validate(document_text: str, path: Path) -> Host:
    """Parse and check one inventory text; `path` names it in messages and its stem must be the hostname.

    Raises InventoryError (an InputError) listing every problem, one per line, in file order.
    """
    path = Path(path)
    _editable(document_text, str(path))  # both parsers must accept it, so anything loaded can be edited
    checker = _Checker(tomllib.loads(document_text), line_map(document_text), path)
    host = checker.check()
    if host is None:
        raise InventoryError(path, checker.problems)
    return host


# ------------------------------------------------------------------------------------------- the folder


def _check_name(name: str) -> None:
    """A box name is its FQDN; refusing anything else keeps names from escaping the inventory folder."""
    if not isinstance(name, str) or len(name) > 253 or not names.HOST_NAME_RE.fullmatch(name):
        raise InputError(f"{name!r} is not a box name: expected the box's FQDN, like box1.example.org")


class Inventory:
    """The inventory folder (usually ./hosts): one `NAME.toml` per box, NAME being its FQDN."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, name: str) -> Path:
        _check_name(name)
        return self.root / f"{name}.toml"

    def names(self) -> list[str]:
        """Every box, sorted; the documented example and dotfiles (locks, temporary files) are not boxes."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.stem
            for p in self.root.glob("*.toml")
            if not p.name.startswith(".") and p.stem != EXAMPLE_STEM and p.is_file()
        )

    def load(self, name: str) -> Host:
        path = self.path_for(name)
        return validate(self._read(name, path), path)

    def load_text(self, name: str) -> str:
        return self._read(name, self.path_for(name))

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = 120.0) -> Iterator[None]:
        """Hold one box's inventory lock across several steps (an edit and the push that follows it, so
        concurrent pushes never send an older inventory after a newer one). Use `edit(name, locked=True)`
        inside it."""
        path = self.path_for(name)
        if not path.is_file():
            raise self._unknown(name)
        with fsutil.file_lock(self._lock_path(name), timeout=timeout, what=display_path(path)):
            yield

    @contextlib.contextmanager
    def edit(self, name: str, locked: bool = False) -> Iterator[tomlkit.TOMLDocument]:
        """Change one box's file under its lock: validated before writing, comments and layout kept.

        The file is read inside the lock, so concurrent edits (threads or processes) never lose each
        other's changes. An exception in the caller's block, or an invalid result, writes nothing.
        `locked=True` means the caller already holds `lock(name)`.
        """
        path = self.path_for(name)
        if not path.is_file():
            raise self._unknown(name)
        held = contextlib.nullcontext() if locked else fsutil.file_lock(self._lock_path(name), what=display_path(path))
        with held:
            old = self._read(name, path)
            document = parse_document(old, path)
            yield document
            new = document.as_string()
            validate(new, path)
            if new != old:
                fsutil.atomic_write(path, new.encode(), mode=0o600)

    def create(self, name: str, document: tomlkit.TOMLDocument, overwrite: bool = False) -> Path:
        """Write a new box's file (validated, atomic, 0600), refusing to replace one unless asked."""
        path = self.path_for(name)
        self._ensure_root()
        text = document.as_string()
        with fsutil.file_lock(self._lock_path(name), what=display_path(path)):
            if path.exists() and not overwrite:
                raise InputError(f"{display_path(path)} already exists; nothing was changed")
            validate(text, path)
            fsutil.atomic_write(path, text.encode(), mode=0o600)
        return path

    def archive(self, name: str) -> Path:
        """Move a destroyed box's file to `.archive/NAME.TIMESTAMP.toml` (0600, in a 0700 folder that
        `names()` never lists): an inventory is the operator's record and is never deleted by the tool.

        A hard link, then the unlink: at every moment the file exists under one name or both, and an
        archive of the same second is never overwritten."""
        path = self.path_for(name)
        folder = self.root / ARCHIVE_DIR
        with fsutil.file_lock(self._lock_path(name), what=display_path(path)):
            if not path.is_file():
                raise self._unknown(name)
            folder.mkdir(mode=0o700, exist_ok=True)
            os.chmod(folder, 0o700)
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
            for n in itertools.count(1):
                target = folder / (f"{name}.{stamp}.toml" if n == 1 else f"{name}.{stamp}-{n}.toml")
                try:
                    _link_or_copy(path, target)
                    break
                except FileExistsError:
                    continue
            os.chmod(target, 0o600)
            path.unlink()
            fsutil.fsync_dir(folder)
            fsutil.fsync_dir(self.root)
        return target

    # -- helpers

    def _lock_path(self, name: str) -> Path:
        return self.root / f".{name}.toml.lock"

    def _ensure_root(self) -> None:
        if not self.root.is_dir():
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)  # mkdir's mode is masked by the umask

    def _unknown(self, name: str) -> InputError:
        known = self.names()
        folder = display_path(self.root).rstrip("/") + "/"
        return InputError(f"no inventory for {name!r} in {folder} (known: {', '.join(known) or 'none'})")

    def _read(self, name: str, path: Path) -> str:
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise self._unknown(name) from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise InventoryError(path, [Problem(line, "", "not UTF-8 text")]) from None


def _link_or_copy(path: Path, target: Path) -> None:
    """A second name for `path` at `target` (which must not exist): a hard link, or, when `path` is a
    symlink to another file system, an exclusive copy written and synced before it counts."""
    try:
        os.link(path, target)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        with open(target, "xb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(path.read_bytes())
            f.flush()
            os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------- new documents


def _toml(value: Any) -> str:
    """One value in TOML syntax."""
    text: str = tomlkit.item(value).as_string()
    return text


def new_document(
    hostname: str,
    address: str,
    *,
    provider: str | None,
    host_keys: list[str],
    os: str | None,
    ssh_user: str = "root",
    ssh_port: int = 22,
    identity_file: str | None = None,
) -> tomlkit.TOMLDocument:
    """A fresh inventory document for a box, with a short comment on every field for the operator.

    Layout rule: no comment sits just before a table header (a table's comment follows its header).
    tomlkit files new keys at the end of a section, before the next header, so this keeps every
    comment next to what it describes after later automated edits.
    """
    parent = default_domain(hostname)
    out = [
        f"# miab-remote inventory for {hostname}; hosts/example.toml explains every field.",
        "# Edit freely: comments and layout are kept when miab-remote changes this file.",
        "# Optional, with their defaults: recipes = " + _toml(list(DEFAULT_RECIPES)) + ",",
        f"# domains = [{_toml(parent)}] (the hostname's parent domain), and an [options] table:",
    ]
    out += [
        f"#   {name} = {_toml(spec.default)}: {spec.doc}" if spec.default is not None else f"#   {name}: {spec.doc}"
        for name, spec in OPTION_SPECS.items()
    ]
    out += [
        "# Mailboxes are [[users]] tables (email, password_hash: never a clear password, quota);",
        "# forwarding addresses are [[aliases]] tables (source, destinations).",
        "# DNS: ipv4 / ipv6 = the public addresses to publish when they differ from `address`;",
        "# extra records are [[dns.records]] tables (name, type, value, ttl).",
        "",
        "# The box's fully qualified domain name; it must equal this file's name.",
        f"hostname = {_toml(hostname)}",
        "# Where SSH reaches the box: an IPv4 or IPv6 address, or a DNS name.",
        f"address = {_toml(address)}",
        f"# Who made the box: {', '.join(PROVIDERS)}.",
        f"provider = {_toml(provider)}" if provider is not None else '# provider = "manual"',
        f"# The box's OS profile, detected when it is first reached. Supported: {', '.join(PROFILES)}.",
        f"os = {_toml(os)}" if os is not None else f"# os = {_toml(next(iter(PROFILES)))}",
        "# The box's SSH host keys. Any other key is refused before anything is sent; if none is",
        "# pinned, deploy refuses.",
    ]
    if host_keys:
        out += ["host_keys = [", *(f"    {_toml(key)}," for key in host_keys), "]"]
    else:
        out.append("host_keys = []")
    out += [
        "",
        "[ssh]",
        "# How to log in: the remote user (root, or one with password-less sudo),",
        f"user = {_toml(ssh_user)}",
        "# and the SSH port.",
        f"port = {_toml(ssh_port)}",
        "# The private key to log in with; ~ is your home, a relative path is relative to this folder.",
        f"identity_file = {_toml(identity_file)}"
        if identity_file is not None
        else '# identity_file = "~/.ssh/id_ed25519"',
    ]
    return tomlkit.parse("\n".join(out) + "\n")
