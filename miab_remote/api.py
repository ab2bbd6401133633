"""The stable surface for recipes, the built-in ones and the operator's own `hosts/recipes/NAME.py`.

A recipe imports from here only, so the package's inner layout may change without breaking it:

    from miab_remote.api import File, Package, RecipeContext, Resource, Service, layout
"""

from __future__ import annotations

from miab_remote.engine.recipes import RecipeContext
from miab_remote.engine.resources import Command, Directory, File, Group, Package, Resource, Service, User
from miab_remote.mail import acme, backup, dnszones, layout, mailmaps, mtasts, ports, relay, secondary
from miab_remote.remote import script

__all__ = [
    "Command",
    "Directory",
    "File",
    "Group",
    "Package",
    "RecipeContext",
    "Resource",
    "Service",
    "User",
    "acme",
    "backup",
    "dnszones",
    "layout",
    "mailmaps",
    "mtasts",
    "ports",
    "relay",
    "script",
    "secondary",
]
