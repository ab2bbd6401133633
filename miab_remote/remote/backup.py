#!/usr/bin/python3
# miab-backup: the box's restic backups and restores (issue 12). Installed as /usr/local/sbin/miab-backup
# for the daily timer (`miab-backup run`; argv takes only the commands without input: init, run, list,
# status, restore-finish) and also run by the laptop as a remote script with one JSON object on stdin:
# {"command": "init"|"run"|"list"|"status"|"restore"|"restore-finish"|"restore-user", ...}.
# Output: JSON lines on stdout: {"progress": {"phase", "percent", "files", "bytes"}} (at most one a second,
# and a heartbeat at least every 15 s: the laptop gives up after 60 s of silence), then one {"result": {...}}
# or {"error": message, "code": word}. Exit 0, 1 (failed) or 2 (refused: nothing was changed).
# Secrets (the repository string with its credentials, the repository password, the env file's values) are
# only in root-only files that restic reads itself (--repository-file, --password-file, its environment):
# never on a command line, and masked in every message this program passes on.
# The environment overrides (MIAB_BACKUP_*) are for the unit tests, which run it outside a box.
# stdlib only, Python >= 3.8.
import ctypes
import datetime
import errno
import fcntl
import hashlib
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ENV = os.environ
CONFIG = ENV.get("MIAB_BACKUP_CONFIG", "/etc/miab-remote/backup")
VAR = ENV.get("MIAB_BACKUP_VAR", "/var/lib/miab-remote")
LOCK = ENV.get("MIAB_BACKUP_LOCK", "/run/lock/miab-backup.lock")
RUN = ENV.get("MIAB_BACKUP_RUN", "/run")
CACHE = ENV.get("MIAB_BACKUP_CACHE", "/var/cache/restic")
PASSWD = ENV.get("MIAB_BACKUP_PASSWD", "/etc/passwd")
GROUP = ENV.get("MIAB_BACKUP_GROUP", "/etc/group")
RESTIC = ENV.get("MIAB_BACKUP_RESTIC", "restic")
SQLITE3 = ENV.get("MIAB_BACKUP_SQLITE3", "sqlite3")
SYSTEMCTL = ENV.get("MIAB_BACKUP_SYSTEMCTL", "systemctl")
NFT = ENV.get("MIAB_BACKUP_NFT", "nft")
CHOWN_LOG = ENV.get("MIAB_BACKUP_CHOWN_LOG")  # tests: owner changes written here instead of made
KILL_AFTER = ENV.get("MIAB_BACKUP_KILL_AFTER")  # tests: the restore is killed once this phase is done
HEARTBEAT = float(ENV.get("MIAB_BACKUP_HEARTBEAT", "15"))
# How long a restore waits for a backup or restore that holds the lock (one whose laptop went away).
RESTORE_LOCK_WAIT = float(ENV.get("MIAB_BACKUP_RESTORE_LOCK_WAIT", "3600"))

STATUS = os.path.join(VAR, "backup", "status.json")
HISTORY = os.path.join(VAR, "backup", "history.json")
SIZES = os.path.join(VAR, "backup", "sizes.json")
JOURNAL = os.path.join(VAR, "restore.json")
TIMER = "miab-backup.timer"
NFT_TABLE = "miab_restore"
SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_SIDE = ("-journal", "-wal", "-shm")
PHASES = ("closing", "restoring", "fixing", "stopping", "swapping", "swapped")
# dovecot's own files in a maildir: not copied by restore-user, so dovecot gives the messages new UIDs.
DOVECOT_FILES = re.compile(r"^(dovecot[.-].*|subscriptions|maildirfolder)$")
MASK = "***"


class Stop(Exception):
    """The command ends with {"error": message, "code": code}; exit 2 when refused (nothing changed)."""

    def __init__(self, message, code, refused=False):
        super().__init__(message)
        self.code = code
        self.refused = refused


def refused(message, code):
    return Stop(message, code, refused=True)


# ---------------------------------------------------------------------------------------------- output
class Out:
    """JSON lines on stdout: throttled progress, heartbeats, the final line. A vanished reader (the laptop's
    connection lost) stops the output, never the work: an interrupted restore is better finished."""

    def __init__(self, interval, heartbeat):
        self.lock = threading.Lock()
        self.interval = interval
        self.last = 0.0
        self.phase = None
        self.state = {}
        self.gone = False
        if heartbeat:
            threading.Thread(target=self._beat, daemon=True).start()

    def _write(self, obj):
        if self.gone:
            return
        try:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, OSError):
            self.gone = True
        self.last = time.monotonic()

    def progress(self, phase, percent=None, files=None, size=None):
        with self.lock:
            new = phase != self.phase
            self.phase = phase
            self.state = {"phase": phase, "percent": percent, "files": files, "bytes": size}
            if new or time.monotonic() - self.last >= self.interval:
                self._write({"progress": self.state})

    def quietly(self, phase):
        """Set the phase the heartbeat repeats without printing a line."""
        with self.lock:
            self.phase = phase
            self.state = {"phase": phase, "percent": None, "files": None, "bytes": None}
            self.last = time.monotonic()

    def _beat(self):
        while True:
            time.sleep(1)
            with self.lock:
                if self.phase is not None and time.monotonic() - self.last >= HEARTBEAT:
                    self._write({"progress": self.state})

    def final(self, obj):
        with self.lock:
            self._write(obj)


OUT = Out(1.0, False)


# ---------------------------------------------------------------------------------------------- helpers
def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_json(path, default=None):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except ValueError as e:
        raise Stop(f"{path} is not JSON ({e}); move it away", "bad-file") from None


def write_file(path, data, mode=0o644):
    """Replace `path` atomically (a crash leaves the old or the new content, never a part)."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_json(path, obj, mode=0o644):
    write_file(path, json.dumps(obj, indent=1, sort_keys=True) + "\n", mode)


def chown(path, uid, gid):
    if CHOWN_LOG:
        with open(CHOWN_LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps([path, uid, gid]) + "\n")
        return
    os.lchown(path, uid, gid)


def glob_escape(path):
    """A literal path as a restic filter pattern (its Match treats * ? [ and backslash as special)."""
    return re.sub(r"([*?\[\\])", r"\\\1", path)


def id_names(path):
    """number -> name of a passwd or group file (the first of each number, as the C library finds it)."""
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split(":")
            if len(parts) >= 3 and parts[2].isdigit():
                out.setdefault(int(parts[2]), parts[0])
    return out


def take_lock(what, wait=0.0):
    """The program's lock, else Stop(what, "busy"). With `wait`, up to that many seconds for it, saying so: a
    restore whose laptop went away goes on to its end, and the restore run again takes up from there."""
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise Stop(what, "busy") from None
            if OUT.phase != "waiting":
                OUT.progress("waiting")  # for the run that holds the lock (the heartbeat goes on meanwhile)
            time.sleep(0.2)


def run_tool(argv, what, stdin=None):
    """A system tool (systemctl, nft, sqlite3): its output, or a Stop naming what failed."""
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    except OSError as e:
        raise Stop(f"{what}: {argv[0]}: {e.strerror}", "tool") from None
    if proc.returncode != 0:
        raise Stop(f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-800:]}", "tool")
    return proc.stdout


def systemctl(*args):
    return run_tool([SYSTEMCTL, *args], "systemctl " + " ".join(args))


# ---------------------------------------------------------------------------------------------- settings
class Config:
    """The box's backup settings and the files restic reads its secrets from (CONFIG, or a restore's
    --from credentials in a private folder under /run)."""

    def __init__(self, folder=CONFIG, settings=None):
        self.folder = folder
        if settings is None:
            settings = read_json(os.path.join(CONFIG, "settings.json"))
            if settings is None:
                raise Stop(
                    f"{CONFIG}/settings.json is missing: this box has no [backup] (deploy it first)", "no-config"
                )
        self.settings = settings
        self.host = settings["host"]
        self.state = ENV.get("MIAB_BACKUP_STATE") or settings.get("state") or "/home/user-data"
        for name in ("repository", "password"):
            if not os.path.exists(self.path(name)):
                raise Stop(f"{self.path(name)} is missing: deploy the box's [backup] again", "no-config")
        self.secrets = []
        self.env = {}
        self._secret(self._read("password").strip())  # the repository string: only its login's password
        repo = self.repository = self._read("repository").strip()
        parts = urllib.parse.urlsplit(repo.split(":", 1)[1]) if ":" in repo else None
        if parts is not None and parts.password:
            self._secret(parts.password)
            self._secret(urllib.parse.unquote(parts.password))
        if os.path.exists(self.path("env")):
            for line in self._read("env").splitlines():
                if "=" in line:
                    k, _, v = line.partition("=")
                    self.env[k.strip()] = v
                    self._secret(v)
        if os.path.exists(self.path("id_ed25519")):
            self._secret(self._read("id_ed25519").strip())

    def path(self, name):
        return os.path.join(self.folder, name)

    def _read(self, name):
        with open(self.path(name), encoding="utf-8") as f:
            return f.read()

    def _secret(self, value):
        if value and len(value) >= 4:
            self.secrets.append(value)

    def mask(self, text):
        for s in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(s, MASK)
        return text

    @property
    def keep(self):
        return self.settings.get("keep") or {}


# ---------------------------------------------------------------------------------------------- restic
class Restic:
    def __init__(self, config):
        self.c = config

    def argv(self, args):
        argv = [RESTIC, "--repository-file", self.c.path("repository"), "--password-file", self.c.path("password")]
        if os.path.exists(self.c.path("ca.pem")):
            argv += ["--cacert", self.c.path("ca.pem")]
        if self.c.settings.get("sftp_command"):
            argv += ["-o", "sftp.command=" + self.c.settings["sftp_command"]]
        return argv + list(args)

    def environ(self):
        env = {
            "PATH": ENV.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": ENV.get("HOME", "/root"),
            "LC_ALL": "C.UTF-8",
            "RESTIC_CACHE_DIR": CACHE,
            # restic's --json status comes 60 times a second unless told otherwise, which slowed a restore
            # by a third; once a second is all the progress shown needs.
            "RESTIC_PROGRESS_FPS": "1",
        }
        env.update(self.c.env)
        return env

    def run(self, args, on_line=None):
        """(exit code, stdout, stderr masked); `on_line` gets each stdout line as it comes."""
        try:
            proc = subprocess.Popen(
                self.argv(args),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.environ(),
                text=True,
                errors="replace",
            )
        except OSError as e:
            raise Stop(f"restic cannot be started ({e.strerror}): is it installed?", "no-restic") from None
        err = []
        reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
        reader.start()
        out = []
        for line in proc.stdout:
            out.append(line)
            if on_line is not None:
                on_line(line)
        rc = proc.wait()
        reader.join()
        return rc, "".join(out), self.c.mask("".join(err))

    def check(self, args, what, on_line=None, ok=(0,)):
        rc, out, err = self.run(args, on_line)
        if rc not in ok:
            raise Stop(f"{what} failed (restic exit {rc}): {self.explain(err)}", "restic")
        return out

    def explain(self, err):
        """restic's words of a failure and, for an sftp target, ssh's own: restic may say only that the server
        closed the connection when ssh refused the target's host key (its words race restic's exit)."""
        text = err.strip()[-1500:]
        command = self.c.settings.get("sftp_command")
        if command and "host key" not in text.lower():
            try:
                proc = subprocess.run(
                    shlex.split(command), stdin=subprocess.DEVNULL, capture_output=True, timeout=30, env=self.environ()
                )
                said = proc.stderr.decode("utf-8", "replace").strip()
                if proc.returncode != 0 and said:
                    text += f"; ssh to the target says: {said[-500:]}"
            except (OSError, subprocess.TimeoutExpired):
                pass
        return self.c.mask(text)

    def json(self, args, what):
        out = self.check([*args, "--json"], what)
        try:
            return json.loads(out)
        except ValueError:
            raise Stop(f"{what}: restic's answer is not JSON: {self.c.mask(out)[:300]}", "restic") from None

    def snapshots(self, host):
        args = ["snapshots"] + (["--host", host] if host else [])
        snaps = self.json(args, "listing the snapshots") or []
        return sorted(snaps, key=lambda s: s.get("time", ""))


def pick_snapshot(snaps, wanted, host):
    if not snaps:
        raise refused(f"the repository holds no backup of {host}", "no-snapshot")
    if wanted in (None, "", "latest"):
        return snaps[-1]
    found = [s for s in snaps if s["id"].startswith(wanted)]
    if len(found) != 1:
        say = "no snapshot" if not found else "more than one snapshot"
        raise refused(f"{say} of {host} has an id starting with {wanted!r}: see `miab-remote backups`", "no-snapshot")
    return found[0]


def restic_status(phase):
    def on_line(line):
        try:
            msg = json.loads(line)
        except ValueError:
            return
        if isinstance(msg, dict) and msg.get("message_type") == "status":
            pct = msg.get("percent_done")
            OUT.progress(
                phase,
                round(pct * 100, 1) if isinstance(pct, (int, float)) else None,
                msg.get("files_done", msg.get("total_files")),
                msg.get("bytes_done", msg.get("total_bytes")),
            )

    return on_line


# ---------------------------------------------------------------------------------------------- init
def cmd_init(req):
    config = Config()
    restic = Restic(config)
    rc, _, err = restic.run(["cat", "config"])
    if rc == 0:
        return {"initialised": False, "note": "the repository exists already: it is used as it is"}
    if rc != 10 and "Is there a repository at the following location?" not in err:
        raise Stop(f"the repository cannot be read (restic exit {rc}): {err.strip()[-1500:]}", "restic")
    restic.check(["init"], "initialising the repository")
    return {"initialised": True}


# ---------------------------------------------------------------------------------------------- run
def tree_id(state):
    path = os.path.join(state, "backup", "tree-id")
    try:
        with open(path, encoding="ascii") as f:
            value = f.read().strip()
        if re.fullmatch(r"[0-9a-f]{32}", value):
            return value
    except FileNotFoundError:
        pass
    value = secrets.token_hex(16)
    write_file(path, value + "\n", 0o644)
    return value


def write_owners(state):
    owners = {
        "users": {str(k): v for k, v in sorted(id_names(PASSWD).items())},
        "groups": {str(k): v for k, v in sorted(id_names(GROUP).items())},
    }
    write_json(os.path.join(state, "backup", "owners.json"), owners, 0o644)


def sqlite_files(state):
    """The sqlite databases in the state tree (outside STATE/backup; maildir message folders skipped)."""
    found = []
    mailboxes = os.path.join(state, "mail", "mailboxes")
    for root, dirs, files in os.walk(state):
        if root == state:
            dirs[:] = [d for d in dirs if d != "backup"]
        if root.startswith(mailboxes + os.sep) and os.path.basename(root) in ("cur", "new", "tmp"):
            dirs[:] = []
            continue
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            try:
                with open(path, "rb") as f:
                    head = f.read(16)
            except OSError:
                continue
            if head == SQLITE_MAGIC:
                found.append(path)
    return found


def copy_databases(state, databases):
    """A consistent copy of each database (sqlite3's online backup) in STATE/backup/sqlite/<relative path>,
    with the live file's mode and owner; copies of databases that are gone are removed."""
    base = os.path.join(state, "backup", "sqlite")
    os.makedirs(base, mode=0o700, exist_ok=True)
    wanted = set()
    for src in databases:
        rel = os.path.relpath(src, state)
        dest = os.path.join(base, rel)
        wanted.add(dest)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = os.path.join(base, ".copy.new")
        if os.path.exists(tmp):
            os.unlink(tmp)
        run_tool([SQLITE3, "-readonly", src, ".backup " + tmp], f"copying the sqlite database {src}")
        st = os.stat(src)
        os.chmod(tmp, st.st_mode & 0o7777)
        chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, dest)
    for root, _, files in os.walk(base):
        for name in files:
            path = os.path.join(root, name)
            if path not in wanted:
                os.unlink(path)


def exclude_patterns(state, databases):
    s = glob_escape(state)
    patterns = [f"{s}/mail/mailboxes/*/*/tmp", f"{s}/mail/mailboxes/*/*/.*/tmp", f"{s}/backup/tmp"]
    for db in databases:
        patterns += [glob_escape(db + side) for side in ("", *SQLITE_SIDE)]
    return patterns


def write_status(attempt, success=None):
    status = read_json(STATUS, {}) or {}
    status["last_attempt"] = attempt
    if success is not None:
        status["last_success"] = success
    status.setdefault("last_success", None)
    write_json(STATUS, status, 0o644)


def cmd_run(req):
    lock = take_lock("a backup is running already")
    started = time.monotonic()
    config = Config()
    try:
        result = backup(config, started)
    except Stop as e:
        write_status({"time": now_iso(), "ok": False, "error": config.mask(str(e)), "snapshot": None})
        raise
    finally:
        os.close(lock)
    return result


def backup(config, started):
    state, host = config.state, config.host
    if not os.path.isdir(state):
        raise Stop(f"the state tree {state} does not exist: nothing to back up", "no-state")
    restic = Restic(config)
    OUT.progress("preparing")
    os.makedirs(os.path.join(state, "backup"), mode=0o700, exist_ok=True)
    tid = tree_id(state)
    write_owners(state)
    OUT.progress("databases")
    databases = sqlite_files(state)
    copy_databases(state, databases)
    # The guard reads the repository's snapshots once per tree and repository: once this tree has backed up
    # there, a box with another tree (a new box of the name, not restored yet) still has no mark of its own.
    mark = os.path.join(VAR, "backup", "guarded-" + hashlib.sha256(
        (config.repository + "\0" + tid).encode()).hexdigest()[:16])  # fmt: skip
    OUT.progress("checking")
    snaps = [] if os.path.exists(mark) else restic.snapshots(host)
    if snaps and not any(f"tree-{tid}" in (s.get("tags") or []) for s in snaps):
        raise refused(
            f"the repository holds backups of {host} made by another box (a move?): restore them with "
            f"`miab-remote restore {host}` first; nothing was backed up",
            "other-box",
        )
    notes = []
    fd, exclude = tempfile.mkstemp(prefix="miab-backup-exclude-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(exclude_patterns(state, databases)) + "\n")
        OUT.progress("backing-up", 0.0)
        args = [
            "backup",
            state,
            "--host",
            host,
            "--tag",
            "miab-remote",
            "--tag",
            f"tree-{tid}",
            "--json",
            "--exclude-file",
            exclude,
        ]
        rc, out, err = restic.run(args, restic_status("backing-up"))
    finally:
        os.unlink(exclude)
    summary = next((m for m in map(_json_or_none, out.splitlines()) if m and m.get("message_type") == "summary"), None)
    if rc not in (0, 3) or summary is None:
        raise Stop(f"restic backup failed (exit {rc}): {restic.explain(err)}", "restic")
    if rc == 3:
        notes.append(
            "some files changed or vanished while they were read (mail moving between folders): "
            "the next backup has them; " + err.strip()[-400:]
        )
    short = summary["snapshot_id"]  # restic 0.14 gives the short id only
    write_file(mark, short + "\n", 0o644)
    forgot, kept = False, []
    if not config.settings.get("append_only"):
        keep = [f"--keep-{k}={int(v)}" for k, v in sorted(config.keep.items()) if int(v) > 0]
        if keep:
            OUT.progress("forgetting")
            rc, out, err = restic.run(["forget", "--host", host, *keep, "--prune", "--json"])
            if rc == 0:
                forgot = True
                kept = _kept_snapshots(out)
            else:
                notes.append(f"forgetting old snapshots failed (restic exit {rc}): {err.strip()[-800:]}")
    # The new snapshot's whole id and parent: from forget's list of what it kept, else asked for (one more
    # opening of the repository, which costs its key derivation).
    snap = next((k for k in kept if short in (k.get("short_id"), k.get("id"))), None)
    if snap is None:
        snap = next(iter(restic.json(["snapshots", short], "reading the new snapshot")), None) or {}
    snapshot = snap.get("id", short)
    seconds = round(time.monotonic() - started, 1)
    stats = {
        "files": summary.get("total_files_processed"),
        "bytes": summary.get("total_bytes_processed"),
        "added": summary.get("data_added"),
        "seconds": seconds,
    }
    history = read_json(HISTORY, {}) or {}
    history[snapshot] = stats
    write_json(HISTORY, history, 0o644)
    when = now_iso()
    write_status(
        {"time": when, "ok": True, "error": None, "snapshot": snapshot, "notes": notes},
        dict(stats, time=when, snapshot=snapshot),
    )
    return dict(stats, snapshot=snapshot, parent=snap.get("parent"), forgot=forgot, notes=notes)


def _kept_snapshots(out):
    """The snapshots `restic forget --json` kept (its first JSON line; prune's words may follow it)."""
    for line in out.splitlines():
        groups = _json_or_none(line)
        if isinstance(groups, list):
            return [k for g in groups if isinstance(g, dict) for k in (g.get("keep") or []) if isinstance(k, dict)]
    return []


def _json_or_none(line):
    try:
        return json.loads(line)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------- list, status
def cmd_list(req):
    config = Config()
    restic = Restic(config)
    host = req.get("host") or config.host
    history = read_json(HISTORY, {}) or {}
    sizes = read_json(SIZES, {}) or {}
    listed = []
    for s in restic.snapshots(host):
        summary = s.get("summary") or {}
        if "total_files_processed" in summary:
            files, size = summary.get("total_files_processed"), summary.get("total_bytes_processed")
        elif s["id"] in history:
            files, size = history[s["id"]].get("files"), history[s["id"]].get("bytes")
        else:
            if s["id"] not in sizes:
                stats = restic.json(["stats", "--mode", "restore-size", s["id"]], "measuring a snapshot")
                sizes[s["id"]] = {"files": stats.get("total_file_count"), "bytes": stats.get("total_size")}
                write_json(SIZES, sizes, 0o644)
            files, size = sizes[s["id"]]["files"], sizes[s["id"]]["bytes"]
        listed.append(
            {
                "id": s["id"],
                "short_id": s.get("short_id", s["id"][:8]),
                "time": s.get("time"),
                "hostname": s.get("hostname"),
                "tags": s.get("tags") or [],
                "files": files,
                "bytes": size,
            }
        )
    return {"snapshots": listed}


def cmd_status(req):
    status = read_json(STATUS, None)
    return status if status is not None else {"last_attempt": None, "last_success": None}


# ---------------------------------------------------------------------------------------------- restore
def holds_mail(state):
    """The first message file found in any maildir of the state tree, or None."""
    for root, dirs, files in os.walk(os.path.join(state, "mail", "mailboxes")):
        if os.path.basename(root) in ("cur", "new"):
            dirs[:] = []
            if files:
                return os.path.join(root, sorted(files)[0])
    return None


def maildirs(tree):
    for root, dirs, _ in os.walk(os.path.join(tree, "mail", "mailboxes")):
        if "cur" in dirs and "new" in dirs:
            yield root
        dirs[:] = [d for d in dirs if d not in ("cur", "new", "tmp")]


def fix_tree(tree, notes):
    """A restored tree made this box's: sqlite copies to their live paths, owners by name (restic restores
    numbers, and a new box's system users may have others), the maildir tmp/ folders that were not backed
    up. Returns the number of files."""
    copies = os.path.join(tree, "backup", "sqlite")
    for root, _, files in os.walk(copies):
        for name in files:
            src = os.path.join(root, name)
            dest = os.path.join(tree, os.path.relpath(src, copies))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(src, dest)
    owners = read_json(os.path.join(tree, "backup", "owners.json"))
    if owners is None:
        notes.append("the backup holds no owners list: owners were left as restored (by number)")
    else:
        umap = _by_name(owners.get("users", {}), PASSWD)
        gmap = _by_name(owners.get("groups", {}), GROUP)
    missing = set()
    count = 0
    for root, dirs, files in os.walk(tree):
        for name in [None, *files, *[d for d in dirs if os.path.islink(os.path.join(root, d))]]:
            path = root if name is None else os.path.join(root, name)
            if name is not None and os.path.isfile(path) and not os.path.islink(path):
                count += 1
            if owners is None:
                continue
            st = os.lstat(path)
            uid, gid = _mapped(umap, st.st_uid, "user", missing), _mapped(gmap, st.st_gid, "group", missing)
            if (uid, gid) != (st.st_uid, st.st_gid):
                chown(path, uid, gid)
    for kind, what in sorted(missing):
        notes.append(f"the {kind} {what} of the old box does not exist here: its files belong to root now")
    for maildir in maildirs(tree):
        tmp = os.path.join(maildir, "tmp")
        if not os.path.isdir(tmp):
            os.mkdir(tmp, 0o700)
            st = os.lstat(maildir)
            chown(tmp, st.st_uid, st.st_gid)
    return count


def _by_name(old, path):
    """old number -> this box's number of the same name, or (0, name) when this box has no such name."""
    here = {}
    for number, name in sorted(id_names(path).items()):
        here.setdefault(name, number)
    return {int(number): here.get(name, (0, name)) for number, name in old.items()}


def _mapped(table, number, kind, missing):
    got = table.get(number)
    if got is None:
        missing.add((kind, f"number {number}"))
        return 0
    if isinstance(got, tuple):
        missing.add((kind, got[1]))
        return 0
    return got


def exchange(a, b):
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE): every reader sees the old tree or the new."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    args = (
        ctypes.c_int(at_fdcwd),
        os.fsencode(a),
        ctypes.c_int(at_fdcwd),
        os.fsencode(b),
        ctypes.c_uint(rename_exchange),
    )
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        rc = fn(*args)
    else:
        nr = {"x86_64": 316, "aarch64": 276, "armv7l": 382, "i686": 353, "ppc64le": 357, "s390x": 347}.get(
            platform.machine()
        )
        if nr is None:
            raise Stop(
                f"this C library has no renameat2 and the system call's number on {platform.machine()} is unknown: "
                f"the restored tree could not be swapped in; it is at {a}",
                "no-exchange",
            )
        rc = libc.syscall(ctypes.c_long(nr), *args)
    if rc != 0:
        e = ctypes.get_errno()
        raise Stop(
            f"the atomic exchange of {a} and {b} was refused ({errno.errorcode.get(e, e)}: {os.strerror(e)}; "
            f"renameat2 RENAME_EXCHANGE needs Linux 3.15+ and both on one filesystem that supports it): "
            f"nothing was swapped, the restored tree is at {a}",
            "no-exchange",
        )


NFT_CLOSE = f"""table inet {NFT_TABLE}
delete table inet {NFT_TABLE}
table inet {NFT_TABLE} {{
	chain input {{
		type filter hook input priority -10; policy accept;
		tcp dport 25 reject with tcp reset
	}}
}}
"""


def close_port():
    run_tool([NFT, "-f", "-"], "closing port 25 (nft)", stdin=NFT_CLOSE)


def open_port():
    try:
        proc = subprocess.run([NFT, "list", "table", "inet", NFT_TABLE], capture_output=True, text=True)
    except OSError as e:
        raise Stop(f"opening port 25: {NFT}: {e.strerror}", "tool") from None
    if proc.returncode == 0:
        run_tool([NFT, "delete", "table", "inet", NFT_TABLE], "opening port 25 (nft)")
        return True
    return False


def phase_done(phase):
    if phase == KILL_AFTER:
        os.kill(os.getpid(), signal.SIGKILL)


def credentials_config(creds, settings):
    """--from: another repository's credentials in a private folder under /run (removed by the caller)."""
    folder = tempfile.mkdtemp(prefix="miab-restore-", dir=RUN)
    os.chmod(folder, 0o700)
    for name, key in (("repository", "repository"), ("password", "password"), ("env", "env"), ("ca.pem", "ca")):
        value = creds.get(key)
        if value:
            write_file(os.path.join(folder, name), value if value.endswith("\n") else value + "\n", 0o600)
    settings = dict(settings, sftp_command=creds.get("sftp_command"))
    return folder, Config(folder, settings)


def cmd_restore(req):
    lock = take_lock("a backup or restore is running already", RESTORE_LOCK_WAIT)
    own = Config()
    folder = None
    try:
        config = own
        if req.get("credentials"):
            folder, config = credentials_config(req["credentials"], own.settings)
        return restore(req, own, config)
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
        os.close(lock)


def restore(req, own, config):
    state = own.state
    journal = read_json(JOURNAL)
    notes = []
    if journal is not None and journal.get("phase") == "swapped":
        result = dict(journal.get("result") or {})
        result["notes"] = [*result.get("notes", []), f"the restore of snapshot {journal['snapshot']} was done already"]
        return result
    if journal is not None:
        notes.append(f"finishing the interrupted restore of snapshot {journal['snapshot']}")
        host, wanted = journal["host"], journal["snapshot"]
    else:
        host, wanted = req.get("host") or own.host, req.get("snapshot") or "latest"
        mail = holds_mail(state) if os.path.isdir(state) else None
        if mail is not None and not req.get("force"):
            raise refused(
                f"{state} holds mail already ({mail}): a restore would set it aside; nothing was changed "
                "(--force restores anyway, keeping the present tree beside it)",
                "holds-mail",
            )
    new = state + ".restore-new"
    if journal is not None and journal.get("phase") == "swapping" and _swapped(state, journal):
        return _after_swap(state, new, journal, notes)
    restic = Restic(config)
    snap = pick_snapshot(restic.snapshots(host), wanted, host)
    journal = {
        "snapshot": snap["id"],
        "host": host,
        "phase": "closing",
        "started": now_iso() + "-" + secrets.token_hex(4),
        "before": None,
        "time": snap.get("time"),
        "path": (snap.get("paths") or [state])[0],
    }
    _journal(journal, "closing")
    close_port()
    phase_done("closing")
    units = list(dict.fromkeys([*req.get("services", []), TIMER]))
    # The services begin to stop now, while restic restores (stopping them takes seconds); the swap below
    # waits until they have.
    systemctl("stop", "--no-block", "--", *units)
    _journal(journal, "restoring")
    if os.path.lexists(new):
        shutil.rmtree(new)
    os.makedirs(new, mode=0o700)
    restic.check(["restore", snap["id"], "--target", new, "--json"], "restoring", restic_status("restoring"))
    phase_done("restoring")
    _journal(journal, "fixing")
    tree = new + journal["path"]
    if not os.path.isdir(tree):
        raise Stop(f"snapshot {snap['id']} holds no {journal['path']}: nothing was swapped", "bad-snapshot")
    journal["files"] = fix_tree(tree, notes)
    journal["notes"] = notes
    write_file(os.path.join(tree, "backup", "restore-marker"), journal["started"] + "\n", 0o600)
    phase_done("fixing")
    # Stopped before the swap: one call, which waits for the stops begun above (or makes them, on a run
    # that finishes an interrupted one).
    _journal(journal, "stopping")
    systemctl("stop", "--", *units)
    phase_done("stopping")
    journal["before"] = (
        state + ".before-restore-" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    )
    _journal(journal, "swapping")
    if not os.path.isdir(state):
        os.makedirs(state, mode=0o755)
    exchange(tree, state)
    phase_done("swapping")
    return _after_swap(state, new, journal, notes)


def _swapped(state, journal):
    try:
        with open(os.path.join(state, "backup", "restore-marker"), encoding="utf-8") as f:
            return f.read().strip() == journal["started"]
    except OSError:
        return False


def _after_swap(state, new, journal, notes):
    """The old tree (where the restored one was) set aside as STATE.before-restore-<stamp>, the journal done."""
    old = new + journal["path"]
    if os.path.lexists(old) and not os.path.lexists(journal["before"]):
        os.rename(old, journal["before"])
    shutil.rmtree(new, ignore_errors=True)
    result = {
        "snapshot": journal["snapshot"],
        "time": journal.get("time"),
        "files": journal.get("files"),
        "before": journal["before"],
        "notes": [*journal.get("notes", []), *[n for n in notes if n not in journal.get("notes", [])]],
    }
    journal["result"] = result
    _journal(journal, "swapped")
    marker = os.path.join(state, "backup", "restore-marker")
    if os.path.exists(marker):
        os.unlink(marker)
    return result


def _journal(journal, phase):
    journal["phase"] = phase
    write_json(JOURNAL, journal, 0o600)
    OUT.progress(phase)


def cmd_restore_finish(req):
    journal = read_json(JOURNAL)
    if journal is not None and journal.get("phase") != "swapped":
        raise refused(
            f"the restore of snapshot {journal.get('snapshot')} stopped at its phase {journal.get('phase')}: "
            "run the restore again to finish it; port 25 stays closed",
            "unfinished",
        )
    opened = open_port()
    systemctl("start", TIMER)
    if journal is not None:
        os.unlink(JOURNAL)
    return {"finished": journal is not None, "snapshot": (journal or {}).get("snapshot"), "port_opened": opened}


# ---------------------------------------------------------------------------------------------- restore-user
def cmd_restore_user(req):
    lock = take_lock("a backup or restore is running already")
    try:
        return restore_user(req, Config())
    finally:
        os.close(lock)


def restore_user(req, config):
    state = config.state
    email = str(req.get("email") or "")
    local, _, domain = email.lower().rpartition("@")
    if not local or not domain or any(c in email for c in "/\0") or local.startswith(".") or domain.startswith("."):
        raise refused(f"{email!r} is not a mailbox address", "bad-input")
    rel = os.path.join("mail", "mailboxes", domain, local)
    live = os.path.join(state, rel)
    if not os.path.isdir(live):
        raise refused(f"{email} has no mailbox on this box ({live})", "no-mailbox")
    base = str(req.get("folder") or "Restored-" + datetime.date.today().isoformat())
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _-]{0,63}", base):
        raise refused(f"{base!r} is not a folder name: letters, digits, ' ', '_' and '-'", "bad-input")
    host = req.get("host") or config.host
    restic = Restic(config)
    snap = pick_snapshot(restic.snapshots(host), req.get("snapshot"), host)
    path = (snap.get("paths") or [state])[0]
    work = os.path.join(state, "backup", "tmp")
    os.makedirs(work, mode=0o700, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="restore-user-", dir=work)
    try:
        OUT.progress("restoring")
        include = glob_escape(os.path.join(path, rel))
        restic.check(
            ["restore", snap["id"], "--include", include, "--target", tmp, "--json"],
            "restoring the mailbox",
            restic_status("restoring"),
        )
        src = tmp + os.path.join(path, rel)
        if not os.path.isdir(src):
            raise refused(f"snapshot {snap['short_id']} holds no mailbox of {email}", "no-mailbox")
        OUT.progress("copying")
        i, n = 1, base
        while os.path.lexists(os.path.join(live, "." + n)) or any(
            d.startswith("." + n + ".") for d in os.listdir(live)
        ):
            i += 1
            n = f"{base}-{i}"
        st = os.lstat(live)
        folders = [("", src)] + [
            (d[1:], os.path.join(src, d))
            for d in sorted(os.listdir(src))
            if d.startswith(".") and os.path.isdir(os.path.join(src, d, "cur"))
        ]
        messages = 0
        made = []
        for sub, folder in folders:
            box = "." + n + ("." + sub if sub else "")
            dest = os.path.join(live, box)
            for d in ("", "cur", "new", "tmp"):
                os.makedirs(os.path.join(dest, d), mode=0o700, exist_ok=True)
                chown(os.path.join(dest, d), st.st_uid, st.st_gid)
            mark = os.path.join(dest, "maildirfolder")
            open(mark, "a").close()
            chown(mark, st.st_uid, st.st_gid)
            for d in ("cur", "new"):
                here = os.path.join(folder, d)
                for f in sorted(os.listdir(here)) if os.path.isdir(here) else []:
                    if DOVECOT_FILES.match(f) or not os.path.isfile(os.path.join(here, f)):
                        continue
                    os.replace(os.path.join(here, f), os.path.join(dest, d, f))
                    chown(os.path.join(dest, d, f), st.st_uid, st.st_gid)
                    messages += 1
            made.append(box[1:])
        subscribe(live, made, st)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"folder": n, "messages": messages, "snapshot": snap["id"]}


def subscribe(maildir, names, st):
    """Add folders to dovecot's subscriptions file, in the format it has (version 2: hierarchy levels
    separated by tabs; else the Maildir++ separator '.'), replaced atomically."""
    path = os.path.join(maildir, "subscriptions")
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    v2 = text.startswith("V\t2\n\n")
    lines = text.splitlines()
    for name in names:
        line = name.replace(".", "\t") if v2 else name
        if line not in lines:
            lines.append(line)
    body = "\n".join(lines) + "\n"
    if v2 and not body.startswith("V\t2\n\n"):
        body = "V\t2\n\n" + body.lstrip("\n")
    write_file(path, body.encode("utf-8", "surrogateescape"), 0o600)
    chown(path, st.st_uid, st.st_gid)


# ---------------------------------------------------------------------------------------------- main
COMMANDS = {
    "init": cmd_init,
    "run": cmd_run,
    "list": cmd_list,
    "status": cmd_status,
    "restore": cmd_restore,
    "restore-finish": cmd_restore_finish,
    "restore-user": cmd_restore_user,
}
ARGV_COMMANDS = ("init", "run", "list", "status", "restore-finish")  # those that need no input


def main(argv):
    global OUT
    if len(argv) > 1:
        if len(argv) != 2 or argv[1] not in ARGV_COMMANDS:
            sys.stderr.write(f"usage: miab-backup {'|'.join(ARGV_COMMANDS)} (the others take JSON on stdin)\n")
            return 2
        req = {"command": argv[1]}
        OUT = Out(30.0, False)
    else:
        try:
            req = json.loads(sys.stdin.read() or "{}")
        except ValueError as e:
            OUT.final({"error": f"the input is not JSON: {e}", "code": "bad-input"})
            return 2
        OUT = Out(1.0, True)
    command = COMMANDS.get(req.get("command")) if isinstance(req, dict) else None
    if command is None:
        OUT.final(
            {"error": f"unknown command {req.get('command')!r}; accepted: {', '.join(COMMANDS)}", "code": "bad-input"}
        )
        return 2
    OUT.quietly(req["command"])  # the heartbeat's phase until the command names one
    try:
        result = command(req)
    except Stop as e:
        OUT.final({"error": str(e), "code": e.code})
        return 2 if e.refused else 1
    except Exception as e:
        masked = str(e)
        try:
            masked = Config().mask(masked)
        except Exception:
            masked = "(not shown: the settings could not be read to mask secrets)"
        OUT.final({"error": f"{type(e).__name__}: {masked}", "code": "internal"})
        return 1
    OUT.final({"result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
