"""The converge engine against a real local box: idempotence, dry runs, validation rollback, pinned host
keys, concurrent deploys, and an installed wheel that needs no source tree."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomlkit

from miab_remote.transport.sshkeys import fingerprint_line, generate_ed25519
from tests.e2e.helpers import (
    SUBNET_PREFIX,
    Box,
    CLIResult,
    cli,
    deployed_box,
    edit_inventory,
    new_inventory,
    operator_key,
    start_cli,
    wait_until,
)

pytestmark = pytest.mark.e2e

NAME = "engine.e2e-one.test"
NGINX_CONF = "/etc/nginx/conf.d/miab-test.conf"
LOCK = "/run/lock/miab-remote.lock"  # the box's deploy lock (remote/apply.py)


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory, image: str) -> Path:
    return new_inventory(tmp_path_factory.mktemp(f"inventory-{image}") / "hosts")


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return operator_key(tmp_path_factory.mktemp("operator"))


@pytest.fixture(scope="module")
def box(inv: Path, identity: Path, image: str) -> Iterator[Box]:
    # The test recipe joins the built-in base recipe; each test deploys for itself.
    with deployed_box(inv, identity, {NAME: {"recipes": ["base", "testbox"]}}, deploy=False, image=image) as made:
        assert tomlkit.parse((inv / f"{NAME}.toml").read_text())["os"] == image  # create wrote it
        yield made.box


def deploy(inv: Path, *args: str) -> CLIResult:
    return cli(inv, "deploy", NAME, *args)


def test_first_deploy_converges_and_second_changes_nothing(inv: Path, box: Box) -> None:
    first = deploy(inv, "--json")
    assert first.code == 0, first.err + first.out
    run = first.json()["hosts"][NAME]
    assert run["failed"] == 0 and run["changed"] >= 10
    assert box.run("systemctl is-active nginx")[1].strip() == "active"
    assert (
        "miab-test on engine.e2e-one.test"
        in box.run(
            'python3 -c "import urllib.request;'
            "print(urllib.request.urlopen('http://127.0.0.1:8080').read().decode())\""
        )[1]
    )
    assert box.run("stat -c '%a %U %G' /etc/miab-test/secret.conf")[1].split() == ["640", "root", "miabtest"]
    assert box.run("id -nG miabtest")[1].split() == ["miabtest"]
    assert box.run("test -s /var/lib/miab-test/initialized")[0] == 0
    second = deploy(inv, "--json")
    assert second.code == 0, second.err
    again = second.json()["hosts"][NAME]
    assert again["changed"] == 0 and again["failed"] == 0
    assert again["round_trips"] <= 2
    assert again["actions"] == []
    assert all(u["why"] for u in again["unchanged"])


def test_dry_run_diff_shows_change_and_touches_nothing(inv: Path, box: Box) -> None:
    assert deploy(inv).code == 0
    before = box.sha256(NGINX_CONF)
    override = inv / "templates" / NGINX_CONF.lstrip("/")
    original = override.read_text()
    try:
        override.write_text(original.replace("listen 8080;", "listen 8081;"))
        res = deploy(inv, "--dry-run", "--diff")
        assert res.code == 0, res.err
        assert f"--- {NGINX_CONF}" in res.out
        assert "-    listen 8080;" in res.out and "+    listen 8081;" in res.out
        assert "would change" in res.out
        assert box.sha256(NGINX_CONF) == before
        assert "listen 8080" in box.run(f"cat {NGINX_CONF}")[1]
        # The secret file's content never appears in a diff.
        secret = inv / "templates" / "etc/miab-test/secret.conf"
        secret_original = secret.read_text()
        secret.write_text(secret_original + "# changed\n")
        res = deploy(inv, "--dry-run", "--diff")
        assert "(secret file: content differs, not shown)" in res.out
        assert "s3cr3t-token-value" not in res.out + res.err
        secret.write_text(secret_original)
    finally:
        override.write_text(original)
    assert deploy(inv, "--json").json()["hosts"][NAME]["changed"] == 0


def test_invalid_config_is_rolled_back_and_service_untouched(inv: Path, box: Box) -> None:
    assert deploy(inv).code == 0
    before = box.sha256(NGINX_CONF)
    pid_before = box.run("systemctl show -p MainPID --value nginx")[1].strip()
    override = inv / "templates" / NGINX_CONF.lstrip("/")
    original = override.read_text()
    try:
        override.write_text(original.replace("listen 8080;", "listen 8080; this_is_not_a_directive;"))
        res = deploy(inv, "--json")
        assert res.code == 1
        run = res.json()["hosts"][NAME]
        assert run["failed"] == 1
        assert "validation of nginx failed" in run["error"] and "this_is_not_a_directive" in run["error"]
        assert box.sha256(NGINX_CONF) == before
        assert box.run("systemctl is-active nginx")[1].strip() == "active"
        assert box.run("systemctl show -p MainPID --value nginx")[1].strip() == pid_before
        assert box.run(f"ls -a {Path(NGINX_CONF).parent}")[1].split().count("miab-test.conf") == 1
    finally:
        override.write_text(original)
    assert deploy(inv, "--json").json()["hosts"][NAME]["changed"] == 0


def test_changed_host_key_is_refused_before_anything_is_sent(inv: Path, box: Box) -> None:
    pinned_line = str(tomlkit.parse((inv / f"{NAME}.toml").read_text())["host_keys"][0])
    new = generate_ed25519(f"root@{NAME}")
    box.run(
        "cat > /etc/ssh/ssh_host_ed25519_key.new && chmod 600 /etc/ssh/ssh_host_ed25519_key.new && "
        "mv /etc/ssh/ssh_host_ed25519_key.new /etc/ssh/ssh_host_ed25519_key && "
        f"echo '{new.public_line}' > /etc/ssh/ssh_host_ed25519_key.pub && systemctl reload ssh",
        stdin=new.private_openssh,
    )
    box.set_host_key(new.public_line)
    override = inv / "templates" / NGINX_CONF.lstrip("/")
    original = override.read_text()
    before = box.sha256(NGINX_CONF)
    inventory_before = (inv / f"{NAME}.toml").read_bytes()
    try:
        override.write_text(original.replace("listen 8080;", "listen 8082;"))
        res = deploy(inv)
        assert res.code == 1
        text = res.out + res.err
        assert "host key mismatch" in text
        assert fingerprint_line(new.public_line).split()[-1] in text
        assert fingerprint_line(pinned_line).split()[-1] in text
        assert f"miab-remote trust {NAME}" in text
        assert box.sha256(NGINX_CONF) == before
        assert (inv / f"{NAME}.toml").read_bytes() == inventory_before
        # Re-pinning deliberately, with the fingerprint checked out of band, lets deploys through again.
        wrong = cli(inv, "trust", NAME, "--fingerprint", fingerprint_line(pinned_line).split()[-1])
        assert wrong.code == 2 and (inv / f"{NAME}.toml").read_bytes() == inventory_before
        res = cli(inv, "trust", NAME, "--fingerprint", fingerprint_line(new.public_line).split()[-1])
        assert res.code == 0, res.err
    finally:
        override.write_text(original)
    assert deploy(inv).code == 0


def test_concurrent_deploys_wait_for_each_other(inv: Path, box: Box) -> None:
    assert deploy(inv).code == 0
    # A deploy that finds the box locked waits for it, then converges. The lock is held on the box until the
    # test releases it: no timing guesses, each step waits for the state it needs.
    held, release = "/run/miab-test-lock-held", "/run/miab-test-lock-release"
    box.run(f"rm -f {held} {release}")
    hold = f"touch {held}; while [ ! -e {release} ]; do sleep 0.1; done"
    holder = threading.Thread(target=box.run, args=(f"flock {LOCK} sh -c '{hold}'; rm -f {held} {release}",))
    override = inv / "templates" / NGINX_CONF.lstrip("/")
    original = override.read_text()
    try:
        override.write_text(original.replace("listen 8080;", "listen 8083;"))
        holder.start()
        wait_until(lambda: box.run(f"test -e {held}", check=False)[0] == 0, "the lock is held on the box")
        short = deploy(inv, "--json", "--lock-timeout", "1")
        assert short.code == 1
        assert "another deploy held this box's lock" in short.json()["hosts"][NAME]["error"]
        waited = waiting_deploy(inv, box, release)
        holder.join()
        assert waited.code == 0, waited.err
        assert any("waited" in n for n in waited.json()["hosts"][NAME]["notes"])
        # Two real deploys at once: both succeed, the box ends consistent, and a third changes nothing.
        override.write_text(original.replace("listen 8080;", "listen 8084;"))
        results: list[CLIResult] = []
        threads = [threading.Thread(target=lambda: results.append(deploy(inv, "--json"))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.code for r in results] == [0, 0], [r.err for r in results]
        assert "listen 8084;" in box.run(f"cat {NGINX_CONF}")[1]
        assert deploy(inv, "--json").json()["hosts"][NAME]["changed"] == 0
    finally:
        if holder.is_alive():  # a failed step must not leave the lock held (or this thread waiting)
            box.run(f"touch {release}")
            holder.join()
        override.write_text(original)
    assert deploy(inv).code == 0


def waiting_deploy(inv: Path, box: Box, release: str) -> CLIResult:
    """`deploy --json` while another holds the box's lock: once its progress (-v, on stderr) says it is
    waiting for the lock, the holder is told to let go (`touch release` on the box)."""
    with tempfile.TemporaryFile() as out:
        proc = start_cli(inv, "-v", "deploy", NAME, "--json", stdout=out, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        seen: list[bytes] = []
        for line in proc.stderr:  # line by line, as the deploy reports its steps
            seen.append(line)
            if b"waiting: another deploy holds this box's lock" in line:
                box.run(f"touch {release}")
                break
        err = b"".join(seen) + proc.stderr.read()
        proc.wait(timeout=600)
        out.seek(0)
        return CLIResult(proc.returncode, out.read().decode(), err.decode(errors="replace"))


def serves(box: Box, port: int) -> bool:
    """Whether nginx on the box answers on this port."""
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3).close()"
    return box.run(f'python3 -c "{probe}"', check=False)[0] == 0


def test_a_reload_lost_to_a_killed_deploy_is_finished_by_the_next(inv: Path, box: Box) -> None:
    assert deploy(inv).code == 0
    override = inv / "templates" / NGINX_CONF.lstrip("/")
    original = override.read_text()
    # The fixture's `hold` command pauses the apply after the nginx file moved and before nginx reloads.
    box.run("rm -f /run/miab-test-held; touch /run/miab-test-hold")
    try:
        override.write_text(original.replace("listen 8080;", "listen 8087;"))
        proc = start_cli(inv, "deploy", NAME, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(
            lambda: box.run("test -e /run/miab-test-held", check=False)[0] == 0,
            "the deploy reached the hold",
            timeout=300,
            running=proc,
        )
        assert "listen 8087;" in box.run(f"cat {NGINX_CONF}")[1], "the file moved into place"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        box.run("rm -f /run/miab-test-hold")
        # The apply on the box ends at its next word to the vanished CLI, before it reloads nginx.
        box.run(f"timeout 60 flock {LOCK} true")
        assert serves(box, 8080) and not serves(box, 8087), "nginx still runs the old configuration"
        res = deploy(inv, "--json")
        assert res.code == 0, res.errors()
        run = res.json()["hosts"][NAME]
        nginx = [a for a in run["actions"] if a["resource"] == "service:nginx"]
        assert nginx and "pending from an interrupted run" in nginx[0]["why"], run["actions"]
        assert nginx[0]["status"] == "changed"
        assert any("interrupted" in n and "service:nginx" in n for n in run["notes"]), run["notes"]
        assert serves(box, 8087) and not serves(box, 8080)
        third = deploy(inv, "--json").json()["hosts"][NAME]
        assert third["changed"] == 0 and third["actions"] == [], third["actions"]
    finally:
        box.run("rm -f /run/miab-test-hold")
        override.write_text(original)
    assert deploy(inv).code == 0
    assert serves(box, 8080)


def test_a_masked_unit_is_unmasked_and_the_rest_repaired(inv: Path, box: Box) -> None:
    assert deploy(inv).code == 0
    box.run("systemctl stop nginx && systemctl mask nginx && echo tampered > /etc/miab-test/motd")
    res = deploy(inv, "--json")
    assert res.code == 0, res.errors()
    run = res.json()["hosts"][NAME]
    nginx = [a for a in run["actions"] if a["resource"] == "service:nginx"]
    assert nginx and "unmask" in nginx[0]["why"] and nginx[0]["status"] == "changed", run["actions"]
    assert any(a["resource"] == "file:/etc/miab-test/motd" and a["status"] == "changed" for a in run["actions"])
    assert box.run("systemctl is-active nginx")[1].strip() == "active"
    assert box.run("systemctl is-enabled nginx")[1].strip() == "enabled"
    assert "tampered" not in box.run("cat /etc/miab-test/motd")[1]
    assert serves(box, 8080)
    again = deploy(inv, "--json").json()["hosts"][NAME]
    assert again["changed"] == 0, again["actions"]


BIG_RECIPE = """\
from miab_remote.api import File


def resources(ctx):
    yield File("/var/lib/miab-test-big", content=bytes(range(256)) * 24576, mode=0o600)
"""


def test_a_file_of_several_megabytes_goes_inline_with_the_apply(inv: Path, box: Box) -> None:
    assert deploy(inv).code == 0
    (inv / "recipes" / "bigfile.py").write_text(BIG_RECIPE)
    edit_inventory(inv, NAME, recipes=["base", "testbox", "bigfile"])
    try:
        res = deploy(inv, "--json")
        assert res.code == 0, res.errors()
        run = res.json()["hosts"][NAME]
        assert run["changed"] == 1 and run["round_trips"] == 2, run
        assert box.sha256("/var/lib/miab-test-big") == hashlib.sha256(bytes(range(256)) * 24576).hexdigest()
        assert box.run("stat -c '%a %U' /var/lib/miab-test-big")[1].split() == ["600", "root"]
        assert box.run("ls -A /run/miab-remote")[1].strip() == "", "the stage is removed"
        assert deploy(inv, "--json").json()["hosts"][NAME]["changed"] == 0
    finally:
        edit_inventory(inv, NAME, recipes=["base", "testbox"])
        box.run("rm -f /var/lib/miab-test-big")


def test_installed_wheel_works_without_the_source_tree(inv: Path, box: Box, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", str(repo)], capture_output=True, text=True, cwd=tmp_path
    )
    assert pip.returncode == 0, pip.stderr
    exe = [str(venv / "bin/miab-remote")]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert cli(inv, "--help", exe=exe, cwd=outside).code == 0
    # An inventory that uses only the built-in recipes: they and their templates come from the wheel.
    plain = outside / "hosts"
    plain.mkdir()
    doc = tomlkit.parse((inv / f"{NAME}.toml").read_text())
    doc["recipes"] = ["base"]
    (plain / f"{NAME}.toml").write_text(tomlkit.dumps(doc))
    (plain / f"{NAME}.toml").chmod(0o600)
    res = cli(plain, "deploy", NAME, "--json", exe=exe, cwd=outside)
    assert res.code == 0, res.err + res.out
    assert res.json()["hosts"][NAME]["failed"] == 0
    assert box.run("cat /etc/mailname")[1].strip() == NAME


def test_non_root_user_deploys_through_sudo(inv: Path, box: Box, identity: Path) -> None:
    pub = identity.with_name("id_ed25519.pub").read_text().strip()
    box.run(
        "id admin >/dev/null 2>&1 || useradd --create-home --shell /bin/bash admin; "
        "install -d -m 700 -o admin -g admin /home/admin/.ssh; "
        f"echo '{pub}' > /home/admin/.ssh/authorized_keys; chown admin: /home/admin/.ssh/authorized_keys; "
        "echo 'admin ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/admin; chmod 440 /etc/sudoers.d/admin"
    )
    path = inv / f"{NAME}.toml"
    original = path.read_text()
    doc = tomlkit.parse(original)
    doc["ssh"]["user"] = "admin"  # type: ignore[index]
    path.write_text(tomlkit.dumps(doc))
    override = inv / "templates" / NGINX_CONF.lstrip("/")
    template = override.read_text()
    try:
        override.write_text(template.replace("listen 8080;", "listen 8085;"))
        res = deploy(inv, "--json")
        assert res.code == 0, res.err + res.out
        assert res.json()["hosts"][NAME]["changed"] == 2  # the file, and nginx reloaded
        # The changed file's content goes inline over the apply channel: probe + apply, no SFTP session.
        assert res.json()["hosts"][NAME]["round_trips"] == 2
        assert box.run(f"stat -c '%U %a' {NGINX_CONF}")[1].split() == ["root", "644"]
        assert box.run("ls -a /home/admin")[1].count(".miab-remote-stage") == 0, "the staging folder is removed"
        # Without passwordless sudo the error says so, and nothing changes.
        box.run("rm /etc/sudoers.d/admin")
        override.write_text(template)
        res = deploy(inv, "--json")
        assert res.code == 1
        assert "cannot become root without a password" in res.json()["hosts"][NAME]["error"]
        assert "listen 8085;" in box.run(f"cat {NGINX_CONF}")[1]
    finally:
        path.write_text(original)
        override.write_text(template)
    assert deploy(inv).code == 0


def test_unsupported_os_is_refused_before_anything_changes(inv: Path, box: Box) -> None:
    assert deploy(inv).code == 0
    override = inv / "templates" / NGINX_CONF.lstrip("/")
    template = override.read_text()
    before = box.sha256(NGINX_CONF)
    box.run(
        "rm /etc/os-release && "
        'printf \'ID=centos\\nVERSION_ID="7"\\nPRETTY_NAME="CentOS Linux 7"\\n\' > /etc/os-release'
    )
    try:
        override.write_text(template.replace("listen 8080;", "listen 8086;"))
        res = deploy(inv, "--json")
        assert res.code == 1
        error = res.json()["hosts"][NAME]["error"]
        assert "unsupported OS 'CentOS Linux 7'" in error and "Debian 12 (bookworm) [debian-12]" in error
        assert "Debian 13 (trixie) [debian-13]" in error
        assert box.sha256(NGINX_CONF) == before
    finally:
        box.run("rm -f /etc/os-release && ln -s ../usr/lib/os-release /etc/os-release")
        override.write_text(template)
    assert deploy(inv).code == 0


def test_vanished_box_fails_in_bounded_time_with_a_clear_message(inv: Path, box: Box, tmp_path: Path) -> None:
    # An address on the test bridge that no box holds: packets go nowhere, nothing leaves this machine.
    other = new_inventory(tmp_path / "hosts")  # with the test recipe: deploy checks it before connecting
    doc = tomlkit.parse((inv / f"{NAME}.toml").read_text())
    doc["address"] = f"{SUBNET_PREFIX}.250"
    (other / f"{NAME}.toml").write_text(tomlkit.dumps(doc))
    res = cli(other, "deploy", NAME, "--json", "--connect-timeout", "2")
    assert res.code == 1
    assert f"no answer from {SUBNET_PREFIX}.250:22 within 2 s" in res.json()["hosts"][NAME]["error"]
