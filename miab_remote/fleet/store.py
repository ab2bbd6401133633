"""The inventory folder, usually ./hosts: one `NAME.toml` per box, read, edited, created and archived.

Operators edit these files by hand, so the tool's own edits go through `Inventory.edit`, which keeps
comments and formatting, validates before writing, and serialises writers with a lock.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import itertools
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import tomlkit

from miab_remote import fsutil, names
from miab_remote.errors import InputError
from miab_remote.fleet.model import DEFAULT_RECIPES, Host
from miab_remote.fleet.options import OPTION_SPECS
from miab_remote.fleet.problems import InventoryError, Problem, display_path
from miab_remote.fleet.rules import PROVIDERS, default_domain
from miab_remote.fleet.schema import validate
from miab_remote.fleet.syntax import read_document
from miab_remote.profiles import PROFILES

# The committed, documented example lives among the real inventories but is not a box.
EXAMPLE_STEM = "example"
# Where `destroy` keeps the inventories of destroyed boxes (never listed as boxes).
ARCHIVE_DIR = ".archive"
CREATING_DIR = ".creating"  # the servers asked for whose inventory is not written yet (see note_creating)


def _check_name(name: str) -> None:
    """A box name is its FQDN; refusing anything else keeps names from escaping the inventory folder."""
    if not isinstance(name, str) or len(name) > 253 or not names.HOST_NAME_RE.fullmatch(name):
        raise InputError(f"{name!r} is not a box name: expected the box's FQDN, like box1.example.org")


class Inventory:
    """The inventory folder (usually ./hosts): one `NAME.toml` per box, NAME being its FQDN."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # The Host of each file's latest text: a command loads a box several times (checks, then again
        # under its lock, then for the push) but parses a text once. Keyed on the whole text, so a file
        # changed by anyone is parsed again.
        self._parsed: dict[Path, tuple[str, Host]] = {}
        self._parsed_lock = threading.Lock()

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
        return self._validated(self._read(name, path), path)

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
            document = read_document(old, path)
            yield document
            new = document.as_string()
            self._validated(new, path)
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
        with fsutil.file_lock(self._lock_path(name), what=display_path(path)):
            if not path.is_file():
                raise self._unknown(name)
            target = self._archive_slot(name, lambda target: _link_or_copy(path, target))
            path.unlink()
            fsutil.fsync_dir(self.root)
        return target

    def archive_record(self, name: str, document: tomlkit.TOMLDocument) -> Path:
        """Write a record straight into the archive (never as `hosts/NAME.toml`): what is known of a server
        that was made and destroyed again before it could be used, e.g. one that presented another host key."""
        self._ensure_root()
        data = document.as_string().encode()

        def write(target: Path) -> None:
            with open(target, "xb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

        return self._archive_slot(name, write)

    def _archive_slot(self, name: str, make: Callable[[Path], None]) -> Path:
        """`make` the first free `.archive/NAME.TIMESTAMP[-N].toml` (an archive is never overwritten)."""
        folder = self.root / ARCHIVE_DIR
        folder.mkdir(mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        for n in itertools.count(1):
            target = folder / (f"{name}.{stamp}.toml" if n == 1 else f"{name}.{stamp}-{n}.toml")
            try:
                make(target)
                break
            except FileExistsError:
                continue
        os.chmod(target, 0o600)
        fsutil.fsync_dir(folder)
        return target

    # -- helpers

    def _validated(self, text: str, path: Path) -> Host:
        with self._parsed_lock:
            known = self._parsed.get(path)
        if known is not None and known[0] == text:
            return known[1]
        host = validate(text, path)
        with self._parsed_lock:
            self._parsed[path] = (text, host)
        return host

    # -- servers being created

    def note_creating(self, name: str, provider: str, node: Mapping[str, str]) -> None:
        """Record, the moment a cloud has made a server, which one it is: if the create is killed before the
        inventory is written, the next `create` or `destroy` of the name finds it here and removes it."""
        self._ensure_root()
        folder = self.root / CREATING_DIR
        folder.mkdir(mode=0o700, exist_ok=True)
        doc = tomlkit.document()
        doc["provider"] = provider
        doc["node"] = dict(node)
        fsutil.atomic_write(folder / f"{name}.toml", doc.as_string().encode(), mode=0o600)

    def creating(self, name: str) -> tuple[str, dict[str, str]] | None:
        """The provider and [node] of a server an interrupted create left, or None."""
        _check_name(name)
        try:
            data = tomlkit.parse((self.root / CREATING_DIR / f"{name}.toml").read_text()).unwrap()
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None
        node = data.get("node")
        if not isinstance(data.get("provider"), str) or not isinstance(node, dict):
            return None
        return data["provider"], {str(k): str(v) for k, v in node.items()}

    def done_creating(self, name: str) -> None:
        """The server is recorded in the inventory, or gone again: forget the note."""
        _check_name(name)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # no note, or no folder for one
            (self.root / CREATING_DIR / f"{name}.toml").unlink()

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
        "# Outgoing mail through a smarthost (where port 25 is blocked): a [relay] table (host, port 587 or",
        "# 465, user, ca_file), written by `miab-remote relay set`, which keeps the password out of this file.",
        "# Nightly encrypted backups: a [backup] table (target, keep, append_only, ca_file, host_key), written",
        "# by `miab-remote backup-target set`, which keeps the credentials out of this file.",
        "# A trusted certificate (Let's Encrypt unless told otherwise), renewed by the box itself: an [acme]",
        "# table (email, directory, ca_file, caa, mta_sts); without it the box's certificate is self-signed.",
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
