"""Deploying boxes: every box's recipes and templates must build before any box is touched."""

from __future__ import annotations

from miab_remote.engine.converge import build
from miab_remote.fleet.model import Host
from miab_remote.fleet.store import Inventory
from miab_remote.profiles import DEBIAN_12, profile_by_id


def check_builds(inv: Inventory, host: Host) -> None:
    """Load every recipe and render every template of a box on the laptop, so that a failed recipe or
    template is bad input (exit 2, one line naming the file) before any box is contacted."""
    build(host, (profile_by_id(host.os) if host.os else None) or DEBIAN_12, inv.root)
