"""Boxes that are each other's secondary nameservers ([dns] secondaries), on the laptop: the field's checks
(one file, then against the folder), the TSIG key in the secrets store, both boxes' nsd files, the NS
records and the glue `dns` prints, and the key masked on both. The boxes' side: tests/e2e/test_secondary.py."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from miab_remote.engine.converge import build
from miab_remote.engine.redact import secret_mask_for
from miab_remote.errors import InputError
from miab_remote.fleet import peers, secrets
from miab_remote.fleet.model import Host
from miab_remote.fleet.store import Inventory, new_document
from miab_remote.mail import dnszones, secondary
from miab_remote.profiles import DEBIAN_12
from tests.unit.test_accounts import KEY, cli

A = "a.prim.test"
B = "b.sec.test"
C = "c.other.test"
ADDRESS = {A: "192.0.2.10", B: "192.0.2.20", C: "192.0.2.30"}


def write(
    root: Path,
    name: str,
    extra: str = "",
    *,
    domains: tuple[str, ...] = (),
    ipv6: str = "",
    recipes: tuple[str, ...] = ("nsd",),
) -> Path:
    doc = new_document(name, ADDRESS.get(name, "192.0.2.40"), provider="manual", host_keys=[], os="debian-12")
    if domains:
        doc["domains"] = list(domains)
    if ipv6:
        doc["ipv6"] = ipv6
    doc["recipes"] = list(recipes)
    path = root / f"{name}.toml"
    path.write_text(doc.as_string() + "\n" + extra)
    return path


@pytest.fixture
def hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("MIAB_REMOTE_CONFIG_DIR", str(tmp_path / "config"))  # each test's own secrets
    root = tmp_path / "hosts"
    root.mkdir()
    write(root, A, f'[dns]\nsecondaries = ["{B}"]\n', domains=("prim.test", "second.test"))
    write(root, B)
    write(root, C)
    return root


def problem(root: Path, name: str) -> str:
    with pytest.raises(InputError) as e:
        inv = Inventory(root)
        peers.secondaries_of(inv.load(name), inv)
    return str(e.value)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (f'["{A}"]', f"dns.secondaries[0]: {A!r} is this box"),
        (f'["{B}", "{B}"]', f"dns.secondaries[1]: {B!r} is listed twice"),
        ('["B.SEC.TEST"]', "'B.SEC.TEST' is not lower-case; write 'b.sec.test'"),
        ('["not a name"]', "dns.secondaries[0]: "),
        ("[1]", "dns.secondaries[0]: expected another box's hostname"),
        (f'"{B}"', "dns.secondaries: expected an array of another box's hostname"),
    ],
)
def test_a_bad_secondary_in_the_file_is_one_error_with_its_line(hosts: Path, value: str, says: str) -> None:
    path = write(hosts, A, f"[dns]\nsecondaries = {value}\n")
    with pytest.raises(InputError) as e:
        Inventory(hosts).load(A)
    line = path.read_text().splitlines().index(f"secondaries = {value}") + 1
    assert f"{A}.toml:{line}: " in str(e.value) and says in str(e.value)


def test_secondaries_of_a_box_without_nameserver_are_refused(hosts: Path) -> None:
    write(hosts, A, f'[options]\ndns = "external"\n\n[dns]\nsecondaries = ["{B}"]\n')
    with pytest.raises(InputError, match=r'serves no zones .options dns = "external"'):
        Inventory(hosts).load(A)


def test_a_secondary_that_is_not_in_the_folder_or_runs_no_nameserver_is_refused(hosts: Path) -> None:
    write(hosts, A, f'[dns]\nsecondaries = ["{B}", "gone.sec.test"]\n')
    write(hosts, B, '[options]\ndns = "external"\n')
    text = problem(hosts, A)
    line = (hosts / f"{A}.toml").read_text().splitlines().index(f'secondaries = ["{B}", "gone.sec.test"]') + 1
    assert f"{A}.toml:{line}: dns.secondaries[0]: {B!r} runs no nameserver" in text
    assert f"{A}.toml:{line}: dns.secondaries[1]: 'gone.sec.test' is not a box of this inventory folder" in text
    assert "accepted: another box of this folder with dns = \"nsd\", its zones apart" in text


def test_a_secondary_that_serves_one_of_the_zones_itself_is_refused(hosts: Path) -> None:
    write(hosts, B, domains=("second.test",))
    assert f"{B!r} serves second.test itself" in problem(hosts, A)
    # ... and a deploy of that secondary says so too, before anything is contacted
    with pytest.raises(InputError, match=r"serves second\.test itself"):
        peers.primaries_of(Inventory(hosts).load(B))


def test_a_bad_secondary_stops_dns_and_deploy_with_exit_2(hosts: Path) -> None:
    write(hosts, A, '[dns]\nsecondaries = ["gone.sec.test"]\n')
    for args in (("dns", A), ("deploy", A, "--dry-run")):
        r = cli(hosts.parent, *args)
        assert r.code == 2 and "dns.secondaries[0]: 'gone.sec.test' is not a box" in r.err, (args, r.err)


def test_two_primaries_of_one_zone_for_one_secondary_are_refused(hosts: Path) -> None:
    path = write(hosts, C, f'[dns]\nsecondaries = ["{B}"]\n', domains=("second.test",))
    with pytest.raises(InputError) as e:
        peers.primaries_of(Inventory(hosts).load(B))
    line = path.read_text().splitlines().index(f'secondaries = ["{B}"]') + 1
    assert f"{C}.toml:{line}: dns.secondaries[0]: {B!r} already copies second.test from {A}" in str(e.value)


def test_a_secondary_without_the_nsd_recipe_is_refused(hosts: Path) -> None:
    write(hosts, B, recipes=("base", "hardening"))
    assert f"{B!r} runs no nameserver (no nsd recipe)" in problem(hosts, A)


@pytest.mark.parametrize(("hostname", "inner", "outer"), [
    ("ns.box.second.test", "box.second.test", "second.test"), ("box.a.prim.test", "a.prim.test", "prim.test")
])  # fmt: skip
def test_a_secondary_whose_zone_is_inside_one_of_the_primarys_is_refused(
    hosts: Path, hostname: str, inner: str, outer: str
) -> None:
    """Its own zone (its hostname's) inside the primary's: the primary's zone would name nameservers in it
    without delegating it. (And the other way round: the primary's inside the secondary's.)"""
    write(hosts, hostname, domains=())
    write(hosts, A, f'[dns]\nsecondaries = ["{hostname}"]\n', domains=("prim.test", "second.test"))
    assert f"dns.secondaries[0]: {hostname!r} serves {inner}, inside {outer} " in problem(hosts, A)
    assert peers.nested_zones(["prim.test"], ["box.second.test"]) is None
    assert peers.nested_zones(["a.prim.test"], ["prim.test"]) == ("a.prim.test", "prim.test")  # the other way round


def test_the_primaries_of_a_box_are_the_inventories_that_list_it(hosts: Path) -> None:
    inv = Inventory(hosts)
    assert [p.name for p in peers.primaries_of(inv.load(B))] == [A]
    assert peers.primaries_of(inv.load(C)) == [] and peers.primaries_of(inv.load(A)) == []


def test_the_key_is_made_once_by_the_first_deploy_and_a_dry_run_makes_none(hosts: Path) -> None:
    inv = Inventory(hosts)
    assert secondary.prepare(inv.load(B), dry_run=True) == [
        f"a TSIG key for {A}'s zone transfers would be made and kept in {secrets.path_for(A)}"
    ]
    secondary.forget_stand_ins()
    assert secrets.get(A, secrets.DNS_TSIG_SECRET) is None
    assert secondary.prepare(inv.load(B), dry_run=False)[0].startswith(f"made a TSIG key for {A}'s")
    key = secrets.get(A, secrets.DNS_TSIG_SECRET)
    assert key is not None and len(__import__("base64").b64decode(key)) == 32
    assert secondary.prepare(inv.load(A), dry_run=False) == []  # the primary's deploy uses the same key
    assert secrets.get(A, secrets.DNS_TSIG_SECRET) == key
    assert secrets.get(B, secrets.DNS_TSIG_SECRET) is None  # B is nobody's primary


def conf(hosts: Path, name: str) -> tuple[str, str | None, dict[str, bytes]]:
    _resources, rendered = build(Inventory(hosts).load(name), DEBIAN_12, hosts)
    key = rendered.get(secondary.KEY_FILE)
    return rendered["/etc/nsd/nsd.conf"].decode(), None if key is None else key.decode(), rendered


def test_the_primary_notifies_and_allows_transfers_only_with_the_key(hosts: Path) -> None:
    secrets.put(A, secrets.DNS_TSIG_SECRET, "c2VjcmV0LW9mLWEtZm9yLXRoZS10ZXN0LTMyYnl0ZXMh")
    text, key, _ = conf(hosts, A)
    assert f'include: "{secondary.KEY_FILE}"' in text
    for zone in ("prim.test", "second.test"):
        block = text.split(f"name: {zone}\n")[1].split("zone:")[0]
        assert f"notify: 192.0.2.20 miab-xfr.{A}." in block
        assert f"provide-xfr: 192.0.2.20 miab-xfr.{A}." in block
    assert key == (
        "# Managed by miab-remote: the TSIG keys of zone transfers between boxes. Secret.\n"
        f'key:\n  name: "miab-xfr.{A}."\n  algorithm: hmac-sha256\n'
        '  secret: "c2VjcmV0LW9mLWEtZm9yLXRoZS10ZXN0LTMyYnl0ZXMh"\n'
    )


def test_the_secondary_copies_each_zone_of_its_primary_with_the_same_key(hosts: Path) -> None:
    secrets.put(A, secrets.DNS_TSIG_SECRET, "c2VjcmV0LW9mLWEtZm9yLXRoZS10ZXN0LTMyYnl0ZXMh")
    text, key, _ = conf(hosts, B)
    assert key == conf(hosts, A)[1]
    for zone in ("prim.test", "second.test"):
        block = text.split(f"name: {zone}\n")[1].split("zone:")[0]
        assert f'zonefile: "{secondary.COPIES_DIR}/{zone}.zone"' in block
        assert f"request-xfr: AXFR 192.0.2.10 miab-xfr.{A}." in block
        assert f"allow-notify: 192.0.2.10 miab-xfr.{A}." in block
    assert "provide-xfr" not in text and "name: sec.test\n  zonefile: sec.test.zone\n" in text
    # A box that is neither: no key, no include.
    text, key, _ = conf(hosts, C)
    assert key is None and "include:" not in text and "xfr" not in text


def test_a_secret_file_never_shown_and_the_key_masked_on_both_boxes(hosts: Path) -> None:
    secret = "c2VjcmV0LW9mLWEtZm9yLXRoZS10ZXN0LTMyYnl0ZXMh"
    secrets.put(A, secrets.DNS_TSIG_SECRET, secret)
    resources, _ = build(Inventory(hosts).load(B), DEBIAN_12, hosts)
    (key_file,) = [r for r in resources if getattr(r, "path", None) == secondary.KEY_FILE]
    assert key_file.secret and key_file.mode == 0o640 and key_file.group == "nsd"  # type: ignore[attr-defined]
    for name in (A, B):
        assert secret not in secret_mask_for(Inventory(hosts).load(name))(f"nsd said {secret}")


def test_without_the_key_a_build_is_bad_input_that_names_the_deploy(hosts: Path) -> None:
    with pytest.raises(InputError, match=f"no TSIG key in .*`miab-remote deploy {A}` makes one"):
        conf(hosts, B)


def test_the_zones_list_the_secondarys_nameservers_and_dns_prints_both_glues(hosts: Path) -> None:
    host = Inventory(hosts).load(A)
    ns = sorted(r.value for r in dnszones.records(host)["prim.test"] if r.type == "NS")
    assert ns == [f"ns1.{A}.", f"ns1.{B}.", f"ns2.{A}.", f"ns2.{B}."]
    r = cli(hosts.parent, "dns", A, "--json")
    data = json.loads(r.out)
    assert {(g["name"], g["value"], g["box"]) for g in data["glue"] if g["type"] == "A"} == {
        (f"ns1.{A}", "192.0.2.10", A),
        (f"ns2.{A}", "192.0.2.10", A),
        (f"ns1.{B}", "192.0.2.20", B),
        (f"ns2.{B}", "192.0.2.20", B),
    }
    assert data["delegations"]["second.test"] == [f"ns1.{A}", f"ns2.{A}", f"ns1.{B}", f"ns2.{B}"]
    table = cli(hosts.parent, "dns", A).out
    assert re.search(rf"ns1\.{B}  A  192\.0\.2\.20 .*at the registrar of {B}'s domain", table), table


def test_a_primarys_deploy_pushes_only_the_secondarys_nsd_conf_keys_and_nsd_drop_in(hosts: Path) -> None:
    secrets.put(A, secrets.DNS_TSIG_SECRET, "c2VjcmV0LW9mLWEtZm9yLXRoZS10ZXN0LTMyYnl0ZXMh")
    _, rendered = build(Inventory(hosts).load(B), DEBIAN_12, hosts, secondary.PUSH_TAG)
    assert sorted(rendered) == [secondary.KEY_FILE, "/etc/nsd/nsd.conf", secondary.NSD_DROP_IN]


def start_pre(drop_in: str) -> list[str]:
    """The drop-in's ExecStartPre as systemd runs it: its words, with systemd's `$$` made `$`."""
    lines = [line for line in drop_in.splitlines() if line.startswith("ExecStartPre=")]
    assert len(lines) == 1, drop_in
    # "-+": run outside nsd's sandbox, and nsd starts even if it fails.
    assert lines[0].startswith("ExecStartPre=-+/"), lines[0]
    return shlex.split(lines[0].removeprefix("ExecStartPre=-+").replace("$$", "$"))


def test_the_secondary_writes_its_copies_to_disk_and_forgets_its_serials_when_one_is_missing(
    hosts: Path, tmp_path: Path
) -> None:
    """nsd writes a copy to disk only for a serial its state file does not know: the drop-in removes that
    file at nsd's start when a copy's file is missing (nsd restarted before it wrote it), so nsd transfers
    the zone again, and a restart with the primary down still serves every copy. Run for real with sh."""
    secrets.put(A, secrets.DNS_TSIG_SECRET, "c2VjcmV0LW9mLWEtZm9yLXRoZS10ZXN0LTMyYnl0ZXMh")
    text, _, rendered = conf(hosts, B)
    server = text.split("\nzone:")[0]
    assert f"zonefiles-write: {secondary.WRITE_AFTER}\n" in server and f'xfrdfile: "{secondary.XFRD_STATE}"' in server
    command = start_pre(rendered[secondary.NSD_DROP_IN].decode())
    copies = [f"{secondary.COPIES_DIR}/{zone}.zone" for zone in ("prim.test", "second.test")]
    assert command[-len(copies) :] == copies
    # The same command on files in tmp_path.
    state, files = tmp_path / "xfrd.state", [tmp_path / Path(c).name for c in copies]
    assert command[:2] == ["/bin/sh", "-c"] and command[3] == "-"
    run = [command[0], "-c", command[2].replace(secondary.XFRD_STATE, str(state)), command[3], *map(str, files)]
    for path in (state, *files):
        path.write_text("x")
    subprocess.run(run, check=True)
    assert state.exists(), "every copy on disk: nsd keeps its state"
    files[1].unlink()
    subprocess.run(run, check=True)
    assert not state.exists(), "a copy missing: the state goes"
    subprocess.run(run, check=True)  # and no state is no error
    # A box that copies nothing: nsd keeps its defaults, and the drop-in runs nothing.
    text, _, rendered = conf(hosts, A)
    assert "zonefiles-write" not in text and "xfrdfile" not in text
    assert "ExecStartPre" not in rendered[secondary.NSD_DROP_IN].decode()


def test_peers_talk_over_the_ip_versions_both_have(hosts: Path) -> None:
    secrets.put(A, secrets.DNS_TSIG_SECRET, "c2VjcmV0LW9mLWEtZm9yLXRoZS10ZXN0LTMyYnl0ZXMh")
    write(hosts, A, f'[dns]\nsecondaries = ["{B}"]\n', domains=("prim.test",), ipv6="2001:db8::10")
    assert "2001:db8" not in conf(hosts, A)[0] and "2001:db8" not in conf(hosts, B)[0]  # B has no IPv6
    write(hosts, B, ipv6="2001:db8::20")
    assert f"provide-xfr: 2001:db8::20 miab-xfr.{A}." in conf(hosts, A)[0]
    assert f"request-xfr: AXFR 2001:db8::10 miab-xfr.{A}." in conf(hosts, B)[0]


def test_a_secondary_that_cannot_be_updated_after_the_deploy_fails_that_box_only(
    hosts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The secondaries are updated once the boxes converged; an error then (the secondary's inventory made
    invalid meanwhile) is the primary's failed run, and the other box's result is still reported."""
    from miab_remote.engine.converge import DeployOptions, HostRun
    from miab_remote.jobs import deploy as deploy_job

    def converged(inv: Inventory, host: Host, built: object, opts: object, report: object) -> HostRun:
        write(hosts, B, "not toml [")  # while the boxes converge
        return HostRun(host.name)

    monkeypatch.setattr(deploy_job, "_deploy_one", converged)
    runs = deploy_job.deploy(Inventory(hosts), [A, C], DeployOptions(), lambda *a: None)
    error = runs[A].error or ""
    assert runs[A].failed == 1 and error.startswith("its secondaries not updated: ") and f"{B}.toml:" in error, error
    assert runs[C].failed == 0 and runs[C].error is None


def held(root: Path, name: str) -> bool:
    """Whether another holder has the secondary's lock (a try that does not wait)."""
    from miab_remote import fsutil
    from miab_remote.errors import MiabError

    try:
        with fsutil.file_lock(root / f".{name}.secondary.lock", timeout=0):
            return False
    except MiabError:
        return True


def test_the_secondarys_zones_are_built_and_applied_under_its_lock(
    hosts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The secondary's own deploy holds its lock from the build to the apply, and so does each push of a
    primary's deploy: the last push is the last built (the lock is a file: it holds between processes)."""
    from miab_remote.engine.converge import DeployOptions, HostRun
    from miab_remote.jobs import deploy as deploy_job

    seen: dict[str, bool] = {}

    def converged(inv: Inventory, host: Host, built: object, opts: object, report: object) -> HostRun:
        seen[f"deploy {host.name}"] = held(hosts, B)
        return HostRun(host.name)

    def pushed(peer: Host, root: Path, *args: object) -> HostRun:
        seen["push"] = held(hosts, B)
        return HostRun(peer.name)

    monkeypatch.setattr(deploy_job, "_deploy_one", converged)
    monkeypatch.setattr(deploy_job, "push_tagged", pushed)
    with Inventory(hosts).edit(B) as doc:  # a box made: the push goes to it
        doc["host_keys"] = [KEY]
    deploy_job.deploy(Inventory(hosts), [B], DeployOptions(), lambda *a: None)
    deploy_job.deploy(Inventory(hosts), [A], DeployOptions(), lambda *a: None)
    assert seen == {f"deploy {B}": True, f"deploy {A}": False, "push": True}, seen
    assert not held(hosts, B)
