"""Benchmark: the no-op deploy of a deployed box. Prints wall seconds and round trips, median of 5 runs.

Usage (as root, after scripts/setup-host):
    .venv/bin/python bench/noop_deploy.py               # makes its own local box, deploys it, measures, destroys it
    .venv/bin/python bench/noop_deploy.py --name NAME --inventory hosts --recipes base   # an existing box

Two figures: the engine alone (deploy_host in this process: connect, probe, plan) and the whole CLI
process (Python start-up and imports included), which is what an operator waits for.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomlkit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from miab_remote.deploy import DeployOptions, deploy_host  # noqa: E402
from miab_remote.inventory import Inventory  # noqa: E402
from tests.e2e.helpers import cli, new_inventory  # noqa: E402

BENCH_ENV = {
    "MIAB_REMOTE_LOCAL_DIR": "/var/lib/miab-remote/bench",
    "MIAB_REMOTE_LOCAL_SUBNET": "10.76.0.0/24",
    "MIAB_REMOTE_LOCAL_BRIDGE": "miabbench0",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", help="an existing, deployed box (default: create one)")
    ap.add_argument("--inventory", type=Path)
    ap.add_argument("--recipes", default="base,testbox", help="recipes for the box made here")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    os.environ.update(BENCH_ENV)
    made = args.name is None
    tmp = tempfile.TemporaryDirectory()
    name = args.name or "bench.noop.test"
    inv_root = args.inventory or new_inventory(Path(tmp.name) / "hosts")
    try:
        if made:
            key = Path(tmp.name) / "id_ed25519"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
            res = cli(
                inv_root, "create", "--provider", "local", "--identity-file", str(key), name, env=BENCH_ENV
            )
            assert res.code == 0, res.err
            path = inv_root / f"{name}.toml"
            doc = tomlkit.parse(path.read_text())
            doc["recipes"] = args.recipes.split(",")
            path.write_text(tomlkit.dumps(doc))
            first = cli(inv_root, "deploy", name, env=BENCH_ENV)
            assert first.code == 0, first.err + first.out
        inv = Inventory(inv_root)
        engine, rts = [], []
        for _ in range(args.runs):
            run = deploy_host(inv, name, DeployOptions(), lambda n, m: None)
            assert run.failed == 0 and run.changed == 0, run.error or run.actions
            engine.append(run.seconds)
            rts.append(run.round_trips)
        whole = []
        for _ in range(args.runs):
            t = time.monotonic()
            res = cli(inv_root, "deploy", name, "--json", env=BENCH_ENV)
            whole.append(time.monotonic() - t)
            assert res.code == 0 and res.json()["hosts"][name]["changed"] == 0
        resources = len(run.unchanged)
        print(f"no-op deploy of {name} ({resources} resources), median of {args.runs} runs:")
        print(
            f"  engine (connect, probe, plan): {statistics.median(engine):.3f} s, "
            f"{statistics.median(rts):.0f} round trips"
        )
        print(f"  whole CLI process:             {statistics.median(whole):.3f} s")
    finally:
        if made:
            cli(inv_root, "destroy", "--yes", name, env=BENCH_ENV)
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
