"""What the operator sees: a live per-host progress display on a terminal, then per-host results.

Colour and the live display appear only on a terminal; NO_COLOR is honoured (rich does both).
Progress goes to stderr, results to stdout, so `--json` output stays clean.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def stdout_console() -> Console:
    # Not a terminal (a pipe, a log): no width to fit, so tables are never cut.
    width = None if sys.stdout.isatty() else 1000
    return Console(highlight=False, no_color="NO_COLOR" in os.environ or None, soft_wrap=True, width=width)


def stderr_console() -> Console:
    """Errors for the operator, unwrapped (soft_wrap) so a long message stays one line in a log."""
    return Console(stderr=True, highlight=False, soft_wrap=True, no_color="NO_COLOR" in os.environ or None)


class Progress:
    """Thread-safe per-host status lines; a live table on a terminal, plain lines with -v otherwise."""

    def __init__(self, names: Sequence[str], verbose: bool = False) -> None:
        self.names = list(names)
        self.status = {n: "waiting" for n in self.names}
        self.verbose = verbose
        self.console = Console(stderr=True, highlight=False)
        self.live_enabled = self.console.is_terminal and sys.stderr.isatty()
        self._lock = threading.Lock()
        self._live: Live | None = None

    def _table(self) -> Table:
        table = Table.grid(padding=(0, 2))
        for name in self.names:
            table.add_row(Text(name, style="bold"), Text(self.status[name]))
        return table

    def __call__(self, name: str, message: str) -> None:
        with self._lock:
            self.status[name] = message
            if self._live is not None:
                self._live.update(self._table())
            elif self.verbose:
                self.console.print(f"{name}: {message}", markup=False)

    @contextmanager
    def running(self) -> Iterator[Progress]:
        if not self.live_enabled:
            yield self
            return
        with Live(self._table(), console=self.console, refresh_per_second=8, transient=True) as live:
            self._live = live
            try:
                yield self
            finally:
                self._live = None
