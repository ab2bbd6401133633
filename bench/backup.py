"""Benchmark: backups and restore of a generated 1 GiB maildir against restic run by hand on the same data.

Usage (as root, after scripts/setup-host):
    .venv/bin/python bench/backup.py                       # a local box with the mail stack
    .venv/bin/python bench/backup.py --recipes base,dovecot,backup --size-mb 256   # smaller, quicker
    MIAB_E2E_LANE=9 .venv/bin/python bench/backup.py       # on an e2e lane's bridge and state folder

It makes its own local box with `[backup] target = "local:/var/backups/restic"` (a second disk's path: no
target stand-in), deploys it (which initialises that repository), writes a maildir of about 1 GiB (some
20,000 messages: text, and text with base64 attachments) on the box, then times, in this one run:
- `miab-remote backup NAME` (the CLI process, from this machine) against restic by hand on the box over one
  SSH command (`restic backup` with the options the box's program gives it, then `restic forget --prune` with
  the box's keep policy), into a second repository of its own with the same password: the first backup,
  then the incremental one after 10 MB of new mail;
- the box's restore (`miab-backup`'s `restore` command as `miab-remote restore` runs it: port 25 closed,
  services stopped, `restic restore`, owners fixed, the tree swapped; then `restore-finish`) against
  `restic restore latest` by hand into a new folder, and the whole `miab-remote restore NAME --force`
  (restore, deploy, restore-finish, check) beside them.
Each round makes both repositories anew and runs every step once (odd rounds restic by hand first, even
ones the tool first); the medians of the rounds are printed. Seconds are wall time seen from this machine
and the time on the box; memory is the peak resident set (VmHWM) of the restic processes, sampled on the
box from /proc every 20 ms. Each figure comes with its ratio to the baseline (goal: within 1.5x). The box
is destroyed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.noop_deploy import bench_box  # noqa: E402
from miab_remote.fleet.store import Inventory  # noqa: E402
from miab_remote.jobs.restore import state_services  # noqa: E402
from miab_remote.mail import layout  # noqa: E402
from miab_remote.transport.ssh import Transport  # noqa: E402
from tests.e2e import helpers  # noqa: E402
from tests.e2e.helpers import Box, cli  # noqa: E402

NAME = "bk-bench.bench.test"
TARGET = "/var/backups/restic"  # the box's repository ([backup] target = "local:...")
BASELINE = "/var/backups/restic-baseline"  # restic by hand: a repository of its own, same password
CONFIG = "/etc/miab-remote/backup"  # the program's files (repository, password, env, settings.json)
MAILDIR = layout.mailbox_dir("a@bench.test")
GOAL = 1.5
# Its own network and state folder, unless MIAB_E2E_LANE puts the run on an e2e lane's.
BACKUP_BENCH_ENV = {
    "MIAB_REMOTE_LOCAL_DIR": "/var/lib/miab-remote/bench-backup",
    "MIAB_REMOTE_LOCAL_SUBNET": "10.76.1.0/24",
    "MIAB_REMOTE_LOCAL_BRIDGE": "miabbench1",
}

# Run on the box (python3, stdlib): a Maildir++ mailbox of `total` bytes in about `count` messages under
# INBOX, Archive and Sent, reproducible from the seed: text bodies, and a quarter with a base64 attachment
# of random bytes (what mail mostly is: restic's compression finds little to take in those).
GENERATE = r"""
import os, random, sys, time
root, total, count, seed, folder_new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rnd = random.Random(seed)
words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 10))) for _ in range(3000)]
def text(n):
    out, size = [], 0
    while size < n:
        line = b" ".join(rnd.choice(words) for _ in range(12)) + b"\r\n"
        out.append(line); size += len(line)
    return b"".join(out)[:n]
def b64(n):
    import base64
    raw = base64.encodebytes(rnd.randbytes(n * 3 // 4))
    return raw.replace(b"\n", b"\r\n")[:n]
folders = ["", ".Archive", ".Sent"]
for f in folders:
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, f, sub), exist_ok=True)
mean = total / count
written = n = 0
stamp = int(time.time())
while written < total:
    size = int(min(max(rnd.lognormvariate(0, 1.0) * mean * 0.6, 600), 2_000_000))
    head = (b"From: sender%d@example.net\r\nTo: a@bench.test\r\nSubject: message %d\r\n"
            b"Message-ID: <%d.%d@bench>\r\nDate: Tue, 01 Dec 2026 12:00:00 +0000\r\n" % (n, n, seed, n))
    if size > 16000 and rnd.random() < 0.5:
        body = (head + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n"
                + text(2000) + b"\r\n--b\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(size - 2200)
                + b"\r\n--b--\r\n")
    else:
        body = head + b"\r\n" + text(size)
    folder = folders[n % 5 % 3] if folder_new == "no" else ""
    sub = "new" if folder_new == "yes" else "cur"
    name = "%d.M%dP%d.bench" % (stamp, n, seed)
    if sub == "cur":
        name += ",S=%d:2,S" % len(body)
    with open(os.path.join(root, folder, sub, name), "wb") as fh:
        fh.write(body)
    written += len(body); n += 1
print(n, written)
"""

# Run on the box: the peak resident set (VmHWM, kB) of every restic process until the stop file appears.
SAMPLER = r"""
import json, os, sys, time
stop, out = sys.argv[1], sys.argv[2]
peak = {}
while not os.path.exists(stop):
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/comm" % pid) as f:
                if f.read().strip() != "restic":
                    continue
            with open("/proc/%s/status" % pid) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak[pid] = max(peak.get(pid, 0), int(line.split()[1]))
        except OSError:
            pass
    time.sleep(0.02)
with open(out + ".new", "w") as f:
    json.dump({"peak_kb": max(peak.values(), default=0), "processes": len(peak)}, f)
os.rename(out + ".new", out)
"""


class Figure:
    """One measured step: wall seconds from this machine, seconds on the box (the program's own count, or the
    shell's around restic by hand), the restic processes' peak memory, and what to say beside them."""

    def __init__(self, seconds: float, peak_kb: int, on_box: float | None = None, detail: str = "") -> None:
        self.seconds, self.peak_kb, self.on_box, self.detail = seconds, peak_kb, on_box, detail


@contextlib.contextmanager
def sampled(box: Box) -> Iterator[dict[str, int]]:
    """Sample restic's memory on the box while the block runs; the dict gets `peak_kb` afterwards."""
    box.run("rm -f /run/bench-rss.stop /run/bench-rss.json")
    box.run("setsid python3 /run/bench-rss.py /run/bench-rss.stop /run/bench-rss.json </dev/null >/dev/null 2>&1 &")
    found: dict[str, int] = {}
    try:
        yield found
    finally:
        box.run("touch /run/bench-rss.stop")
        deadline = time.monotonic() + 10
        while box.run("test -e /run/bench-rss.json", check=False)[0] != 0:
            assert time.monotonic() < deadline, "the memory sampler did not finish"
            time.sleep(0.1)
        found.update(json.loads(box.run("cat /run/bench-rss.json")[1]))


def timed_cli(box: Box, inv: Path, env: dict[str, str], *args: str) -> tuple[Figure, Any]:
    """A whole `miab-remote` process from this machine, with restic's memory on the box."""
    with sampled(box) as rss:
        start = time.monotonic()
        res = cli(inv, *args, env=env, timeout=3600)
        seconds = time.monotonic() - start
    assert res.code == 0, f"miab-remote {' '.join(args)}: exit {res.code}\n{res.err}\n{res.out}"
    try:
        data: Any = res.json()
    except ValueError:
        data = res.out
    return Figure(seconds, rss["peak_kb"]), data


def timed_box(box: Box, command: str) -> Figure:
    """One SSH command on the box (restic by hand), from this machine and on the box, with restic's memory."""
    with sampled(box) as rss:
        start = time.monotonic()
        out = box.run(f"s=$(date +%s.%N); {command}; echo; echo took $s $(date +%s.%N)")[1]
        seconds = time.monotonic() - start
    began, ended = out.split()[-2:]
    return Figure(seconds, rss["peak_kb"], float(ended) - float(began))


# The shell prefix of restic run by hand: the baseline repository, the program's password file, environment
# and cache (the options the program passes are in each command).
BY_HAND = (
    f"set -e; set -a; . {CONFIG}/env; set +a; export RESTIC_CACHE_DIR=/var/cache/restic; "
    f"R='restic -r {BASELINE} --password-file {CONFIG}/password'; "
)


def baseline_backup(box: Box, settings: dict[str, Any], tree_id: str) -> Figure:
    state = layout.STATE
    excludes = "\n".join(
        [f"{state}/mail/mailboxes/*/*/tmp", f"{state}/mail/mailboxes/*/*/.*/tmp", f"{state}/backup/tmp"]
    )
    box.run(f"printf '%s\\n' {shlex.quote(excludes)} > /run/bench-exclude")
    keep = " ".join(f"--keep-{k}={int(v)}" for k, v in sorted(settings["keep"].items()) if int(v) > 0)
    return timed_box(
        box,
        BY_HAND
        + f"$R backup {state} --host {NAME} --tag miab-remote --tag tree-{tree_id} --json "
        f"--exclude-file /run/bench-exclude > /dev/null; $R forget --host {NAME} {keep} --prune > /dev/null",
    )


def program_seconds(result: Any, name: str) -> float | None:
    """The box program's own count of a backup's seconds, from `miab-remote backup --json`."""
    with contextlib.suppress(KeyError, TypeError):
        return float(result["hosts"][name]["result"]["seconds"])
    return None


def generate(box: Box, total_mb: int, count: int, seed: int, into_new: bool) -> str:
    box.run("cat > /run/bench-generate.py", stdin=GENERATE.encode())
    flag = "yes" if into_new else "no"
    out = box.run(f"python3 /run/bench-generate.py {MAILDIR} {total_mb * 1024 * 1024} {count} {seed} {flag}")[1]
    box.run(f"id vmail >/dev/null 2>&1 && chown -R vmail:vmail {layout.MAILBOXES} || true; sync")
    messages, size = out.split()
    return f"{messages} messages, {int(size) / 2**20:.0f} MiB"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return ""
    r = a / b
    return f"{r:.2f}x" + ("!" if r > GOAL else "")


def row(label: str, fig: Figure, base: Figure | None = None) -> None:
    """One line: wall seconds, seconds on the box, restic's peak memory, each with its ratio to `base`."""
    on_box = f"{fig.on_box:7.2f} s" if fig.on_box is not None else " " * 9
    print(
        f"  {label:<52} {fig.seconds:7.2f} s {ratio(fig.seconds, base and base.seconds):<7}"
        f"{on_box} {ratio(fig.on_box, base and base.on_box):<7}"
        f"{fig.peak_kb / 1024:6.0f} MB {ratio(fig.peak_kb, base and base.peak_kb):<7}{fig.detail}"
    )


def program_restore(inv: Path, box: Box) -> Figure:
    """The box's restore as `miab-remote restore` runs it (through the same remote script), then its finish;
    the detail says how long each of its phases took."""
    host = Inventory(inv).load(NAME)
    services = state_services(host, inv)  # the units `miab-remote restore` stops
    request = {"command": "restore", "snapshot": "latest", "host": NAME, "force": True, "services": services}
    phases: dict[str, float] = {}

    def on_line(line: bytes) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            phases.setdefault(json.loads(line)["progress"]["phase"], time.monotonic())

    with sampled(box) as rss, Transport(host.target) as t:
        start = time.monotonic()
        res = t.run_script("backup", request, idle_timeout=120, on_line=on_line)
        seconds = time.monotonic() - start
        assert res.exit_code == 0, res.stdout.decode(errors="replace")[-2000:] + res.stderr.decode(errors="replace")
        finish = t.run_script("backup", {"command": "restore-finish"})
        assert finish.exit_code == 0, finish.stdout.decode(errors="replace")[-2000:]
    marks = [*sorted(phases.items(), key=lambda kv: kv[1]), ("", start + seconds)]
    took = ", ".join(f"{name} {marks[i + 1][1] - when:.1f}" for i, (name, when) in enumerate(marks[:-1]))
    return Figure(seconds, rss["peak_kb"], detail=f"(phases, s: {took})")


BY_HAND_FIRST = "restic by hand: first backup (+ forget)"
FIRST = "miab-remote backup: first"
BY_HAND_MORE = "restic by hand: incremental (+10 MB of mail)"
MORE = "miab-remote backup: incremental"
BY_HAND_RESTORE = "restic by hand: restore latest"
RESTORE = "the box's restore (miab-backup restore)"
WHOLE = "miab-remote restore --force (+ deploy, check)"
ROWS = [(BY_HAND_FIRST, None), (FIRST, BY_HAND_FIRST), (BY_HAND_MORE, None), (MORE, BY_HAND_MORE),
        (BY_HAND_RESTORE, None), (RESTORE, BY_HAND_RESTORE), (WHOLE, BY_HAND_RESTORE)]  # fmt: skip


def one_round(box: Box, inv: Path, env: dict[str, str], settings: dict[str, Any], n: int) -> dict[str, Figure]:
    """Every figure once: both repositories new, the first backups, 10 MB of new mail, the incremental ones,
    the restores. Odd rounds run restic by hand first, even ones the tool first (the page cache, the disk)."""
    box.run(f"rm -rf {TARGET} {BASELINE} {layout.STATE}.before-restore-*; /usr/local/sbin/miab-backup init >/dev/null")
    box.run(BY_HAND + "$R init >/dev/null")
    tree_id = box.run(f"cat {layout.STATE}/backup/tree-id 2>/dev/null || true")[1].strip()
    got: dict[str, Figure] = {}

    def tool_backup(label: str) -> None:
        got[label], result = timed_cli(box, inv, env, "backup", NAME, "--json")
        got[label].on_box = program_seconds(result, NAME)

    def by_hand(label: str) -> None:
        got[label] = baseline_backup(box, settings, tree_id or "none")

    for step in ((by_hand, BY_HAND_FIRST), (tool_backup, FIRST))[:: 1 if n % 2 else -1]:
        step[0](step[1])
    tree_id = box.run(f"cat {layout.STATE}/backup/tree-id")[1].strip()
    generate(box, 10, 200, 1000 + n, into_new=True)
    for step in ((by_hand, BY_HAND_MORE), (tool_backup, MORE))[:: 1 if n % 2 else -1]:
        step[0](step[1])
    got[BY_HAND_RESTORE] = timed_box(
        box,
        BY_HAND + f"rm -rf {layout.STATE}.bench-restore; $R restore latest --host {NAME} "
        f"--target {layout.STATE}.bench-restore > /dev/null",
    )
    box.run(f"rm -rf {layout.STATE}.bench-restore")
    got[RESTORE] = program_restore(inv, box)
    got[WHOLE], out = timed_cli(box, inv, env, "restore", NAME, "--force")
    got[WHOLE].detail = str(out)
    return got


def median(figures: list[Figure]) -> Figure:
    on_box = [f.on_box for f in figures if f.on_box is not None]
    return Figure(
        statistics.median(f.seconds for f in figures),
        int(statistics.median(f.peak_kb for f in figures)),
        statistics.median(on_box) if on_box else None,
        figures[-1].detail,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", help="comma-separated recipes (default: the inventory default, the mail stack)")
    ap.add_argument("--size-mb", type=int, default=1024, help="the maildir's size (default 1024)")
    ap.add_argument("--messages", type=int, default=20000, help="about how many messages (default 20000)")
    ap.add_argument("--image", default=helpers.E2E_IMAGE, help="the box's release (default: a local box's)")
    ap.add_argument("--runs", type=int, default=3, help="rounds of every figure; the medians are shown (default 3)")
    args = ap.parse_args()
    env = dict(helpers.E2E_ENV) if helpers.LANE else BACKUP_BENCH_ENV
    recipes = args.recipes.split(",") if args.recipes else None
    extra = {"backup": {"target": f"local:{TARGET}"}}
    with (
        tempfile.TemporaryDirectory() as tmp,
        bench_box(Path(tmp), recipes, env=env, name=NAME, extra=extra, image=args.image) as (inv, name, box),
    ):
        release = box.run(". /etc/os-release; echo $PRETTY_NAME")[1].strip()
        version = box.run("restic version")[1].strip()
        box.run("systemctl stop miab-backup.timer")  # no nightly run in the middle of the figures
        box.run("cat > /run/bench-rss.py", stdin=SAMPLER.encode())
        settings = json.loads(box.run(f"cat {CONFIG}/settings.json")[1])
        made = generate(box, args.size_mb, args.messages, 1, into_new=False)
        rounds = [one_round(box, inv, env, settings, n) for n in range(1, args.runs + 1)]
        print(
            f"backup and restore of {made} (+10 MB a round) on {name} ({release}, {version}), target "
            f"local:{TARGET}; medians of {args.runs} rounds:"
        )
        print(f"  {'':<52} {'wall':>9} {'ratio':<7}{'on box':>9} {'ratio':<7}{'restic peak':>9} ratio")
        figures = {label: median([r[label] for r in rounds]) for label, _ in ROWS}
        output = figures[WHOLE].detail
        figures[WHOLE].detail = ""
        for label, base in ROWS:
            row(label, figures[label], figures[base] if base else None)
        print("  (ratio: to restic by hand above it; '!' over the goal of 1.5x; wall: from this machine, the CLI's")
        print("  start and SSH included; on box: the program's own count, or the shell's around restic by hand)")
        print("  miab-remote restore's output (the last round):")
        print("".join(f"    {line}\n" for line in output.splitlines()[-12:]), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
