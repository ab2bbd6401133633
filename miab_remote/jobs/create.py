"""Making boxes: every name is checked before anything is made, then each box is made by its provider and
recorded in its inventory (address, pinned host key, provider, os). A box whose inventory cannot be
written is destroyed again: without its pinned key nobody could reach it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import tomlkit

from miab_remote import providers
from miab_remote.errors import InputError, ProviderError
from miab_remote.fleet import store
from miab_remote.fleet.model import Host
from miab_remote.fleet.problems import display_path
from miab_remote.fleet.store import Inventory
from miab_remote.jobs.dns import registrar
from miab_remote.names import fqdn_problem
from miab_remote.providers.base import CreatedBox, CreateOptions, NodeKeyMismatch, Provider

Say = Callable[[str], None]


def check_new_boxes(
    inv: Inventory,
    names: Sequence[str],
    provider_name: str = "local",
    image: str | None = None,
    options: CreateOptions | None = None,
) -> Provider:
    """`create`'s arguments, all checked before anything is made: the provider exists and is set up, it
    makes boxes of `image` (when one is asked for), each
    name is a box name as the inventory wants it (a lower-case FQDN: the inventory's hostname rule, and
    the provider's own, e.g. local's 64 characters), given once, and an existing inventory of that name is
    valid and its box is gone (`box_left`): a create onto it is a move, from any provider. The provider to
    make them with."""
    provider = providers.get(provider_name, options)
    if image is not None:
        provider.check_image(image)
    seen: set[str] = set()
    for name in names:
        if problem := fqdn_problem(name, "a box name", "box1.example.org"):
            raise InputError(f"{problem}; nothing was made")
        provider.check_name(name)
        if name in seen:
            raise InputError(f"{name} is given twice; nothing was made")
        seen.add(name)
        if inv.path_for(name).exists() and (left := box_left(inv.load(name))):
            raise InputError(f"{left}; nothing was made")
    if inv.root.exists() and not inv.root.is_dir():
        raise InputError(f"the inventory folder {display_path(inv.root)} is not a folder; nothing was made")
    return provider


def box_left(host: Host) -> str | None:
    """Why the box of an existing inventory may still exist (a create would take over its record), or None
    when it is gone: the local provider knows its own boxes; of any other box, the inventory must record
    none (`Host.has_box`: no [node] id, no pinned key, as `destroy --keep-inventory` leaves it)."""
    where = display_path(host.path)
    first = f"destroy it first (`miab-remote destroy --keep-inventory {host.name}` keeps the inventory for the new box)"
    if host.node.get("id"):
        return f"{where} records {host.provider} server {host.node['id']}, which may still run; {first}"
    if host.provider == "local":
        try:
            status = providers.get("local").status(host.name)
        except OSError as e:
            return f"{where} is a local box's, and the local boxes cannot be read ({e}); run create as root"
        return None if status == "absent" else f"a local box {host.name} still exists ({status}); {first}"
    if not host.has_box:
        return None
    gone = (
        f"Once it is (take its last backup first), empty its pinned keys (host_keys = [] in {where}) and run "
        "create again"
    )
    if host.provider in (None, "manual"):
        made = "no provider" if host.provider is None else "provider manual"
        return (
            f"{where} pins the host key of a box you made ({made}), which may still run: miab-remote cannot remove "
            f"it or tell whether it is gone. {gone}"
        )
    return (
        f"{where} pins the host key of a {host.provider} box but records no server ([node] id), which may still "
        f"run: miab-remote cannot tell which server it is. Remove it at {host.provider}. {gone}"
    )


def finish_interrupted(inv: Inventory, names: Sequence[str]) -> list[str]:
    """Remove the servers earlier creates of these names made and were killed before recording: the next
    run finishes what the last one left. One line per server removed."""
    lines = []
    for name in names:
        left = inv.creating(name)
        if left is None:
            continue
        provider_name, node = left
        if inv.path_for(name).exists() and inv.load(name).node.get("id") == node.get("id"):
            inv.done_creating(name)  # it was recorded after all
            continue
        provider = providers.get(provider_name)
        provider.validate_config()
        removed = provider.destroy(name, node)
        inv.done_creating(name)
        what = f"{provider_name} server {node['id']}" if node.get("id") else f"a {provider_name} server asked for"
        lines.append(f"{name}: an interrupted create had left {what}: {'; '.join(removed)}")
    return lines


def _record(doc: tomlkit.TOMLDocument, box: CreatedBox, provider: str) -> None:
    """The provider's part of an inventory: where the box is, its key, login, os, [node]. The rest (users,
    aliases, options, [relay], [backup], dns) is the operator's and stays as it was."""
    doc["address"] = box.address
    doc["host_keys"] = [box.host_key_public] if box.host_key_public else []
    doc["provider"] = provider
    doc["os"] = box.os
    for key, value in (("ipv4", box.ipv4), ("ipv6", box.ipv6)):
        if value:
            doc[key] = value
        elif key in doc:
            del doc[key]
    if box.resolvers:
        if "options" not in doc:
            doc["options"] = tomlkit.table()
        doc["options"]["resolvers"] = list(box.resolvers)
    if "ssh" not in doc:
        doc["ssh"] = tomlkit.table()
    doc["ssh"]["user"] = box.ssh_user
    if box.node:
        node = tomlkit.table()
        node.comment("the cloud server create made; destroy removes it through the same API")
        for key, value in box.node.items():
            node[key] = value
        doc["node"] = node
    elif "node" in doc:
        del doc["node"]


def _moved(doc: tomlkit.TOMLDocument, old: Host, box: CreatedBox, provider: str) -> list[str]:
    """A create onto a kept inventory: what changed beyond the provider's part, for the operator."""
    notes = [f"moved from {old.provider or 'no provider'} ({old.os or 'os unknown'}, {old.address})"]
    options = doc.get("options")
    if old.provider == "local" and not box.resolvers and options is not None and "resolvers" in options:
        del options["resolvers"]  # the local boxes' resolver (the bridge's dnsmasq) means nothing elsewhere
        notes.append("dropped options.resolvers (the local boxes' resolver): the box resolves from the DNS root")
    route = [f"[ssh] port {old.ssh.port}"] if "port" in old.ssh.given and old.ssh.port != 22 else []
    route += [f"[ssh] jump {old.ssh.jump}"] if "jump" in old.ssh.given and old.ssh.jump else []
    if route:  # the operator's way to the old box (a tunnel, a bastion): kept, but the new box is elsewhere
        notes.append(f"kept {' and '.join(route)}: check that it reaches the new box at {box.address}")
    was = (old.ipv4 or old.address, old.ipv6)
    now = (box.ipv4 or box.address, box.ipv6)
    if provider != "local" and was != now:
        changed = " and ".join(f"{a or 'none'} to {b or 'none'}" for a, b in zip(was, now, strict=True) if a != b)
        notes.append(
            f"the address changed from {changed}: at the registrar, change the glue records and the A/AAAA "
            f"records that name the box (after the deploy, `miab-remote dns {old.name}` prints them)"
        )
    return notes


def _write_inventory(
    inv: Inventory, name: str, box: CreatedBox, provider: str, key_path: Path
) -> tuple[str, list[str]]:
    """Record the new box; the line to show, and notes (a move's)."""
    path = inv.path_for(name)
    if path.exists():
        old = inv.load(name)
        with inv.edit(name) as doc:
            _record(doc, box, provider)
            notes = _moved(doc, old, box, provider)
        return (
            f"{name}: created at {box.address}; kept the existing inventory {path} (users, aliases and options; "
            "re-pinned)",
            notes,
        )
    inv.create(name, _new_document(name, box, provider, key_path))
    return f"{name}: created at {box.address}; inventory {path}", []


def _new_document(name: str, box: CreatedBox, provider: str, key_path: Path) -> tomlkit.TOMLDocument:
    doc = store.new_document(
        name,
        box.address,
        provider=provider,
        host_keys=[box.host_key_public] if box.host_key_public else [],
        os=box.os,
        ssh_user=box.ssh_user,
        identity_file=str(key_path),
    )
    _record(doc, box, provider)
    return doc


def _registrar_notes(host: Host) -> list[str]:
    """A new cloud box's part at the registrar, once its first deploy made it its domains' DNS server."""
    reg = registrar(host)
    glue = ", ".join(f"{g['name']} {g['type']} {g['value']}" for g in reg["glue"])
    lines = [f"at the registrar, after the first deploy: glue records {glue}"]
    lines += [f"  nameservers of {zone}: {', '.join(ns)}" for zone, ns in reg["delegations"].items()]
    return lines


def _refused(inv: Inventory, name: str, provider: str, e: NodeKeyMismatch, key_path: Path) -> ProviderError:
    """A server that presented another host key: recorded in the archive when it was destroyed, as an
    unpinned inventory when the operator chose to keep it (deploy refuses it until `trust`)."""
    box = replace(e.box, host_key_public="")
    if e.destroyed:
        where = inv.archive_record(name, _new_document(name, box, provider, key_path))
        return ProviderError(f"{e}\nits record is kept as {display_path(where)}")
    if inv.path_for(name).exists():
        with inv.edit(name) as doc:
            _record(doc, box, provider)
    else:
        inv.create(name, _new_document(name, box, provider, key_path))
    return ProviderError(f"{e}\nit is recorded, with no key pinned, in {display_path(inv.path_for(name))}")


def create_box(
    inv: Inventory, provider: Provider, name: str, key_path: Path, key_line: str, say: Say, image: str | None = None
) -> str:
    """Make one box of `image` (default: the provider's) and record it; the line to show the operator.
    Raises MiabError on failure."""

    def journal(node: Mapping[str, str] | None) -> None:
        if node is None:
            inv.done_creating(name)
        else:
            inv.note_creating(name, provider.name, node)

    try:
        box = provider.create(name, key_line, progress=say, image=image or provider.default_image, journal=journal)
    except NodeKeyMismatch as e:
        error = _refused(inv, name, provider.name, e, key_path)
        if not e.destroyed:
            inv.done_creating(name)  # the inventory records it now
        raise error from None
    try:
        line, moved = _write_inventory(inv, name, box, provider.name, key_path)
        inv.done_creating(name)
        notes = [*moved, *box.notes, *(_registrar_notes(inv.load(name)) if box.node else [])]
        return "\n".join([line, *(f"    {note}" for note in notes)])
    except BaseException as e:
        say("the inventory could not be written: destroying the new box")
        why = str(e) or type(e).__name__
        try:
            provider.destroy(name, box.node)
            inv.done_creating(name)
        except Exception as cleanup:
            raise ProviderError(
                f"the inventory could not be written ({why}), and destroying the new box failed too "
                f"({cleanup}); run `miab-remote destroy {name}`"
            ) from e
        if not isinstance(e, Exception):
            raise
        raise ProviderError(f"the inventory could not be written ({why}); the new box was destroyed") from e
