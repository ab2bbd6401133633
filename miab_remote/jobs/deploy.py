"""The deploy use case: converge several boxes at once, then record what was learned and tell providers.

Each box's inventory file is loaded once, and each box is built once (recipes loaded, templates rendered)
before any box is contacted: a bad recipe or template of any of them is bad input (exit 2) and nothing is
touched. A box with [backup] gets its repository password and recovery sheet first (jobs/recovery.py): the
builds render the password into the box's files. The converges (engine/converge.py, which writes nothing
on the laptop) run in parallel; then this job records a newly detected os in the box's inventory file and
calls the box's provider.
"""

from __future__ import annotations

from collections.abc import Sequence

from miab_remote import providers
from miab_remote.engine.converge import Build, DeployOptions, HostRun, Report, converge, prepare
from miab_remote.errors import MiabError
from miab_remote.fleet.model import Host
from miab_remote.fleet.store import Inventory
from miab_remote.jobs import recovery
from miab_remote.jobs.parallel import in_parallel
from miab_remote.mail import backup
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
        notes = {n: recovery.prepare(host, opts.dry_run) for n, host in hosts.items()}
        # Built before any connection opens: a box that does not build is bad input, and no box is even
        # contacted (its auth log stays quiet), although connecting meanwhile would save a few milliseconds.
        builds = {n: check_builds(inventory, host) for n, host in hosts.items()}
        runs = in_parallel(names, lambda n: _deploy_one(inventory, hosts[n], builds[n], opts, report))
    finally:
        for n in hosts:
            backup.use_stand_in(n, on=False)
    for n, run in runs.items():
        run.notes[:0] = notes[n]
    return runs


def _deploy_one(inventory: Inventory, host: Host, built: Build, opts: DeployOptions, report: Report) -> HostRun:
    run = converge(host, built, inventory.root, opts, report)
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
