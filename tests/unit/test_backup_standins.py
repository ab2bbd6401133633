"""The backup stand-ins (tests/standins/backuptargets.py) on 127.0.0.1, proved with this machine's restic: a REST
target behind a bcrypt htpasswd login (a wrong login refused), an append-only one that refuses `forget` with
403 and keeps the snapshot, and S3 through moto, each over TLS verified against the test CA only. The
repository string and password reach restic in files, never on its command line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.standins.backuptargets import RestTarget, S3Target
from tests.standins.testca import CA

pytestmark = pytest.mark.skipif(shutil.which("restic") is None or shutil.which("rclone") is None,
                                reason="needs restic and rclone (scripts/setup-host --test)")  # fmt: skip

LOOPBACK = "127.0.0.1"


@dataclass
class Restic:
    """restic against one repository, the way the box runs it: repository and password in files, the CA file."""

    folder: Path
    repository: str
    ca: Path | None
    env: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        self.folder.mkdir(parents=True, exist_ok=True)
        repo, password = self.folder / "repository", self.folder / "password"
        repo.write_text(self.repository)
        password.write_text("repo-password-in-a-file\n")
        argv = ["restic", "--repository-file", str(repo), "--password-file", str(password), "--no-cache"]
        if self.ca is not None:
            argv += ["--cacert", str(self.ca)]
        return [*argv, *args]

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "AWS_"))}
        return {**env, **self.env}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=120, env=self.environ())
        if check:
            assert done.returncode == 0, f"restic {' '.join(args)}: {done.stderr}"
        return done

    def until_refused(self, *args: str) -> str:
        """Run restic until the server refuses a request with 403, then interrupt it (restic would retry the
        refused request for 45 s before it gives up), and wait for its clean end (its lock removed); its
        error output up to then."""
        proc = subprocess.Popen(
            self.argv(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=self.environ()
        )
        assert proc.stderr is not None
        seen: list[str] = []
        try:
            for line in proc.stderr:
                seen.append(line)
                if "403 Forbidden" in line:
                    break
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
        return "".join(seen)

    def snapshots(self) -> list[dict[str, object]]:
        listed: list[dict[str, object]] = json.loads(self("snapshots", "--json").stdout)
        return listed


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA.make("backup stand-in test CA")


@pytest.fixture
def ca_file(tmp_path: Path, ca: CA) -> Path:
    """The CA's PEM, the only certificate restic checks the target's against (the inventory's ca_file)."""
    (tmp_path / "ca.pem").write_bytes(ca.pem())
    return tmp_path / "ca.pem"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    (folder / "mail").mkdir(parents=True)
    (folder / "mail" / "1.msg").write_text("Subject: one\n\nhello\n")
    (folder / "mail" / "2.msg").write_text("Subject: two\n\nworld\n")
    return folder


@pytest.fixture
def rest(tmp_path: Path, ca: CA) -> Iterator[RestTarget]:
    with RestTarget(tmp_path / "rest", ca, LOOPBACK) as target:
        yield target


def test_rest_init_backup_snapshots_with_the_login_over_tls(
    rest: RestTarget, ca_file: Path, data: Path, tmp_path: Path
) -> None:
    restic = Restic(tmp_path / "client", rest.url_with_login("box1"), ca_file, {})
    restic("init")
    restic("backup", str(data), "--host", "box1.example.test", "--tag", "miab-remote")
    [snap] = restic.snapshots()
    assert snap["hostname"] == "box1.example.test" and snap["tags"] == ["miab-remote"]
    assert (rest.root / "box1" / "config").is_file()  # stored where the server's root is
    assert rest.password is not None and rest.password not in " ".join(rest.argv())
    assert rest.password not in (rest.folder / "htpasswd").read_text()

    port = rest.port
    rest.bwlimit = "10M"
    rest.restart()  # on the same port, with the same repositories
    assert rest.port == port and "--bwlimit" in rest.argv() and len(restic.snapshots()) == 1

    wrong = Restic(tmp_path / "wrong", f"rest:https://{rest.user}:not-it@{LOOPBACK}:{rest.port}/box1", ca_file, {})
    assert "401" in wrong("snapshots", check=False).stderr
    no_ca = Restic(tmp_path / "no-ca", rest.url_with_login("box1"), None, {})
    refused = no_ca("snapshots", check=False)
    assert refused.returncode != 0 and "certificate" in refused.stderr


def test_rest_append_only_refuses_forget_with_403_and_the_snapshot_survives(
    tmp_path: Path, ca: CA, ca_file: Path, data: Path
) -> None:
    with RestTarget(tmp_path / "rest", ca, LOOPBACK, append_only=True) as target:
        restic = Restic(tmp_path / "client", target.url_with_login("box1"), ca_file, {})
        restic("init")
        restic("backup", str(data), "--host", "box1.example.test")
        (data / "mail" / "3.msg").write_text("Subject: three\n\nagain\n")
        restic("backup", str(data), "--host", "box1.example.test")  # locks are removed: a second run works
        first, second = restic.snapshots()
        refused = restic.until_refused("forget", str(first["id"]))
        assert f"Remove(<snapshot/{str(first['id'])[:10]}>) returned error" in refused, refused
        assert [s["id"] for s in restic.snapshots()] == [first["id"], second["id"]]


def test_s3_through_moto_init_backup_snapshots_with_the_ca(tmp_path: Path, ca: CA, ca_file: Path, data: Path) -> None:
    with S3Target(tmp_path / "s3", ca, LOOPBACK) as target:
        restic = Restic(tmp_path / "client", target.url("backups", "box1"), ca_file, target.restic_env())
        target.make_bucket("backups", ca_file)
        assert "Is there a repository at the following location?" in restic("cat", "config", check=False).stderr
        restic("init")
        restic("backup", str(data), "--host", "box1.example.test")
        [snap] = restic.snapshots()
        assert snap["hostname"] == "box1.example.test"
        restored = tmp_path / "restored"
        restic("restore", "latest", "--target", str(restored))
        assert (restored / data.relative_to("/") / "mail" / "2.msg").read_text() == "Subject: two\n\nworld\n"
        assert target.secret_access_key not in " ".join(target.argv())
        no_ca = Restic(tmp_path / "no-ca", target.url("backups", "box1"), None, target.restic_env())
        refused = no_ca("snapshots", check=False)
        assert refused.returncode != 0 and "certificate" in refused.stderr


def test_a_server_that_cannot_start_says_why_and_leaves_no_process(tmp_path: Path, ca: CA) -> None:
    class Broken(RestTarget):
        def argv(self) -> list[str]:
            return [*super().argv()[:3], "--no-such-flag"]

    target = Broken(tmp_path / "rest", ca, LOOPBACK)
    with pytest.raises(AssertionError, match=r"(?s)rclone ended \(1\) at its start:.*unknown flag: --no-such-flag"):
        target.__enter__()
    assert target.process is None


def test_an_address_this_machine_does_not_have_is_named(tmp_path: Path, ca: CA) -> None:
    with pytest.raises(AssertionError, match=r"cannot listen on 192\.0\.2\.1: .* \(start the targets after a box\)"):
        RestTarget(tmp_path / "rest", ca, "192.0.2.1").__enter__()
