"""Running one job per host at once (each host has its own connection; SSH waits, it does not compute)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def in_parallel(names: Sequence[str], job: Callable[[str], T]) -> dict[str, T]:
    """Run `job` for each host at once; results keep the order the operator gave."""
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(names)))) as pool:
        futures = {n: pool.submit(job, n) for n in names}
        return {n: futures[n].result() for n in names}
