# Installed on the box by the nsd recipe. Builds a zone file from the body the laptop rendered: fills in
# the DKIM key (made on the box) and a serial that changes only when the body or the key changed.
# Usage: zone-build [--check] ZONE BODY FINAL DKIM_TXT
#   --check exits 0 when FINAL is up to date with BODY and the key (the deploy's guard), 1 otherwise.
# stdlib only, Python >= 3.8.
import hashlib
import os
import re
import subprocess
import sys
import time

STATE = re.compile(r"^; miab-remote serial (\d+) source (\w+)$", re.M)


def dkim_rdata(path):
    """The TXT rdata of opendkim-genkey's mail.txt, as quoted strings of at most 255 bytes."""
    try:
        with open(path, encoding="ascii") as f:
            text = "".join(re.findall(r'"([^"]*)"', f.read()))
    except FileNotFoundError:
        return None
    data = text.encode()
    return " ".join(f'"{data[i : i + 255].decode()}"' for i in range(0, len(data), 255))


def state_of(final):
    try:
        with open(final, encoding="utf-8") as f:
            m = STATE.search(f.read())
    except FileNotFoundError:
        return 0, None
    return (int(m.group(1)), m.group(2)) if m else (0, None)


def main(argv):
    check = argv[:1] == ["--check"]
    zone, body_path, final, dkim_path = argv[1:] if check else argv
    with open(body_path, encoding="utf-8") as f:
        body = f.read()
    dkim = dkim_rdata(dkim_path)
    source = hashlib.sha256((body + "\0" + (dkim or "")).encode()).hexdigest()
    old_serial, old_source = state_of(final)
    if old_source == source:
        return 0
    if check:
        return 1
    serial = max(old_serial + 1, int(time.strftime("%Y%m%d00", time.gmtime())))
    if dkim is None:  # no key yet: leave the record out rather than publish a broken one
        body = "\n".join(line for line in body.split("\n") if "@DKIM@" not in line)
    text = f"; miab-remote serial {serial} source {source}\n"
    text += body.replace("@SERIAL@", str(serial)).replace("@DKIM@", dkim or "")
    tmp = final + ".new"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    proc = subprocess.run(["nsd-checkzone", zone, tmp], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        os.unlink(tmp)
        sys.stderr.write("zone {} rejected by nsd-checkzone:\n{}".format(zone, proc.stdout.decode(errors="replace")))
        return 1
    os.replace(tmp, final)
    print(f"zone {zone}: serial {serial}")
    return 0


sys.exit(main(sys.argv[1:]))
