# The box's ACME program, installed by recipes/acme.py (mail/acme.PROGRAM) and run as root:
#   order        order the certificate with certbot for the wanted names that resolve to this box, then
#                install it; names left out are said as deploy notes (wire.NOTE_PREFIX lines)
#   install      put the lineage's certificate and key where postfix, dovecot and nginx read them, validate,
#                reload (certbot's deploy hook; a failure puts the old files back)
#   --current    exit 0 iff the lineage covers exactly the names that resolve here now, from the settings'
#                directory, and is installed (the deploy's guard of `order`)
#   --installed  exit 0 iff the installed certificate is one of the lineage's (recipes/tls.py's guard)
#   trust        write the box's own clients' CA file (roundcube's): the system's CAs, the CA file and the
#                installed certificate; also after each install. --trusted: exit 0 iff it is up to date
# Settings: mail/acme.settings (JSON); status (what was covered, left out, ordered and installed) in its
# "status" path. Names are resolved with a small DNS client of the box's nameservers (/etc/resolv.conf),
# not getaddrinfo: /etc/hosts often maps the box's own name to 127.0.1.1, which the CA never sees.
# The environment overrides (MIAB_ACME_*) are for the unit tests, which run it outside a box.
# stdlib only, Python >= 3.8.
import datetime
import ipaddress
import json
import os
import random
import re
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import threading

from wire import NOTE_PREFIX

ENV = os.environ
SETTINGS = ENV.get("MIAB_ACME_SETTINGS", "/etc/miab-remote/acme/settings.json")
RESOLV_CONF = ENV.get("MIAB_ACME_RESOLV_CONF", "/etc/resolv.conf")
CERTBOT = ENV.get("MIAB_ACME_CERTBOT", "certbot")
CERTBOT_EXTRA = ENV.get("MIAB_ACME_CERTBOT_EXTRA", "").split()  # the tests' --work-dir and --logs-dir
SERVICES = ENV.get("MIAB_ACME_SERVICES", "postfix dovecot nginx").split()  # reloaded when active
# Each that is installed checks the configurations that read the new files (commands, `;` between them).
VALIDATORS = [shlex.split(v) for v in ENV.get("MIAB_ACME_VALIDATORS", "nginx -t;doveconf -n;postfix check").split(";")]
ZONES_REBUILD = ENV.get("MIAB_ACME_ZONES_REBUILD", "/usr/local/lib/miab-remote/zones-rebuild")
DNS_TIMEOUT = 2.0  # seconds per attempt; a lost datagram or a slow first lookup gets a second attempt
DNS_ATTEMPTS = 2
CERTBOT_TIMEOUT = 900
RENEW_BEFORE = "30 days"  # certbot 4.0 otherwise renews only with a third of the lifetime left
RENEW_LINE = "renew_before_expiry = " + RENEW_BEFORE + "\n"
KEY = ["--key-type", "rsa", "--rsa-key-size", "3072"]  # like the self-signed key: the TLS settings are tested so


class Failed(Exception):
    pass


def note(text):
    print(NOTE_PREFIX + text, flush=True)


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def write_atomic(path, data, mode):
    tmp = path + ".new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def run(argv, env=None, timeout=120):
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        return 124, (e.output or b"").decode("utf-8", "replace") + f"\n(no answer within {timeout} s)"
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


# -- names: a DNS client of the box's nameservers ---------------------------------------------------------------
def nameservers():
    """(address, port) of each nameserver in resolv.conf; a port after '#' (the tests' servers) is kept."""
    found = []
    try:
        with open(RESOLV_CONF, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    address, _, port = parts[1].partition("#")
                    found.append((address, int(port or 53)))
    except OSError:
        pass
    return found or [("127.0.0.1", 53)]


def skip_name(data, pos):
    while True:
        length = data[pos]
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length == 0:
            return pos + 1
        pos += 1 + length


def query(name, qtype, server):
    """The addresses of `name`'s A (1) or AAAA (28) records (after any CNAME the resolver followed), [] for
    none; raises OSError when the server does not answer, ValueError for an answer that is an error."""
    qid = random.getrandbits(16)
    labels = b"".join(bytes([len(p)]) + p for p in name.rstrip(".").encode("ascii").split(b"."))
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack(">HH", qtype, 1)
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(DNS_TIMEOUT)
        s.sendto(packet, server)
        while True:
            data = s.recv(65535)
            if len(data) >= 12 and struct.unpack(">H", data[:2])[0] == qid:
                break
    _, flags, qdcount, ancount = struct.unpack(">HHHH", data[:8])
    rcode = flags & 0xF
    if rcode == 3:  # NXDOMAIN
        return []
    if rcode != 0:
        raise ValueError({2: "SERVFAIL", 5: "REFUSED"}.get(rcode, f"rcode {rcode}"))
    pos = 12
    for _ in range(qdcount):
        pos = skip_name(data, pos) + 4
    found = []
    for _ in range(ancount):
        pos = skip_name(data, pos)
        rtype, rclass, _ttl, length = struct.unpack(">HHIH", data[pos : pos + 10])
        pos += 10
        if rtype == qtype and rclass == 1 and length in (4, 16):
            found.append(str(ipaddress.ip_address(data[pos : pos + length])))
        pos += length
    return found


def resolve(name):
    """(addresses, None) or ([], why): A and AAAA from the first nameserver that answers."""
    addresses = []
    for qtype in (1, 28):
        problem = "no nameserver answered"
        for server in nameservers() * DNS_ATTEMPTS:
            try:
                addresses += query(name, qtype, server)
                problem = None
                break
            except (OSError, ValueError) as e:
                problem = str(e) if isinstance(e, ValueError) else "no nameserver answered"
        if problem:
            return [], problem
    return addresses, None


def resolve_all(names):
    """{name: (addresses, problem)}, every name at once."""
    answers = {}

    def one(n):
        answers[n] = resolve(n)

    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * DNS_ATTEMPTS * DNS_TIMEOUT * len(nameservers()) + 1)
    return {n: answers.get(n, ([], "no answer in time")) for n in names}


def judge(names, answers, box_addresses):
    """(covered, left_out): a name resolves to the box when it has addresses and all are the box's."""
    mine = {ipaddress.ip_address(a) for a in box_addresses}
    covered, left_out = [], {}
    for n in names:
        addresses, problem = answers[n]
        if problem:
            left_out[n] = f"does not resolve: {problem}"
        elif not addresses:
            left_out[n] = "does not resolve"
        else:
            others = sorted({a for a in addresses if ipaddress.ip_address(a) not in mine})
            if others:
                left_out[n] = f"resolves to {', '.join(others)}, not this box"
            else:
                covered.append(n)
    return covered, left_out


# -- the lineage --------------------------------------------------------------------------------------------------
def live(s, name):
    return os.path.join(s["certbot_dir"], "live", s["lineage"], name)


def renewal_conf(s):
    return os.path.join(s["certbot_dir"], "renewal", s["lineage"] + ".conf")


def cert_names(path):
    """The DNS names of the (first) certificate in `path`, or None when openssl cannot read one."""
    rc, out = run(["openssl", "x509", "-in", path, "-noout", "-ext", "subjectAltName"])
    if rc != 0:
        return None
    return sorted(set(re.findall(r"DNS:([^,\s]+)", out)))


def lineage_server(s):
    text = (read(renewal_conf(s)) or b"").decode("utf-8", "replace")
    m = re.search(r"^\s*server\s*=\s*(\S+)\s*$", text, re.M)
    return m.group(1) if m else None


def ensure_renew_before(path):
    """`renew_before_expiry = 30 days` as the renewal conf's first key (certbot keeps a top-level key across
    renewals: it rewrites only version, archive_dir, the four paths and [renewalparams]). True if changed."""
    data = read(path)
    if data is None:
        raise Failed(f"certbot wrote no {path}")
    lines = data.decode("utf-8").splitlines(True)
    kept = [x for x in lines if not re.match(r"\s*renew_before_expiry\s*=", x)]
    at = 0
    while at < len(kept) and (not kept[at].strip() or kept[at].lstrip().startswith("#")):
        at += 1  # configobj's initial comment stays the file's head
    new = [*kept[:at], RENEW_LINE, *kept[at:]]
    if new == lines:
        return False
    write_atomic(path, "".join(new).encode("utf-8"), os.stat(path).st_mode & 0o777)
    return True


def installed_is_lineage(s):
    """The installed certificate is one of the lineage's versions (a renewal whose install failed leaves the
    one before: still the CA's, not to be replaced by a self-signed one)."""
    cert = read(s["tls_cert"])
    if cert is None or read(live(s, "fullchain.pem")) is None:
        return False
    archive = os.path.join(s["certbot_dir"], "archive", s["lineage"])
    try:
        versions = [f for f in os.listdir(archive) if f.startswith("fullchain")]
    except OSError:
        return False
    return any(read(os.path.join(archive, f)) == cert for f in versions)


# -- status -----------------------------------------------------------------------------------------------------
def read_status(s):
    try:
        return json.loads((read(s["status"]) or b"{}").decode("utf-8"))
    except ValueError:
        return {}


def write_status(s, **changes):
    path = s["status"]
    status = read_status(s)
    status.update(changes)
    status["directory"] = s["directory"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, (json.dumps(status, indent=2, sort_keys=True) + "\n").encode("utf-8"), 0o644)


# -- the box's own clients' trust ---------------------------------------------------------------------------------
def trust_text(s):
    """The system's CAs (a public CA's root), the CA file (a private CA's) and the installed certificate (the
    self-signed bootstrap is its own root): a CA's chain as served stops below its root, which OpenSSL needs."""
    parts = [read(p) for p in (s["system_cas"], s.get("ca_file"), s["tls_cert"]) if p]
    return b"".join(p if p.endswith(b"\n") else p + b"\n" for p in parts if p)


def write_trust(s):
    text = trust_text(s)
    if read(s["trust"]) != text:
        write_atomic(s["trust"], text, 0o644)


# -- install ----------------------------------------------------------------------------------------------------
def check_pair(s, chain_path, key_path):
    """None when the chain's certificate is for the hostname, not expired, and the key's; else why not."""
    names = cert_names(chain_path)
    if names is None:
        return f"{chain_path} holds no certificate openssl can read"
    if s["hostname"] not in names:
        return f"{chain_path} does not name {s['hostname']} (names: {', '.join(names)})"
    if run(["openssl", "x509", "-in", chain_path, "-noout", "-checkend", "0"])[0] != 0:
        return f"{chain_path} has expired"
    rc1, cert_key = run(["openssl", "x509", "-in", chain_path, "-noout", "-pubkey"])
    rc2, key_pub = run(["openssl", "pkey", "-in", key_path, "-pubout"])
    if rc1 != 0 or rc2 != 0 or cert_key != key_pub:
        return f"{key_path} is not the key of {chain_path}"
    return None


def validate():
    for argv in VALIDATORS:
        if argv and shutil.which(argv[0]):
            rc, out = run(argv)
            if rc != 0:
                return f"{' '.join(argv)} failed (exit {rc}):\n{out.strip()[-2000:]}"
    return None


def install(s):
    chain_path, key_path = live(s, "fullchain.pem"), live(s, "privkey.pem")
    chain, key = read(chain_path), read(key_path)
    if chain is None or key is None:
        raise Failed(f"no certificate to install: {chain_path} or {key_path} is missing")
    old_chain, old_key = read(s["tls_cert"]), read(s["tls_key"])
    if (chain, key) == (old_chain, old_key):
        return False
    problem = check_pair(s, chain_path, key_path)
    if problem:
        raise Failed(f"not installed: {problem}")
    # The key first, so a certificate is never without its key; each written beside its name and renamed.
    write_atomic(s["tls_key"], key, 0o600)
    write_atomic(s["tls_cert"], chain, 0o644)
    problem = validate()
    if problem:
        for path, data, mode in ((s["tls_cert"], old_chain, 0o644), (s["tls_key"], old_key, 0o600)):
            if data is not None:
                write_atomic(path, data, mode)
        raise Failed(f"not installed, the old certificate put back: {problem}")
    for service in SERVICES:
        if run(["systemctl", "is-active", "--quiet", service])[0] == 0:
            rc, out = run(["systemctl", "reload", service])
            if rc != 0:
                raise Failed(f"installed, but systemctl reload {service} failed (exit {rc}): {out.strip()}")
    if os.path.exists(ZONES_REBUILD):
        head = read(ZONES_REBUILD) or b""
        rc, out = run([ZONES_REBUILD] if head.startswith(b"#!") else [sys.executable, ZONES_REBUILD])
        if rc != 0:
            raise Failed(f"installed, but {ZONES_REBUILD} failed (exit {rc}): {out.strip()[-2000:]}")
    write_trust(s)
    write_status(s, names=cert_names(chain_path), installed=now_iso())
    return True


# -- order ------------------------------------------------------------------------------------------------------
def meaningful(out):
    """certbot's last lines worth showing: without blank lines, rulers and the log and donation boilerplate."""
    skip = ("- - -", "Saving debug log", "Ask for help", "See the logfile", "If you like Certbot", " * Donating")
    lines = [x.rstrip() for x in out.splitlines() if x.strip() and not x.strip().startswith(skip)]
    return "\n".join(lines[-12:])


def certbot_argv(s, names):
    email = ["-m", s["email"]] if s.get("email") else ["--register-unsafely-without-email"]
    argv = [CERTBOT, "certonly", "--non-interactive", "--agree-tos", "--no-eff-email", "--keep-until-expiring",
            "--webroot", "-w", s["webroot"], "--cert-name", s["lineage"], "--reuse-key", *KEY,
            "--config-dir", s["certbot_dir"], "--server", s["directory"], *email,
            "--deploy-hook", f"python3 {s['program']} install", *CERTBOT_EXTRA]  # fmt: skip
    for n in names:
        argv += ["-d", n]
    return argv


def accounts(s):
    """The ACME accounts certbot holds (their folders), for every directory it has used."""
    found = set()
    for top, _dirs, files in os.walk(os.path.join(s["certbot_dir"], "accounts")):
        if "regr.json" in files:
            found.add(top)
    return found


def update_contact(s, env, registered):
    """The account's contact address follows the settings' email: an account this order registered has it
    already; an older one is updated (certbot cannot remove a contact: no email keeps the old one)."""
    email = s.get("email")
    if read_status(s).get("email") == email:
        return
    if email and not registered:
        argv = [CERTBOT, "update_account", "--non-interactive", "--config-dir", s["certbot_dir"],
                "--server", s["directory"], "-m", email, *CERTBOT_EXTRA]  # fmt: skip
        rc, out = run(argv, env=env, timeout=CERTBOT_TIMEOUT)
        if rc != 0:
            raise Failed(f"certbot could not update the account's contact (exit {rc}):\n{meaningful(out)}")
        note(f"the ACME account's contact is now {email}")
    elif not email and not registered:
        note("the ACME account keeps its contact address: certbot cannot remove one")
    write_status(s, email=email)


def order(s):
    answers = resolve_all(s["names"])
    covered, left_out = judge(s["names"], answers, s["addresses"])
    for name, why in left_out.items():
        note(f"left out ({why}): {name}")
    write_status(s, left_out=left_out)
    if s["hostname"] not in covered:
        note(f"ordered nothing: the certificate must name {s['hostname']}; the current one stays")
        return
    env = dict(ENV)
    if s.get("ca_file"):
        env["REQUESTS_CA_BUNDLE"] = s["ca_file"]
    before, known = read(live(s, "cert.pem")), accounts(s)
    rc, out = run(certbot_argv(s, covered), env=env, timeout=CERTBOT_TIMEOUT)
    if rc != 0:
        raise Failed(f"certbot failed (exit {rc}); the current certificate stays:\n{meaningful(out)}")
    update_contact(s, env, registered=bool(accounts(s) - known))
    ensure_renew_before(renewal_conf(s))
    if read(live(s, "cert.pem")) != before:
        note(f"ordered a certificate for {len(covered)} names from {s['directory']}")
        write_status(s, ordered=now_iso())
    install(s)  # certbot runs no hook when it keeps a current lineage that is not installed yet


def current(s):
    names = cert_names(live(s, "cert.pem"))
    if names is None or lineage_server(s) != s["directory"]:
        return False
    if read(s["tls_cert"]) != read(live(s, "fullchain.pem")):
        return False
    if read_status(s).get("email") != s.get("email"):
        return False  # the account's contact changes at the next order
    covered, _ = judge(s["names"], resolve_all(s["names"]), s["addresses"])
    return sorted(covered) == names


def main(argv):
    if len(argv) != 1 or argv[0] not in ("order", "install", "trust", "--current", "--installed", "--trusted"):
        print("usage: miab-acme order | install | trust | --current | --installed | --trusted", file=sys.stderr)
        return 2
    try:
        with open(SETTINGS, encoding="utf-8") as f:
            s = json.load(f)
    except (OSError, ValueError) as e:
        print(f"miab-acme: cannot read {SETTINGS}: {e}", file=sys.stderr)
        return 1
    try:
        if argv[0] == "--current":
            return 0 if current(s) else 1
        if argv[0] == "--installed":
            return 0 if installed_is_lineage(s) else 1
        if argv[0] == "--trusted":
            return 0 if read(s["trust"]) == trust_text(s) else 1
        if argv[0] == "trust":
            write_trust(s)
        elif argv[0] == "install":
            install(s)
        else:
            order(s)
    except Failed as e:
        print(f"miab-acme: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
