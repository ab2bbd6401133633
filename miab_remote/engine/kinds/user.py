"""A user: created when missing, its home, shell, primary group and extra groups brought to the declared."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from miab_remote.engine.kinds.base import Context, Kind
from miab_remote.remote import wire


@dataclass(frozen=True)
class User:
    name: str
    system: bool = True
    home: str | None = None
    shell: str = "/usr/sbin/nologin"
    group: str | None = None
    groups: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"user:{self.name}"


class UserKind(Kind[User]):
    resource = User
    ops = ("user",)

    def probe(self, r: User, rendered: Mapping[str, bytes], want_content: bool, spec: wire.ProbeSpec) -> None:
        spec["users"].append(r.name)

    def plan(self, r: User, ctx: Context) -> None:
        fact = ctx.facts.get("users", {}).get(r.name)
        if fact is None:
            ctx.act(r.id, _action(r, f"create user {r.name}", True))
            return
        diffs = []
        if r.home is not None and fact["home"] != r.home:
            diffs.append(f"home {fact['home']}->{r.home}")
        if fact["shell"] != r.shell:
            diffs.append(f"shell {fact['shell']}->{r.shell}")
        if r.group is not None and fact["group"] != r.group:
            diffs.append(f"group {fact['group']}->{r.group}")
        missing = [g for g in r.groups if g not in fact["groups"]]
        if missing:
            diffs.append("add to groups " + ",".join(missing))
        if diffs:
            ctx.act(r.id, _action(r, f"user {r.name}: " + ", ".join(diffs), False))
        else:
            ctx.skip(r.id, f"exists (uid {fact['uid']}), home, shell and groups as declared")


def _action(r: User, why: str, create: bool) -> wire.UserAction:
    return wire.UserAction(
        resource=r.id,
        op="user",
        why=why,
        name=r.name,
        system=r.system,
        home=r.home,
        shell=r.shell,
        group=r.group,
        groups=list(r.groups),
        create=create,
    )
