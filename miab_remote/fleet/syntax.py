"""Reading an inventory's TOML text: strictly (tomllib) to check and load it, and for editing (tomlkit,
which keeps comments and layout), with a syntax error turned into one Problem that has its line."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from miab_remote.fleet.problems import InventoryError, Problem

_TOMLLIB_POSITION = re.compile(r"^(?P<msg>.*) \((?:at line (?P<line>\d+), column (?P<col>\d+)|at end of document)\)$")
_TOMLKIT_POSITION = re.compile(r" at line \d+ col \d+$")
_TOO_DEEP = "TOML nested too deeply to read; an inventory needs a few levels"


def read_data(text: str, path: Path) -> dict[str, Any]:
    """The text as plain data, read once by tomllib, which checks the TOML standard strictly and places
    its errors well. Raises InventoryError for a syntax error."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InventoryError(path, [syntax_problem(text, e)]) from None
    except RecursionError:
        pass
    # tomllib recurses once per level of nesting; tomlkit stops at 100 levels with a line and a column,
    # so let it say where (and the fallback covers whatever it does not).
    try:
        tomlkit.parse(text)
    except tomlkit.exceptions.TOMLKitError as e:
        raise InventoryError(path, [syntax_problem(text, e)]) from None
    except RecursionError:
        pass
    raise InventoryError(path, [Problem(1, "", _TOO_DEEP)])


def read_document(text: str, path: Path) -> tomlkit.TOMLDocument:
    """The text as a tomlkit document to edit: checked strictly by tomllib first (tomlkit accepts some
    things the standard does not), so an edit never starts from a file that a load would refuse."""
    read_data(text, path)
    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.TOMLKitError as e:
        raise InventoryError(path, [syntax_problem(text, e)]) from None
    except RecursionError:
        raise InventoryError(path, [Problem(1, "", _TOO_DEEP)]) from None


def syntax_problem(text: str, error: Exception) -> Problem:
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
