"""Planning is pure: (resources, rendered files, facts) in, actions out. Nothing here touches a box.

Each resource either yields actions (with a `why` an operator can read) or a `Skip` that says why nothing
needs doing. Notifications are resolved here too, so a dry run shows exactly what a real run would do,
including the restart that a changed file will cause. A notification an interrupted run could not deliver
is in the box's journal (facts["pending"]) and is delivered now, even when no file changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from miab_remote.engine.resources import Command, Directory, File, Group, Package, Resource, Service, User
from miab_remote.errors import InputError
from miab_remote.remote import wire

APT_LISTS_MAX_AGE = 6 * 3600.0
PENDING = "pending from an interrupted run"


class PlanError(InputError):
    """The box is in a state the plan cannot handle safely (e.g. a directory where a file belongs)."""


@dataclass(frozen=True)
class Action:
    """One step of a plan: the typed wire item the box's apply script carries out as it is."""

    wire: wire.Action

    @property
    def resource(self) -> str:
        return self.wire["resource"]

    @property
    def op(self) -> str:
        return self.wire["op"]

    @property
    def why(self) -> str:
        return self.wire["why"]


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


def _guard(r: Command) -> wire.Guard:
    """The guard the box evaluates for a command: its `creates` path, else its `unless` test, else none."""
    if r.creates:
        return {"creates": r.creates}
    if r.unless:
        return {"unless": r.unless}
    return {}


def probe_spec(resources: Sequence[Resource], rendered: Mapping[str, bytes], want_content: bool) -> wire.ProbeSpec:
    """What the single probe must read for these resources."""
    files = [r.path for r in resources if isinstance(r, File | Directory)]
    want = {
        r.path: sha256(rendered[r.path]) for r in resources if isinstance(r, File) and want_content and not r.secret
    }
    return wire.ProbeSpec(
        files=files,
        want_content=want,
        packages=[r.name for r in resources if isinstance(r, Package)],
        services=[r.name for r in resources if isinstance(r, Service)],
        users=[r.name for r in resources if isinstance(r, User)],
        groups=[r.name for r in resources if isinstance(r, Group)],
        guards={r.id: g for r in resources if isinstance(r, Command) and (g := _guard(r))},
    )


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
                why = f"create group {r.name}"
                out.actions.append(
                    Action(wire.GroupAction(resource=r.id, op="group", why=why, name=r.name, system=r.system))
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
        why = "forget pending " + ", ".join(stray) + " (nothing declared reacts)"
        out.actions.append(Action(wire.ForgetAction(resource="pending", op="forget", why=why, settles=stray)))
    return out


def _unit_path(service: str) -> str:
    """Where a recipe that ships its own systemd unit puts it."""
    return f"/etc/systemd/system/{service if '.' in service else service + '.service'}"


def _plan_packages(out: Plan, installing: list[str], removing: list[str], lists_age: float | None) -> None:
    if installing:
        if lists_age is None or lists_age > APT_LISTS_MAX_AGE:
            age = "missing" if lists_age is None else f"{lists_age / 3600:.0f} h old"
            why = f"refresh package lists ({age})"
            out.actions.append(Action(wire.AptUpdate(resource="apt:update", op="apt_update", why=why)))
        resource = f"package:{installing[0]}" if len(installing) == 1 else "packages"
        why = "install " + " ".join(installing)
        out.actions.append(
            Action(wire.AptPackages(resource=resource, op="apt_install", why=why, packages=installing))
        )
    if removing:
        why = "remove " + " ".join(removing)
        out.actions.append(Action(wire.AptPackages(resource="packages", op="apt_remove", why=why, packages=removing)))


def _plan_user(out: Plan, r: User, fact: Mapping[str, Any] | None, changed: set[str]) -> None:
    def action(why: str, create: bool) -> Action:
        return Action(
            wire.UserAction(
                resource=r.id,
                op="user",
                why=why,
                name=r.name,
                system=r.system,
                home=r.home,
                shell=r.shell,
                group=r.group,
                groups=list(r.groups),
                create=create,
            )
        )

    if fact is None:
        out.actions.append(action(f"create user {r.name}", True))
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
        out.actions.append(action(f"user {r.name}: " + ", ".join(diffs), False))
        changed.add(r.id)
    else:
        out.unchanged.append(Skip(r.id, f"exists (uid {fact['uid']}), home, shell and groups as declared"))


def _plan_directory(out: Plan, r: Directory, fact: Mapping[str, Any], changed: set[str]) -> None:
    def action(why: str) -> Action:
        return Action(
            wire.DirectoryAction(
                resource=r.id, op="directory", why=why, path=r.path, mode=r.mode, owner=r.owner, group=r.group
            )
        )

    if not fact.get("exists"):
        out.actions.append(action(f"create {r.path}"))
        changed.add(r.id)
    elif fact.get("type") != "directory":
        raise PlanError(f"{r.path} should be a directory but is a {fact.get('type')}; move it away first")
    elif diffs := _meta_changes(fact, r.mode, r.owner, r.group):
        out.actions.append(action(f"{r.path}: " + ", ".join(diffs)))
        changed.add(r.id)
    else:
        out.unchanged.append(Skip(r.id, f"exists, {r.mode:04o} {r.owner}:{r.group}"))


def file_action(
    r: File, data: bytes, why: str, content: bool, expect: str | None, notify: list[str]
) -> wire.FileAction:
    """The wire item that puts `data` at r.path (content=False: only its mode and owner)."""
    return wire.FileAction(
        resource=r.id,
        op="file",
        why=why,
        path=r.path,
        mode=r.mode,
        owner=r.owner,
        group=r.group,
        sha256=sha256(data),
        secret=r.secret,
        content=content,
        size=len(data) if content else 0,
        expect=expect,
        notify=notify,
    )


def _plan_file(out: Plan, r: File, data: bytes, fact: Mapping[str, Any], changed: set[str], notify: list[str]) -> None:
    digest = sha256(data)
    if not fact.get("exists"):
        out.actions.append(Action(file_action(r, data, f"create {r.path}", True, None, notify)))
        changed.add(r.id)
        return
    if fact.get("type") != "file":
        raise PlanError(f"{r.path} should be a regular file but is a {fact.get('type')}; move it away first")
    diffs = [] if fact.get("sha256") == digest else ["content"]
    diffs += _meta_changes(fact, r.mode, r.owner, r.group)
    if diffs:
        why = f"{r.path}: update " + ", ".join(diffs)
        out.actions.append(Action(file_action(r, data, why, "content" in diffs, fact.get("sha256"), notify)))
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
    restart: Literal["reload", "restart"] | None = None
    validator: str | None = None
    rollback: list[str] = []
    settles: list[str] = []
    if unmask:
        todo.append("unmask (it was masked; its recipe needs it " + ("running)" if r.running else "enabled)"))
    if by or owed:
        files = {res.id: res.path for res in resources if isinstance(res, File)}
        validator = r.validator
        rollback = [files[n] for n in by if n in files]
        if r.running:
            restart = "reload" if r.reload and active else "restart"
            settles = [r.id]
            causes = ([f"changed: {', '.join(by)}"] if by else []) + ([PENDING] if owed else [])
            todo.append(f"{restart} ({'; '.join(causes)})")
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
        why = f"{r.name}: " + "; ".join(todo)
        out.actions.append(Action(_service_action(r, why, restart, validator, rollback, unmask, settles)))
        changed.add(r.id)
    else:
        state = "running" if active else "stopped"
        out.unchanged.append(Skip(r.id, f"{state}, {'enabled' if enabled else 'disabled'}, no notifying change"))


def _service_action(
    r: Service,
    why: str,
    restart: Literal["reload", "restart"] | None,
    validator: str | None,
    rollback: list[str],
    unmask: bool,
    settles: list[str],
) -> wire.ServiceAction:
    return wire.ServiceAction(
        resource=r.id,
        op="service",
        why=why,
        name=r.name,
        running=r.running,
        enabled=r.enabled,
        restart=restart,
        validator=validator,
        rollback=rollback,
        unmask=unmask,
        carries_access=r.carries_access,
        settles=settles,
    )


def command_action(
    resource: str,
    why: str,
    run: str,
    creates: str | None = None,
    unless: str | None = None,
    notify: Sequence[str] = (),
    settles: Sequence[str] = (),
) -> wire.CommandAction:
    """The wire item that runs `run` as root on the box, unless `creates` exists or `unless` succeeds there."""
    return wire.CommandAction(
        resource=resource,
        op="command",
        why=why,
        run=run,
        creates=creates,
        unless=unless,
        notify=list(notify),
        settles=list(settles),
    )


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
        causes = ([f"changed: {', '.join(by)}"] if by else []) + ([PENDING] if owed else [])
        why = f"run {r.name} ({'; '.join(causes)})"
        out.actions.append(Action(command_action(r.id, why, r.run, notify=notify, settles=[r.id])))
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
        out.actions.append(
            Action(command_action(r.id, f"run {r.name} ({why})", r.run, r.creates, r.unless, notify=notify))
        )
    changed.add(r.id)


def push_wire(resources: Sequence[Resource], rendered: Mapping[str, bytes], tag: str) -> list[wire.Action]:
    """The wire items of a targeted push, made without a probe: the files tagged `tag` (content carried),
    then what they notify, each marked to run only if a notifier really changed on the box. The box
    decides (under its lock) what differs, so one round trip is enough and nothing unchanged is touched."""
    check_resources(resources)
    members = {r.id for r in resources if isinstance(r, File) and tag in r.tags}
    reacting = _reacting(resources)
    for r in resources:  # notify targets come after their notifiers, so one pass closes the set
        if r.id in members:
            members.update(getattr(r, "notify", ()))
    items: list[wire.Action] = []
    index: dict[str, int] = {}
    for r in resources:
        if r.id not in members:
            continue
        by = [index[n.id] for n in resources if n.id in index and r.id in getattr(n, "notify", ())]
        item: wire.Action
        if isinstance(r, File):
            notify = [t for t in r.notify if t in members and t in reacting]
            item = file_action(r, rendered[r.path], f"update {r.path}", True, wire.ANY, notify)
        elif isinstance(r, Service):
            files = [n.path for n in resources if isinstance(n, File) and n.id in members and r.id in n.notify]
            verb: Literal["reload", "restart"] = "reload" if r.reload else "restart"
            item = _service_action(r, f"{verb} {r.name}", verb, r.validator, files, False, [r.id])
            item["if_changed"] = by
        elif isinstance(r, Command):
            notify = [t for t in r.notify if t in members and t in reacting]
            item = command_action(r.id, f"run {r.name}", r.run, notify=notify, settles=[r.id])
            item["if_changed"] = by
            # Also run when its output is missing or out of date (e.g. a .db older than its text).
            item["guard"] = _guard(r)
        else:
            continue
        index[r.id] = len(items)
        items.append(item)
    return items
