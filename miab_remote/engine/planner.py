"""Planning is pure: (resources, rendered files, facts) in, actions out. Nothing here touches a box.

Each resource either yields actions (with a `why` an operator can read) or a `Skip` that says why nothing
needs doing. Notifications are resolved here too, so a dry run shows exactly what a real run would do,
including the restart that a changed file will cause. A notification an interrupted run could not deliver
is in the box's journal (facts["pending"]) and is delivered now, even when no file changed.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from miab_remote.engine.resources import Command, Directory, File, Group, Package, Resource, Service, User
from miab_remote.errors import InputError

APT_LISTS_MAX_AGE = 6 * 3600.0
PENDING = "pending from an interrupted run"


class PlanError(InputError):
    """The box is in a state the plan cannot handle safely (e.g. a directory where a file belongs)."""


@dataclass(frozen=True)
class Action:
    resource: str
    op: str
    why: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"resource": self.resource, "op": self.op, "why": self.why, **self.params}


@dataclass(frozen=True)
class Skip:
    resource: str
    reason: str


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    unchanged: list[Skip] = field(default_factory=list)
    # Notifications left pending on the box by an interrupted run, which this plan delivers.
    resumed: list[str] = field(default_factory=list)

    @property
    def changed_resources(self) -> list[str]:
        return list(dict.fromkeys(a.resource for a in self.actions if a.op != "apt_update"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_resources(resources: Sequence[Resource]) -> None:
    """Recipe sanity: unique ids, one guard per command, notify targets that exist and come later."""
    position: dict[str, int] = {}
    for i, r in enumerate(resources):
        if r.id in position:
            raise InputError(f"recipe error: {r.id} is declared twice")
        position[r.id] = i
    for i, r in enumerate(resources):
        if isinstance(r, Command):
            if not (r.creates or r.unless or r.on_notify):
                raise InputError(f"recipe error: {r.id} needs a guard (creates, unless or on_notify)")
            if r.creates and r.unless:
                raise InputError(f"recipe error: {r.id} has both creates and unless; use one")
        if isinstance(r, File) and r.template is not None and r.content is not None:
            raise InputError(f"recipe error: {r.id} has both a template and content")
        for target in getattr(r, "notify", ()):
            if target not in position:
                raise InputError(f"recipe error: {r.id} notifies {target}, which no recipe declares")
            if position[target] < i:
                raise InputError(f"recipe error: {r.id} notifies {target}, declared before it; declare it after")
            if not target.startswith(("service:", "command:")):
                raise InputError(f"recipe error: {r.id} notifies {target}; only services and commands react")
            tr = resources[position[target]]
            if isinstance(tr, Command) and not tr.on_notify:
                raise InputError(f"recipe error: {r.id} notifies {target}, which is not on_notify")


def _reacting(resources: Sequence[Resource]) -> set[str]:
    """Notify targets that react: the box journals them before their notifier changes anything."""
    return {r.id for r in resources if isinstance(r, Command) or (isinstance(r, Service) and r.running)}


def probe_spec(resources: Sequence[Resource], rendered: Mapping[str, bytes], want_content: bool) -> dict[str, Any]:
    """What the single probe must read for these resources."""
    files = [r.path for r in resources if isinstance(r, File | Directory)]
    want = {
        r.path: sha256(rendered[r.path]) for r in resources if isinstance(r, File) and want_content and not r.secret
    }
    guards: dict[str, dict[str, str]] = {}
    for r in resources:
        if isinstance(r, Command) and r.creates:
            guards[r.id] = {"creates": r.creates}
        elif isinstance(r, Command) and r.unless:
            guards[r.id] = {"unless": r.unless}
    return {
        "files": files,
        "want_content": want,
        "packages": [r.name for r in resources if isinstance(r, Package)],
        "services": [r.name for r in resources if isinstance(r, Service)],
        "users": [r.name for r in resources if isinstance(r, User)],
        "groups": [r.name for r in resources if isinstance(r, Group)],
        "guards": guards,
    }


def _meta_changes(fact: Mapping[str, Any], mode: int, owner: str, group: str) -> list[str]:
    changes = []
    if fact.get("mode") != mode:
        changes.append(f"mode {fact.get('mode', 0):04o}->{mode:04o}")
    if fact.get("owner") != owner or fact.get("group") != group:
        changes.append(f"owner {fact.get('owner')}:{fact.get('group')}->{owner}:{group}")
    return changes


def plan(resources: Sequence[Resource], rendered: Mapping[str, bytes], facts: Mapping[str, Any]) -> Plan:
    """Decide what to do. `rendered` maps each File path to its desired bytes."""
    check_resources(resources)
    out = Plan()
    changed: set[str] = set()  # resource ids that will change in this run (for notifications)
    notifiers: dict[str, list[str]] = {}
    for r in resources:
        for target in getattr(r, "notify", ()):
            notifiers.setdefault(target, []).append(r.id)
    reacting = _reacting(resources)
    pending = {str(k) for k in facts.get("pending", {})}

    pkg_facts: Mapping[str, str] = facts.get("packages", {})
    packages = [r for r in resources if isinstance(r, Package)]
    installing = [p.name for p in packages if p.present and pkg_facts.get(p.name) != "installed"]
    removing = [p.name for p in packages if not p.present and pkg_facts.get(p.name) == "installed"]
    packages_done = False
    unit_files = {r.path for r in resources if isinstance(r, File)}

    for r in resources:
        if isinstance(r, Package):
            if not packages_done:
                packages_done = True
                _plan_packages(out, installing, removing, facts.get("apt_lists_age"))
                changed.update(f"package:{n}" for n in installing + removing)
            if r.name not in installing and r.name not in removing:
                out.unchanged.append(Skip(r.id, "installed" if r.present else "not installed"))
        elif isinstance(r, Group):
            g = facts.get("groups", {}).get(r.name)
            if g is None:
                out.actions.append(
                    Action(r.id, "group", f"create group {r.name}", {"name": r.name, "system": r.system})
                )
                changed.add(r.id)
            else:
                out.unchanged.append(Skip(r.id, f"exists (gid {g['gid']})"))
        elif isinstance(r, User):
            _plan_user(out, r, facts.get("users", {}).get(r.name), changed)
        elif isinstance(r, Directory):
            _plan_directory(out, r, facts.get("files", {}).get(r.path, {"exists": False}), changed)
        elif isinstance(r, File):
            fact = facts.get("files", {}).get(r.path, {"exists": False})
            _plan_file(out, r, rendered[r.path], fact, changed, [t for t in r.notify if t in reacting])
        elif isinstance(r, Service):
            # A unit that a package being installed, or a File of the recipes, brings may not exist yet.
            coming = bool(installing) or _unit_path(r.name) in unit_files
            _plan_service(
                out, r, facts.get("services", {}).get(r.name), coming, notifiers, changed, resources, pending
            )
        elif isinstance(r, Command):
            _plan_command(
                out,
                r,
                facts.get("guards", {}).get(r.id),
                notifiers,
                changed,
                pending,
                [t for t in r.notify if t in reacting],
            )
    if stray := sorted(pending - set(out.resumed)):
        # Owed to something no recipe declares anymore (or a service now meant to be stopped): drop it.
        out.actions.append(
            Action(
                "pending",
                "forget",
                "forget pending " + ", ".join(stray) + " (nothing declared reacts)",
                {"settles": stray},
            )
        )
    return out


def _unit_path(service: str) -> str:
    """Where a recipe that ships its own systemd unit puts it."""
    return f"/etc/systemd/system/{service if '.' in service else service + '.service'}"


def _plan_packages(out: Plan, installing: list[str], removing: list[str], lists_age: float | None) -> None:
    if installing:
        if lists_age is None or lists_age > APT_LISTS_MAX_AGE:
            age = "missing" if lists_age is None else f"{lists_age / 3600:.0f} h old"
            out.actions.append(Action("apt:update", "apt_update", f"refresh package lists ({age})"))
        out.actions.append(
            Action(
                f"package:{installing[0]}" if len(installing) == 1 else "packages",
                "apt_install",
                "install " + " ".join(installing),
                {"packages": installing},
            )
        )
    if removing:
        out.actions.append(Action("packages", "apt_remove", "remove " + " ".join(removing), {"packages": removing}))


def _plan_user(out: Plan, r: User, fact: Mapping[str, Any] | None, changed: set[str]) -> None:
    params = {
        "name": r.name,
        "system": r.system,
        "home": r.home,
        "shell": r.shell,
        "group": r.group,
        "groups": list(r.groups),
    }
    if fact is None:
        out.actions.append(Action(r.id, "user", f"create user {r.name}", {**params, "create": True}))
        changed.add(r.id)
        return
    diffs = []
    if r.home is not None and fact["home"] != r.home:
        diffs.append(f"home {fact['home']}->{r.home}")
    if fact["shell"] != r.shell:
        diffs.append(f"shell {fact['shell']}->{r.shell}")
    if r.group is not None and fact["group"] != r.group:
        diffs.append(f"group {fact['group']}->{r.group}")
    missing = [g for g in r.groups if g not in fact["groups"]]
    if missing:
        diffs.append("add to groups " + ",".join(missing))
    if diffs:
        out.actions.append(Action(r.id, "user", f"user {r.name}: " + ", ".join(diffs), {**params, "create": False}))
        changed.add(r.id)
    else:
        out.unchanged.append(Skip(r.id, f"exists (uid {fact['uid']}), home, shell and groups as declared"))


def _plan_directory(out: Plan, r: Directory, fact: Mapping[str, Any], changed: set[str]) -> None:
    params = {"path": r.path, "mode": r.mode, "owner": r.owner, "group": r.group}
    if not fact.get("exists"):
        out.actions.append(Action(r.id, "directory", f"create {r.path}", params))
        changed.add(r.id)
    elif fact.get("type") != "directory":
        raise PlanError(f"{r.path} should be a directory but is a {fact.get('type')}; move it away first")
    elif diffs := _meta_changes(fact, r.mode, r.owner, r.group):
        out.actions.append(Action(r.id, "directory", f"{r.path}: " + ", ".join(diffs), params))
        changed.add(r.id)
    else:
        out.unchanged.append(Skip(r.id, f"exists, {r.mode:04o} {r.owner}:{r.group}"))


def _plan_file(out: Plan, r: File, data: bytes, fact: Mapping[str, Any], changed: set[str], notify: list[str]) -> None:
    digest = sha256(data)
    params: dict[str, Any] = {
        "path": r.path,
        "mode": r.mode,
        "owner": r.owner,
        "group": r.group,
        "sha256": digest,
        "secret": r.secret,
        "notify": notify,
    }
    if not fact.get("exists"):
        out.actions.append(Action(r.id, "file", f"create {r.path}", {**params, "content": True, "expect": None}))
        changed.add(r.id)
        return
    if fact.get("type") != "file":
        raise PlanError(f"{r.path} should be a regular file but is a {fact.get('type')}; move it away first")
    diffs = [] if fact.get("sha256") == digest else ["content"]
    diffs += _meta_changes(fact, r.mode, r.owner, r.group)
    if diffs:
        out.actions.append(
            Action(
                r.id,
                "file",
                f"{r.path}: update " + ", ".join(diffs),
                {**params, "content": "content" in diffs, "expect": fact.get("sha256")},
            )
        )
        changed.add(r.id)
    else:
        out.unchanged.append(Skip(r.id, f"content identical (sha256 {digest[:12]}), {r.mode:04o} {r.owner}:{r.group}"))


def _plan_service(
    out: Plan,
    r: Service,
    fact: Mapping[str, Any] | None,
    installing: bool,
    notifiers: Mapping[str, list[str]],
    changed: set[str],
    resources: Sequence[Resource],
    pending: set[str],
) -> None:
    by = [n for n in notifiers.get(r.id, []) if n in changed]
    owed = r.id in pending and r.running
    load = fact.get("load") if fact is not None else None
    # A masked unit exists but cannot start: unmask it when its recipe wants it running or enabled.
    unmask = load == "masked" and (r.running or r.enabled)
    known = load in ("loaded", "masked")
    if not known and not installing:
        raise PlanError(f"service {r.name} does not exist on the box (no systemd unit) and no package installs it")
    active = known and fact is not None and fact.get("active") == "active"
    enabled = (
        known and fact is not None and fact.get("enabled") in ("enabled", "static", "alias", "indirect", "generated")
    )
    todo = []
    params: dict[str, Any] = {
        "carries_access": r.carries_access,
        "name": r.name,
        "running": r.running,
        "enabled": r.enabled,
        "restart": None,
        "validator": None,
        "rollback": [],
        "unmask": unmask,
        "settles": [],
    }
    if unmask:
        todo.append("unmask (it was masked; its recipe needs it " + ("running)" if r.running else "enabled)"))
    if by or owed:
        files = {res.id: res.path for res in resources if isinstance(res, File)}
        params["validator"] = r.validator
        params["rollback"] = [files[n] for n in by if n in files]
        if r.running:
            params["restart"] = "reload" if r.reload and active else "restart"
            params["settles"] = [r.id]
            causes = ([f"changed: {', '.join(by)}"] if by else []) + ([PENDING] if owed else [])
            todo.append(f"{params['restart']} ({'; '.join(causes)})")
    if owed:
        out.resumed.append(r.id)
    if r.running and not active and not (by or owed):
        todo.append("start" if known else "start if not running after package install")
    if not r.running and active:
        todo.append("stop")
    if r.enabled != enabled or not known:
        if not known:
            todo.append("enable if needed after package install")
        elif unmask and r.enabled:
            todo.append("enable if needed once unmasked")
        elif r.enabled != enabled:
            todo.append("enable" if r.enabled else "disable")
    if todo:
        out.actions.append(Action(r.id, "service", f"{r.name}: " + "; ".join(todo), params))
        changed.add(r.id)
    else:
        state = "running" if active else "stopped"
        out.unchanged.append(Skip(r.id, f"{state}, {'enabled' if enabled else 'disabled'}, no notifying change"))


def _plan_command(
    out: Plan,
    r: Command,
    guard: bool | None,
    notifiers: Mapping[str, list[str]],
    changed: set[str],
    pending: set[str],
    notify: list[str],
) -> None:
    by = [n for n in notifiers.get(r.id, []) if n in changed] if r.on_notify else []
    owed = r.id in pending
    if by or owed:
        # Notified: runs whatever its guard says (the guard is for runs where nothing it depends on changed).
        params = {"run": r.run, "creates": None, "unless": None, "notify": notify, "settles": [r.id]}
        causes = ([f"changed: {', '.join(by)}"] if by else []) + ([PENDING] if owed else [])
        out.actions.append(Action(r.id, "command", f"run {r.name} ({'; '.join(causes)})", params))
        if owed:
            out.resumed.append(r.id)
    elif not (r.creates or r.unless):
        out.unchanged.append(Skip(r.id, "not notified: nothing it depends on changed"))
        return
    elif guard:
        why = f"{r.creates} exists" if r.creates else f"guard `{r.unless}` succeeded"
        out.unchanged.append(Skip(r.id, why + (", and nothing it depends on changed" if r.on_notify else "")))
        return
    else:
        why = f"{r.creates} is missing" if r.creates else f"guard `{r.unless}` failed"
        # The box checks the guard again just before running: an earlier step may have satisfied it.
        params = {"run": r.run, "creates": r.creates, "unless": r.unless, "notify": notify}
        out.actions.append(Action(r.id, "command", f"run {r.name} ({why})", params))
    changed.add(r.id)


def push_actions(resources: Sequence[Resource], rendered: Mapping[str, bytes], tag: str) -> list[dict[str, Any]]:
    """Wire actions for a targeted push without a probe: the files tagged `tag` with their content inline,
    then what they notify, each marked to run only if a notifier really changed on the box. The box
    decides (under its lock) what differs, so one round trip is enough and nothing unchanged is touched."""
    check_resources(resources)
    members = {r.id for r in resources if isinstance(r, File) and tag in r.tags}
    reacting = _reacting(resources)
    for r in resources:  # notify targets come after their notifiers, so one pass closes the set
        if r.id in members:
            members.update(getattr(r, "notify", ()))
    wire: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    for r in resources:
        if r.id not in members:
            continue
        by = [index[n.id] for n in resources if n.id in index and r.id in getattr(n, "notify", ())]
        if isinstance(r, File):
            data = rendered[r.path]
            item = {
                "op": "file",
                "why": f"update {r.path}",
                "path": r.path,
                "mode": r.mode,
                "owner": r.owner,
                "group": r.group,
                "sha256": sha256(data),
                "secret": r.secret,
                "content": True,
                "expect": "*",
                "inline": base64.b64encode(data).decode(),
                "notify": [t for t in r.notify if t in members and t in reacting],
            }
        elif isinstance(r, Service):
            files = [n.path for n in resources if isinstance(n, File) and n.id in members and r.id in n.notify]
            verb = "reload" if r.reload else "restart"
            item = {
                "op": "service",
                "why": f"{verb} {r.name}",
                "name": r.name,
                "running": r.running,
                "enabled": r.enabled,
                "restart": verb,
                "validator": r.validator,
                "rollback": files,
                "if_changed": by,
                "settles": [r.id],
            }
        elif isinstance(r, Command):
            item = {
                "op": "command",
                "why": f"run {r.name}",
                "run": r.run,
                "creates": None,
                "unless": None,
                "if_changed": by,
                "settles": [r.id],
                "notify": [t for t in r.notify if t in members and t in reacting],
                # Also run when its output is missing or out of date (e.g. a .db older than its text).
                "guard": {"creates": r.creates} if r.creates else {"unless": r.unless} if r.unless else {},
            }
        else:
            continue
        index[r.id] = len(wire)
        wire.append({"resource": r.id, **item})
    return wire
