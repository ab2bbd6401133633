"""What the transport needs to know of a box to reach it: its address, pinned keys and SSH settings,
and no more of its inventory (the fleet layer makes one from a Host: `Host.target`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SSHSettings:
    """The inventory's `[ssh]` table."""

    user: str = "root"
    port: int = 22
    identity_file: str | None = None
    # The jump host(s), ProxyJump's syntax ("[user@]host[:port]", comma-separated), and their pinned keys.
    jump: str | None = None
    jump_host_keys: tuple[str, ...] = ()
    # Which of user, port, identity_file, jump the inventory sets itself: those win over ~/.ssh/config.
    given: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SSHTarget:
    """One box to connect to. `name` and `path` (its inventory file) only name it in messages."""

    name: str
    address: str
    host_keys: tuple[str, ...]
    ssh: SSHSettings = SSHSettings()
    path: Path = Path()
