"""Setting, showing and removing a box's outbound relay: its [relay] table in the inventory and its
password in the laptop's secrets store, never the one in the other.

Every value is checked, and every box's new inventory validated, before the password is asked for, so a
typo costs no typing and changes nothing. The change reaches the box with `deploy`, not with the account
push: it rewrites main.cf, may install packages (libsasl2-modules) and must pass postfix's own check,
which is a converge; the push carries only the users' and aliases' maps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Table

from miab_remote.errors import InputError
from miab_remote.fleet import rules, secrets
from miab_remote.fleet.model import Relay
from miab_remote.fleet.problems import display_path
from miab_remote.fleet.schema import validate
from miab_remote.fleet.store import Inventory
from miab_remote.fleet.syntax import read_document
from miab_remote.mail import relay

NOTHING = "nothing was changed"


@dataclass(frozen=True)
class RelayChange:
    """What `relay set` was told; None: keep the box's current value (a box without [relay] needs all three)."""

    host: str | None = None
    port: int | None = None
    user: str | None = None
    ca_file: Path | None = None  # as given, relative to the current folder
    system_cas: bool = False  # drop ca_file: verify against the system's CAs again


def check_set(inv: Inventory, names: list[str], change: RelayChange) -> dict[str, tomlkit.TOMLDocument]:
    """Each box's inventory with the change made, validated, in memory: bad input before anything is asked
    for or written."""
    found = [
        f"{flag}: {problem}"
        for flag, problem in (
            ("--host", change.host is not None and rules.address_problem(change.host)),
            ("--port", change.port is not None and rules.relay_port_problem(change.port)),
            ("--user", change.user is not None and rules.relay_user_problem(change.user)),
        )
        if problem
    ]
    if found:
        raise InputError("; ".join(found) + f"; {NOTHING}")
    if change.ca_file is not None and change.system_cas:
        raise InputError(f"--ca-file and --system-cas contradict each other; {NOTHING}")
    if change.ca_file is not None:
        relay.read_ca(change.ca_file, f"--ca-file {change.ca_file}")
    out: dict[str, tomlkit.TOMLDocument] = {}
    for name in dict.fromkeys(names):
        path = inv.path_for(name)
        doc = read_document(inv.load_text(name), path)
        current = doc.get("relay")
        missing = [
            flag
            for flag, key, value in (("--host", "host", change.host), ("--port", "port", change.port),
                                     ("--user", "user", change.user))
            if value is None and not (isinstance(current, dict) and key in current)
        ]  # fmt: skip
        if missing:
            raise InputError(
                f"{name} has no [relay] yet: give {', '.join(missing)} (--port 587 for STARTTLS, 465 for "
                f"implicit TLS); {NOTHING}"
            )
        _edit(doc, change, inv.root)
        validate(doc.as_string(), path)  # an InventoryError names the file, line and field
        out[name] = doc
    return out


def set_relay(
    inv: Inventory, checked: dict[str, tomlkit.TOMLDocument], change: RelayChange, password: str
) -> list[str]:
    """Store the password, then write each box's [relay] (under its lock, checked again); a line per box."""
    relay.check_password(password)
    lines = []
    for name in checked:
        secrets.put(name, secrets.RELAY_PASSWORD, password)
        with inv.edit(name) as doc:
            _edit(doc, change, inv.root)
        r = inv.load(name).relay
        assert r is not None
        lines.append(
            f"{name}: relay {relay.nexthop(r)} (user {r.user}, {tls_of(r)}) in {display_path(inv.path_for(name))}; "
            f"its password in {display_path(secrets.path_for(name))}"
        )
    return lines


def show(inv: Inventory, name: str) -> dict[str, Any]:
    """A box's relay as the operator may see it: everything but the password, and whether one is stored."""
    r = inv.load(name).relay
    stored = secrets.get(name, secrets.RELAY_PASSWORD) is not None
    if r is None:
        return {"relay": None, "password_stored": stored}
    return {
        "relay": {
            "host": r.host,
            "port": r.port,
            "user": r.user,
            "tls": tls_of(r),
            "verified_against": display_path(r.ca_file) if r.ca_file else "the system's CAs",
            "relayhost": relay.nexthop(r),
        },
        "password_stored": stored,
    }


def remove(inv: Inventory, names: list[str]) -> list[str]:
    """Drop [relay] and forget its password; a line per box. A box with neither is bad input (nothing done)."""
    names = list(dict.fromkeys(names))
    for name in names:
        if inv.load(name).relay is None and secrets.get(name, secrets.RELAY_PASSWORD) is None:
            raise InputError(f"{name} has no relay to remove; {NOTHING}")
    lines = []
    for name in names:
        with inv.edit(name) as doc:
            doc.pop("relay", None)
        forgot = secrets.remove(name, secrets.RELAY_PASSWORD)
        lines.append(
            f"{name}: relay removed from {display_path(inv.path_for(name))}"
            + ("; its password forgotten" if forgot else "")
        )
    return lines


def deploy_note(names: list[str]) -> str:
    return (
        f"run `miab-remote deploy {' '.join(dict.fromkeys(names))}` to apply it: postfix's main.cf changes (and "
        "packages may be installed), which only a deploy does"
    )


def tls_of(r: Relay) -> str:
    return "implicit TLS" if r.port == 465 else "STARTTLS"


def _edit(doc: tomlkit.TOMLDocument, change: RelayChange, root: Path) -> None:
    """Make the change in a box's document, keeping the operator's comments in an existing [relay]."""
    table = doc.get("relay")
    if not isinstance(table, Table):
        doc.pop("relay", None)
        table = tomlkit.table()
        table.add(tomlkit.comment("The smarthost for all outgoing mail (`miab-remote relay set`); its password is"))
        table.add(tomlkit.comment("in your private secrets store, never here."))
        doc["relay"] = table
    for key, value in (("host", change.host), ("port", change.port), ("user", change.user)):
        if value is not None:
            table[key] = value
    if change.ca_file is not None:
        table["ca_file"] = inventory_path(change.ca_file, root)
    elif change.system_cas:
        table.pop("ca_file", None)


def inventory_path(path: Path, root: Path) -> str:
    """A path as the inventory keeps it: relative to the inventory folder when inside it, else absolute."""
    absolute = Path(os.path.abspath(path))
    folder = Path(os.path.abspath(root))
    return str(absolute.relative_to(folder)) if absolute.is_relative_to(folder) else str(absolute)
