"""Template lookup and rendering on the laptop.

A template is named after its destination path (`etc/nginx/nginx.conf` for /etc/nginx/nginx.conf). The
operator's override in `<inventory>/templates/` wins over the built-in one, so local changes survive every
re-deploy; within each, an OS profile's variants (`PATH@debian-12`, `PATH@dovecot-2.4`) come before the
plain file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from miab_remote.errors import InputError
from miab_remote.paths import builtin_dir


class TemplateSet:
    def __init__(self, override_root: Path | None, variants: tuple[str, ...]) -> None:
        self.roots = [r for r in (override_root, builtin_dir("templates")) if r is not None]
        self.variants = variants
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader([str(r) for r in self.roots]),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,
        )

    def find(self, name: str) -> Path:
        """The file a template name resolves to, honouring override and variant order."""
        name = name.lstrip("/")
        for root in self.roots:
            for candidate in [f"{name}@{v}" for v in self.variants] + [name]:
                path = root / candidate
                if path.is_file():
                    return path
        raise InputError(f"template {name!r} not found in " + " or ".join(str(r) for r in self.roots))

    def render(self, name: str, context: Mapping[str, Any]) -> bytes:
        path = self.find(name)
        root = next(r for r in self.roots if path.is_relative_to(r))
        try:
            template = self.env.get_template(path.relative_to(root).as_posix())
            return template.render(**context).encode()
        except jinja2.TemplateSyntaxError as e:
            raise InputError(f"{path}:{e.lineno}: template syntax error: {e.message}") from None
        except jinja2.UndefinedError as e:
            raise InputError(f"{path}: {e.message}") from None
