# Installed on the box by the nsd recipe. Builds a zone file from the body the laptop rendered: fills in
# the DKIM key and the TLSA data of the TLS key (both made on the box) and a serial that changes only when
# the body or a key changed.
# A body line that starts `;@IF-CERT-COVERS NAME@ ` (the _mta-sts record, mail/dnszones.py) is published
# only while the certificate CERT covers NAME (its subjectAltName, read with openssl); what it covers is
# part of the zone's source, so the guard fails, and the zone is built again, when that changes.
# With `--sign ALG KEYDIR` the zone is then signed (DNSSEC) with ldns-signzone: the zone's key for ALG in
# KEYDIR (made once with ldns-keygen), NSEC3; the key is part of the source, and the guard also fails when
# the signatures expire within RESIGN_BEFORE (the daily re-signing timer runs zones-rebuild for that).
# Usage: zone-build [--check] [--sign ALG KEYDIR] ZONE BODY FINAL DKIM_TXT TLS_KEY [CERT]
#   --check exits 0 when FINAL is up to date with BODY, the keys and CERT (the deploy's guard), 1 otherwise.
#        zone-build --keys ALG KEYDIR ZONE...
#   prints the public key file (.key) of the key each ZONE is signed with for ALG (none: not made yet), so the
#   laptop's DS comes from the key the builder picks (key_base), decided here only.
# stdlib only, Python >= 3.8.
import calendar
import contextlib
import fcntl
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

STATE = re.compile(r"^; miab-remote serial (\d+) source (\w+)$", re.M)
CONDITION = re.compile(r"^;@IF-CERT-COVERS (\S+)@ (.*)$")


def dkim_rdata(path):
    """The TXT rdata of opendkim-genkey's mail.txt, as quoted strings of at most 255 bytes."""
    try:
        with open(path, encoding="ascii") as f:
            text = "".join(re.findall(r'"([^"]*)"', f.read()))
    except FileNotFoundError:
        return None
    data = text.encode()
    return " ".join(f'"{data[i : i + 255].decode()}"' for i in range(0, len(data), 255))


def openssl(*args):
    """What `openssl ARGS` prints, None when it fails (no such file, not a key or certificate)."""
    try:
        proc = subprocess.run(["openssl", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except OSError:
        return None
    return proc.stdout if proc.returncode == 0 else None


def tlsa_rdata(key_path):
    """TLSA "3 1 1" data for the private key at `key_path`: DANE-EE, the SHA-256 of its public key (the
    certificate's SubjectPublicKeyInfo), which stays the same across renewals with the same key."""
    der = openssl("pkey", "-in", key_path, "-pubout", "-outform", "DER")
    return "3 1 1 " + hashlib.sha256(der).hexdigest() if der else None


def state_of(final):
    try:
        with open(final, encoding="utf-8") as f:
            m = STATE.search(f.read())
    except FileNotFoundError:
        return 0, None
    return (int(m.group(1)), m.group(2)) if m else (0, None)


def certificate_names(path):
    """The DNS names the certificate at `path` is for (lower case); none when there is no readable one."""
    out = openssl("x509", "-in", path, "-noout", "-ext", "subjectAltName") if path else None
    if out is None:
        return set()
    entries = out.decode(errors="replace").replace("\n", ",").split(",")
    return {e.strip()[4:].lower() for e in entries if e.strip().startswith("DNS:")}


def resolve_conditions(body, cert):
    """The body with each conditional line included or dropped, and the covered names that decided them
    (None when the body has no conditional line: its source is then what it was before conditions)."""
    lines = body.split("\n")
    wanted = {m.group(1) for m in map(CONDITION.match, lines) if m}
    if not wanted:
        return body, None
    names = certificate_names(cert)
    covered = sorted(n for n in wanted if n.lower() in names)  # by name: the box's CAA allows no wildcards
    out = []
    for line in lines:
        m = CONDITION.match(line)
        if m is None:
            out.append(line)
        elif m.group(1) in covered:
            out.append(m.group(2))
    return "\n".join(out), covered


def zone_text(body, dkim, cert, old_serial, tlsa=None):
    """(the zone's source hash, its serial (after old_serial), the zone file text with that serial)."""
    resolved, covered = resolve_conditions(body, cert)
    seed = body + "\0" + (dkim or "")
    if covered is not None:
        seed += "\0" + " ".join(covered)
    if "@TLSA@" in body:  # only the hostname's zone: the others' sources stay what they were
        seed += "\0" + (tlsa or "")
    source = hashlib.sha256(seed.encode()).hexdigest()
    serial = max(old_serial + 1, int(time.strftime("%Y%m%d00", time.gmtime())))
    # A key not made yet: leave its records out rather than publish broken ones.
    for placeholder, value in (("@DKIM@", dkim), ("@TLSA@", tlsa)):
        if value is None:
            resolved = "\n".join(line for line in resolved.split("\n") if placeholder not in line)
    text = f"; miab-remote serial {serial} source {source}\n"
    text += resolved.replace("@SERIAL@", str(serial)).replace("@DKIM@", dkim or "").replace("@TLSA@", tlsa or "")
    return source, serial, text


SIGN_VALIDITY = 30 * 86400  # how long the signatures hold
RESIGN_BEFORE = 14 * 86400  # re-signed when fewer remain: two weeks of daily timer runs to fix a failure
INCEPTION_SLACK = 3600  # valid from an hour ago, for validators whose clock is behind
RSA_BITS = 2048  # ldns-keygen's default is 1024


class SigningError(Exception):
    """ldns could not make a key or sign: the message says which tool and what it said."""


def sign_option(args):
    """((algorithm, key folder) of a leading `--sign ALG KEYDIR`, or None; the remaining arguments)."""
    if args[:1] == ["--sign"]:
        return (int(args[1]), args[2]), args[3:]
    return None, args


def key_base(keydir, zone, algorithm):
    """The zone's key for `algorithm` as ldns names it (KEYDIR/K<zone>.+<alg>+<tag>, both its .key and
    .private there), or None when it has none yet."""
    pattern = os.path.join(keydir, f"K{zone.lower()}.+{algorithm:03d}+*.private")
    bases = sorted(p[: -len(".private")] for p in glob.glob(pattern))
    bases = [b for b in bases if os.path.exists(b + ".key")]
    return bases[0] if bases else None


def run_ldns(argv, cwd=None):
    proc = subprocess.run(argv, cwd=cwd, capture_output=True)
    if proc.returncode != 0:
        said = (proc.stdout + proc.stderr).decode(errors="replace")
        raise SigningError(f"{argv[0]} failed:\n{said}")


def make_key(keydir, zone, algorithm):
    """A new key for the zone (flags 257, SEP: one key signs everything, so the registrar holds one DS),
    made in a private folder and moved in whole: the .private first, the .key that completes it last."""
    os.makedirs(keydir, mode=0o700, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".new-", dir=keydir)
    try:
        bits = ["-b", str(RSA_BITS)] if algorithm in (8, 10) else []
        argv = ["ldns-keygen", "-a", str(algorithm), "-k", "-r", "/dev/urandom", *bits, zone.lower()]
        run_ldns(argv, cwd=work)
        made = key_base(work, zone, algorithm)  # the folder is new: the one key in it is what ldns made
        if made is None:
            raise SigningError(f"ldns-keygen made no key files for {zone} in {work}")
        name = os.path.basename(made)
        for ext in (".private", ".key"):
            os.replace(os.path.join(work, name + ext), os.path.join(keydir, name + ext))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return os.path.join(keydir, name)


def keyed_source(source, key):
    """The zone's source with its key's public part (a new key makes a new signed zone)."""
    with open(key + ".key", encoding="ascii") as f:
        public = f.read()
    return hashlib.sha256((source + "\0" + public).encode()).hexdigest()


def signatures_until(final):
    """When the first signature of the zone file expires (seconds since the epoch); None: it has none."""
    until = None
    try:
        with open(final, encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 8 and fields[3] == "RRSIG":
                    t = calendar.timegm(time.strptime(fields[8], "%Y%m%d%H%M%S"))
                    until = t if until is None else min(until, t)
    except (FileNotFoundError, ValueError):
        return None
    return until


def stamp(t):
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(t))


def signed_text(zone, text, key, source, serial, now):
    """The zone text signed with `key`: NSEC3 as RFC 9276 says (no extra iterations, no salt), valid for
    SIGN_VALIDITY; the first line records the serial and the (keyed) source, as for an unsigned zone."""
    with tempfile.TemporaryDirectory() as work:
        unsigned, signed = os.path.join(work, "unsigned"), os.path.join(work, "signed")
        with open(unsigned, "w", encoding="utf-8") as f:
            f.write(text)
        run_ldns(
            ["ldns-signzone", "-n", "-t", "0", "-o", zone, "-i", stamp(now - INCEPTION_SLACK),
             "-e", stamp(now + SIGN_VALIDITY), "-f", signed, unsigned, key]
        )  # fmt: skip
        with open(signed, encoding="utf-8") as f:
            body = f.read()
    return f"; miab-remote serial {serial} source {source}\n" + body


@contextlib.contextmanager
def zone_lock(final):
    """One build at a time in a zone folder: the deploy, the daily re-signing timer and the ACME hook's
    zones-rebuild may start together, and two builds would each make a key, or write the same file."""
    fd = os.open(os.path.join(os.path.dirname(final) or ".", ".zone-build.lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def print_keys(algorithm, keydir, zones):
    """--keys: each zone's public key file, as key_base picks it."""
    for zone in zones:
        base = key_base(keydir, zone, algorithm)
        if base is not None:
            with open(base + ".key", encoding="ascii") as f:
                sys.stdout.write(f.read().rstrip("\n") + "\n")
    return 0


def main(argv):
    if argv[:1] == ["--keys"]:
        return print_keys(int(argv[1]), argv[2], argv[3:])
    check = argv[:1] == ["--check"]
    sign, args = sign_option(argv[1:] if check else argv)
    zone, body_path, final, dkim_path, key_path = args[:5]
    cert = args[5] if len(args) > 5 else None
    with zone_lock(final):
        return build(check, sign, zone, body_path, final, dkim_path, key_path, cert)


def build(check, sign, zone, body_path, final, dkim_path, key_path, cert):
    """The guard (`check`: 0 when FINAL is up to date, else 1) or the build, as the usage above says."""
    with open(body_path, encoding="utf-8") as f:
        body = f.read()
    old_serial, old_source = state_of(final)
    tlsa = tlsa_rdata(key_path) if "@TLSA@" in body else None
    source, serial, text = zone_text(body, dkim_rdata(dkim_path), cert, old_serial, tlsa)
    now = time.time()
    key = None
    if sign is not None:
        key = key_base(sign[1], zone, sign[0])
        if key is None and check:
            return 1
        try:
            key = key or make_key(sign[1], zone, sign[0])
        except SigningError as e:
            sys.stderr.write(f"zone {zone}: no DNSSEC key: {e}")
            return 1
        source = keyed_source(source, key)
        until = signatures_until(final)
        if until is None or until - now < RESIGN_BEFORE:
            old_source = None  # signatures due: sign again (a new serial) though the content is the same
    if old_source == source:
        return 0
    if check:
        return 1
    if key is not None:
        try:
            text = signed_text(zone, text, key, source, serial, now)
        except SigningError as e:
            sys.stderr.write(f"zone {zone} not signed: {e}")
            return 1
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(final) or ".", prefix=f".{zone}.", suffix=".new")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
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
