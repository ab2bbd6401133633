"""What is wrong in an inventory file, as the operator reads it: `path:line: field: message`, every problem
of one file at once, and the words those messages use for the values found."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miab_remote.errors import InputError


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


def toml_type(value: Any) -> str:
    """The TOML type of a parsed value, with its article: what a message says was found."""
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


def short(value: Any) -> str:
    """A value as a message quotes it, cut so one long value does not hide the rest of the line."""
    text = repr(value)
    return text if len(text) <= 70 else text[:67] + "..."


def or_list(items: tuple[str, ...] | list[str]) -> str:
    """`"a", "b" or "c"`: the accepted choices as a message lists them."""
    quoted = [json.dumps(i) for i in items]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
