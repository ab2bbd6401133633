"""Where the built-in recipes and templates are: inside the installed package, or beside it in a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


def builtin_dir(name: str) -> Path:
    """`recipes` or `templates`: the wheel ships them in the package; a source checkout keeps them at the top."""
    inside = _PACKAGE / name
    return inside if inside.is_dir() else _PACKAGE.parent / name
