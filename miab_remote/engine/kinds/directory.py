"""A directory with its mode and owner; anything else at its path is a PlanError (never moved away here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from miab_remote.engine.kinds.base import Context, Kind, meta_changes
from miab_remote.engine.plans import PlanError
from miab_remote.remote import wire


@dataclass(frozen=True)
class Directory:
    path: str
    mode: int = 0o755
    owner: str = "root"
    group: str = "root"

    @property
    def id(self) -> str:
        return f"directory:{self.path}"


class DirectoryKind(Kind[Directory]):
    resource = Directory
    ops = ("directory",)

    def probe(self, r: Directory, rendered: Mapping[str, bytes], want_content: bool, spec: wire.ProbeSpec) -> None:
        spec["files"].append(r.path)

    def plan(self, r: Directory, ctx: Context) -> None:
        fact = ctx.facts.get("files", {}).get(r.path, {"exists": False})
        if not fact.get("exists"):
            ctx.act(r.id, _action(r, f"create {r.path}"))
        elif fact.get("type") != "directory":
            raise PlanError(f"{r.path} should be a directory but is a {fact.get('type')}; move it away first")
        elif diffs := meta_changes(fact, r.mode, r.owner, r.group):
            ctx.act(r.id, _action(r, f"{r.path}: " + ", ".join(diffs)))
        else:
            ctx.skip(r.id, f"exists, {r.mode:04o} {r.owner}:{r.group}")


def _action(r: Directory, why: str) -> wire.DirectoryAction:
    return wire.DirectoryAction(
        resource=r.id, op="directory", why=why, path=r.path, mode=r.mode, owner=r.owner, group=r.group
    )
