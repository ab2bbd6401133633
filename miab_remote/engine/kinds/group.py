"""A system (or regular) group, created when missing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from miab_remote.engine.kinds.base import Context, Kind
from miab_remote.remote import wire


@dataclass(frozen=True)
class Group:
    name: str
    system: bool = True

    @property
    def id(self) -> str:
        return f"group:{self.name}"


class GroupKind(Kind[Group]):
    resource = Group
    ops = ("group",)

    def probe(self, r: Group, rendered: Mapping[str, bytes], want_content: bool, spec: wire.ProbeSpec) -> None:
        spec["groups"].append(r.name)

    def plan(self, r: Group, ctx: Context) -> None:
        g = ctx.facts.get("groups", {}).get(r.name)
        if g is None:
            why = f"create group {r.name}"
            ctx.act(r.id, wire.GroupAction(resource=r.id, op="group", why=why, name=r.name, system=r.system))
        else:
            ctx.skip(r.id, f"exists (gid {g['gid']})")
