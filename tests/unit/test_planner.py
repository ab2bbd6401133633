"""Planning from recorded facts: (resources, rendered files, facts) -> actions, and every skip's reason."""

from __future__ import annotations

from typing import Any

import pytest

from miab_remote.engine.planner import PlanError, check_resources, plan, probe_spec, push_wire, sha256
from miab_remote.engine.resources import Command, Directory, File, Group, Package, Resource, Service, User
from miab_remote.errors import InputError

CONF = b"listen 80;\n"
ABSENT: dict[str, Any] = {"exists": False}


def fact_file(data: bytes = CONF, mode: int = 0o644, owner: str = "root", group: str = "root") -> dict[str, Any]:
    return {
        "exists": True,
        "type": "file",
        "sha256": sha256(data),
        "mode": mode,
        "owner": owner,
        "group": group,
    }


def facts(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "packages": {},
        "services": {},
        "users": {},
        "groups": {},
        "files": {},
        "guards": {},
        "apt_lists_age": 60.0,
    }
    base.update(kw)
    return base


RUNNING = {"load": "loaded", "active": "active", "enabled": "enabled"}
MASKED = {"load": "masked", "active": "inactive", "enabled": "masked"}
# What an interrupted run left owed on the box (its journal, as the probe reports it).
OWED = {"by": ["file:/etc/x"]}

CASES: list[tuple[str, list[Resource], dict[str, Any], list[tuple[str, str]], list[tuple[str, str]]]] = [
    # id, resources, facts, expected actions (resource, op), expected skips (resource, reason substring)
    (
        "package installed",
        [Package("nginx")],
        facts(packages={"nginx": "installed"}),
        [],
        [("package:nginx", "installed")],
    ),
    (
        "package missing, fresh lists",
        [Package("nginx")],
        facts(packages={"nginx": "absent"}),
        [("package:nginx", "apt_install")],
        [],
    ),
    (
        "package missing, old lists",
        [Package("nginx"), Package("jq")],
        facts(packages={"nginx": "absent", "jq": "absent"}, apt_lists_age=86400.0),
        [("apt:update", "apt_update"), ("packages", "apt_install")],
        [],
    ),
    (
        "package to remove",
        [Package("exim4", present=False)],
        facts(packages={"exim4": "installed"}),
        [("packages", "apt_remove")],
        [],
    ),
    (
        "package absent as wanted",
        [Package("exim4", present=False)],
        facts(packages={"exim4": "absent"}),
        [],
        [("package:exim4", "not installed")],
    ),
    (
        "group exists",
        [Group("vmail")],
        facts(groups={"vmail": {"gid": 5000}}),
        [],
        [("group:vmail", "gid 5000")],
    ),
    ("group missing", [Group("vmail")], facts(groups={"vmail": None}), [("group:vmail", "group")], []),
    (
        "user missing",
        [User("vmail", home="/var/mail")],
        facts(users={"vmail": None}),
        [("user:vmail", "user")],
        [],
    ),
    (
        "user as declared",
        [User("vmail", home="/var/mail", groups=("mail",))],
        facts(
            users={
                "vmail": {
                    "uid": 999,
                    "home": "/var/mail",
                    "shell": "/usr/sbin/nologin",
                    "group": "vmail",
                    "groups": ["mail", "extra"],
                }
            }
        ),
        [],
        [("user:vmail", "uid 999")],
    ),
    (
        "user missing a group",
        [User("vmail", home="/var/mail", groups=("mail",))],
        facts(
            users={
                "vmail": {
                    "uid": 999,
                    "home": "/var/mail",
                    "shell": "/usr/sbin/nologin",
                    "group": "vmail",
                    "groups": [],
                }
            }
        ),
        [("user:vmail", "user")],
        [],
    ),
    (
        "directory missing",
        [Directory("/srv/x")],
        facts(files={"/srv/x": ABSENT}),
        [("directory:/srv/x", "directory")],
        [],
    ),
    (
        "directory fine",
        [Directory("/srv/x")],
        facts(
            files={
                "/srv/x": {
                    "exists": True,
                    "type": "directory",
                    "mode": 0o755,
                    "owner": "root",
                    "group": "root",
                }
            }
        ),
        [],
        [("directory:/srv/x", "exists, 0755 root:root")],
    ),
    (
        "directory wrong mode",
        [Directory("/srv/x", mode=0o700)],
        facts(
            files={
                "/srv/x": {
                    "exists": True,
                    "type": "directory",
                    "mode": 0o755,
                    "owner": "root",
                    "group": "root",
                }
            }
        ),
        [("directory:/srv/x", "directory")],
        [],
    ),
    (
        "file identical",
        [File("/etc/x", content=CONF)],
        facts(files={"/etc/x": fact_file()}),
        [],
        [("file:/etc/x", "content identical")],
    ),
    (
        "file absent",
        [File("/etc/x", content=CONF)],
        facts(files={"/etc/x": ABSENT}),
        [("file:/etc/x", "file")],
        [],
    ),
    (
        "file content differs",
        [File("/etc/x", content=CONF)],
        facts(files={"/etc/x": fact_file(b"old\n")}),
        [("file:/etc/x", "file")],
        [],
    ),
    (
        "file mode differs",
        [File("/etc/x", content=CONF, mode=0o600)],
        facts(files={"/etc/x": fact_file()}),
        [("file:/etc/x", "file")],
        [],
    ),
    (
        "service running, nothing changed",
        [File("/etc/x", content=CONF, notify=("service:nginx",)), Service("nginx")],
        facts(files={"/etc/x": fact_file()}, services={"nginx": RUNNING}),
        [],
        [("file:/etc/x", "identical"), ("service:nginx", "running, enabled, no notifying change")],
    ),
    (
        "service notified by a changed file",
        [
            File("/etc/x", content=CONF, notify=("service:nginx",)),
            Service("nginx", reload=True, validator="nginx -t"),
        ],
        facts(files={"/etc/x": ABSENT}, services={"nginx": RUNNING}),
        [("file:/etc/x", "file"), ("service:nginx", "service")],
        [],
    ),
    (
        "service stopped",
        [Service("nginx")],
        facts(services={"nginx": {"load": "loaded", "active": "inactive", "enabled": "enabled"}}),
        [("service:nginx", "service")],
        [],
    ),
    (
        "service disabled",
        [Service("nginx")],
        facts(services={"nginx": {"load": "loaded", "active": "active", "enabled": "disabled"}}),
        [("service:nginx", "service")],
        [],
    ),
    (
        "service comes with a package",
        [Package("nginx"), Service("nginx")],
        facts(
            packages={"nginx": "absent"},
            services={"nginx": {"load": "not-found", "active": "inactive", "enabled": ""}},
        ),
        [("package:nginx", "apt_install"), ("service:nginx", "service")],
        [],
    ),
    (
        "command guarded by creates, done",
        [Command("init", run="touch /x", creates="/x")],
        facts(guards={"command:init": True}),
        [],
        [("command:init", "/x exists")],
    ),
    (
        "command guarded by creates, to do",
        [Command("init", run="touch /x", creates="/x")],
        facts(guards={"command:init": False}),
        [("command:init", "command")],
        [],
    ),
    (
        "command guarded by unless",
        [Command("k", run="gen", unless="test -s /k")],
        facts(guards={"command:k": True}),
        [],
        [("command:k", "guard `test -s /k` succeeded")],
    ),
    (
        "on_notify command not notified",
        [
            File("/etc/x", content=CONF, notify=("command:postmap",)),
            Command("postmap", run="postmap /etc/x", on_notify=True),
        ],
        facts(files={"/etc/x": fact_file()}),
        [],
        [("command:postmap", "not notified")],
    ),
    (
        "on_notify command notified",
        [
            File("/etc/x", content=CONF, notify=("command:postmap",)),
            Command("postmap", run="postmap /etc/x", on_notify=True),
        ],
        facts(files={"/etc/x": fact_file(b"old")}),
        [("file:/etc/x", "file"), ("command:postmap", "command")],
        [],
    ),
    (
        "restart owed by an interrupted run, though no file changed",
        [File("/etc/x", content=CONF, notify=("service:s",)), Service("s")],
        facts(files={"/etc/x": fact_file()}, services={"s": RUNNING}, pending={"service:s": OWED}),
        [("service:s", "service")],
        [("file:/etc/x", "content identical")],
    ),
    (
        "command owed by an interrupted run",
        [File("/etc/x", content=CONF, notify=("command:postmap",)), Command("postmap", run="p", on_notify=True)],
        facts(files={"/etc/x": fact_file()}, pending={"command:postmap": OWED}),
        [("command:postmap", "command")],
        [],
    ),
    (
        "owed to what no recipe declares anymore: forgotten",
        [Service("s")],
        facts(services={"s": RUNNING}, pending={"service:gone": OWED}),
        [("pending", "forget")],
        [("service:s", "running")],
    ),
    (
        "owed to a service now meant to be stopped: forgotten",
        [Service("s", running=False, enabled=False)],
        facts(services={"s": {**RUNNING, "active": "inactive", "enabled": "disabled"}}, pending={"service:s": OWED}),
        [("pending", "forget")],
        [("service:s", "stopped")],
    ),
    (
        "masked unit that its recipe needs: unmasked",
        [Service("s")],
        facts(services={"s": MASKED}),
        [("service:s", "service")],
        [],
    ),
    (
        "masked unit meant to be off: left masked",
        [Service("s", running=False, enabled=False)],
        facts(services={"s": MASKED}),
        [],
        [("service:s", "stopped, disabled")],
    ),
]


@pytest.mark.parametrize(
    ("resources", "the_facts", "want_actions", "want_skips"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_plan(
    resources: list[Resource],
    the_facts: dict[str, Any],
    want_actions: list[tuple[str, str]],
    want_skips: list[tuple[str, str]],
) -> None:
    rendered = {r.path: r.content for r in resources if isinstance(r, File) and isinstance(r.content, bytes)}
    result = plan(resources, rendered, the_facts)
    assert [(a.resource, a.op) for a in result.actions] == want_actions
    for a in result.actions:
        assert a.why, "every action says why"
    skips = {s.resource: s.reason for s in result.unchanged}
    for resource, reason in want_skips:
        assert reason in skips[resource]
    # Every resource is accounted for: it either acts or says why not.
    acted = {a.resource for a in result.actions}
    for r in resources:
        assert r.id in skips or r.id in acted or (isinstance(r, Package) and "packages" in acted)


def test_notified_service_gets_validator_and_rollback_list() -> None:
    res = [
        File("/etc/x", content=CONF, notify=("service:nginx",)),
        Service("nginx", reload=True, validator="nginx -t"),
    ]
    p = plan(res, {"/etc/x": CONF}, facts(files={"/etc/x": fact_file(b"old")}, services={"nginx": RUNNING}))
    svc = p.actions[-1].wire
    assert svc["validator"] == "nginx -t"
    assert svc["rollback"] == ["/etc/x"]
    assert svc["restart"] == "reload"
    file_action = p.actions[0].wire
    assert file_action["expect"] == sha256(b"old")


def test_restart_when_not_reloadable_or_not_running() -> None:
    res = [File("/etc/x", content=CONF, notify=("service:s",)), Service("s")]
    p = plan(res, {"/etc/x": CONF}, facts(files={"/etc/x": ABSENT}, services={"s": RUNNING}))
    assert p.actions[-1].wire["restart"] == "restart"


def test_a_notifier_a_reload_does_not_apply_restarts_a_reloadable_service() -> None:
    # nsd: a zone file's change is a SIGHUP, nsd.conf's a restart (nsd reads it only when it starts).
    nsd = Service("nsd", reload=True, restart_on=("file:/etc/conf",))
    zone = File("/etc/zone", content=CONF, notify=("service:nsd",))
    conf = File("/etc/conf", content=CONF, notify=("service:nsd",))
    old = {"/etc/zone": fact_file(b"old"), "/etc/conf": fact_file()}
    rendered = {"/etc/zone": CONF, "/etc/conf": CONF}
    p = plan([zone, conf, nsd], rendered, facts(files=old, services={"nsd": RUNNING}))
    assert p.actions[-1].wire["restart"] == "reload"
    old = {"/etc/zone": fact_file(), "/etc/conf": fact_file(b"old")}
    p = plan([zone, conf, nsd], rendered, facts(files=old, services={"nsd": RUNNING}))
    assert p.actions[-1].wire["restart"] == "restart"
    assert p.actions[-1].why == "nsd: restart (changed: file:/etc/conf)"
    # A push that carries the conf restarts (if it changed on the box); one without it reloads.
    tagged = [File("/etc/conf", content=CONF, notify=("service:nsd",), tags=("t",)), nsd]
    assert push_wire(tagged, {"/etc/conf": CONF}, "t")[-1]["restart"] == "restart"
    tagged = [File("/etc/zone", content=CONF, notify=("service:nsd",), tags=("t",)), conf, nsd]
    assert push_wire(tagged, {"/etc/zone": CONF}, "t")[-1]["restart"] == "reload"


def test_metadata_only_change_does_not_restage() -> None:
    res = [File("/etc/x", content=CONF, mode=0o600)]
    p = plan(res, {"/etc/x": CONF}, facts(files={"/etc/x": fact_file()}))
    assert p.actions[0].wire["content"] is False
    assert "mode 0644->0600" in p.actions[0].why


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ([Package("a"), Package("a")], "declared twice"),
        ([Command("c", run="x")], "needs a guard"),
        ([Command("c", run="x", creates="/a", unless="true")], "both creates and unless"),
        ([File("/x", content="a", notify=("service:nope",))], "which no recipe declares"),
        ([Service("s"), File("/x", content="a", notify=("service:s",))], "declared before it"),
        (
            [File("/x", content="a", notify=("command:c",)), Command("c", run="x", creates="/y")],
            "not on_notify",
        ),
        ([File("/x", content="a", template="x")], "both a template and content"),
    ],
)
def test_recipe_errors(resources: list[Resource], message: str) -> None:
    with pytest.raises(InputError, match=message):
        check_resources(resources)


@pytest.mark.parametrize(
    ("resource", "fact", "message"),
    [
        (File("/etc/x", content=CONF), {"exists": True, "type": "directory"}, "should be a regular file"),
        (Directory("/srv/x"), fact_file(), "should be a directory"),
    ],
)
def test_plan_refuses_wrong_kind(resource: Resource, fact: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan([resource], {"/etc/x": CONF}, facts(files={resource.path: fact}))


def test_unknown_service_without_package_is_an_error() -> None:
    with pytest.raises(PlanError, match="does not exist on the box"):
        plan(
            [Service("nope")],
            {},
            facts(services={"nope": {"load": "not-found", "active": "inactive", "enabled": ""}}),
        )


def test_a_service_whose_unit_a_recipe_ships_may_not_exist_yet() -> None:
    unit = File("/etc/systemd/system/guard.service", content="[Service]\n", notify=("service:guard",))
    p = plan(
        [unit, Service("guard")],
        {unit.path: b"[Service]\n"},
        facts(services={"guard": {"load": "not-found", "active": "inactive", "enabled": ""}}),
    )
    service = next(a for a in p.actions if a.resource == "service:guard")
    assert service.wire["restart"] == "restart" and "enable if needed" in service.why


def test_probe_spec_reads_everything_once_and_no_secret_content() -> None:
    res: list[Resource] = [
        Package("nginx"),
        Group("g"),
        User("u"),
        Directory("/d"),
        File("/f", content="x"),
        File("/s", content="k", secret=True),
        Service("nginx"),
        Command("c", run="x", creates="/c"),
        Command("d", run="y", unless="true"),
    ]
    spec = probe_spec(res, {"/f": b"x", "/s": b"k"}, want_content=True)
    assert spec["packages"] == ["nginx"] and spec["services"] == ["nginx"]
    assert spec["files"] == ["/d", "/f", "/s"]
    assert set(spec["want_content"]) == {"/f"}, "a secret file's content is never read back"
    assert spec["guards"] == {"command:c": {"creates": "/c"}, "command:d": {"unless": "true"}}
    assert probe_spec(res, {"/f": b"x", "/s": b"k"}, want_content=False)["want_content"] == {}


def test_plan_is_deterministic() -> None:
    res: list[Resource] = [
        Package("nginx"),
        File("/etc/x", content=CONF, notify=("service:nginx",)),
        Service("nginx"),
    ]
    f = facts(
        packages={"nginx": "absent"},
        files={"/etc/x": ABSENT},
        services={"nginx": {"load": "not-found", "active": "inactive", "enabled": ""}},
    )
    a = plan(res, {"/etc/x": CONF}, f)
    b = plan(res, {"/etc/x": CONF}, f)
    assert [x.wire for x in a.actions] == [x.wire for x in b.actions]


def test_owed_restart_is_delivered_validated_and_settled() -> None:
    res = [File("/etc/x", content=CONF, notify=("service:nginx",)), Service("nginx", reload=True, validator="t")]
    f = facts(files={"/etc/x": fact_file()}, services={"nginx": RUNNING}, pending={"service:nginx": OWED})
    p = plan(res, {"/etc/x": CONF}, f)
    (svc,) = p.actions
    assert svc.why == "nginx: reload (pending from an interrupted run)"
    assert svc.wire["validator"] == "t" and svc.wire["restart"] == "reload"
    assert svc.wire["settles"] == ["service:nginx"]
    assert svc.wire["rollback"] == [], "no file of this run to put back"
    assert p.resumed == ["service:nginx"]
    # Owed and notified again: one reload, for both reasons.
    f["files"] = {"/etc/x": fact_file(b"old")}
    (_, svc) = plan(res, {"/etc/x": CONF}, f).actions
    assert svc.why == "nginx: reload (changed: file:/etc/x; pending from an interrupted run)"


def test_changed_files_and_commands_name_what_the_box_must_journal() -> None:
    res = [
        File("/etc/x", content=CONF, notify=("command:c", "service:on", "service:off")),
        Command("c", run="x", on_notify=True, notify=("service:on",)),
        Service("on"),
        Service("off", running=False, enabled=False),
    ]
    stopped = {"load": "loaded", "active": "inactive", "enabled": "disabled"}
    p = plan(res, {"/etc/x": CONF}, facts(files={"/etc/x": ABSENT}, services={"on": RUNNING, "off": stopped}))
    by_id = {a.resource: a.wire for a in p.actions}
    assert by_id["file:/etc/x"]["notify"] == ["command:c", "service:on"], "a stopped service is owed nothing"
    assert by_id["command:c"]["notify"] == ["service:on"]
    assert by_id["command:c"]["settles"] == ["command:c"] and by_id["service:on"]["settles"] == ["service:on"]
    assert p.resumed == []


def test_masked_unit_is_unmasked_and_says_so() -> None:
    (svc,) = plan([Service("spamd")], {}, facts(services={"spamd": MASKED})).actions
    assert svc.wire["unmask"] is True
    assert svc.why.startswith("spamd: unmask (it was masked; its recipe needs it running)")
    assert "start" in svc.why
    masked_running = {**MASKED, "active": "active"}
    (svc,) = plan([Service("spamd", reload=True)], {}, facts(services={"spamd": masked_running})).actions
    assert svc.wire["unmask"] is True and "start" not in svc.why


def test_push_journals_notifications_and_rebuilds_stale_output() -> None:
    res: list[Resource] = [
        File("/etc/m", content="a b\n", tags=("accounts",), notify=("command:postmap",)),
        Command("postmap", run="postmap /etc/m", on_notify=True, unless="test /etc/m.db -nt /etc/m"),
    ]
    f, c = push_wire(res, {"/etc/m": b"a b\n"}, "accounts")
    assert f["notify"] == ["command:postmap"]
    assert c["if_changed"] == [0] and c["settles"] == ["command:postmap"]
    assert c["guard"] == {"unless": "test /etc/m.db -nt /etc/m"}
