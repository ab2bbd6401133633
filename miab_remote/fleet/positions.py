"""Where each key of an inventory's TOML text is: `("users", 2, "email") -> 12`, so a problem names its line.

Neither tomllib nor tomlkit keeps positions (tomlkit's items carry only their surrounding whitespace), so
this walks the text itself. It runs only on text that tomllib already accepted, and only when there is a
problem to place, so it can be lenient: it needs to know only where values start, how to skip strings,
arrays and inline tables, and how `[[x]]` headers number their elements.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import re

KeyPath = tuple[str | int, ...]

BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_RE = re.compile(r"[^,\]}#\r\n]+")  # a number, boolean or date/time (which may contain a space)


def line_map(text: str) -> dict[KeyPath, int]:
    """Line of every key path in a TOML text: `("users", 2, "email") -> 12`, `() -> 1`."""
    return _LineScanner(text).scan()


def field_name(path: KeyPath) -> str:
    """`("users", 2, "email")` -> `users[2].email`, quoting keys that are not bare."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if BARE_KEY_RE.fullmatch(part) else json.dumps(part)
            out += f".{name}" if out else name
    return out


class _ScanError(Exception):
    """The scanner met something it does not understand; the positions found so far are still used."""


class _LineScanner:
    """Maps every key path of a TOML text to the line where its value (or table header) starts."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.lines: dict[KeyPath, int] = {(): 1}
        self._newlines = [m.start() for m in re.finditer("\n", text)]
        self._aot_len: dict[KeyPath, int] = {}

    def scan(self) -> dict[KeyPath, int]:
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
        table: KeyPath = ()
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

    def _header(self, parts: list[str], line: int, *, array: bool) -> KeyPath:
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

    def _key_value(self, table: KeyPath) -> None:
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
                m = BARE_KEY_RE.match(self.text, self.i)
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

    def _value(self, path: KeyPath) -> None:
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

    def _array(self, path: KeyPath) -> None:
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

    def _inline_table(self, path: KeyPath) -> None:
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

