"""Making boxes: every name is checked before anything is made, then each box is made by its provider and
recorded in its inventory (address, pinned host key, provider, os). A box whose inventory cannot be
written is destroyed again: without its pinned key nobody could reach it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import tomlkit

from miab_remote.errors import InputError, ProviderError
from miab_remote.fleet import store
from miab_remote.fleet.problems import display_path
from miab_remote.fleet.store import Inventory
from miab_remote.names import fqdn_problem
from miab_remote.providers import local

Say = Callable[[str], None]
# The local provider's module is the provider until the Provider registry lands.
Provider = ModuleType


def check_new_boxes(inv: Inventory, names: Sequence[str], provider: Provider = local) -> None:
    """`create`'s arguments: each name is a box name as the inventory wants it (a lower-case FQDN: the
    inventory's hostname rule, and the local provider's 64 characters), given once, and an existing
    inventory of that name is valid and is a local box's (create re-pins it)."""
    seen: set[str] = set()
    for name in names:
        if problem := fqdn_problem(name, "a box name", "box1.example.org"):
            raise InputError(f"{problem}; nothing was made")
        provider.check_name(name)
        if name in seen:
            raise InputError(f"{name} is given twice; nothing was made")
        seen.add(name)
        path = inv.path_for(name)
        if path.exists():
            made_by = inv.load(name).provider
            if made_by not in (None, "local"):
                raise InputError(
                    f"{display_path(path)} is the inventory of a {made_by} box; a local box of the same name "
                    "would take over its record; nothing was made"
                )
    if inv.root.exists() and not inv.root.is_dir():
        raise InputError(f"the inventory folder {display_path(inv.root)} is not a folder; nothing was made")


def _record(doc: tomlkit.TOMLDocument, box: local.CreatedBox) -> None:
    doc["address"] = box.address
    doc["host_keys"] = [box.host_key_public]
    doc["provider"] = "local"
    doc["os"] = box.os
    if box.resolvers:
        if "options" not in doc:
            doc["options"] = tomlkit.table()
        doc["options"]["resolvers"] = list(box.resolvers)


def _write_inventory(inv: Inventory, name: str, box: local.CreatedBox, key_path: Path) -> str:
    if inv.path_for(name).exists():
        with inv.edit(name) as doc:
            _record(doc, box)
        return f"{name}: created at {box.address}; kept the existing inventory {inv.path_for(name)} (re-pinned)"
    doc = store.new_document(
        name, box.address, provider="local", host_keys=[box.host_key_public], os=box.os, identity_file=str(key_path)
    )
    _record(doc, box)
    inv.create(name, doc)
    return f"{name}: created at {box.address}; inventory {inv.path_for(name)}"


def create_box(inv: Inventory, name: str, key_path: Path, key_line: str, say: Say, provider: Provider = local) -> str:
    """Make one box and record it; the line to show the operator. Raises MiabError on failure."""
    box = provider.create(name, key_line, progress=say)
    try:
        return _write_inventory(inv, name, box, key_path)
    except BaseException as e:
        say("the inventory could not be written: destroying the new box")
        why = str(e) or type(e).__name__
        try:
            provider.destroy(name)
        except Exception as cleanup:
            raise ProviderError(
                f"the inventory could not be written ({why}), and destroying the new box failed too "
                f"({cleanup}); run `miab-remote destroy {name}`"
            ) from e
        if not isinstance(e, Exception):
            raise
        raise ProviderError(f"the inventory could not be written ({why}); the new box was destroyed") from e
