"""Shared test fixtures. e2e tests need root, Linux and systemd-nspawn; they are skipped with a reason
otherwise, and `.ci/run` makes sure they run in CI (MIAB_REMOTE_REQUIRE_E2E=1 turns the skip into a failure)."""

from __future__ import annotations

import os
import shutil
import sys

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = e2e_missing()
    if reason is None:
        return
    if os.environ.get("MIAB_REMOTE_REQUIRE_E2E") == "1":
        raise pytest.UsageError(f"e2e tests required but cannot run: {reason}")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
