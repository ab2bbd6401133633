"""Helpers for e2e tests: run the real CLI as a subprocess, make deployed boxes that never outlive their
test (deployed_box), and talk to a box over pinned SSH."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from miab_remote.providers.local.config import DEFAULT_IMAGE, IMAGES
from tests.standins.pebble import Pebble

FIXTURES = Path(__file__).parent / "fixture_inventory"

# The e2e boxes live on their own bridge, subnet and state folder, so a leftover of a developer's own
# boxes (or of a killed earlier run) never collides with them. MIAB_E2E_LANE=N (1-9) moves a run onto
# bridge miabe2eN and subnet 10.78.N.0/24, so that several developers' runs on one machine stay apart.
# Under pytest-xdist (scripts/test runs two workers) worker gwK takes lane N+K: each worker's boxes, bridge,
# resolver and stand-ins are its own, as two developers' runs would be.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
LANE = int(os.environ.get("MIAB_E2E_LANE") or 0) + WORKER
if not 0 <= LANE <= 9:
    raise SystemExit(f"MIAB_E2E_LANE={LANE - WORKER} with xdist worker {WORKER}: the lanes are 0 to 9")
SUBNET_PREFIX = f"10.78.{LANE}"
HOST_ADDRESS = f"{SUBNET_PREFIX}.1"  # this machine's address on the test bridge
E2E_ENV = {
    "MIAB_REMOTE_LOCAL_DIR": "/var/lib/miab-remote/test-e2e" + (f"-{LANE}" if LANE else ""),
    "MIAB_REMOTE_LOCAL_SUBNET": f"{SUBNET_PREFIX}.0/24",
    "MIAB_REMOTE_LOCAL_BRIDGE": f"miabe2e{LANE}",
}

# The release the e2e boxes run: MIAB_E2E_IMAGE=debian-12 (or -13) picks one, else a local box's default.
E2E_IMAGE = os.environ.get("MIAB_E2E_IMAGE") or DEFAULT_IMAGE
if E2E_IMAGE not in IMAGES:
    raise SystemExit(f"MIAB_E2E_IMAGE={E2E_IMAGE}: use one of {', '.join(IMAGES)}")


def core_images() -> list[str]:
    """The releases the core modules (mail, DNS, engine) run on, one box each in turn: every release a local
    box can run, unless MIAB_E2E_IMAGE picks one. The other modules run on E2E_IMAGE only."""
    return [E2E_IMAGE] if os.environ.get("MIAB_E2E_IMAGE") else list(IMAGES)


@dataclass
class CLIResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def errors(self) -> str:
        """The per-host errors of a --json run (or the raw output), for assertion messages."""
        try:
            return "; ".join(f"{n}: {h['error']}" for n, h in self.json()["hosts"].items() if h.get("error"))
        except (ValueError, KeyError, TypeError):
            return self.err + self.out


def cli(
    inventory: Path,
    *args: str,
    stdin: str | None = None,
    timeout: float = 900,
    cwd: Path | None = None,
    exe: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> CLIResult:
    proc = subprocess.run(
        [*(exe or [sys.executable, "-m", "miab_remote"]), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(inventory, env),
        cwd=cwd,
    )
    return CLIResult(proc.returncode, proc.stdout, proc.stderr)


def cli_env(inventory: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a CLI run of the e2e tests gets: this lane's network, no colour, this inventory."""
    return {**os.environ, **E2E_ENV, **(env or {}), "NO_COLOR": "1", "MIAB_REMOTE_INVENTORY": str(inventory)}


def start_cli(inventory: Path, *args: str, **popen: Any) -> subprocess.Popen[bytes]:
    """The real CLI as a running process, for a test that watches or kills it while it works."""
    return subprocess.Popen([sys.executable, "-m", "miab_remote", *args], env=cli_env(inventory), **popen)


def wait_until(
    done: Callable[[], bool], what: str, timeout: float = 120, running: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll `done` until it holds: a state to wait for, never a fixed sleep. Fails after `timeout` s, or at
    once when the process `running` (whose work is awaited) has ended first."""
    deadline = time.monotonic() + timeout
    while not done():
        assert running is None or running.poll() is None, f"the process ended before {what}"
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.2)


def new_inventory(root: Path) -> Path:
    """A fresh inventory folder holding the test recipe and its templates (as an operator's own)."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("recipes", "templates"):
        shutil.copytree(FIXTURES / sub, root / sub, dirs_exist_ok=True)
    return root


class Box:
    """SSH access to a test box as root (or `user`), checking its host key against the given public key line."""

    def __init__(self, address: str, host_key_line: str, identity: Path, user: str = "root") -> None:
        self.address = address
        self.identity = identity
        self.user = user
        self.set_host_key(host_key_line)

    def set_host_key(self, line: str) -> None:
        kind, b64 = line.split()[:2]
        self.host_key = paramiko.PKey.from_type_string(kind, base64.b64decode(b64))

    def pinned_client(self) -> paramiko.SSHClient:
        """An SSH client (not connected) that accepts exactly this box's host key."""
        client = paramiko.SSHClient()
        expected = self.host_key

        class Pinned(paramiko.MissingHostKeyPolicy):
            def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
                if key.asbytes() != expected.asbytes():
                    raise paramiko.SSHException("test helper: host key mismatch")

        client.set_missing_host_key_policy(Pinned())
        return client

    def run(self, command: str, check: bool = True, stdin: bytes = b"") -> tuple[int, str]:
        client = self.pinned_client()
        for attempt in range(50):  # sshd may be restarting (a test changed its key): wait up to ~10 s
            try:
                self._connect(client)
                break
            except paramiko.ssh_exception.NoValidConnectionsError:
                if attempt == 49:
                    raise
                time.sleep(0.2)
        try:
            stdin_f, stdout, _ = client.exec_command(command + " 2>&1", timeout=300)
            if stdin:
                stdin_f.write(stdin)
            stdin_f.channel.shutdown_write()
            out = stdout.read().decode(errors="replace")
            code = stdout.channel.recv_exit_status()
        finally:
            client.close()
        if check and code != 0:
            raise AssertionError(f"on box: {command!r} exited {code}:\n{out}")
        return code, out

    def _connect(self, client: paramiko.SSHClient) -> None:
        client.connect(
            self.address,
            username=self.user,
            key_filename=str(self.identity),
            timeout=10,
            allow_agent=False,
            look_for_keys=False,
        )

    def sha256(self, path: str) -> str:
        return self.run(f"sha256sum {path} | cut -d' ' -f1")[1].strip()


@contextlib.contextmanager
def private_config(tmp_path_factory: Any, label: str) -> Iterator[Path]:
    """The tool's private folder (secrets, recovery sheets) of its own for every CLI run of a test module
    (cli() passes os.environ on): a module fixture's body, `with private_config(...) as folder: yield folder`."""
    import pytest

    folder = tmp_path_factory.mktemp(label) / "miab-remote"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIAB_REMOTE_CONFIG_DIR", str(folder))
        yield folder


def operator_key(folder: Path) -> Path:
    """A fresh operator SSH key pair in `folder`."""
    from miab_remote.transport.sshkeys import generate_ed25519

    pair = generate_ed25519("e2e operator")
    key = folder / "id_ed25519"
    key.write_bytes(pair.private_openssh)
    key.chmod(0o600)
    (folder / "id_ed25519.pub").write_text(pair.public_line + "\n")
    return key


def create_box(inv: Path, identity: Path, name: str, image: str = E2E_IMAGE) -> Box:
    """`miab-remote create --provider local --image IMAGE` and a root SSH handle on the new box."""
    import tomlkit

    cli(inv, "destroy", "--yes", name)  # what a killed earlier run may have left behind
    res = cli(inv, "create", "--provider", "local", "--image", image, "--identity-file", str(identity), name)
    assert res.code == 0, res.err + res.out
    doc = tomlkit.parse((inv / f"{name}.toml").read_text())
    return Box(str(doc["address"]), str(doc["host_keys"][0]), identity)


def edit_inventory(inv: Path, name: str, **top: Any) -> None:
    """Set top-level keys of a box's inventory (as an operator would by hand), keeping the rest; tables
    given as dicts are merged into the existing ones."""
    import tomlkit

    path = inv / f"{name}.toml"
    doc = tomlkit.parse(path.read_text())
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key].update(value)  # a table such as [options] is merged, not replaced
        else:
            doc[key] = value
    path.write_text(tomlkit.dumps(doc))


@dataclass
class Deployed:
    """What deployed_box made: a root SSH handle per box, and its first deploy (None with deploy=False)."""

    boxes: dict[str, Box]
    first_deploy: CLIResult | None = None
    deploy_seconds: float = 0.0  # wall time of that first deploy, the whole CLI process

    @property
    def box(self) -> Box:
        """The box, when there is one."""
        (only,) = self.boxes.values()
        return only

    def host_run(self, name: str) -> dict[str, Any]:
        """One box's part of the first deploy's --json output."""
        assert self.first_deploy is not None, "deployed_box(deploy=False) ran no deploy"
        run: dict[str, Any] = self.first_deploy.json()["hosts"][name]
        return run

    def deploy(self, inv: Path) -> None:
        """The first deploy of every box, in one `deploy --json`, which must succeed; its wall time is kept."""
        started = time.monotonic()
        self.first_deploy = cli(inv, "deploy", *self.boxes, "--json")
        self.deploy_seconds = time.monotonic() - started
        assert self.first_deploy.code == 0, self.first_deploy.errors()


@contextlib.contextmanager
def deployed_box(
    inv: Path,
    identity: Path,
    inventories: Mapping[str, Mapping[str, Any]],
    deploy: bool = True,
    image: str = E2E_IMAGE,
) -> Iterator[Deployed]:
    """Local boxes of release `image` for a test module: create each (in parallel), set their inventories' keys (as
    edit_inventory), deploy them all in one `deploy --json` (unless deploy=False), yield, and destroy them.

    `inventories` maps each box name to the top-level keys to set, e.g. {NAME: {"users": [...]}}. The
    destroy is in `finally`, so no box outlives its test: not after a failed create, edit or deploy, a
    failed test, or Ctrl-C (KeyboardInterrupt). When the body failed, the destroy does not hide its error;
    when it succeeded, a failed destroy fails it.
    """
    names = list(inventories)
    failed = True
    try:
        boxes = _create_boxes(inv, identity, names, image)
        for name, top in inventories.items():
            if top:
                edit_inventory(inv, name, **top)
        made = Deployed(boxes)
        if deploy:
            made.deploy(inv)
        yield made
        failed = False
    finally:
        gone = cli(inv, "destroy", "--yes", *names)
        if gone.code != 0:
            # destroy reads a box's inventory first, so one the test left invalid would keep the box: set it
            # aside (NAME.toml.invalid) and destroy by name, which cleans up a local box without one.
            for name in names:
                path = inv / f"{name}.toml"
                if path.exists():
                    path.rename(path.with_name(f"{name}.toml.invalid"))
            gone = cli(inv, "destroy", "--yes", *names)
        if not failed:
            assert gone.code == 0, gone.err + gone.out


def _create_boxes(inv: Path, identity: Path, names: list[str], image: str) -> dict[str, Box]:
    """create_box for each name, at once; the first failure is raised once all have ended."""
    if len(names) == 1:
        return {names[0]: create_box(inv, identity, names[0], image)}
    made: dict[str, Box] = {}
    errors: list[BaseException] = []

    def make(name: str) -> None:
        try:
            made[name] = create_box(inv, identity, name, image)
        except BaseException as e:  # re-raised below, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=make, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {n: made[n] for n in names}


@contextlib.contextmanager
def acme_boxes(
    inv: Path,
    identity: Path,
    inventories: Mapping[str, Mapping[str, Any]],
    folder: Path,
    validity: int = 90 * 86400,
    image: str = E2E_IMAGE,
) -> Iterator[tuple[Deployed, Pebble]]:
    """deployed_box for boxes whose certificates come from ACME: a pebble of their own (validity in seconds,
    Let's Encrypt's 90 days unless told), started once the boxes are made (it listens on the lane's bridge,
    which exists once a box is up), each inventory's [acme] pointed at it (its directory; as ca_file, like a
    private CA's root, its listener's CA for the directory and its root for the box's own clients such as
    roundcube; no CAA records, pebble has no CAA domain, unless the caller's [acme] gives `caa`), then one
    deploy. Yields the boxes and the pebble, whose root() is what a client verifies the boxes' certificates
    with; pebble ends before the boxes go."""
    with (
        deployed_box(inv, identity, inventories, deploy=False, image=image) as made,
        Pebble(folder, HOST_ADDRESS, validity) as pebble,
    ):
        ca_file = folder / "trusted.pem"
        ca_file.write_text(pebble.listener_ca.read_text() + pebble.root())
        for name in made.boxes:
            acme = {"caa": "", **inventories[name].get("acme", {})}
            acme |= {"directory": pebble.directory, "ca_file": str(ca_file)}
            edit_inventory(inv, name, acme=acme)
        made.deploy(inv)
        yield made, pebble
