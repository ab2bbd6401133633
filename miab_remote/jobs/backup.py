"""`backup` now and `backups`: the box's backup program (remote/backup.py) run over SSH as a script, with
its input on stdin (never a secret on a command line: the program reads the box's credential files).

The program says what it does in JSON lines: `{"progress": {...}}` (at least every 20 s), then one
`{"result": {...}}` or `{"error": "...", "code": "..."}`; exit 0, 1 (failed) or 2 (refused: nothing done).
Every box is checked on the laptop before any is contacted ([backup] set, its password made).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from miab_remote.engine.redact import SecretMask, secret_mask_for
from miab_remote.errors import HostError, InputError, MiabError
from miab_remote.fleet.model import Host
from miab_remote.fleet.store import Inventory
from miab_remote.jobs.parallel import in_parallel
from miab_remote.mail import backup
from miab_remote.transport.ssh import Transport

# Told what a box's run is doing now: (box, message), as a deploy's report.
Report = Callable[[str, str], None]
REFUSED = 2


class Refused(InputError):
    """The box's program refused (exit 2: e.g. the box holds mail): nothing was done there."""

    def __init__(self, message: str, code: str | None) -> None:
        super().__init__(message)
        self.code = code


def ready(host: Host) -> Host:
    """A box whose backups can run: [backup] set and its credentials and password stored (bad input else)."""
    backup.backup_of(host)
    backup.check_credentials(host)
    backup.password(host)
    return host


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def progress_text(p: Mapping[str, Any]) -> str:
    """One progress event as a line of the live display."""
    parts = [str(p.get("phase") or "working")]
    if isinstance(p.get("percent"), int | float):
        parts.append(f"{p['percent']:.0f}%")
    if isinstance(p.get("files"), int):
        parts.append(f"{p['files']} files")
    if isinstance(p.get("bytes"), int):
        parts.append(size(p["bytes"]))
    return " ".join(parts)


def run_program(
    transport: Transport, host: Host, payload: Mapping[str, Any], report: Report, mask: SecretMask | None = None
) -> dict[str, Any]:
    """Run the backup program with `payload`; its result. Its error is a HostError (exit 1), its refusal a
    Refused (exit 2); what it says is masked with the box's secrets again on the way."""
    mask = mask or secret_mask_for(host)
    said: dict[str, Any] = {}

    def on_line(line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if isinstance(event.get("progress"), dict):
            report(host.name, progress_text(event["progress"]))
        elif "result" in event or "error" in event:
            said.update(event)

    res = transport.run_script("backup", dict(payload), on_line=on_line)
    if "error" in said or res.exit_code != 0:
        detail = said.get("error") or res.stderr.decode(errors="replace").strip()[-2000:] or f"exit {res.exit_code}"
        message = f"{host.name}: {mask(str(detail))}"
        if res.exit_code == REFUSED:
            raise Refused(message, said.get("code"))
        raise HostError(message)
    result = said.get("result")
    if not isinstance(result, dict):
        raise HostError(f"{host.name}: the backup program said no result (exit {res.exit_code})")
    return result


@dataclass
class BackupRun:
    """One box's backup now: the program's result, or why it failed."""

    name: str
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    exit_code: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"result": self.result or None, "error": self.error, "seconds": round(self.seconds, 3)}

    def line(self) -> str:
        if self.error:
            return f"{self.name}: FAILED: {self.error}"
        r = self.result
        forgot = "; old snapshots forgotten by the keep policy" if r.get("forgot") else ""
        return (
            f"{self.name}: snapshot {str(r.get('snapshot', '?'))[:8]}, {r.get('files', '?')} files, "
            f"{size(r.get('added') or 0)} added, {float(r.get('seconds') or 0):.1f} s{forgot}"
        )


def backup_now(
    inv: Inventory, names: Sequence[str], report: Report, connect_timeout: float = 10.0
) -> dict[str, BackupRun]:
    """A backup now on each box, in parallel (each box's failure its own); bad input before any contact."""
    hosts = {n: ready(inv.load(n)) for n in dict.fromkeys(names)}

    def one(name: str) -> BackupRun:
        run = BackupRun(name)
        start = time.monotonic()
        try:
            report(name, "connecting")
            with Transport(hosts[name].target, connect_timeout=connect_timeout) as t:
                run.result = run_program(t, hosts[name], {"command": "run"}, report)
        except MiabError as e:
            run.error, run.exit_code = str(e), e.exit_code
        run.seconds = time.monotonic() - start
        return run

    return in_parallel(list(hosts), one)


def snapshots(inv: Inventory, name: str, report: Report, connect_timeout: float = 10.0) -> list[dict[str, Any]]:
    """The box's snapshots in its repository (its own host name's), oldest first."""
    host = ready(inv.load(name))
    with Transport(host.target, connect_timeout=connect_timeout) as t:
        result = run_program(t, host, {"command": "list", "host": host.name}, report)
    listed = result.get("snapshots")
    if not isinstance(listed, list):
        raise HostError(f"{name}: the backup program listed no snapshots")
    return sorted((s for s in listed if isinstance(s, dict)), key=lambda s: str(s.get("time", "")))
