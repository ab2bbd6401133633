"""The base every box gets: its name as mail software reads it, and the state tree."""

from __future__ import annotations

from collections.abc import Iterator

from miab_remote.api import Command, Directory, File, RecipeContext, Resource, layout


def resources(ctx: RecipeContext) -> Iterator[Resource]:
    name = ctx.host.hostname
    yield File("/etc/hostname", content=f"{name}\n", notify=("command:set-hostname",))
    yield Command("set-hostname", run="hostname -F /etc/hostname", on_notify=True)
    # postfix and other MTAs take the name they announce from /etc/mailname.
    yield File("/etc/mailname", content=f"{name}\n")
    yield Directory(layout.STATE, mode=0o755)
    yield Directory(f"{layout.STATE}/mail", mode=0o755)
