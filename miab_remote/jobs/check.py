"""`check` over several boxes at once: each box's checks, or one failed check saying why it could not run."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from miab_remote import providers
from miab_remote.checks.outside import run_checks
from miab_remote.checks.result import Check
from miab_remote.checks.secondary import secondary_checks
from miab_remote.errors import MiabError
from miab_remote.fleet.model import Host
from miab_remote.jobs.parallel import in_parallel


def check_hosts(hosts: Sequence[Host]) -> dict[str, list[Check]]:
    by_name = {h.name: h for h in hosts}

    def one(name: str) -> list[Check]:
        host = by_name[name]
        parts: tuple[tuple[str, Callable[[], list[Check]]], ...] = (
            ("check", lambda: run_checks(host, providers.public_resolvers(host))),
            ("DNS secondaries", lambda: secondary_checks(host)),
        )
        out = []
        for what, checks in parts:
            try:
                out += checks()
            except MiabError as e:
                out.append(Check(what, False, str(e)))
        return out

    return in_parallel(list(by_name), one)
