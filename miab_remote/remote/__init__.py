"""Scripts that run ON the box (stdlib-only python3), shipped over SSH on each run: nothing is installed."""

from __future__ import annotations

from importlib import resources


def script(name: str) -> bytes:
    return resources.files(__package__).joinpath(f"{name}.py").read_bytes()
