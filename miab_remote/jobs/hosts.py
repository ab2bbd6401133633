"""The boxes in the inventory, as the operator (or a web UI) lists them."""

from __future__ import annotations

from typing import Any

from miab_remote.fleet.store import Inventory
from miab_remote.mail import mailmaps


def summaries(inv: Inventory) -> dict[str, dict[str, Any]]:
    """One row per box: where it is, what made it, what it serves (never users' hashes)."""
    rows: dict[str, dict[str, Any]] = {}
    for name in inv.names():
        h = inv.load(name)
        rows[h.name] = {
            "address": h.address,
            "box": h.has_box,  # False: the box was destroyed and its inventory kept (the start of a move)
            "provider": h.provider,
            "os": h.os,
            "domains": list(h.domains),
            "users": len(h.users),
            "aliases": len(h.aliases),
            "admin_email": mailmaps.admin_email(h),
        }
    return rows
