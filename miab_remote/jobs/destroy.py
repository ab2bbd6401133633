"""Removing boxes the tool made. The inventory is the operator's record: it is archived, never deleted."""

from __future__ import annotations

from miab_remote import providers
from miab_remote.errors import InputError
from miab_remote.fleet.problems import display_path
from miab_remote.fleet.store import Inventory
from miab_remote.providers.base import Provider


def check_destroyable(inv: Inventory, name: str) -> Provider:
    """The provider that destroys the box, or refuse (exit 2, nothing touched) a box this tool cannot
    destroy: its inventory names no provider (the operator made the server) or one without a destroy.
    Without an inventory, the local provider still cleans up what a box of that name left behind."""
    path = inv.path_for(name)
    if not path.exists():
        left = inv.creating(name)  # a server an interrupted create made and never recorded
        return providers.get(left[0] if left else "local")
    host = inv.load(name)
    provider = host.provider
    if provider in providers.names():
        if provider != "local" and not host.node.get("id"):
            raise InputError(
                f"{name}: not destroyed: {display_path(path)} records no {provider} server ([node] id), so "
                f"miab-remote cannot tell which to remove; nothing was touched. Remove the server at {provider}, "
                "then move the inventory away"
            )
        chosen = providers.get(provider)
        chosen.validate_config()  # the credentials, before anything is asked
        return chosen
    if provider is None or provider == "manual":
        made = "names no provider" if provider is None else 'says provider = "manual"'
        raise InputError(
            f"{name}: not destroyed: {display_path(path)} {made}, so miab-remote did not make this box and cannot "
            "remove it; nothing was touched. Remove the server yourself, then move its inventory away"
        )
    raise InputError(
        f"{name}: not destroyed: destroy for provider {provider!r} is not available yet; nothing was touched. "
        f"Remove the server at {provider}, then move {display_path(path)} away"
    )


def destroy_box(inv: Inventory, provider: Provider, name: str, keep_inventory: bool) -> str:
    """Destroy one box (with the provider check_destroyable gave) and archive its inventory; the line to show."""
    if inv.path_for(name).exists():
        node = inv.load(name).node
    else:
        left = inv.creating(name)
        node = left[1] if left else {}
    removed = provider.destroy(name, node)
    inv.done_creating(name)
    if inv.path_for(name).exists():
        if keep_inventory:
            with inv.edit(name) as doc:  # that box is gone: no server, no key (Host.has_box); a create makes the next
                doc.pop("node", None)
                if doc.get("host_keys"):
                    doc["host_keys"] = []
            removed.append(
                f"kept its inventory {display_path(inv.path_for(name))} without the box "
                f"(`miab-remote create --provider PROVIDER {name}` makes the next one)"
            )
        else:
            removed.append(f"its inventory is kept as {display_path(inv.archive(name))}")
    return f"{name}: destroyed ({'; '.join(removed) or 'nothing was left'})"
