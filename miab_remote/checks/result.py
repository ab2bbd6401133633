"""One line of `miab-remote check`: ok, a warning, or a failure, with what is wrong and how to fix it.

A failure is something broken now (a service down, a port closed, a record missing): `check` exits 1. A
warning is something to act on soon that breaks nothing yet (a certificate expiring within 14 days, disk
or memory running low, security updates waiting, a reboot required): it shows, and the exit code stays 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # with ok=False: needs attention, but is not a failure

    @property
    def status(self) -> str:
        return "ok" if self.ok else "warning" if self.warning else "failed"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "status": self.status}


def warn(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, False, detail, fix, warning=True)
