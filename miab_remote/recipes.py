"""Recipe loading: a recipe is a Python module with `resources(ctx) -> Iterable[Resource]`.

Recipes are looked up in `<inventory>/recipes/NAME.py` (the operator's own) and then among the built-in
ones shipped in the package. A recipe only declares; it never touches a box and never sees facts.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from miab_remote import layout
from miab_remote.errors import InputError
from miab_remote.model import Host
from miab_remote.paths import builtin_dir
from miab_remote.profiles import OSProfile
from miab_remote.resources import File, Resource


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
    mod_name = f"miab_remote_recipe_{path.parent.name}_{path.stem}_{abs(hash(str(path)))}"
    with _LOADING:
        if mod_name in sys.modules:
            return sys.modules[mod_name]
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise InputError(f"cannot load recipe {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[mod_name] = module
        return module


def load_resources(host: Host, profile: OSProfile, inventory_root: Path) -> list[Resource]:
    ctx = RecipeContext(host, profile)
    out: list[Resource] = []
    for name in host.recipes:
        module = _load_module(find_recipe(name, inventory_root))
        fn = getattr(module, "resources", None)
        if fn is None:
            raise InputError(f"recipe {name!r} ({module.__file__}) has no resources(ctx) function")
        items: Iterable[Resource] = fn(ctx)
        out.extend(items)
    return out


def render_files(resources: list[Resource], ctx_vars: dict[str, Any], templates: Any) -> dict[str, bytes]:
    """Render every File's desired bytes on the laptop (template or literal content)."""
    rendered: dict[str, bytes] = {}
    for r in resources:
        if not isinstance(r, File):
            continue
        if r.content is not None:
            rendered[r.path] = r.content.encode() if isinstance(r.content, str) else r.content
        else:
            rendered[r.path] = templates.render(r.template or r.path, {**ctx_vars, **r.context})
    return rendered
