"""Real backup targets for restic, run on this machine: the REST protocol served by Debian's `rclone serve restic`
(a login from an htpasswd file, optionally append-only) and S3 served by moto's server, both over TLS with a
certificate from a test CA (tests/standins/testca.py) for the address they listen on.

The e2e tests bind them to this machine's address on the lane's bridge (tests.e2e.helpers.HOST_ADDRESS, which
exists only once a box of the lane is up), so a box reaches them and nothing else does; the unit tests bind
them to 127.0.0.1. No password is ever on a command line: rclone reads the login from a bcrypt htpasswd file,
and moto takes any keys.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import bcrypt

from tests.standins.testca import CA

START_TIMEOUT = 30.0  # moto's server imports much of boto before it listens: seconds on a loaded machine
MOTO_SERVER = Path(sys.executable).parent / "moto_server"  # the test environment's own, beside its python


def free_port(host: str) -> int:
    """A TCP port nothing listens on at `host` now (the kernel's choice)."""
    with socket.socket() as s:
        try:
            s.bind((host, 0))
        except OSError as e:  # HOST_ADDRESS is the lane's bridge: it exists once a box of the lane is up
            raise AssertionError(f"cannot listen on {host}: {e.strerror} (start the targets after a box)") from e
        return int(s.getsockname()[1])


class Server:
    """One server process: started with `argv` in `folder`, awaited until it accepts TCP on host:port, ended
    (TERM, then KILL) on leaving, also when the start failed. Its output goes to `folder/NAME.log`, which a
    start failure quotes."""

    name = "server"

    def __init__(self, folder: Path, host: str) -> None:
        self.folder = folder
        self.host = host
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log_from = 0  # where the log of the latest start begins

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}.log"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def prepare(self) -> None:
        """Write what the server reads (certificate, logins) into self.folder before it starts."""

    def __enter__(self) -> Self:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prepare()
        for attempt in range(3):  # a free port may be taken by someone else between the choice and the bind
            self.port = free_port(self.host)
            try:
                self._start()
                return self
            except AssertionError:
                if attempt == 2 or "address already in use" not in self._tail():
                    raise
        raise AssertionError("unreachable")

    def restart(self) -> None:
        """Stop the server and start it again on the same port (its settings may have changed meanwhile)."""
        self.stop()
        self._start()

    def _start(self) -> None:
        with self.log.open("ab") as log:
            self._log_from = log.tell()
            self.process = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env()
            )
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _wait_listening(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} ended ({self.process.returncode}) at its start:\n{self._tail()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=1):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not listening on {self.host}:{self.port} within "
                                     f"{START_TIMEOUT:.0f} s:\n{self._tail()}")  # fmt: skip
            time.sleep(0.1)

    def _tail(self) -> str:
        """The latest start's output (its last 3000 characters)."""
        with self.log.open("rb") as log:
            log.seek(self._log_from)
            return log.read().decode(errors="replace")[-3000:]

    def stop(self) -> None:
        """End the process: TERM, and KILL after 10 s."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class RestTarget(Server):
    """restic's REST protocol: `rclone serve restic` over TLS, on `host`, storing under `folder/root`. With a
    `user`, a login is required (its password from `password`, or a random one): rclone reads it from a bcrypt
    htpasswd file. `append_only`: rclone refuses every delete but of locks, so `restic forget` gets 403.
    `bwlimit` (e.g. "1M" bytes/s, or None): slows the server, for a test that must catch restic mid-transfer."""

    name = "rclone"

    def __init__(
        self,
        folder: Path,
        ca: CA,
        host: str,
        append_only: bool = False,
        user: str | None = "backup",
        password: str | None = None,
    ) -> None:
        super().__init__(folder, host)
        self.ca = ca
        self.append_only = append_only
        self.user = user
        self.password = (password or f"rest-{secrets.token_urlsafe(12)}") if user else None
        self.root = folder / "root"
        self.bwlimit: str | None = None

    def prepare(self) -> None:
        self.root.mkdir(exist_ok=True)
        self.cert, self.key = self.ca.issue(self.folder, [], [self.host], stem="rest")
        (self.folder / "rclone.conf").write_text("")  # no remotes: ROOT is a local path
        if self.user is not None:
            assert self.password is not None
            hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=10)).decode()
            htpasswd = self.folder / "htpasswd"
            htpasswd.write_text(f"{self.user}:{hashed}\n")
            htpasswd.chmod(0o600)

    def argv(self) -> list[str]:
        argv = ["rclone", "serve", "restic", "--addr", f"{self.host}:{self.port}",
                "--cert", str(self.cert), "--key", str(self.key)]  # fmt: skip
        if self.user is not None:
            argv += ["--htpasswd", str(self.folder / "htpasswd")]
        if self.append_only:
            argv.append("--append-only")
        if self.bwlimit:
            argv += ["--bwlimit", self.bwlimit]
        return [*argv, str(self.root)]

    def env(self) -> dict[str, str]:
        return {**os.environ, "RCLONE_CONFIG": str(self.folder / "rclone.conf")}

    def url(self, path: str) -> str:
        """The restic repository string of the repository `path` on this server, without the login."""
        return f"rest:https://{self.host}:{self.port}/{path}"

    def url_with_login(self, path: str) -> str:
        """The repository string with the login in it, as restic 0.14 takes it (for a restic run by the test)."""
        if self.user is None:
            return self.url(path)
        return f"rest:https://{self.user}:{self.password}@{self.host}:{self.port}/{path}"


class S3Target(Server):
    """S3: moto's server over TLS on `host` (in memory; it accepts any keys, so the tests make their own)."""

    name = "moto"

    def __init__(self, folder: Path, ca: CA, host: str) -> None:
        super().__init__(folder, host)
        self.ca = ca
        self.access_key_id = f"AKIA{secrets.token_hex(8).upper()}"
        self.secret_access_key = f"s3-{secrets.token_urlsafe(24)}"

    def prepare(self) -> None:
        self.cert, self.key = self.ca.issue(self.folder, [], [self.host], stem="s3")

    def argv(self) -> list[str]:
        return [str(MOTO_SERVER), "-H", self.host, "-p", str(self.port), "-c", str(self.cert), "-k", str(self.key)]

    def env(self) -> dict[str, str]:
        # moto's own clients inside the server need no credentials from the environment the test runs in.
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        return {**clean, "AWS_DEFAULT_REGION": "us-east-1"}

    def url(self, bucket: str, path: str = "") -> str:
        """The restic repository string of `bucket` (and the folder `path` in it) on this server."""
        return f"s3:https://{self.host}:{self.port}/{bucket}" + (f"/{path}" if path else "")

    def make_bucket(self, bucket: str, ca_file: Path) -> None:
        """Make `bucket`, as an operator does at the provider before pointing restic at it (restic 0.18 asks a
        missing bucket's location again and again for minutes before it gives up)."""
        import boto3  # moto's own dependency

        client = boto3.client(
            "s3",
            endpoint_url=f"https://{self.host}:{self.port}",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name="us-east-1",
            verify=str(ca_file),
        )
        client.create_bucket(Bucket=bucket)

    def restic_env(self) -> dict[str, str]:
        """The environment restic takes the keys from."""
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key}
