"""A cloud's credentials: from the environment, else from the 0600 file `credentials.toml` in the tool's
folder (one table per provider). They are never printed, logged, put in an exception, the inventory or
argv: every message that could hold one goes through the mask this module gives."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from miab_remote.engine.redact import SecretMask
from miab_remote.errors import InputError
from miab_remote.fleet.configdir import config_dir, read_private
from miab_remote.fleet.problems import display_path

FILE_NAME = "credentials.toml"


@dataclass(frozen=True)
class Field:
    """One credential: its key in the provider's table of credentials.toml and its environment variable."""

    key: str
    variable: str
    secret: bool = True  # a region is a setting, not a secret


@dataclass(frozen=True)
class Credentials:
    values: Mapping[str, str]
    source: Mapping[str, str]  # key -> where it came from ("DIGITALOCEAN_TOKEN", "credentials.toml [...]")
    mask: SecretMask

    def __getitem__(self, key: str) -> str:
        return self.values[key]

    def get(self, key: str) -> str | None:
        return self.values.get(key)


def credentials_path() -> Path:
    return config_dir() / FILE_NAME


def _file_table(provider: str) -> tuple[dict[str, object], Path]:
    path = credentials_path()
    text = read_private(path, "cloud credentials")
    if text is None:
        return {}, path
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # the parser's message names a line and column, never the file's content
        raise InputError(f"{display_path(path)}: not valid TOML ({e})") from None
    table = data.get(provider, {})
    if not isinstance(table, dict):
        raise InputError(f"{display_path(path)}: [{provider}] must be a table of its credentials")
    return table, path


def load(provider: str, fields: tuple[Field, ...], required: tuple[str, ...]) -> Credentials:
    """The provider's credentials; InputError naming the variables (or the file's keys) that are missing."""
    table, path = _file_table(provider)
    values: dict[str, str] = {}
    source: dict[str, str] = {}
    for f in fields:
        env = os.environ.get(f.variable, "").strip()
        if env:
            values[f.key], source[f.key] = env, f.variable
            continue
        stored = table.get(f.key)
        if stored is None:
            continue
        if not isinstance(stored, str) or not stored.strip():
            raise InputError(f"{display_path(path)}: [{provider}] {f.key} must be a non-empty string")
        values[f.key], source[f.key] = stored.strip(), f"{display_path(path)} [{provider}] {f.key}"
    missing = [f for f in fields if f.key in required and f.key not in values]
    if missing:
        wanted = ", ".join(f.variable for f in missing)
        keys = ", ".join(f'{f.key} = "..."' for f in missing)
        raise InputError(
            f"{provider}: no credentials: set {wanted} in the environment, or put [{provider}] {keys} in "
            f"{display_path(path)} (mode 0600); nothing was made"
        )
    mask = SecretMask(v for f in fields if f.secret and (v := values.get(f.key)))
    return Credentials(values, source, mask)
