"""The deploy use case: converge several boxes at once, then record what was learned and tell providers.

Each box's inventory file is loaded once, and each box is built once (recipes loaded, templates rendered)
before any box is contacted: a bad recipe or template of any of them is bad input (exit 2) and nothing is
touched. A box with [backup] gets its repository password and recovery sheet first (jobs/recovery.py): the
builds render the password into the box's files. The converges (engine/converge.py, which writes nothing
on the laptop) run in parallel; then this job records a newly detected os in the box's inventory file and
calls the box's provider.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from miab_remote import providers
from miab_remote.engine.converge import Build, DeployOptions, HostRun, Report, converge, prepare, push_tagged
from miab_remote.errors import MiabError
from miab_remote.fleet import peers
from miab_remote.fleet.model import Host
from miab_remote.fleet.store import Inventory
from miab_remote.jobs import recovery
from miab_remote.jobs.parallel import in_parallel
from miab_remote.mail import backup, secondary
from miab_remote.transport.ssh import route

__all__ = ["DeployOptions", "HostRun", "check_builds", "deploy"]


def check_builds(inventory: Inventory, host: Host) -> Build:
    """Load every recipe and render every template of a box on the laptop, so that a failed recipe or
    template is bad input (exit 2, one line naming the file) before any box is contacted; and so is a way
    to the box that cannot be pinned (a jump host without jump_host_keys, a ProxyCommand)."""
    route(host.target)
    return prepare(host, inventory.root)


def deploy(inventory: Inventory, names: Sequence[str], opts: DeployOptions, report: Report) -> dict[str, HostRun]:
    """Deploy the named boxes (in the given order in the result). Raises InputError before any box is
    contacted when a name, an inventory file, a recipe or a template is bad."""
    hosts = {n: inventory.load(n) for n in names}
    try:
        # The secrets the builds render: the backup's password, the TSIG keys of zone transfers.
        notes = {n: recovery.prepare(h, opts.dry_run) + secondary.prepare(h, opts.dry_run) for n, h in hosts.items()}
        # A secondary's copied zones are built and applied under its lock (as each primary's push is).
        held = contextlib.ExitStack()
        if not opts.dry_run:
            for n in sorted(n for n, h in hosts.items() if peers.primaries_of(h, inventory)):
                held.enter_context(peers.secondary_lock(inventory, n))
        with held:
            # Built before any connection opens: a box that does not build is bad input, and no box is even
            # contacted (its auth log stays quiet), although connecting meanwhile would save a few milliseconds.
            builds = {n: check_builds(inventory, host) for n, host in hosts.items()}
            runs = in_parallel(names, lambda n: _deploy_one(inventory, hosts[n], builds[n], opts, report))
        for n, run in runs.items():
            try:
                run.notes += _update_secondaries(inventory, hosts[n], names, run, opts, report)
            except MiabError as e:  # e.g. a secondary's inventory made invalid meanwhile: this box's failure only
                run.failed += 1
                run.error = f"its secondaries not updated: {e}"
    finally:
        for n in hosts:
            backup.use_stand_in(n, on=False)
        secondary.forget_stand_ins()
    for n, run in runs.items():
        run.notes[:0] = notes[n]
    return runs


def _update_secondaries(
    inventory: Inventory, host: Host, names: Sequence[str], run: HostRun, opts: DeployOptions, report: Report
) -> list[str]:
    """After a primary's deploy, its secondaries that this deploy did not converge get their nsd.conf (the
    zones they copy from it) and keys pushed, in one round trip each: a zone added here is served there at
    once. A failed push fails this box's run (its zones are not all served twice), naming the fix."""
    notes: list[str] = []
    if run.error or not host.dns.secondaries:
        return notes
    for peer in peers.secondaries_of(host, inventory):
        if peer.name in names:
            continue  # converged by this deploy itself
        if opts.dry_run or not peer.has_box or peer.os is None:
            why = "a dry run" if opts.dry_run else "it was never deployed"
            notes.append(f"secondary {peer.name}: its list of {host.name}'s zones not pushed ({why})")
            continue
        with peers.secondary_lock(inventory, peer.name):
            pushed = push_tagged(peer, inventory.root, report, secondary.PUSH_TAG, f"{host.name}'s zones")
        if pushed.error:
            run.failed += 1
            run.error = f"secondary {peer.name} not updated: {pushed.error}; run `miab-remote deploy {peer.name}`"
        else:
            notes.append(f"secondary {peer.name}: {host.name}'s zones pushed ({pushed.changed} changed)")
    return notes


def _deploy_one(inventory: Inventory, host: Host, built: Build, opts: DeployOptions, report: Report) -> HostRun:
    try:  # the registrar's part first as well: the box's ACME order resolves its names during the apply
        # (not for an inventory without a box: the transport refuses it, and there is nothing to delegate to)
        before = [] if opts.dry_run or not host.has_box else providers.before_deploy(host)
    except MiabError as e:
        return HostRun(host.name, failed=1, error=str(e), os=host.os)
    run = converge(host, built, inventory.root, opts, report)
    run.notes[:0] = before
    detected = run.os
    run.os = detected or host.os  # the inventory's word when the box said nothing
    if opts.dry_run or detected is None:
        return run
    try:
        if detected != host.os:
            with inventory.edit(host.name) as doc:
                doc["os"] = detected
            run.notes.append(f"recorded os = {detected!r} in the inventory")
        if not run.error:
            run.notes += providers.after_deploy(host)
    except MiabError as e:
        run.error = str(e)
        run.failed += 1
    return run
