"""Benchmark: the no-op deploy of a deployed box. Prints wall seconds and round trips, median of 5 runs.

Usage (as root, after scripts/setup-host):
    .venv/bin/python bench/noop_deploy.py                   # a local box with the full mail stack (the default)
    .venv/bin/python bench/noop_deploy.py --recipes base,testbox   # the engine's small test recipe

It makes its own local box (on its own bridge and subnet), deploys it, measures, and destroys it. Two
figures: the engine alone (converge in this process: connect, probe, plan) and the whole CLI process
(Python start-up and imports included), which is what an operator waits for.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from miab_remote.engine.converge import DeployOptions, converge, prepare  # noqa: E402
from miab_remote.fleet.store import Inventory  # noqa: E402
from miab_remote.mail.passwords import hash_password  # noqa: E402
from tests.e2e import helpers  # noqa: E402
from tests.e2e.helpers import Box, cli, deployed_box, new_inventory, operator_key  # noqa: E402

BENCH_ENV = {
    "MIAB_REMOTE_LOCAL_DIR": "/var/lib/miab-remote/bench",
    "MIAB_REMOTE_LOCAL_SUBNET": "10.76.0.0/24",
    "MIAB_REMOTE_LOCAL_BRIDGE": "miabbench0",
}


@contextlib.contextmanager
def bench_box(
    tmp: Path,
    recipes: list[str] | None,
    env: dict[str, str] = BENCH_ENV,
    name: str = "mx.bench.test",
    extra: Mapping[str, Any] | None = None,
    image: str = helpers.E2E_IMAGE,
) -> Iterator[tuple[Path, str, Box]]:
    """A deployed local box of release `image` with two users (recipes None: the default mail stack) and the
    `extra` inventory keys, destroyed afterwards. `env` picks its network and state folder (each benchmark
    that may run beside another has its own)."""
    os.environ.update(env)  # for the engine run in this process
    helpers.E2E_ENV.update(env)  # for the CLI runs of the test helpers: the bench has its own network
    inv = new_inventory(tmp / "hosts")
    users = [{"email": f"{u}@bench.test", "password_hash": hash_password(f"{u}-password")} for u in ("a", "b")]
    inventory = {"users": users, **({"recipes": recipes} if recipes else {}), **(extra or {})}
    with deployed_box(inv, operator_key(tmp), {name: inventory}, image=image) as made:
        yield inv, name, made.box


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", help="comma-separated recipes (default: the inventory default, the mail stack)")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    recipes = args.recipes.split(",") if args.recipes else None
    with tempfile.TemporaryDirectory() as tmp, bench_box(Path(tmp), recipes) as (inv_root, name, _box):
        inv = Inventory(inv_root)
        host = inv.load(name)
        built = prepare(host, inv.root)
        engine, rts = [], []
        for _ in range(args.runs):
            run = converge(host, built, inv.root, DeployOptions(), lambda n, m: None)
            assert run.failed == 0 and run.changed == 0, run.error or run.actions
            engine.append(run.seconds)
            rts.append(run.round_trips)
        whole = []
        for _ in range(args.runs):
            t = time.monotonic()
            res = cli(inv_root, "deploy", name, "--json", env=BENCH_ENV)
            whole.append(time.monotonic() - t)
            assert res.code == 0 and res.json()["hosts"][name]["changed"] == 0
        print(
            f"no-op deploy of {name} ({len(run.unchanged)} resources: {', '.join(inv.load(name).recipes)}), "
            f"median of {args.runs} runs:"
        )
        print(
            f"  engine (connect, probe, plan): {statistics.median(engine):.3f} s, "
            f"{statistics.median(rts):.0f} round trips"
        )
        print(f"  whole CLI process:             {statistics.median(whole):.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
