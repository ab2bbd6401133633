"""The rules for single fields of an inventory: what a box's address, SSH user, recipe name, password
hash and quota may be, and which providers may be named. Each returns what is wrong with a value, with
what is accepted, or None; the schema checker (fleet/schema.py) and the account commands share them.
Host names and email addresses follow miab_remote/names.py, the one copy of those rules."""

from __future__ import annotations

import ipaddress
import posixpath
import re
from typing import Any
from urllib.parse import urlsplit

from miab_remote import names
from miab_remote.fleet.problems import short

PROVIDERS: tuple[str, ...] = ("local", "digitalocean", "linode", "vultr", "ec2", "manual")

# Dovecot scheme prefixes we accept, with the full shape of each hash: a truncated hash would lock the
# user out silently, so it is refused here rather than discovered at the first failed login.
PASSWORD_SCHEMES: dict[str, re.Pattern[str]] = {
    "{SHA512-CRYPT}$6$": re.compile(r"^\{SHA512-CRYPT\}\$6\$(rounds=\d+\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}$"),
    "{BLF-CRYPT}$2": re.compile(r"^\{BLF-CRYPT\}\$2[abxy]?\$\d\d\$[./0-9A-Za-z]{53}$"),
    "{ARGON2ID}$argon2id$": re.compile(
        r"^\{ARGON2ID\}\$argon2id\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+={0,2}\$[A-Za-z0-9+/]+={0,2}$"
    ),
}

# A user name as useradd accepts it by default: at most 32 characters, a final '$' allowed.
_POSIX_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,30}[a-z0-9_$-]?$")
_RECIPE_RE = re.compile(r"^[a-z0-9_-]+$")
_QUOTA_RE = re.compile(r"^(0|[1-9][0-9]*[KMGT]?)$")
# dovecot 2.3 reads `storage=N[KMGT]` (no unit: KiB) into a signed 64-bit count of bytes: 8388608T is
# refused ("Bytes limit can't be negative") and the user cannot log in or receive mail.
_QUOTA_UNITS = {"": 1024, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
QUOTA_MAX_BYTES = 2**63 - 1


def quota_problem(value: str) -> str | None:
    """Why `value` is not a quota dovecot accepts (None if it is one)."""
    if not _QUOTA_RE.fullmatch(value):
        return f'{value!r} is not a quota; expected a size like "500M" or "2G" (suffix K, M, G or T), or "0" for none'
    number, unit = (value[:-1], value[-1]) if value[-1] in _QUOTA_UNITS else (value, "")
    if int(number) * _QUOTA_UNITS[unit] > QUOTA_MAX_BYTES:
        return (
            f"{value!r} is too large; accepted: at most {QUOTA_MAX_BYTES // 1024**4}T ({QUOTA_MAX_BYTES} bytes, "
            "dovecot's limit: a signed 64-bit count of bytes)"
        )
    return None


def is_served(address: str, domains: tuple[str, ...] | None) -> bool:
    """Whether the box itself delivers to `address` (its domain is hosted here)."""
    return domains is not None and address.rpartition("@")[2].lower() in domains


def destination(address: str, domains: tuple[str, ...] | None) -> str:
    """An alias destination as the maps want it: an address of the box all in lower case, another
    server's with its domain in lower case and its local part as written (that server may care)."""
    if is_served(address, domains):
        return names.normal_email(address)
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def address_problem(value: str) -> str | None:
    """Why `value` is neither an IP address nor a DNS name (None if it is one); a name may be written in
    any case and with its final dot, as DNS reads it."""
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if value.startswith("[") and value.endswith("]"):
        return f"{value!r}: write the IPv6 address without brackets"
    labels = value.rstrip(".").split(".")
    if all(label.isdigit() for label in labels):
        return f"{value!r} is not a valid IPv4 address"
    name = value.removesuffix(".")
    if len(value) <= 253 and name.isascii() and names.HOST_NAME_RE.fullmatch(name.lower()):
        return None
    examples = "'203.0.113.10', '2001:db8::10' or 'box1.example.org'"
    return f"{value!r} is not an IP address or DNS name; expected like {examples}"


# One jump host as ProxyJump writes it: [user@]host[:port], the host a name, an ssh_config alias or an address.
_JUMP_RE = re.compile(
    r"^(?:(?P<user>[^@\s]+)@)?(?P<host>[A-Za-z0-9_][A-Za-z0-9_.-]*|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{1,5}))?$"
)
JUMP_ACCEPTED = "accepted: [user@]host[:port], several separated by commas, like 'admin@bastion.example.org:22'"


def jump_problem(value: str) -> str | None:
    """Why `value` is not ProxyJump's syntax, one or more `[user@]host[:port]` separated by commas."""
    for hop in (h.strip() for h in value.split(",")):
        m = _JUMP_RE.fullmatch(hop)
        if m is None:
            return f"{hop!r} is not a jump host; {JUMP_ACCEPTED}"
        if m["user"] is not None and not _POSIX_USER_RE.fullmatch(m["user"]):
            return f"{m['user']!r} in {hop!r} is not a POSIX user name; {JUMP_ACCEPTED}"
        if m["port"] is not None and not 1 <= int(m["port"]) <= 65535:
            return f"port {m['port']} in {hop!r} is out of range 1..65535; {JUMP_ACCEPTED}"
    return None


# The relay's ports: submission with STARTTLS, or submissions (implicit TLS). Never 25: it is what the clouds
# block, and a relay there offers no login.
RELAY_PORTS: dict[int, str] = {587: "submission, STARTTLS", 465: "submissions, implicit TLS"}
RELAY_PORTS_ACCEPTED = "accepted: " + " or ".join(f"{p} ({what})" for p, what in RELAY_PORTS.items())


def relay_port_problem(value: int) -> str | None:
    """Why `value` is not a port the outbound relay may be reached on (None if it is one)."""
    if value in RELAY_PORTS:
        return None
    hint = "; port 25 is what clouds block, and it offers no login" if value == 25 else ""
    return f"{value} is not a relay port; {RELAY_PORTS_ACCEPTED}{hint}"


def relay_user_problem(value: str) -> str | None:
    """Why `value` cannot be the relay login's user name: postfix's password table holds `user:password`
    after the relay's name, so no ':' and no white space (None if it can)."""
    if not value:
        return "is empty; expected the relay login's user name, like 'apikey' or 'box1@example.org'"
    if len(value) > 255 or ":" in value or any(c.isspace() or not c.isprintable() for c in value):
        return (
            f"{short(value)} is not a relay user name; accepted: up to 255 printable characters, "
            "no ':' and no white space"
        )
    return None


def posix_user_problem(value: str) -> str | None:
    """Why `value` is not a user name a box's useradd would make (None if it is one)."""
    if _POSIX_USER_RE.fullmatch(value):
        return None
    return (
        f"{value!r} is not a POSIX user name; expected lower-case letters, digits, "
        "'_' or '-', starting with a letter or '_', at most 32 characters, like 'root'"
    )


def recipe_name_problem(value: str) -> str | None:
    """Why `value` cannot name a recipe (a module of recipes/ or hosts/recipes/); None if it can."""
    if _RECIPE_RE.fullmatch(value):
        return None
    return f"{value!r} is not a recipe name; expected lower-case letters, digits, '_' and '-'"


def ip_list_problem(value: list[Any]) -> str | None:
    """Why a list is not a list of IP addresses (None if it is one)."""
    for item in value:
        try:
            ipaddress.ip_address(item)
        except (ValueError, TypeError):
            return f"{item!r} is not an IP address; accepted: a list of IP addresses"
    return None


def password_problem(value: str) -> str | None:
    """Why `value` is not a supported Dovecot hash; never echoes what may be a clear password."""
    accepted = ", ".join(PASSWORD_SCHEMES)
    for prefix, shape in PASSWORD_SCHEMES.items():
        scheme = prefix.split("}")[0] + "}"
        if value.startswith(scheme):
            if shape.fullmatch(value):
                return None
            return (
                f"malformed or truncated {scheme} hash; expected {prefix}..., the whole hash "
                "(for example from doveadm pw)"
            )
    if value.startswith("$"):
        hint = "prefix it with {SHA512-CRYPT}" if value.startswith("$6$") else f"accepted: {accepted}"
        hint = "prefix it with {BLF-CRYPT}" if value.startswith("$2") else hint
        hint = "prefix it with {ARGON2ID}" if value.startswith("$argon2id$") else hint
        return f"a crypt hash without its {{SCHEME}} prefix; {hint}"
    m = re.match(r"^\{([A-Za-z0-9.-]+)\}", value)
    if m:
        return f"unsupported hash scheme {{{m.group(1)}}}; accepted: {accepted}"
    return (
        "looks like a clear-text password (not shown); store a hash instead, "
        f"for example from `doveadm pw -s BLF-CRYPT`; accepted: {accepted}"
    )


def default_domain(hostname: str) -> str:
    """The mail domain a box serves when `domains` is absent: box1.example.test -> example.test."""
    labels = hostname.split(".")
    return ".".join(labels[1:]) if len(labels) > 2 else hostname


# -- [backup] ----------------------------------------------------------------------------------------------------
# The box's state tree (mail/layout.py takes it from here): what a backup holds, so never where it goes.
STATE_TREE = "/home/user-data"
BACKUP_KINDS: tuple[str, ...] = ("rest", "s3", "sftp", "local")
BACKUP_TARGETS_ACCEPTED = (
    "accepted: 'rest:https://HOST[:PORT]/PATH', 's3:https://HOST[:PORT]/BUCKET[/PATH]', 'sftp:USER@HOST:/PATH' "
    "or 'local:/PATH' (a folder on the box, such as a second disk)"
)
BACKUP_KEEP_MAX = 1000
_CREDENTIALS_ELSEWHERE = "credentials go in the secrets store: `miab-remote backup-target set`"
# S3's bucket names: 3 to 63 lower-case letters, digits, dots and hyphens, starting and ending with a letter or digit.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SFTP_RE = re.compile(r"^(?P<user>[^@:/\s]+)@(?P<host>[^@:/\s\[\]]+|\[[0-9A-Fa-f:.]+\]):(?P<path>.*)$")


def backup_kind(target: str) -> str:
    """The kind of a repository string: its scheme (`rest`, `s3`, `sftp` or `local`)."""
    return target.partition(":")[0]


def backup_target_problem(value: str) -> str | None:
    """Why `value` is not a backup target the box can use (None if it is one). rest and s3 go over https
    only (the repository is encrypted, its credentials are not), and no credential is ever part of it."""
    if not value or any(c.isspace() or not c.isprintable() for c in value):
        return f"{short(value)} is not a backup target; {BACKUP_TARGETS_ACCEPTED}"
    kind, colon, rest = value.partition(":")
    if not colon or kind not in BACKUP_KINDS:
        return f"{value!r} is not a backup target; {BACKUP_TARGETS_ACCEPTED}"
    if kind in ("rest", "s3"):
        return _url_target_problem(value, kind, rest)
    if kind == "sftp":
        m = _SFTP_RE.fullmatch(rest)
        if m is None or not m["path"]:
            return f"{value!r} is not an sftp target; expected 'sftp:USER@HOST:/PATH'"
        if m["user"] and ":" in m["user"]:
            return f"{value!r}: {_CREDENTIALS_ELSEWHERE}"
        if problem := address_problem(m["host"].strip("[]")):
            return f"{value!r}: {problem}"
        if not m["path"].startswith("/"):
            path = m["path"]
            return f"{value!r}: the path {path!r} is relative; expected an absolute one, like 'sftp:USER@HOST:/PATH'"
        return None
    return local_path_problem(value, rest)


def _url_target_problem(value: str, kind: str, url: str) -> str | None:
    example = "rest:https://HOST[:PORT]/PATH" if kind == "rest" else "s3:https://HOST[:PORT]/BUCKET[/PATH]"
    split = urlsplit(url)
    if split.scheme != "https":
        return (
            f"{value!r}: {kind} targets go over https only (the repository is encrypted, but its credentials "
            f"are not); expected like {example!r}"
        )
    if "@" in split.netloc:
        return f"{value!r}: {_CREDENTIALS_ELSEWHERE}; expected like {example!r}"
    if split.query or split.fragment or "?" in url or "#" in url:
        return f"{value!r}: no query or fragment; expected like {example!r}"
    if not split.hostname:
        return f"{value!r}: no host; expected like {example!r}"
    if problem := address_problem(split.hostname):
        return f"{value!r}: {problem}"
    try:
        port = split.port
    except ValueError:
        port = 0
    if port is not None and not 1 <= port <= 65535:
        return f"{value!r}: the port is not 1..65535; expected like {example!r}"
    if kind == "s3":
        bucket = split.path.lstrip("/").split("/")[0]
        if not bucket:
            return f"{value!r}: no bucket; expected like {example!r}"
        if not _BUCKET_RE.fullmatch(bucket):
            return (
                f"{value!r}: {bucket!r} is not a bucket name; accepted: 3 to 63 lower-case letters, digits, '.' "
                "and '-', starting and ending with a letter or digit"
            )
    return None


def local_path_problem(value: str, path: str) -> str | None:
    """Why `path` (of target `value`) cannot hold a box's repository: relative, `/`, or in the state tree
    (a backup would then hold itself, and a restore would replace it)."""
    if not path.startswith("/"):
        where = "expected an absolute one on the box, like 'local:/srv/backup'"
        return f"{value!r}: the path {path!r} is relative; {where}"
    normal = posixpath.normpath(path)
    if normal == "/" or normal.startswith("//"):
        return f"{value!r}: not the root folder; expected a folder of its own, like 'local:/srv/backup'"
    if normal == STATE_TREE or normal.startswith(STATE_TREE + "/"):
        return (
            f"{value!r}: inside the state tree {STATE_TREE}, which is what is backed up; expected a folder "
            "outside it, like 'local:/srv/backup' (best on a second disk)"
        )
    return None


def backup_keep_problem(value: int) -> str | None:
    """Why `value` is not a count of snapshots to keep (None if it is one)."""
    if 0 <= value <= BACKUP_KEEP_MAX:
        return None
    return f"{value} is out of range; accepted: 0..{BACKUP_KEEP_MAX}"


# [acme]: the directories named by a word, and the CAA domain of the CAs whose directories are known (a
# CAA `issue` record names the CA; a wrong one makes the CA refuse to issue, so no other URL gets a guess).
ACME_DIRECTORIES: dict[str, str] = {
    "production": "https://acme-v02.api.letsencrypt.org/directory",
    "staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
ACME_CAA: dict[str, str] = {
    "https://acme-v02.api.letsencrypt.org/directory": "letsencrypt.org",
    "https://acme-staging-v02.api.letsencrypt.org/directory": "letsencrypt.org",
    "https://acme.zerossl.com/v2/DV90": "sectigo.com",
    "https://api.buypass.com/acme/directory": "buypass.com",
    "https://dv.acme-v02.api.pki.goog/directory": "pki.goog",
}
ACME_DIRECTORIES_ACCEPTED = "accepted: 'production' or 'staging' (Let's Encrypt's), or a directory URL 'https://...'"
MTA_STS_MODES: tuple[str, ...] = ("testing", "enforce", "none")


def acme_directory(value: str) -> str | None:
    """The directory URL that an [acme] `directory` names, or None when it names none."""
    if value in ACME_DIRECTORIES:
        return ACME_DIRECTORIES[value]
    split = urlsplit(value)
    if split.scheme != "https" or not split.hostname or any(c.isspace() or not c.isprintable() for c in value):
        return None
    return value


def caa_domain_problem(value: str) -> str | None:
    """Why `value` is not a CAA issuer domain (RFC 8659: a domain name, like letsencrypt.org)."""
    if value and names.is_fqdn(value.lower()):
        return None
    expected = "expected a domain like 'letsencrypt.org', or '' for no CAA records"
    return f"{short(value)} is not a CA's CAA domain; {expected}"
