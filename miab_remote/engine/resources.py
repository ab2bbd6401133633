"""The desired-state items a recipe declares. They only describe; the planner compares them to facts.

Every resource has an `id` ("kind:name") that notifications and reports refer to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Package:
    name: str
    present: bool = True

    @property
    def id(self) -> str:
        return f"package:{self.name}"


@dataclass(frozen=True)
class Directory:
    path: str
    mode: int = 0o755
    owner: str = "root"
    group: str = "root"

    @property
    def id(self) -> str:
        return f"directory:{self.path}"


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


@dataclass(frozen=True)
class Service:
    """A systemd service. Files that notify it are checked by `validator` (run as root) before it is
    reloaded (`reload=True`) or restarted, at most once per run, at the point where it is declared."""

    name: str
    running: bool = True
    enabled: bool = True
    reload: bool = False
    validator: str | None = None
    # The service our own SSH access goes through (sshd): before it is reloaded, a second connection must
    # prove that key login works, and after it, a fresh connection must still get in, so that a deploy
    # never locks the operator out.
    carries_access: bool = False

    @property
    def id(self) -> str:
        return f"service:{self.name}"


@dataclass(frozen=True)
class Group:
    name: str
    system: bool = True

    @property
    def id(self) -> str:
        return f"group:{self.name}"


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


@dataclass(frozen=True)
class Command:
    """A shell command run as root, guarded so that a converged box skips it.

    `creates` skips it while that path exists; `unless` skips it while a read-only shell test exits 0
    (use one of the two). `on_notify` runs it whenever a resource that notifies it changed, and, with
    `creates` or `unless`, also when its guard says it is missing ("rebuild when the source changed or
    the output is gone").
    """

    name: str
    run: str
    creates: str | None = None
    unless: str | None = None
    on_notify: bool = False
    notify: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"command:{self.name}"


Resource = Package | Directory | File | Service | Group | User | Command
