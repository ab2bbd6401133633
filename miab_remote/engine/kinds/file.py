"""A file whose whole content the tool owns, rendered on the laptop; carried inline with the apply when it
changes, checked on the box (under its lock) against what the plan saw."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from miab_remote.engine.kinds.base import Context, Kind, PushContext, meta_changes
from miab_remote.engine.plans import PlanError, sha256
from miab_remote.errors import InputError
from miab_remote.remote import wire


@dataclass(frozen=True)
class File:
    """A file whose whole content the tool owns: a jinja2 template (default: named after `path`) or `content`.

    `secret` files never show in a diff and are never read back from the box.
    `notify` names services or commands (by id) that must react when this file changes.
    """

    path: str
    template: str | None = None
    content: str | bytes | None = None
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    notify: tuple[str, ...] = ()
    secret: bool = False
    # "accounts": rendered from users and aliases, so `user add` and `alias add` push it on its own.
    tags: tuple[str, ...] = ()
    context: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> str:
        return f"file:{self.path}"


class FileKind(Kind[File]):
    resource = File
    ops = ("file",)

    def check(self, r: File) -> None:
        if r.template is not None and r.content is not None:
            raise InputError(f"recipe error: {r.id} has both a template and content")

    def tagged(self, r: File, tag: str) -> bool:
        return tag in r.tags

    def probe(self, r: File, rendered: Mapping[str, bytes], want_content: bool, spec: wire.ProbeSpec) -> None:
        spec["files"].append(r.path)
        if want_content and not r.secret:  # the old content comes back for the diff when it differs
            spec["want_content"][r.path] = sha256(rendered[r.path])

    def plan(self, r: File, ctx: Context) -> None:
        data = ctx.rendered[r.path]
        fact = ctx.facts.get("files", {}).get(r.path, {"exists": False})
        notify = ctx.reacting_targets(r.notify)
        digest = sha256(data)
        if not fact.get("exists"):
            ctx.act(r.id, file_action(r, data, f"create {r.path}", True, None, notify))
            return
        if fact.get("type") != "file":
            raise PlanError(f"{r.path} should be a regular file but is a {fact.get('type')}; move it away first")
        diffs = [] if fact.get("sha256") == digest else ["content"]
        diffs += meta_changes(fact, r.mode, r.owner, r.group)
        if diffs:
            why = f"{r.path}: update " + ", ".join(diffs)
            ctx.act(r.id, file_action(r, data, why, "content" in diffs, fact.get("sha256"), notify))
        else:
            # A secret file's digest is not shown either: it would let a weak password be guessed offline.
            same = "secret, not shown" if r.secret else f"sha256 {digest[:12]}"
            ctx.skip(r.id, f"content identical ({same}), {r.mode:04o} {r.owner}:{r.group}")

    def push(self, r: File, ctx: PushContext, by: list[int]) -> wire.Action:
        notify = [t for t in r.notify if t in ctx.members and t in ctx.reacting]
        return file_action(r, ctx.rendered[r.path], f"update {r.path}", True, wire.ANY, notify)


def file_action(
    r: File, data: bytes, why: str, content: bool, expect: str | None, notify: list[str]
) -> wire.FileAction:
    """The wire item that puts `data` at r.path (content=False: only its mode and owner)."""
    return wire.FileAction(
        resource=r.id,
        op="file",
        why=why,
        path=r.path,
        mode=r.mode,
        owner=r.owner,
        group=r.group,
        sha256=sha256(data),
        secret=r.secret,
        content=content,
        size=len(data) if content else 0,
        expect=expect,
        notify=notify,
    )
