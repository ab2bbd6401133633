# Runs on the box as root: reads every fact a plan needs in one round trip, changes nothing.
# Input: a wire.ProbeSpec as JSON on stdin (after this script). Output: one JSON object of facts on stdout.
# stdlib only, Python >= 3.8 (the oldest python3 on a supported system).
import base64
import grp
import hashlib
import json
import os
import pwd
import stat
import subprocess
import sys
import time

import wire
from wire import read_journal

MAX_CONTENT = 256 * 1024
# What an interrupted apply left to do (see apply.py); the override is for the unit tests.
JOURNAL_PATH = os.environ.get("MIAB_REMOTE_JOURNAL", wire.JOURNAL_PATH)


def os_release():
    out = {}
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if "=" in line and not line.startswith("#"):
                        k, v = line.split("=", 1)
                        out[k] = v.strip().strip('"').strip("'")
            return out
        except OSError:
            continue
    return out


def name_of(getter, ident):
    try:
        return getter(ident)[0]
    except KeyError:
        return str(ident)


def file_fact(path, want):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {"exists": False}
    except OSError as e:
        return {"exists": False, "error": str(e)}
    fact = {
        "exists": True,
        "mode": stat.S_IMODE(st.st_mode),
        "owner": name_of(pwd.getpwuid, st.st_uid),
        "group": name_of(grp.getgrgid, st.st_gid),
    }
    if stat.S_ISDIR(st.st_mode):
        fact["type"] = "directory"
    elif stat.S_ISREG(st.st_mode):
        fact["type"] = "file"
        h = hashlib.sha256()
        data = b""
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                if len(data) <= MAX_CONTENT:  # kept for a diff only while small enough to show
                    data += chunk
        fact["sha256"] = h.hexdigest()
        desired = want.get(path)
        if desired is not None and desired != fact["sha256"] and len(data) <= MAX_CONTENT:
            fact["content"] = base64.b64encode(data).decode()
    elif stat.S_ISLNK(st.st_mode):
        fact["type"] = "symlink"
        fact["target"] = os.readlink(path)
    else:
        fact["type"] = "other"
    return fact


def packages(names):
    out = {n: "absent" for n in names}
    if not names:
        return out
    env = dict(os.environ, LC_ALL="C")
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package}\t${db:Status-Abbrev}\t${Version}\n", "--", *names],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    for line in proc.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0] in out:
            out[parts[0]] = "installed" if parts[1].startswith("ii") else "absent"
    return out


def services(names):
    out = {}
    if not names:
        return out
    units = [n if "." in n else n + ".service" for n in names]
    proc = subprocess.run(
        ["systemctl", "show", "--property=Id,LoadState,ActiveState,UnitFileState", "--", *units],
        capture_output=True,
        text=True,
    )
    blocks = [b for b in proc.stdout.split("\n\n")]
    for name, block in zip(names, blocks + [""] * len(names)):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        out[name] = {
            "load": props.get("LoadState", "unknown"),
            "active": props.get("ActiveState", "unknown"),
            "enabled": props.get("UnitFileState", ""),
        }
    return out


def users(names):
    out = {}
    for n in names:
        try:
            p = pwd.getpwnam(n)
        except KeyError:
            out[n] = None
            continue
        out[n] = {
            "uid": p.pw_uid,
            "home": p.pw_dir,
            "shell": p.pw_shell,
            "group": name_of(grp.getgrgid, p.pw_gid),
            "groups": sorted(g.gr_name for g in grp.getgrall() if n in g.gr_mem),
        }
    return out


def groups(names):
    out = {}
    for n in names:
        try:
            out[n] = {"gid": grp.getgrnam(n).gr_gid}
        except KeyError:
            out[n] = None
    return out


def guards(spec):
    out = {}
    for ident, guard in spec.items():
        if guard.get("creates"):
            out[ident] = os.path.lexists(guard["creates"])
        elif guard.get("unless"):
            rc = subprocess.run(
                ["/bin/sh", "-c", guard["unless"]],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ).returncode
            out[ident] = rc == 0
    return out


def apt_lists_age():
    newest = None
    try:
        for entry in os.scandir("/var/lib/apt/lists"):
            if entry.name.endswith("_Packages") or entry.name.endswith("_Packages.lz4"):
                m = entry.stat().st_mtime
                newest = m if newest is None or m > newest else newest
    except OSError:
        return None
    return None if newest is None else max(0.0, time.time() - newest)


def main():
    spec = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    want = spec.get("want_content", {})
    facts = {
        "os_release": os_release(),
        "container": os.path.exists("/run/systemd/container"),
        "files": {p: file_fact(p, want) for p in spec.get("files", [])},
        "packages": packages(spec.get("packages", [])),
        "services": services(spec.get("services", [])),
        "users": users(spec.get("users", [])),
        "groups": groups(spec.get("groups", [])),
        "guards": guards(spec.get("guards", {})),
        "apt_lists_age": apt_lists_age(),
        "pending": read_journal(JOURNAL_PATH),
    }
    sys.stdout.write(json.dumps(facts))


main()
