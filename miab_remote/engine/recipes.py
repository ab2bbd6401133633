"""Recipe loading: a recipe is a Python module with `resources(ctx) -> Iterable[Resource]`.

Recipes are looked up in `<inventory>/recipes/NAME.py` (the operator's own) and then among the built-in
ones shipped in the package. A recipe only declares; it never touches a box and never sees facts.

An operator's recipe that fails (a syntax error, an exception while loading or while yielding its
resources, something yielded that is not a resource) is bad input: one InputError naming the file and
line, before anything is sent to a box.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from miab_remote.engine.assets import builtin_dir
from miab_remote.engine.resources import File, Resource
from miab_remote.errors import InputError
from miab_remote.fleet.model import Host
from miab_remote.mail import layout
from miab_remote.profiles import OSProfile

T = TypeVar("T")


@dataclass(frozen=True)
class RecipeContext:
    """What a recipe may know: the box's inventory and its OS profile."""

    host: Host
    profile: OSProfile

    def template_vars(self) -> dict[str, Any]:
        return {"host": self.host, "profile": self.profile, "options": self.host.options, "layout": layout}


def find_recipe(name: str, inventory_root: Path) -> Path:
    for root in (inventory_root / "recipes", builtin_dir("recipes")):
        path = root / f"{name}.py"
        if path.is_file():
            return path
    raise InputError(
        f"recipe {name!r} not found in {inventory_root / 'recipes'} or the built-in recipes "
        f"({', '.join(sorted(p.stem for p in builtin_dir('recipes').glob('*.py') if not p.stem.startswith('_')))})"
    )


_LOADING = threading.Lock()


def _load_module(path: Path) -> ModuleType:
    """Import a recipe file once per process. Hosts deploy in parallel threads: the lock keeps one of them
    from seeing another's half-executed module."""
    mod_name = f"miab_remote_recipe_{path.parent.name}_{path.stem}_{abs(hash(os.path.abspath(path)))}"
    with _LOADING:
        if mod_name in sys.modules:
            return sys.modules[mod_name]
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise InputError(f"cannot load recipe {path}")
        module = importlib.util.module_from_spec(spec)
        loader = spec.loader
        _operator_code(path, "failed to load", lambda: loader.exec_module(module))
        sys.modules[mod_name] = module
        return module


def _operator_code(path: Path, what: str, run: Callable[[], T]) -> T:
    """Run an operator's recipe code; an exception in it becomes `file:line: recipe ... failed: ...`.

    Built-in recipes are not wrapped: an exception there is a bug of the tool, and its traceback says where.
    """
    if path.is_relative_to(builtin_dir("recipes")):
        return run()
    try:
        return run()
    except InputError:
        raise
    except Exception as e:
        mine = os.path.abspath(path)
        line = e.lineno if isinstance(e, SyntaxError) and os.path.abspath(e.filename or "") == mine else None
        if line is None:
            lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) == mine]
            line = lines[-1] if lines else None
        where = f"{path}:{line}" if line else str(path)
        raise InputError(f"{where}: recipe {path.stem!r} {what}: {type(e).__name__}: {e}") from None


def _collect(fn: Callable[[RecipeContext], Iterable[Any]], ctx: RecipeContext) -> list[Any]:
    return list(fn(ctx))


def load_resources(host: Host, profile: OSProfile, inventory_root: Path) -> list[Resource]:
    ctx = RecipeContext(host, profile)
    out: list[Resource] = []
    for name in host.recipes:
        path = find_recipe(name, inventory_root)
        module = _load_module(path)
        fn = getattr(module, "resources", None)
        if fn is None or not callable(fn):
            raise InputError(f"{path}: recipe {name!r} has no resources(ctx) function")
        items: list[Any] = _operator_code(path, "failed", functools.partial(_collect, fn, ctx))
        for item in items:
            if not isinstance(item, Resource):
                raise InputError(
                    f"{path}: recipe {name!r} yielded {type(item).__name__} {item!r:.60}, not a resource "
                    "(Package, Directory, File, Service, Group, User or Command)"
                )
        out.extend(items)
    return out


def render_files(
    resources: list[Resource], ctx_vars: dict[str, Any], templates: Any, tag: str | None = None
) -> dict[str, bytes]:
    """Render every File's desired bytes on the laptop (template or literal content); with `tag`, only the
    files tagged so (a push of users and aliases sends 4 files: rendering the other 37 is wasted time)."""
    rendered: dict[str, bytes] = {}
    for r in resources:
        if not isinstance(r, File) or (tag is not None and tag not in r.tags):
            continue
        if r.content is not None:
            rendered[r.path] = r.content.encode() if isinstance(r.content, str) else r.content
        else:
            rendered[r.path] = templates.render(r.template or r.path, {**ctx_vars, **r.context})
    return rendered
