"""Template lookup and rendering on the laptop.

A template is named after its destination path (`etc/nginx/nginx.conf` for /etc/nginx/nginx.conf). The
operator's override in `<inventory>/templates/` wins over the built-in one, so local changes survive every
re-deploy; within each, an OS profile's variants (`PATH@debian-12`, `PATH@dovecot-2.4`) come before the
plain file.

Every way a template can fail (not found, a missing include, a syntax error, an undefined variable, an
exception raised while rendering) is bad input: one InputError naming the file and, where there is one,
the line, before anything is sent to a box. An operator's template (or include) that is a symlink
resolving outside the inventory folder is refused, so a deploy never ships a laptop file by accident.

Compiled templates are cached in `$XDG_CACHE_HOME/miab-remote/jinja2` (default `~/.cache/...`, mode 0700):
compiling all of them took 45 ms of every run. jinja2 keys each entry by the template's file name and
checks the source's checksum, so an edited template is compiled again; a cache that cannot be written
only costs that time.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2

from miab_remote.engine.assets import builtin_dir
from miab_remote.errors import InputError


class _ConfinedLoader(jinja2.FileSystemLoader):
    """A FileSystemLoader that refuses an operator file (includes and imports too) leaving the folder."""

    def __init__(self, roots: list[Path], check: Callable[[Path], None]) -> None:
        super().__init__([str(r) for r in roots])
        self.check = check

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        self.check(Path(filename))
        return source, filename, uptodate


def bytecode_cache() -> jinja2.BytecodeCache | None:
    """The on-disk cache of compiled templates, or None where no private folder for it can be made."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "miab-remote" / "jinja2"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
            return None  # someone else's or shared: compiled code is not loaded from there
    except OSError:
        return None
    return jinja2.FileSystemBytecodeCache(str(folder))


class TemplateSet:
    def __init__(self, override_root: Path | None, variants: tuple[str, ...]) -> None:
        self.override_root = override_root
        self.roots = [r for r in (override_root, builtin_dir("templates")) if r is not None]
        self.variants = variants
        self.env = jinja2.Environment(
            loader=_ConfinedLoader(self.roots, self._check_confined),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,
            bytecode_cache=bytecode_cache(),
        )

    def snapshot(self) -> tuple[tuple[str, int, int], ...]:
        """Every template file's path, size and mtime: equal snapshots render equal files."""
        out = []
        for root in self.roots:
            for folder, _dirs, files in os.walk(root):
                for f in files:
                    with contextlib.suppress(OSError):
                        st = os.stat(os.path.join(folder, f))
                        out.append((os.path.join(folder, f), st.st_size, st.st_mtime_ns))
        return tuple(sorted(out))

    def find(self, name: str) -> Path:
        """The file a template name resolves to, honouring override and variant order."""
        name = name.lstrip("/")
        for root in self.roots:
            for candidate in [f"{name}@{v}" for v in self.variants] + [name]:
                path = root / candidate
                if path.is_file():
                    self._check_confined(path)
                    return path
        raise InputError(f"template {name!r} not found in " + " or ".join(str(r) for r in self.roots))

    def render(self, name: str, context: Mapping[str, Any]) -> bytes:
        path = self.find(name)
        root = next(r for r in self.roots if path.is_relative_to(r))
        try:
            template = self.env.get_template(path.relative_to(root).as_posix())
            return template.render(**context).encode()
        except InputError:
            raise
        except jinja2.TemplateSyntaxError as e:
            where = e.filename or str(path)
            raise InputError(f"{where}:{e.lineno}: template syntax error: {e.message}") from None
        except jinja2.TemplateNotFound as e:
            raise InputError(
                f"{self._where(e, path)}: template {e.name!r} (included or imported) not found in "
                + " or ".join(str(r) for r in self.roots)
            ) from None
        except jinja2.UndefinedError as e:
            raise InputError(f"{self._where(e, path)}: {e.message}") from None
        except Exception as e:  # a filter or a test raising: still the template's fault, not a crash
            raise InputError(f"{self._where(e, path)}: rendering failed: {type(e).__name__}: {e}") from None

    # -- helpers

    def _where(self, error: BaseException, path: Path) -> str:
        """`file:line` of the innermost template frame in the error's traceback (jinja2 rewrites
        tracebacks so that template code shows with its own file and line), or the template's file."""
        roots = [str(r) for r in self.roots]
        frames = [f for f in traceback.extract_tb(error.__traceback__) if any(f.filename.startswith(r) for r in roots)]
        if not frames:
            return str(path)
        return f"{frames[-1].filename}:{frames[-1].lineno}"

    def _check_confined(self, path: Path) -> None:
        """Refuse an operator template that resolves (through symlinks) outside the inventory folder."""
        root = self.override_root
        if root is None or not Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root)):
            return
        folder = Path(os.path.abspath(root)).parent.resolve()
        target = path.resolve()
        if not target.is_relative_to(folder):
            raise InputError(
                f"{path}: a symlink to {target}, outside the inventory folder {folder}; an operator's template "
                f"must live in the inventory folder: copy the file into {root} instead of linking it"
            )
