"""A Debian package, installed or removed. Every package of a plan goes in one apt-get, at the position of
the first Package declared (with a refresh of old package lists before it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from miab_remote.engine.kinds.base import Context, Kind
from miab_remote.engine.plans import Action
from miab_remote.remote import wire

APT_LISTS_MAX_AGE = 6 * 3600.0


@dataclass(frozen=True)
class Package:
    name: str
    present: bool = True

    @property
    def id(self) -> str:
        return f"package:{self.name}"


class PackageKind(Kind[Package]):
    resource = Package
    ops = ("apt_update", "apt_install", "apt_remove")

    def probe(self, r: Package, rendered: Mapping[str, bytes], want_content: bool, spec: wire.ProbeSpec) -> None:
        spec["packages"].append(r.name)

    def begin(self, ctx: Context) -> None:
        installed: Mapping[str, str] = ctx.facts.get("packages", {})
        packages = [r for r in ctx.resources if isinstance(r, Package)]
        ctx.installing = [p.name for p in packages if p.present and installed.get(p.name) != "installed"]
        ctx.removing = [p.name for p in packages if not p.present and installed.get(p.name) == "installed"]

    def plan(self, r: Package, ctx: Context) -> None:
        if "apt" not in ctx.once:
            ctx.once.add("apt")
            _plan_apt(ctx, ctx.facts.get("apt_lists_age"))
            ctx.changed.update(f"package:{n}" for n in ctx.installing + ctx.removing)
        if r.name not in ctx.installing and r.name not in ctx.removing:
            ctx.skip(r.id, "installed" if r.present else "not installed")


def _plan_apt(ctx: Context, lists_age: float | None) -> None:
    """The one apt-get install (after a refresh of missing or old lists) and the one apt-get remove."""
    installing, removing, out = ctx.installing, ctx.removing, ctx.out
    if installing:
        if lists_age is None or lists_age > APT_LISTS_MAX_AGE:
            age = "missing" if lists_age is None else f"{lists_age / 3600:.0f} h old"
            why = f"refresh package lists ({age})"
            out.actions.append(Action(wire.AptUpdate(resource="apt:update", op="apt_update", why=why)))
        resource = f"package:{installing[0]}" if len(installing) == 1 else "packages"
        why = "install " + " ".join(installing)
        out.actions.append(
            Action(wire.AptPackages(resource=resource, op="apt_install", why=why, packages=installing))
        )
    if removing:
        why = "remove " + " ".join(removing)
        out.actions.append(Action(wire.AptPackages(resource="packages", op="apt_remove", why=why, packages=removing)))
