"""The tool's own folder on the laptop, for what must never be in an inventory: cloud credentials and
the boxes' secrets. Everything in it is private to the operator (folders 0700, files 0600); a file
anyone else could read is refused rather than used, as ssh does with a private key."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from miab_remote.errors import InputError
from miab_remote.fleet.problems import display_path
from miab_remote.fsutil import atomic_write

CONFIG_DIR_VARIABLE = "MIAB_REMOTE_CONFIG_DIR"


def config_dir() -> Path:
    """$MIAB_REMOTE_CONFIG_DIR, else $XDG_CONFIG_HOME/miab-remote, else ~/.config/miab-remote."""
    if chosen := os.environ.get(CONFIG_DIR_VARIABLE):
        return Path(chosen)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "miab-remote"


def read_private(path: Path, what: str) -> str | None:
    """The text of a private file, None when there is none; InputError when others may read or change it
    (its secrets may already be out: the message says so) or it is not a regular file of this user."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{display_path(path)} ({what}) is not a regular file")
    if info.st_uid != os.getuid():
        raise InputError(f"{display_path(path)} ({what}) belongs to another user (uid {info.st_uid}); not read")
    if info.st_mode & 0o077:
        raise InputError(
            f"{display_path(path)} ({what}) has mode {stat.S_IMODE(info.st_mode):04o}: others may read it, so "
            f"it was not used (treat what it holds as exposed); accepted: 0600 (chmod 600 {display_path(path)})"
        )
    return path.read_text(encoding="utf-8")


def write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, mode 0600, making its folders 0700 as needed."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, text.encode("utf-8"), 0o600)
