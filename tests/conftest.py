"""Shared test fixtures. e2e tests need root, Linux and systemd-nspawn; they are skipped with a reason
otherwise, and `.ci/run` makes sure they run in CI (MIAB_REMOTE_REQUIRE_E2E=1 turns the skip into a failure).

scripts/test runs the suite on two pytest-xdist workers: every test is in the group of its module, and an
e2e module's tests on one release in a group of their own, which the scheduler here hands to one worker
whole, so a module's boxes are made once, on one worker (whose lane is its own: tests/e2e/helpers.py). The
e2e groups go first, the largest first, then the unit modules, which fill in beside the last e2e ones. The
summary ends with each group's time, the slowest first."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections import defaultdict

import pytest


def e2e_missing() -> str | None:
    if sys.platform != "linux":
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("systemd-nspawn", "debootstrap", "nft", "ip"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


RELEASE_PARAM = re.compile(r"\[(?:[^\]]*-)?(debian-\d+)(?:-[^\]]*)?\]")


def group_of(nodeid: str) -> str:
    """The group of a test: its module, with the release for a test of a module run once per release (its
    `image` parameter, as in tests/e2e/test_mail.py::test_x[debian-12])."""
    module = nodeid.split("::")[0]
    release = RELEASE_PARAM.search(nodeid)
    return f"{module} on {release.group(1)}" if release and "/e2e/" in module else module


def scheduler_class() -> type:
    """xdist's scope scheduler with our groups for its scopes: each group goes to one worker whole, in the
    order collected. (Its loadgroup mode would read xdist_group marks, but with pytest 9 the group it
    writes into a test's id is lost, and every test is scheduled alone.)"""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return GroupScheduling


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    return scheduler_class()(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups: dict[str, list[pytest.Item]] = defaultdict(list)
    for item in items:
        groups[group_of(item.nodeid)].append(item)
    # e2e groups first, the largest first (a stable sort: each group's tests keep their order).
    rank = {g: ("/e2e/" not in g, -len(members)) for g, members in groups.items()}
    items.sort(key=lambda item: rank[group_of(item.nodeid)])
    reason = e2e_missing()
    if reason is None:
        return
    if os.environ.get("MIAB_REMOTE_REQUIRE_E2E") == "1":
        raise pytest.UsageError(f"e2e tests required but cannot run: {reason}")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Each group's time (setup, call and teardown of its tests), the slowest first: where the suite's time
    goes, to keep it within CI's limit."""
    seconds: dict[str, float] = defaultdict(float)
    for reports in terminalreporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                seconds[group_of(report.nodeid)] += report.duration
    if not seconds:
        return
    terminalreporter.section("time per group")
    slowest = sorted(seconds.items(), key=lambda kv: -kv[1])
    for group, total in slowest[:30]:
        terminalreporter.write_line(f"{total:8.1f} s  {group}")
    terminalreporter.write_line(f"{sum(seconds.values()):8.1f} s  in all ({len(seconds)} groups)")
