"""Benchmark: `miab-remote user add` end to end: the inventory written, the accounts pushed, and the new
user able to log in over IMAPS. Prints wall seconds (the whole CLI process) and round trips, median of 5.

Usage (as root, after scripts/setup-host):
    .venv/bin/python bench/user_add.py            # makes a local box with the mail stack, measures, destroys it
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.noop_deploy import BENCH_ENV, bench_box  # noqa: E402
from miab_remote.mail import layout  # noqa: E402
from tests.e2e.helpers import cli  # noqa: E402
from tests.e2e.mailclients import Mail  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    os.environ.update(BENCH_ENV)
    with tempfile.TemporaryDirectory() as tmp, bench_box(Path(tmp), recipes=None) as (inv, name, box):
        mail = Mail(box, name, box.run(f"cat {layout.TLS_CERT}")[1])
        domain = name.split(".", 1)[1]
        walls, rts, logins = [], [], []
        for i in range(args.runs):
            email = f"bench{i}-{int(time.time())}@{domain}"
            start = time.monotonic()
            res = cli(inv, "user", "add", name, email, "--password-stdin", stdin="bench-password\n", env=BENCH_ENV)
            walls.append(time.monotonic() - start)
            assert res.code == 0, res.err + res.out
            rts.append(int(re.search(r"(\d+) round trips?", res.out).group(1)))  # type: ignore[union-attr]
            mail.imap(email, "bench-password").logout()  # the user can log in right away
            logins.append(time.monotonic() - start)
        print(f"user add on {name}, median of {args.runs} runs:")
        print(
            f"  CLI (inventory written and pushed): {statistics.median(walls):.3f} s, "
            f"{statistics.median(rts):.0f} round trips"
        )
        print(f"  until the new user's first IMAPS login succeeded: {statistics.median(logins):.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
