# Runs on the box as root: carries out a plan made on the laptop, in order, stopping at the first failure.
# Input on stdin (after this script): a wire.ApplySpec as one JSON line, then the bytes of each file it
# carries (wire.encode_apply). Output: JSON lines on stdout, one wire.Event each: hb (heartbeat), lock,
# stale, pending, start, note, done, fail, end; exit codes wire.STALE, wire.LOCK_TIMEOUT, wire.FAILED.
# It first copies the carried files into its stage (a folder on /run readable by root only), then takes
# the box's deploy lock, checks that the files it replaces are still what the plan saw (else it reports
# "stale" and changes nothing), keeps a backup of every replaced file, and puts those back when a
# service's validator rejects the new configuration, leaving the running service untouched.
# Notifications survive an interruption: before a file (or command) that notifies a service or command
# changes anything, the targets are written to a journal on the box (under the lock, atomically, fsynced);
# each is cleared only once it ran. The probe reports the journal, and the next plan runs what is left.
# stdlib only, Python >= 3.8.
import fcntl
import grp
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import threading
import time

import wire
from wire import carried, read_journal, read_spec

# The environment overrides are for the unit tests, which run this script outside a box.
LOCK_PATH = os.environ.get("MIAB_REMOTE_LOCK", wire.LOCK_PATH)
JOURNAL_PATH = os.environ.get("MIAB_REMOTE_JOURNAL", wire.JOURNAL_PATH)
CHUNK = 1 << 20
OUT_LOCK = threading.Lock()
ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8", NEEDRESTART_MODE="a")
APT_OPTS = [
    "-q",
    "-y",
    "-o",
    "DPkg::Lock::Timeout=300",
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
]


class Failed(Exception):
    pass


def emit(**event):
    with OUT_LOCK:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


def heartbeat():
    while True:
        time.sleep(5)
        emit(event="hb")


def run(argv, stdin=None, shell=False):
    proc = subprocess.run(
        argv,
        shell=shell,
        stdin=subprocess.DEVNULL if stdin is None else None,
        input=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=ENV,
    )
    out = proc.stdout.decode("utf-8", "replace")
    if len(out) > 4000:
        out = "...\n" + out[-4000:]
    return proc.returncode, out


def check(argv, what, shell=False):
    rc, out = run(argv, shell=shell)
    if rc != 0:
        raise Failed(f"{what} failed (exit {rc}):\n{out.strip()}")
    return out


def start_unit(verb, unit):
    """`systemctl start|restart|reload UNIT`, and once more when that failed: after a second when systemd
    itself could not spawn the service (its Result is "resources": e.g. "Failed to spawn executor", which
    systemd 257 in a container sometimes says right after the unit was stopped, while the old cgroup is
    cleaned up), after START_RETRY_PAUSE when the service's own process failed to start (seen once in
    many runs: Debian 12's mta-sts-daemon on a busy machine, with a config its own check passes). A second
    failure is the deploy's, with the unit's last journal lines (both attempts), which say why."""
    rc, out = run(["systemctl", verb, unit])
    if rc != 0:
        spawn = run(["systemctl", "show", "-p", "Result", "--value", unit])[1].strip() == "resources"
        run(["systemctl", "reset-failed", unit])
        time.sleep(1.0 if spawn else START_RETRY_PAUSE)
        rc, again = run(["systemctl", "start" if verb == "restart" else verb, unit])
        why = "systemd could not spawn it" if spawn else "its process failed to start"
        out = f"{out.strip()}\n(tried again once: {why})\n{again}"
    if rc != 0:
        raise Failed(f"systemctl {verb} {unit} failed (exit {rc}):\n{out.strip()}\n{journal_tail(unit)}".rstrip())
    return out


START_RETRY_PAUSE = 3.0
JOURNAL_LINES = 12


def journal_tail(unit):
    """The unit's last journal lines (its own messages and systemd's about it), or nothing."""
    try:
        rc, out = run(["journalctl", "-u", unit, "-n", str(JOURNAL_LINES), "--no-pager", "-o", "short"])
    except OSError:
        return ""
    return f"its journal:\n{out.strip()}" if rc == 0 and out.strip() else ""


def sha256_of(path):
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
        return h.hexdigest()
    except FileNotFoundError:
        return None


def set_meta(path, mode, owner, group):
    uid = pwd.getpwnam(owner).pw_uid
    gid = grp.getgrnam(group).gr_gid
    os.chown(path, uid, gid, follow_symlinks=False)
    os.chmod(path, mode)


def meta_matches(path, a):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return (
        (st.st_mode & 0o7777) == a["mode"]
        and pwd.getpwuid(st.st_uid).pw_name == a["owner"]
        and grp.getgrgid(st.st_gid).gr_name == a["group"]
    )


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """The notifications owed to this box: {resource id: {"by": [what changed]}}, kept across runs.

    An entry is written before the change that causes it and removed once the target ran, so a run
    killed in between leaves it for the next one. Written only when it changes (a no-op run never writes).
    """

    def __init__(self, path):
        self.path = path
        self.entries = read_journal(path)
        self.inherited = set(self.entries)  # pending before this run: a rollback here never drops them
        self.added_by = {}  # notifier -> the entries it added in this run

    def owe(self, notifier, targets):
        new = [t for t in targets if t not in self.entries]
        for t in new:
            self.entries[t] = {"by": [notifier]}
        self.added_by.setdefault(notifier, set()).update(new)
        if new:
            self.save()

    def settle(self, targets):
        gone = [t for t in targets if self.entries.pop(t, None) is not None]
        if gone:
            self.save()

    def undo(self, notifiers):
        """Notifiers put back by a rollback owe nothing anymore, unless something still in place does."""
        dropped = set()
        for n in notifiers:
            dropped |= self.added_by.pop(n, set())
        keep = set().union(*self.added_by.values()) | self.inherited
        self.settle(sorted(dropped - keep))

    def save(self):
        parent = os.path.dirname(self.path)
        os.makedirs(parent, mode=0o700, exist_ok=True)
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"pending": self.entries}, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(parent)


def stage_content(stream, spec):
    """Copy each carried file's bytes from stdin into the stage, before the lock is taken (the laptop
    sends them all at once). Returns {path: staged copy}."""
    staged = {}
    for i, a in enumerate(carried(spec["actions"])):
        path = os.path.join(spec["stage"], f"f{i}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            left = a["size"]
            while left:
                chunk = stream.read(min(left, CHUNK))
                if not chunk:
                    raise Failed(f"{a['path']}: the input ended {left} bytes early")
                f.write(chunk)
                left -= len(chunk)
        staged[a["path"]] = path
    return staged


class Runner:
    """One method per wire op, named after it (run_actions calls getattr(runner, a["op"])): a resource
    kind's code on the box is found by the ops its module in engine/kinds/ yields."""

    def __init__(self, staged, journal):
        self.staged = staged  # path -> its new content, copied into the stage
        self.journal = journal
        self.backups = {}  # path -> backup path in the stage dir, or None when the file did not exist

    def apt_update(self, a):
        check(["apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=300"], "apt-get update")
        return True

    def apt_install(self, a):
        check(
            ["apt-get", "install", "--no-install-recommends", *APT_OPTS, "--", *a["packages"]],
            "apt-get install",
        )
        return True

    def apt_remove(self, a):
        check(["apt-get", "remove", *APT_OPTS, "--", *a["packages"]], "apt-get remove")
        return True

    def group(self, a):
        try:
            grp.getgrnam(a["name"])
            return False
        except KeyError:
            check(["groupadd", *(["--system"] if a["system"] else []), "--", a["name"]], "groupadd")
            return True

    def user(self, a):
        try:
            p = pwd.getpwnam(a["name"])
        except KeyError:
            p = None
        if p is None:
            argv = ["useradd"]
            if a["system"]:
                argv.append("--system")
            if a["home"]:
                argv += ["--home-dir", a["home"]]
            argv += ["--no-create-home", "--shell", a["shell"]]
            argv += ["--gid", a["group"]] if a["group"] else ["--user-group"]
            if a["groups"]:
                argv += ["--groups", ",".join(a["groups"])]
            check([*argv, "--", a["name"]], "useradd")
            return True
        argv = ["usermod", "--shell", a["shell"]]
        if a["home"]:
            argv += ["--home", a["home"]]
        if a["group"]:
            argv += ["--gid", a["group"]]
        if a["groups"]:
            argv += ["--append", "--groups", ",".join(a["groups"])]
        check([*argv, "--", a["name"]], "usermod")
        return True

    def directory(self, a):
        path = a["path"]
        if not os.path.isdir(path):
            os.makedirs(path, mode=0o700, exist_ok=True)
        set_meta(path, a["mode"], a["owner"], a["group"])
        return True

    def file(self, a):
        path = a["path"]
        if a["expect"] == wire.ANY and sha256_of(path) == a["sha256"] and meta_matches(path, a):
            return False  # a push: decided here, under the lock, from the box's current state
        self.journal.owe(a["resource"], a.get("notify", []))
        if a["content"]:
            staged = self.staged[path]
            parent = os.path.dirname(path)
            if not os.path.isdir(parent):
                raise Failed(f"{path}: parent directory {parent} does not exist")
            if os.path.lexists(path):
                backup = staged + ".orig"
                shutil.copy2(path, backup)
                self.backups.setdefault(path, backup)
            else:
                self.backups.setdefault(path, None)
            tmp = os.path.join(parent, f".{os.path.basename(path)}.miab-remote.tmp")
            shutil.copyfile(staged, tmp)
            if sha256_of(tmp) != a["sha256"]:
                os.unlink(tmp)
                raise Failed(f"{path}: staged copy does not match the planned content")
            set_meta(tmp, a["mode"], a["owner"], a["group"])
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(parent)
        else:
            set_meta(path, a["mode"], a["owner"], a["group"])
        return True

    def restore(self, paths):
        restored = []
        for path in paths:
            if path not in self.backups:
                continue
            backup = self.backups.pop(path)
            if backup is None:
                if os.path.lexists(path):
                    os.unlink(path)
            else:
                tmp = path + ".miab-remote.restore"
                shutil.copy2(backup, tmp)
                st = os.stat(backup)
                os.chown(tmp, st.st_uid, st.st_gid)
                os.replace(tmp, path)
            restored.append(path)
        return restored

    def service(self, a):
        name = a["name"]
        unit = name if "." in name else name + ".service"
        did = False
        if a["validator"]:
            rc, out = run(a["validator"], shell=True)
            if rc != 0:
                restored = self.restore(a["rollback"])
                self.journal.undo("file:" + p for p in restored)
                raise Failed(
                    f"validation of {name} failed (`{a['validator']}` exit {rc}), previous files put back "
                    f"({', '.join(restored) or 'none'}), service left untouched:\n{out.strip()}"
                )
        if a.get("unmask"):
            check(["systemctl", "unmask", unit], f"systemctl unmask {unit}")
            did = True
        active = run(["systemctl", "is-active", "--quiet", unit])[0] == 0
        if a["restart"] and a["running"]:
            start_unit(a["restart"] if active else "start", unit)
            did = True
        elif a["running"] and not active:
            start_unit("start", unit)
            did = True
        elif not a["running"] and active:
            check(["systemctl", "stop", unit], f"systemctl stop {unit}")
            did = True
        state = run(["systemctl", "is-enabled", unit])[1].strip()
        if a["enabled"] and state in ("disabled", "masked"):
            check(["systemctl", "enable", unit], f"systemctl enable {unit}")
            did = True
        elif not a["enabled"] and state == "enabled":
            check(["systemctl", "disable", unit], f"systemctl disable {unit}")
            did = True
        if a["running"]:
            time.sleep(0.2)
            rc, out = run(["systemctl", "is-active", unit])
            if out.strip() not in ("active", "activating", "reloading"):
                _, log = run(["journalctl", "-u", unit, "-n", "15", "--no-pager", "-o", "cat"])
                raise Failed(f"{unit} is {out.strip()} after the change:\n{log.strip()}")
        return did

    def command(self, a):
        if a["creates"] and os.path.lexists(a["creates"]):
            return False
        if a["unless"] and run(a["unless"], shell=True)[0] == 0:
            return False
        self.journal.owe(a["resource"], a.get("notify", []))
        rc, out = run(["/bin/sh", "-c", a["run"]])
        for line in out.splitlines():
            if line.startswith(wire.NOTE_PREFIX):
                emit(event="note", text=line[len(wire.NOTE_PREFIX) :].strip())
        if rc != 0:
            raise Failed(f"command failed (exit {rc}):\n{out.strip()}")
        return True

    def forget(self, a):
        return False  # pending entries no recipe declares anymore: settled below, nothing to run


def stale_files(actions):
    for a in actions:
        if a["op"] == "file" and a.get("content") and a["expect"] != wire.ANY and sha256_of(a["path"]) != a["expect"]:
            return a["path"]
    return None


def take_lock(timeout):
    lock = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
    started = time.monotonic()
    told = False
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if not told:
                emit(event="lock", state="waiting")
                told = True
            if time.monotonic() - started > timeout:
                emit(event="lock", state="timeout", seconds=round(time.monotonic() - started, 1))
                sys.exit(wire.LOCK_TIMEOUT)
            time.sleep(0.2)
    if told:
        emit(event="lock", state="acquired", seconds=round(time.monotonic() - started, 1))


def owed(runner, a, changed_indices):
    """A push decides notifications here: a service or command runs if what notifies it changed, if an
    interrupted run left it pending, or if its guard says its output is missing or out of date."""
    if changed_indices.intersection(a["if_changed"]) or a["resource"] in runner.journal.entries:
        return True
    guard = a.get("guard") or {}
    if guard.get("creates"):
        return not os.path.lexists(guard["creates"])
    if guard.get("unless"):
        return run(guard["unless"], shell=True)[0] != 0
    return False


def run_actions(runner, actions):
    changed_indices = set()
    for i, a in enumerate(actions):
        if "if_changed" in a and not owed(runner, a, changed_indices):
            emit(event="done", index=i, changed=False)
            continue
        emit(event="start", index=i)
        try:
            changed = getattr(runner, a["op"])(a)
        except Failed as e:
            emit(event="fail", index=i, error=str(e))
            sys.exit(wire.FAILED)
        except Exception as e:
            emit(event="fail", index=i, error=f"{type(e).__name__}: {e}")
            sys.exit(wire.FAILED)
        # Only now is the notification delivered; the journal keeps it until here.
        runner.journal.settle(a.get("settles", []))
        if changed:
            changed_indices.add(i)
        emit(event="done", index=i, changed=bool(changed))


def main():
    spec = read_spec(sys.stdin.buffer)
    threading.Thread(target=heartbeat, daemon=True).start()
    os.makedirs(spec["stage"], mode=0o700, exist_ok=True)
    os.chmod(spec["stage"], 0o700)  # a folder an interrupted run left is made private again
    try:
        try:
            staged = stage_content(sys.stdin.buffer, spec)
        except (Failed, OSError) as e:
            emit(event="fail", error=f"staging the files: {e}")
            sys.exit(wire.FAILED)
        take_lock(spec["lock_timeout"])
        stale = stale_files(spec["actions"])
        if stale:
            emit(event="stale", path=stale)
            sys.exit(wire.STALE)
        journal = Journal(JOURNAL_PATH)
        if journal.entries:
            emit(event="pending", ids=sorted(journal.entries))
        run_actions(Runner(staged, journal), spec["actions"])
        emit(event="end")
    finally:
        shutil.rmtree(spec["stage"], ignore_errors=True)


main()
