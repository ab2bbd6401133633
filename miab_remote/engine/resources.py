"""The desired-state items a recipe declares. They only describe; the planner compares them to facts.

Every resource has an `id` ("kind:name") that notifications and reports refer to. Each kind lives in its
own module of engine/kinds/ with its planning; this is where the rest of the tool imports them from.
"""

from __future__ import annotations

from miab_remote.engine.kinds import Command, Directory, File, Group, Package, Resource, Service, User

__all__ = ["Command", "Directory", "File", "Group", "Package", "Resource", "Service", "User"]
