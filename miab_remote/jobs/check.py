"""`check` over several boxes at once: each box's checks, or one failed check saying why it could not run."""

from __future__ import annotations

from collections.abc import Sequence

from miab_remote.checks.outside import run_checks
from miab_remote.checks.result import Check
from miab_remote.errors import MiabError
from miab_remote.fleet.model import Host
from miab_remote.jobs.parallel import in_parallel


def check_hosts(hosts: Sequence[Host]) -> dict[str, list[Check]]:
    by_name = {h.name: h for h in hosts}

    def one(name: str) -> list[Check]:
        try:
            return run_checks(by_name[name])
        except MiabError as e:
            return [Check("check", False, str(e))]

    return in_parallel(list(by_name), one)
