"""dovecot.conf per release: Debian 13 (dovecot 2.4) gets the 2.4 variant, Debian 12 keeps the 2.3 file, and
both read the same users file, so a box's users log in with the same hashes and get the same quota.

The 2.4 file's settings were checked with doveconf, doveadm (user, auth test, quota get), LMTP and IMAP
on dovecot 2.4.1; these tests keep the laptop side of that contract: which file a profile gets, and that
the users file's quota field is one the 2.4 file turns into the 2.3 meaning.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from miab_remote.fleet.model import MailUser
from miab_remote.fleet.store import Inventory
from miab_remote.mail import layout, mailmaps
from miab_remote.profiles import DEBIAN_12, DEBIAN_13

GOLDEN = Path(__file__).parent / "golden"
NAME = "mail.example.org"
CONF = "/etc/dovecot/dovecot.conf"


@pytest.fixture(scope="module")
def rendered(files_by_profile: dict[str, dict[str, bytes]]) -> dict[str, dict[str, bytes]]:
    """The golden box's files as each release's profile renders them."""
    return {p.id: files_by_profile[p.id] for p in (DEBIAN_12, DEBIAN_13)}


def settings(conf: bytes) -> list[str]:
    return [line.strip() for line in conf.decode().splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_debian_13_gets_the_2_4_file_and_debian_12_the_2_3_one(rendered: dict[str, dict[str, bytes]]) -> None:
    new, old = settings(rendered["debian-13"][CONF]), settings(rendered["debian-12"][CONF])
    # 2.4 refuses a file whose first setting is anything else.
    assert new[:2] == ["dovecot_config_version = 2.4.0", "dovecot_storage_version = 2.4.0"]
    assert new.count("passwd_file_path = /etc/dovecot/users") == 2  # passdb and userdb
    place = "%{user | domain | lower}/%{user | username | lower}"
    assert f"mail_path = {layout.MAILBOXES}/{place}" in new
    assert f"path = {layout.SIEVE}/{place}/scripts" in new
    assert f"ssl_server_cert_file = {layout.TLS_CERT}" in new
    # Nothing of 2.3's syntax left: its settings and its one-letter variables are errors in 2.4.
    text = "\n".join(new)
    gone_in_2_4 = ("mail_location", "ssl_cert ", "ssl_dh ", "disable_plaintext_auth", "plugin {", "args =")
    for gone in (*gone_in_2_4, "$mail_plugins"):
        assert gone not in text
    assert not re.search(r"%L?[a-z]\b", text)
    # Debian 12 keeps today's file.
    assert f"mail_location = maildir:{layout.MAILBOXES}/%Ld/%Ln" in old and "dovecot_config_version" not in "".join(old)


def test_both_releases_get_the_same_users_file_and_sieve_scripts(rendered: dict[str, dict[str, bytes]]) -> None:
    new, old = rendered["debian-13"], rendered["debian-12"]
    shared = [p for p in old if p.startswith("/etc/dovecot/") and p != CONF]
    assert "/etc/dovecot/users" in shared and "/etc/dovecot/sieve/before.sieve" in shared
    for path in shared:
        assert new[path] == old[path], path


def expand(value: str, fields: dict[str, str]) -> str:
    """The few of dovecot 2.4's variables the quota settings use: `%{passwd_file:F | filter | ...}` pieces,
    each filter `default('x')`, `regexp('pattern', 'replacement')` or a bare `default`, each maybe followed
    by one `* N` or `/ N`. Anything else fails the test (a change here needs a new check on 2.4)."""
    out = ""
    for piece in re.findall(r"%\{([^}]*)\}", value):
        first, *filters = piece.split(" | ")
        name = re.fullmatch(r"passwd_file:(\w+)", first)
        assert name, piece
        got = fields.get(name.group(1))
        for step in filters:
            one = re.fullmatch(r"(default|regexp)(?:\((.*)\))?(?: ([*/]) ([0-9]+))?", step)
            assert one, step
            func, args, operator, number = one.groups()
            params = [unquote(a) for a in re.findall(r"'([^']*)'", args or "")]
            if func == "default":
                got = got or (params[0] if params else "")
            else:
                assert got is not None, f"{piece}: {first} is missing (an error on 2.4)"
                got = dovecot_regexp(got, *params)
            if operator:
                assert got is not None and got.isdigit(), f"{step}: input {got!r} is not a number (an error on 2.4)"
                got = str(int(got) * int(number) if operator == "*" else int(got) // int(number))
        assert got is not None, piece
        out += got
    assert re.sub(r"%\{[^}]*\}", "", value) == "", value
    return out


def unquote(text: str) -> str:
    """A quoted string of dovecot 2.4's variable syntax: backslash escapes as its lexer reads them (a
    `\\1` meant for regexp must be written `\\\\1`: `\\1` is the octal escape of byte 1)."""
    named = {"\\": "\\", "t": "\t", "r": "\r", "n": "\n", "'": "'", '"': '"'}

    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        if code in named:
            return named[code]
        return chr(int(code[1:], 16) if code[0] == "x" else int(code, 8))

    return re.sub(r"\\(x[0-9a-fA-F]{2}|[0-9]{1,3}|.)", one, text)


def dovecot_regexp(value: str, pattern: str, replacement: str) -> str:
    """dovecot 2.4's regexp filter: on a match the whole value becomes the replacement (\\N: group N)."""
    found = re.search(pattern, value)
    return value if found is None else re.sub(r"\\([0-9])", lambda g: found.group(int(g.group(1))) or "", replacement)


def size_bytes(size: str) -> int:
    """dovecot's size syntax (2.4's quota settings): a number, then B, K, M, G or T (none: bytes)."""
    found = re.fullmatch(r"([0-9]+)([BKMGT]?)", size)
    assert found, size
    return int(found.group(1)) * 1024 ** "BKMGT".index(found.group(2) or "B")


@pytest.mark.parametrize(
    ("quota", "kib"),
    [("2G", 2 * 1024**2), ("500M", 500 * 1024), ("7T", 7 * 1024**3), ("500", 500), ("7K", 7), (None, 0)],
)
def test_the_users_files_quota_rule_is_the_same_limit_and_grace_on_2_4(
    rendered: dict[str, dict[str, bytes]], quota: str | None, kib: int
) -> None:
    """2.3 reads `userdb_quota_rule=*:storage=N[KMGT]` (no unit: KiB; none: unlimited) with a grace for
    deliveries of 10% of it; 2.4 has no quota rule, only sizes, which its file computes from that field
    (the grace to within one of the unit below the quota's: 2G gives 204M, not 204.8M)."""
    user = MailUser("carol@example.org", "{BLF-CRYPT}$2b$12$" + "a" * 53, quota)
    host = dataclasses.replace(Inventory(GOLDEN).load(NAME), users=(user,))
    line = mailmaps.dovecot_users(host).splitlines()[-1]
    extra = dict(f.split("=", 1) for f in line.split(":", 7)[7].split())
    fields = {k.removeprefix("userdb_"): v for k, v in extra.items()}  # in a userdb lookup, as 2.4 has them
    conf = {
        k: v
        for k, _, v in (s.partition(" = ") for s in settings(rendered["debian-13"][CONF]))
        if k.startswith("quota_")
    }
    limit = size_bytes(expand(conf["quota_storage_size"], fields))
    assert limit == kib * 1024
    step = 1024 ** ("KMGT".index(quota[-1]) if quota and quota[-1] in "KMGT" else 0)
    assert size_bytes(expand(conf["quota_storage_grace"], fields)) == limit // 10 // step * step
