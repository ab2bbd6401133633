# Runs on the box as root for `miab-remote check`: reads the box's health in one round trip, changes nothing.
# Input: one JSON object on stdin (after this script): {"services": [unit, ...], "disk": [path, ...],
# "dkim": path, "chains": {"v4": chain, "v6": chain}, "backup": the backup program's status file,
# "restore": the restore journal, "acme": {"status": the ACME script's status file, "certificate": the
# certificate in use, "unit": certbot's renewal unit}}.
# Output: one JSON object on stdout; each part that cannot be read says why ("error") instead of failing
# the whole script.
# stdlib only, Python >= 3.8.
import json
import os
import re
import socket
import subprocess
import sys


def run(argv, timeout=60):
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    if proc.returncode != 0:
        return None, (proc.stderr or proc.stdout).strip()[-500:] or f"exit {proc.returncode}"
    return proc.stdout, None


def services(units):
    if not units:
        return {}
    names = [u if "." in u else u + ".service" for u in units]
    out, err = run(["systemctl", "show", "--property=LoadState,ActiveState,SubState", "--", *names])
    blocks = (out or "").split("\n\n")
    facts = {}
    for unit, block in zip(units, blocks + [""] * len(units)):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        facts[unit] = {
            "load": props.get("LoadState", "unknown"),
            "active": props.get("ActiveState", "unknown"),
            "sub": props.get("SubState", ""),
        }
        if err:
            facts[unit]["error"] = err
    return facts


def lmtp():
    """postfix's delivery to dovecot: the LMTP address postfix's virtual_transport names, and its greeting."""
    out, err = run(["postconf", "-h", "virtual_transport", "queue_directory"])
    if err:
        return {"error": err}
    transport, queue = [*out.splitlines(), "", ""][:2]
    m = re.fullmatch(r"lmtp:(unix|inet):(.+)", transport.strip())
    if not m:
        return {"transport": transport.strip()}
    kind, where = m.groups()
    if kind == "unix":
        path = where if where.startswith("/") else os.path.join(queue.strip(), where)
        sock, target = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), path
    else:
        h, _, p = where.rpartition(":")
        h = h.strip("[]")
        sock, target = socket.socket(socket.AF_INET6 if ":" in h else socket.AF_INET), (h, int(p))
    fact = {"transport": transport.strip(), "address": str(target)}
    sock.settimeout(5)
    try:
        sock.connect(target)
        fact["greeting"] = sock.recv(512).decode(errors="replace").strip()
        sock.sendall(b"QUIT\r\n")
    except OSError as e:
        fact["error"] = str(e)
    finally:
        sock.close()
    return fact


def firewall(chains):
    """The live allow rules of ufw's user chains and the INPUT policy, per address family."""
    out = {}
    for family, tool in (("v4", "iptables"), ("v6", "ip6tables")):
        chain = chains.get(family)
        if not chain:
            continue
        policy, err = run([tool, "-w", "5", "-S", "INPUT"])
        rules, err2 = run([tool, "-w", "5", "-S", chain])
        fact = {"chain": chain}
        if err or err2:
            fact["error"] = err or err2
        fact["policy"] = next((line.split()[2] for line in (policy or "").splitlines() if line.startswith("-P ")), None)
        fact["rules"] = [line for line in (rules or "").splitlines() if line.startswith("-A ")]
        out[family] = fact
    return out


def disks(paths):
    out, seen = [], set()
    for path in paths:
        try:
            st = os.stat(path)
            vfs = os.statvfs(path)
        except OSError:
            continue
        if st.st_dev in seen:
            continue
        seen.add(st.st_dev)
        out.append({"path": path, "total": vfs.f_blocks * vfs.f_frsize, "free": vfs.f_bavail * vfs.f_frsize})
    return out


def memory():
    info = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                k, _, v = line.partition(":")
                info[k] = int(v.split()[0]) * 1024
    except (OSError, ValueError, IndexError) as e:
        return {"error": str(e)}
    return {"total": info.get("MemTotal"), "available": info.get("MemAvailable")}


def updates():
    """What `apt-get upgrade` would install (from the package lists unattended-upgrades refreshes daily)."""
    out, err = run(["apt-get", "-s", "-q", "-o", "Debug::NoLocking=true", "upgrade"], timeout=120)
    if err:
        return {"error": err}
    security, other = [], []
    for line in out.splitlines():
        m = re.match(r"Inst (\S+) (?:\[[^]]*\] )?\((.*)\)", line)
        if m:
            (security if "-security" in m.group(2) or "Debian-Security" in m.group(2) else other).append(m.group(1))
    return {"security": sorted(security), "other": sorted(other)}


def reboot():
    required = os.path.exists("/var/run/reboot-required")
    pkgs = []
    try:
        with open("/var/run/reboot-required.pkgs", encoding="utf-8") as f:
            pkgs = sorted({line.strip() for line in f if line.strip()})
    except OSError:
        pass
    return {"required": required, "packages": pkgs}


def read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def status_file(path):
    """A program's JSON status file as it is: {"missing": true} before its first run."""
    try:
        with open(path, encoding="utf-8") as f:
            return {"status": json.load(f)}
    except FileNotFoundError:
        return {"missing": True}
    except (OSError, ValueError) as e:
        return {"error": str(e)}


def renewal(unit):
    """The renewal unit's last run: its result, when it ended and, when it failed, its last lines."""
    out, err = run(["systemctl", "show", "--property=Result,ExecMainExitTimestamp,InvocationID", "--", unit])
    if err:
        return {"error": err}
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    fact = {"result": props.get("Result", ""), "finished": props.get("ExecMainExitTimestamp", "")}
    if fact["result"] not in ("", "success"):
        # That run's own output (certbot's), else the unit's latest lines.
        which = ["_SYSTEMD_INVOCATION_ID=" + props["InvocationID"]] if props.get("InvocationID") else ["-u", unit]
        lines, err = run(["journalctl", "--no-pager", "--quiet", "-o", "cat", "-n", "40", *which])
        fact["lines"] = [line.strip() for line in (lines or err or "").splitlines() if line.strip()][-8:]
    return fact


def acme(spec):
    """[acme]: the ACME script's status file, the certificate in use (PEM, judged on the laptop), renewals."""
    return {
        "status": status_file(spec["status"]),
        "certificate": read_text(spec["certificate"]),
        "lineage": read_text(spec["lineage"]) if spec.get("lineage") else None,
        "renewal": renewal(spec["unit"]),
    }


def restore_journal(path):
    """An unfinished restore's journal (what it restores, how far it came); None when no restore is under way."""
    try:
        with open(path, encoding="utf-8") as f:
            journal = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return {"error": str(e)}
    return {key: journal.get(key) for key in ("snapshot", "phase", "host")}


def main():
    spec = json.loads(sys.stdin.read() or "{}")
    facts = {
        "services": services(spec.get("services", [])),
        "lmtp": lmtp(),
        "firewall": firewall(spec.get("chains", {})),
        "disk": disks(spec.get("disk", ["/"])),
        "memory": memory(),
        "updates": updates(),
        "reboot": reboot(),
        "dkim": read_text(spec["dkim"]) if spec.get("dkim") else None,
        "backup": status_file(spec["backup"]) if spec.get("backup") else None,
        "restore": restore_journal(spec["restore"]) if spec.get("restore") else None,
        "acme": acme(spec["acme"]) if spec.get("acme") else None,
    }
    json.dump(facts, sys.stdout)


main()
