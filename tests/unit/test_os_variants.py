"""The whole mail box of test_plan_golden rendered for every OS profile: the same files on each release, and
where Debian 13 differs it is what its template variants say (nginx 1.26's http2 directive; the failed
login lines of dovecot 2.4 in the dovecot jail), while Debian 12 renders what it always did."""

from __future__ import annotations

import re

import pytest

from miab_remote.profiles import PROFILES

NGINX = "/etc/nginx/conf.d/miab-remote-webmail.conf"
JAIL = "/etc/fail2ban/jail.d/miab-remote.local"

# What fail2ban's dovecot filter leaves of a dovecot 2.4 login process's line (its prefix, "imap-login: Info: ",
# is taken off by the filter's prefregex), as dovecot 2.4.1 writes them (the first one seen on a Debian 13 box).
DOVECOT_24_FAILED = (
    "Login aborted: Connection closed (auth failed, 1 attempts in 2 secs) (auth_failed): user=<alice@example.org>, "
    "method=PLAIN, rip=10.78.4.1, lip=10.78.4.2, TLS: Connection closed, session=<we0l/ZNhGtp/AAAB>",
    "Login aborted: Logged out (auth failed, 1 attempts in 2 secs) (auth_failed): user=<alice@example.org>, "
    "method=PLAIN, rip=10.78.4.1, lip=10.78.4.2, TLS, session=<Dp8j1Ho3suQYdo+k>",
    "Login aborted: Connection closed: read(size=1003) failed: Connection reset by peer (auth failed, 3 attempts "
    "in 16 secs) (auth_failed): user=<bob@example.net>, rip=2001:db8::7, lip=2001:db8::25, session=<Lsz0Oo7W>",
)
DOVECOT_24_NOT_FAILED = (
    "Login aborted: Connection closed (no auth attempts in 1 secs) (no_auth_attempts): user=<>, rip=10.78.4.1, "
    "lip=10.78.4.2, TLS, session=<qMLsbvY8PLSkXGoP>",
    "Login: user=<alice@example.org>, method=PLAIN, rip=10.78.4.1, lip=10.78.4.2, mpid=77, TLS, session=<x>",
)


@pytest.fixture(scope="module")
def rendered(files_by_profile: dict[str, dict[str, bytes]]) -> dict[str, dict[str, str]]:
    return {pid: {path: data.decode() for path, data in files.items()} for pid, files in files_by_profile.items()}


def test_every_release_gets_the_same_files(rendered: dict[str, dict[str, str]]) -> None:
    assert set(rendered) >= {"debian-12", "debian-13"}
    assert set(rendered["debian-13"]) == set(rendered["debian-12"])


def test_nginx_http2_is_a_directive_on_debian_13_and_a_listen_parameter_on_12(
    rendered: dict[str, dict[str, str]],
) -> None:
    old, new = rendered["debian-12"][NGINX], rendered["debian-13"][NGINX]
    tls_listen = re.compile(r"^\s*listen \S*443 ssl.*;$", re.M)
    assert len(tls_listen.findall(old)) == 4 and all(" http2" in line for line in tls_listen.findall(old))
    assert "http2 on;" not in old
    # nginx 1.26 warns about `listen ... http2` at every start: each TLS server says `http2 on;` instead.
    assert len(tls_listen.findall(new)) == 4 and not any("http2" in line for line in tls_listen.findall(new))
    assert new.count("\n    http2 on;\n") == 2
    # Nothing else differs.
    socket = (PROFILES["debian-12"].paths["php_fpm_socket"], PROFILES["debian-13"].paths["php_fpm_socket"])
    assert new.replace("\n    http2 on;", "") == old.replace(" http2", "").replace(*socket)


def _jail_section(jail: str, name: str) -> str:
    return jail.split(f"\n[{name}]\n", 1)[1].split("\n[", 1)[0]


def _as_python(failregex: str) -> re.Pattern[str]:
    """A fail2ban failregex as Python's re reads it: <HOST> an address, <F-USER> a named group."""
    pattern = failregex.replace("<HOST>", r"(?P<host>[0-9A-Fa-f.:]+)")
    return re.compile(pattern.replace("<F-USER>", "(?P<user>").replace("</F-USER>", ")"))


def test_dovecot_jail_matches_dovecot_24_failed_logins(rendered: dict[str, dict[str, str]]) -> None:
    section = _jail_section(rendered["debian-13"][JAIL], "dovecot")
    # fail2ban's own expressions stay, and one for dovecot 2.4's wording follows them.
    lines = section.split("failregex = %(known/failregex)s\n", 1)[1].splitlines()
    ours = _as_python(lines[0].strip())
    for line in DOVECOT_24_FAILED:
        found = ours.search(line)
        assert found, line
        assert found["host"] in ("10.78.4.1", "2001:db8::7") and "@" in found["user"]
    for line in DOVECOT_24_NOT_FAILED:
        assert not ours.search(line), line
    # A dovecot 2.3 box (Debian 12) keeps the filter's expressions only: its jail is the one it always had.
    assert "failregex" not in _jail_section(rendered["debian-12"][JAIL], "dovecot")
    # Nothing else differs: the variant adds its comment and failregex after the jail's journalmatch.
    head, added = rendered["debian-13"][JAIL].split("journalmatch = _SYSTEMD_UNIT=dovecot.service\n", 1)
    added, tail = added.split("\n\n", 1)  # up to the blank line before the next jail
    assert added.startswith("# dovecot 2.4") and added.count("\nfailregex = ") == 1
    assert rendered["debian-12"][JAIL] == f"{head}journalmatch = _SYSTEMD_UNIT=dovecot.service\n\n{tail}"
