"""Watching every process of this machine for a secret on its command line (or in its environment) while a
command runs. A local box's processes are among them: its PID namespace is a child of this machine's, so
this machine's /proc lists them too, which is how one watch covers the laptop and the box at once."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from tests.e2e.helpers import E2E_ENV

# A process of this run's lane: a CLI started with the lane's environment, or one inside a box of the lane.
LANE_DIR = Path(E2E_ENV["MIAB_REMOTE_LOCAL_DIR"])
LANE_MARK = f"MIAB_REMOTE_LOCAL_DIR={LANE_DIR}\0".encode()


class LeakWatch:
    """Scans /proc/*/cmdline (and /proc/*/environ for the `env_secrets`) about every 20 ms, skipping this
    process, until the block ends. `hits` are the leaks found; `seen` counts the scans in which a process
    of this lane (ours(): not another xdist worker's) whose command line holds `expect` (e.g. b"restic")
    ran, so a test can tell the watch saw the work (a count of scans cannot: a quick command is over in a
    few)."""

    def __init__(self, *secrets: str, env_secrets: tuple[str, ...] | None = None, expect: bytes = b"") -> None:
        self.secrets = [s.encode() for s in secrets]
        self.env_secrets = [s.encode() for s in (secrets if env_secrets is None else env_secrets)]
        self.expect = expect
        self.hits: list[str] = []
        self.scans = 0
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LeakWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = str(os.getpid())
        while not self._stop.is_set():
            saw = False
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or pid == me:
                    continue
                for part, secrets in (("cmdline", self.secrets), ("environ", self.env_secrets)):
                    if not secrets:
                        continue
                    try:
                        data = Path(f"/proc/{pid}/{part}").read_bytes()
                    except OSError:
                        continue
                    if part == "cmdline" and self.expect and self.expect in data and not saw:
                        saw = ours(pid)
                    for secret in secrets:
                        if secret in data:
                            shown = data.replace(b"\0", b" ").replace(secret, b"<SECRET>")[:200]
                            self.hits.append(f"{pid} {part}: {shown!r}")
            self.scans += 1
            self.seen += saw
            self._stop.wait(0.02)


def ours(pid: str) -> bool:
    """Whether the process belongs to this lane: its environment names the lane's state folder (the CLI, as
    cli() starts it), or it runs in the network namespace of one of the lane's boxes (a box's own process)."""
    try:
        if LANE_MARK in Path(f"/proc/{pid}/environ").read_bytes():
            return True
        netns = os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return False
    for record in LANE_DIR.glob("*/box.json"):
        try:
            if os.stat(Path("/run/netns", json.loads(record.read_text())["netns"])).st_ino == netns:
                return True
        except (OSError, ValueError, KeyError):
            continue
    return False
