"""The resource kinds, one module each (its dataclass and its whole planning), and their registry.

Adding a kind: its module here (the dataclass and a `Kind` subclass), one line in KINDS, its wire
TypedDict in remote/wire.py, and on the box its `Runner` method in remote/apply.py named after each op
the kind yields (apply.py finds it by that name), then its tests. The planner names no kind.
"""

from __future__ import annotations

from typing import Any

from miab_remote.engine.kinds.base import Kind
from miab_remote.engine.kinds.command import Command, CommandKind
from miab_remote.engine.kinds.directory import Directory, DirectoryKind
from miab_remote.engine.kinds.file import File, FileKind
from miab_remote.engine.kinds.group import Group, GroupKind
from miab_remote.engine.kinds.package import Package, PackageKind
from miab_remote.engine.kinds.service import Service, ServiceKind
from miab_remote.engine.kinds.user import User, UserKind

# In the order their `begin` runs (packages first: a service may come with one).
KINDS: tuple[Kind[Any], ...] = (
    PackageKind(),
    GroupKind(),
    UserKind(),
    DirectoryKind(),
    FileKind(),
    ServiceKind(),
    CommandKind(),
)
_BY_TYPE: dict[type, Kind[Any]] = {k.resource: k for k in KINDS}

Resource = Package | Directory | File | Service | Group | User | Command


def kind_of(r: object) -> Kind[Any]:
    """The kind of a declared resource (a subclass of a kind's dataclass is of that kind)."""
    for t in type(r).__mro__:
        if (kind := _BY_TYPE.get(t)) is not None:
            return kind
    raise TypeError(f"{r!r} is not a resource")


__all__ = [
    "KINDS",
    "Command",
    "Directory",
    "File",
    "Group",
    "Kind",
    "Package",
    "Resource",
    "Service",
    "User",
    "kind_of",
]
