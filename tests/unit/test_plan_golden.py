"""The plans of a whole mail box (every built-in recipe) against recorded facts, compared byte for byte with
plans captured from the planner before its kinds moved into engine/kinds/.

A guard for refactoring the planner, not a test of new behaviour: it passed before the move and must pass
after it. The wire items are kept in the order of their keys, as apply.py gets them. After a deliberate
change of a recipe, a template or a plan's text, write the fixtures again and read their diff:
    MIAB_GOLDEN_WRITE=1 pytest tests/unit/test_plan_golden.py
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from miab_remote.engine.converge import build
from miab_remote.engine.planner import Plan, plan, probe_spec, push_wire, sha256
from miab_remote.engine.resources import Command, Directory, File, Group, Package, Resource, Service, User
from miab_remote.fleet.store import Inventory
from miab_remote.profiles import DEBIAN_12

GOLDEN = Path(__file__).parent / "golden"
NAME = "mail.example.org"
# The box's inventory folder, and the prefix of its fixtures: the golden box, and the same with [acme].
BOXES = {"": GOLDEN, "acme-": GOLDEN / "acme"}
OWED = {"by": ["file:/etc/x"]}

Built = tuple[list[Resource], dict[str, bytes]]


@pytest.fixture(scope="module", params=BOXES)
def box(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Built]:
    hosts = tmp_path_factory.mktemp("golden") / "hosts"
    hosts.mkdir()
    shutil.copy(BOXES[request.param] / f"{NAME}.toml", hosts / f"{NAME}.toml")
    inventory = Inventory(hosts)
    return request.param, build(inventory.load(NAME), DEBIAN_12, inventory.root)


def empty_box(resources: list[Resource], rendered: dict[str, bytes]) -> dict[str, Any]:
    """A fresh box: nothing of the recipes there yet, no package lists."""
    spec = probe_spec(resources, rendered, False)
    return {
        "packages": {n: "absent" for n in spec["packages"]},
        "services": {n: {"load": "not-found", "active": "inactive", "enabled": ""} for n in spec["services"]},
        "users": {n: None for n in spec["users"]},
        "groups": {n: None for n in spec["groups"]},
        "files": {p: {"exists": False} for p in spec["files"]},
        "guards": {i: False for i in spec["guards"]},
        "apt_lists_age": None,
        "pending": {},
    }


def converged_box(resources: list[Resource], rendered: dict[str, bytes]) -> dict[str, Any]:
    """A box where everything is as declared."""
    facts: dict[str, Any] = {
        "packages": {},
        "services": {},
        "users": {},
        "groups": {},
        "files": {},
        "guards": {i: True for i in probe_spec(resources, rendered, False)["guards"]},
        "apt_lists_age": 60.0,
        "pending": {},
    }
    for r in resources:
        if isinstance(r, Package):
            facts["packages"][r.name] = "installed" if r.present else "absent"
        elif isinstance(r, Service):
            facts["services"][r.name] = {
                "load": "loaded",
                "active": "active" if r.running else "inactive",
                "enabled": "enabled" if r.enabled else "disabled",
            }
        elif isinstance(r, User):
            facts["users"][r.name] = {
                "uid": 990,
                "home": r.home or f"/home/{r.name}",
                "shell": r.shell,
                "group": r.group or r.name,
                "groups": sorted(r.groups),
            }
        elif isinstance(r, Directory | File):
            facts["files"][r.path] = {"exists": True, "mode": r.mode, "owner": r.owner, "group": r.group}
            if isinstance(r, File):
                facts["files"][r.path] |= {"type": "file", "sha256": sha256(rendered[r.path])}
            else:
                facts["files"][r.path]["type"] = "directory"
        elif isinstance(r, Group):
            facts["groups"][r.name] = {"gid": 990}
    return facts


def drifted_box(resources: list[Resource], rendered: dict[str, bytes]) -> dict[str, Any]:
    """A converged box an interrupted run and an operator touched: notifications pending (one for something
    no recipe declares), two files changed that notify, a directory's mode, a user's shell, a masked and a
    stopped service, a missing package with old lists, a command's output gone."""
    facts = copy.deepcopy(converged_box(resources, rendered))
    services = [r for r in resources if isinstance(r, Service) and r.running]
    commands = [r for r in resources if isinstance(r, Command)]
    files = [r for r in resources if isinstance(r, File)]
    notifying = [next(r for r in files if r.notify), next(r for r in files if "service:" in str(r.notify))]
    facts["pending"] = {
        services[-1].id: OWED,
        next(r for r in commands if r.on_notify).id: OWED,
        "service:gone": OWED,
    }
    for r in notifying:
        facts["files"][r.path]["sha256"] = sha256(b"edited by hand\n")
    facts["files"][next(r for r in resources if isinstance(r, Directory)).path]["mode"] = 0o700
    user = next(r for r in resources if isinstance(r, User))
    facts["users"][user.name]["shell"] = "/bin/bash"
    facts["services"][services[0].name] = {"load": "masked", "active": "inactive", "enabled": "masked"}
    facts["services"][services[1].name]["active"] = "failed"
    facts["packages"][next(r for r in resources if isinstance(r, Package) and r.present).name] = "absent"
    facts["apt_lists_age"] = 86400.0
    facts["guards"][next(r for r in commands if r.creates).id] = False
    return facts


def as_json(p: Plan) -> dict[str, Any]:
    return {
        "actions": [a.wire for a in p.actions],
        "unchanged": [[s.resource, s.reason] for s in p.unchanged],
        "resumed": p.resumed,
        "changed_resources": p.changed_resources,
    }


CASES: dict[str, Callable[[list[Resource], dict[str, bytes]], Any]] = {
    "probe-spec": lambda res, ren: probe_spec(res, ren, False),
    "probe-spec-diff": lambda res, ren: probe_spec(res, ren, True),
    "plan-empty-box": lambda res, ren: as_json(plan(res, ren, empty_box(res, ren))),
    "plan-converged-box": lambda res, ren: as_json(plan(res, ren, converged_box(res, ren))),
    "plan-drifted-box": lambda res, ren: as_json(plan(res, ren, drifted_box(res, ren))),
    "push-accounts": lambda res, ren: push_wire(res, ren, "accounts"),
}


@pytest.mark.parametrize("case", CASES)
def test_same_plan_as_captured(box: tuple[str, Built], case: str) -> None:
    prefix, built = box
    text = json.dumps(CASES[case](*built), indent=1) + "\n"
    path = GOLDEN / f"{prefix}{case}.json"
    if os.environ.get("MIAB_GOLDEN_WRITE") == "1":
        path.write_text(text)
    assert text == path.read_text()
