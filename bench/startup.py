"""Benchmark: what an operator waits for, as whole processes, against Python's start-up and the physical floor.

Usage (as root, after scripts/setup-host):
    .venv/bin/python bench/startup.py                 # makes a local box with the mail stack, measures, destroys it
    .venv/bin/python bench/startup.py --runs 9 --rtt-ms 0   # loopback only
    .venv/bin/python bench/startup.py --keep /tmp/b   # keep the box (and reuse it on the next run with --keep /tmp/b)

Each figure is the median wall time of `--runs` runs of a fresh process (subprocess, start to exit):
- `python -c pass`: the interpreter alone (the venv's python, the one miab-remote runs on);
- `miab-remote --help`: start-up and imports;
- the floor: one plain `ssh BOX` (OpenSSH's client, the operator's key, the box's pinned key in a temporary
  known_hosts, no ~/.ssh/config) running the probe's own work on the box: the same stdlib script, fed the
  same spec on stdin, that a no-op deploy runs. It reads exactly the facts the deploy reads (every file's
  hash, mode and owner, dpkg's and systemd's states, users, guards), so the floor is the cost of those facts
  in one SSH round trip, with nothing of miab-remote's on the laptop;
- a no-op deploy of the whole box (default recipes), `miab-remote deploy NAME --json`, 0 changed;
- `miab-remote user add NAME NEW --password-stdin` until the new user's first IMAPS login succeeded;
- one bcrypt pass at the cost the tool hashes with (12), in this process: `user add` holds two of them that
  no code can remove (the laptop's hash of the new password, dovecot's check of it at the login), so its
  figure is also given in bcrypt passes and as the time beyond those two.

Then the same at `--rtt-ms` (default 50) of round-trip time. This machine's kernel has no netem (`tc qdisc
... netem` says "unknown qdisc"), so the delay comes from bench/delay_proxy.py, a relay on loopback
(127.0.76.1, ports 22 and 993) that holds every chunk rtt/2 in each direction; the box's inventory points
at it (`address`) for that part and is put back afterwards, in a finally, as is the relay stopped.

The box has its own bridge, subnet and state folder (miabbench1, 10.76.1.0/24, /var/lib/miab-remote/bench1),
so it never meets an e2e run's boxes or the other benchmarks'. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.noop_deploy import bench_box  # noqa: E402
from miab_remote.mail import layout, passwords  # noqa: E402
from tests.e2e import helpers  # noqa: E402
from tests.e2e.helpers import Box, edit_inventory  # noqa: E402
from tests.e2e.mailclients import Mail  # noqa: E402

ENV = {
    "MIAB_REMOTE_LOCAL_DIR": "/var/lib/miab-remote/bench1",
    "MIAB_REMOTE_LOCAL_SUBNET": "10.76.1.0/24",
    "MIAB_REMOTE_LOCAL_BRIDGE": "miabbench1",
}
NAME = "mx.bench.test"
RELAY = "127.0.76.1"  # where the delaying relay listens (loopback)
PASSWORD = "bench-password\n"


def run_env(inv: Path) -> dict[str, str]:
    """The measured processes' environment. PYTHONPATH: the checkout's own code, as `python -m miab_remote`
    from the checkout imports it. PYTHONDONTWRITEBYTECODE is dropped: an operator's Python keeps its
    bytecode cache (pip byte-compiles a wheel; an editable install writes it on the first run), and a
    workplace that sets it would have every run compile the whole package again."""
    env = {**os.environ, **ENV, "NO_COLOR": "1", "MIAB_REMOTE_INVENTORY": str(inv), "PYTHONPATH": str(REPO)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def timed(argv: list[str], env: dict[str, str], stdin: bytes | None = None, expect: bytes = b"") -> float:
    """Wall seconds of one run; a failed run (or one whose output lacks `expect`) ends the benchmark."""
    start = time.monotonic()
    proc = subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=300)
    took = time.monotonic() - start
    if proc.returncode != 0 or expect not in proc.stdout:
        raise SystemExit(
            f"{shlex.join(argv)[:200]} exited {proc.returncode}: {(proc.stderr + proc.stdout).decode(errors='replace')}"
        )
    return took


def floor_command(inv: Path, tmp: Path, address: str) -> tuple[list[str], bytes]:
    """The plain `ssh` command that runs the probe's work, and its stdin (the probe script and its spec)."""
    from miab_remote.engine.converge import prepare
    from miab_remote.engine.planner import probe_spec
    from miab_remote.fleet.store import Inventory
    from miab_remote.remote import BOOTSTRAP, script_input

    host = Inventory(inv).load(NAME)
    built = prepare(host, inv)
    stdin = script_input("probe", json.dumps(probe_spec(built.resources, built.rendered, False)).encode())
    known = tmp / "known_hosts"
    known.write_text("".join(f"{address} {' '.join(k.split()[:2])}\n" for k in host.host_keys))
    argv = [
        "ssh",
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "UpdateHostKeys=no",  # no extra request for the server's other keys after login
        "-i",
        str(host.ssh.identity_file),
        "-p",
        str(host.ssh.port),
        f"{host.ssh.user}@{address}",
        "python3 -c " + shlex.quote(BOOTSTRAP),
    ]
    return argv, stdin


def one_bcrypt() -> float:
    """One hash at the tool's own cost, as `user add` makes it (MIAB_REMOTE_BCRYPT_COST is not read here)."""
    start = time.monotonic()
    passwords.hash_password(PASSWORD.strip(), passwords.COST)
    return time.monotonic() - start


def measure(inv: Path, tmp: Path, box: Box, address: str, runs: int, label: str, tag: str) -> None:
    env = run_env(inv)
    py = [sys.executable]
    cli = [*py, "-m", "miab_remote"]
    floor_argv, floor_stdin = floor_command(inv, tmp, address)
    mail = Mail(box, NAME, box.run(f"cat {layout.TLS_CERT}")[1])
    counter = iter(range(10**6))

    def user_add() -> float:
        email = f"u{tag}{next(counter)}-{int(time.time() * 1000) % 10**8}@bench.test"
        start = time.monotonic()
        timed([*cli, "user", "add", NAME, email, "--password-stdin"], env, PASSWORD.encode())
        mail.imap(email, PASSWORD.strip()).logout()
        took = time.monotonic() - start
        timed([*cli, "user", "remove", NAME, email], env)  # the inventory keeps its size from run to run
        return took

    commands: dict[str, Callable[[], float]] = {
        "pass": lambda: timed([*py, "-c", "pass"], env),
        "help": lambda: timed([*cli, "--help"], env),
        "floor": lambda: timed(floor_argv, env, floor_stdin),
        # As an operator runs it (its report printed, no --json), and it must be a no-op.
        "deploy": lambda: timed([*cli, "deploy", NAME], env, expect=b"(0 changed, 0 failed, 1 round trip,"),
        "user": user_add,
        "bcrypt": one_bcrypt,
    }
    # Interleaved (one run of each, then again), so that a load that comes and goes on this shared machine
    # weighs on every figure alike rather than on whichever ran at the time.
    timed([*cli, "deploy", NAME], env)  # brings the box in line (e.g. after a run cut short), may change things
    for once in commands.values():
        once()  # warm-up: page cache, bytecode, template cache, the box's own caches
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(runs):
        for key, once in commands.items():
            times[key].append(once())
    pass_s, help_s, floor_s, deploy_s, user_s, bcrypt_s = (statistics.median(times[k]) for k in commands)
    print(f"{label} (median of {runs} runs, whole processes):")
    print(f"  python -c pass:                 {pass_s:.3f} s")
    print(f"  miab-remote --help:             {help_s:.3f} s = {help_s / pass_s:.2f}x python -c pass")
    print(f"  floor (one plain ssh, probe):   {floor_s:.3f} s")
    print(f"  no-op deploy:                   {deploy_s:.3f} s = {deploy_s / floor_s:.2f}x floor")
    print(f"  {f'one bcrypt pass (cost {passwords.COST}):':<32}{bcrypt_s:.3f} s")
    print(
        f"  user add to first IMAPS login:  {user_s:.3f} s = {user_s / floor_s:.2f}x floor = "
        f"{user_s / bcrypt_s:.2f}x one bcrypt pass; {user_s - 2 * bcrypt_s:.3f} s beyond its two",
        flush=True,
    )


@contextlib.contextmanager
def delayed(inv: Path, box: Box, rtt_ms: float) -> Iterator[Box]:
    """The box behind the delaying relay, its inventory pointing there; both undone on the way out."""
    relay = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "bench" / "delay_proxy.py"),
            "--delay-ms",
            str(rtt_ms / 2),
            f"{RELAY}:22={box.address}:22",
            f"{RELAY}:993={box.address}:993",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert relay.stdout is not None and relay.stdout.readline().strip() == "ready", "the relay did not start"
        edit_inventory(inv, NAME, address=RELAY)
        yield _moved(box, RELAY)
    finally:
        edit_inventory(inv, NAME, address=box.address)
        relay.terminate()
        relay.wait(10)


def _moved(box: Box, address: str) -> Box:
    moved = Box.__new__(Box)
    moved.__dict__.update(box.__dict__)
    moved.address = address
    return moved


@contextlib.contextmanager
def the_box(keep: Path | None) -> Iterator[tuple[Path, Path, Box]]:
    """(inventory, work folder, box): a new deployed box, or with --keep the one kept there last time. Its
    published address (`ipv4`) is set to its own, so that pointing `address` at the relay changes no zone."""
    helpers.E2E_ENV.update(ENV)
    if keep is not None and (keep / "hosts" / f"{NAME}.toml").exists():
        import tomlkit

        doc = tomlkit.parse((keep / "hosts" / f"{NAME}.toml").read_text())
        os.environ.update(ENV)
        edit_inventory(keep / "hosts", NAME, ipv4=str(doc["address"]))
        yield keep / "hosts", keep, Box(str(doc["address"]), str(doc["host_keys"][0]), keep / "id_ed25519")
        return
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        with _kept_box(keep) as (inv, box):
            yield inv, keep, box
        return
    with tempfile.TemporaryDirectory() as tmp, bench_box(Path(tmp), None, ENV, NAME) as (inv, _name, box):
        edit_inventory(inv, NAME, ipv4=box.address)
        yield inv, Path(tmp), box


@contextlib.contextmanager
def _kept_box(folder: Path) -> Iterator[tuple[Path, Box]]:
    """Like bench_box, but the box stays (destroy it with `miab-remote destroy` and the same ENV)."""
    from miab_remote.mail.passwords import hash_password
    from tests.e2e.helpers import cli, create_box, new_inventory, operator_key

    os.environ.update(ENV)
    inv = new_inventory(folder / "hosts")
    box = create_box(inv, operator_key(folder), NAME)
    users = [{"email": f"{u}@bench.test", "password_hash": hash_password(f"{u}-password")} for u in ("a", "b")]
    edit_inventory(inv, NAME, users=users, ipv4=box.address)
    first = cli(inv, "deploy", NAME)
    assert first.code == 0, first.err + first.out
    yield inv, box


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rtt-ms", type=float, default=50.0, help="the second set's round-trip time (0: skip it)")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="keep the box and its inventory in DIR (and reuse them)")
    args = ap.parse_args()
    with the_box(args.keep) as (inv, tmp, box):
        measure(inv, tmp, box, box.address, args.runs, f"loopback (the box on a local bridge, {box.address})", "l")
        if args.rtt_ms:
            with delayed(inv, box, args.rtt_ms) as behind:
                measure(inv, tmp, behind, RELAY, args.runs, f"{args.rtt_ms:.0f} ms RTT (through the relay)", "d")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
