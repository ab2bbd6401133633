"""Tests for the inventory: exact operator-facing messages (file:line: field: problem), line finding,
locked and validated edits that keep the operator's formatting, and the committed example."""

from __future__ import annotations

import base64
import multiprocessing
import os
import shutil
import stat
import sys
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import tomlkit

from miab_remote.engine.converge import build
from miab_remote.errors import InputError
from miab_remote.fleet.model import DEFAULT_RECIPES
from miab_remote.fleet.options import OPTION_SPECS
from miab_remote.fleet.positions import line_map
from miab_remote.fleet.problems import InventoryError
from miab_remote.fleet.schema import NODE_KEYS, SSH_KEYS, TOP_KEYS, validate
from miab_remote.fleet.store import Inventory, new_document
from miab_remote.mail import dnszones
from miab_remote.profiles import PROFILES

REPO = Path(__file__).resolve().parents[2]
NAME = "box1.example.test"
P = f"hosts/{NAME}.toml"  # as messages show it, the tests running from the folder holding hosts/
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFsdu096fuX3ehLTX3FBmjxFy/DzQYQzK5HcyvHBFZt1 root@box1"
KEY2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDqogdkvXOyerXkd91+289mKTfE48eD6ii2L+JHqHPvY root@box2"
# KEY with its data cut short by three bytes, and with two bytes too many: the right type, a broken key.
TRUNCATED_KEY = "ssh-ed25519 " + base64.b64encode(base64.b64decode(KEY.split()[1])[:-3]).decode()
LONG_KEY = "ssh-ed25519 " + base64.b64encode(base64.b64decode(KEY.split()[1]) + b"xx").decode()
# A well-formed SSH key blob of a type nobody implements: b"\0\0\0\7ssh-foo" + one 32-byte string.
UNKNOWN_TYPE_KEY = "ssh-foo " + base64.b64encode(b"\0\0\0\7ssh-foo\0\0\0\x20" + b"\1" * 32).decode()
HASH = "{BLF-CRYPT}$2b$12$L/g3lQ0sz.cNZmOimR30yOF8goi9mg8K0b/RfzeW7Ou58xym2TTGK"
SHA_HASH = (
    "{SHA512-CRYPT}$6$FvdRFBwBhnuAse/c$ZxCAFoMIkqZWQAoURRg1UfpBqJra69BL8s3qLC174UDj4vfHvY3vQV.GIzEcmOasxji3tz"
    "A6lbc2cceoT5xVD0"
)
ARGON_HASH = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"

# Two lines: every case below appends to this, so its own lines start at 3.
HEAD = f'hostname = "{NAME}"\naddress = "192.0.2.10"\n'

# A valid file in the operator's own style: comments, odd spacing, inline tables, a multi-line array.
STYLED = f"""\
# box1: the test box.   Keep   this comment exactly.
hostname = "{NAME}"
address    =   "192.0.2.10"   # spacing kept
host_keys = [
    "{KEY}",  # the ed25519 key
]
domains = [ "example.test" ,"example.net" ]
options = {{ greylist_delay = 60 }}  # inline

[ssh]
user = "root"
port = 22   # non-standard later

# Mailboxes
[[users]]
email = "alice@example.test"
password_hash = "{HASH}"
quota = "2G"

[[aliases]]
source = "postmaster@example.test"
destinations = [
  "alice@example.test",   # first
  "ops@example.net",
]
"""


def errors_of(text: str, path: str = P) -> str:
    """The message validate() raises for `text` read from `path` (the test fails if it validates), bad input
    (exit 2). The schema tests of the other tables use it too."""
    with pytest.raises(InputError) as info:
        validate(text, Path(path))
    assert info.value.exit_code == 2
    return str(info.value)


@pytest.fixture
def hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Inventory:
    """An inventory in tmp/hosts, with the current folder at tmp so messages say hosts/..."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hosts").mkdir(mode=0o700)
    return Inventory(Path("hosts"))


def put(inv: Inventory, text: str, name: str = NAME) -> Path:
    path = inv.root / f"{name}.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


# ------------------------------------------------------------------------------------------ error cases

ERROR_CASES: list[tuple[str, str, str]] = [
    # -- hostname / address / provider / os
    ("missing-hostname", 'address = "192.0.2.10"\n',
     f"{P}:1: hostname: required key is missing; expected the box's FQDN, like 'box1.example.org'"),
    ("missing-address", f'# comment\nhostname = "{NAME}"\n',
     f"{P}:1: address: required key is missing; expected an IP address or DNS name to reach the box at"),
    ("hostname-type", 'hostname = 5\naddress = "192.0.2.10"\n',
     f"{P}:1: hostname: expected the box's FQDN, like 'box1.example.org', got an integer 5"),
    ("hostname-case", 'hostname = "Box1.Example.test"\naddress = "192.0.2.10"\n',
     f"{P}:1: hostname: 'Box1.Example.test' is not lower-case; write 'box1.example.test'"),
    ("hostname-dot", 'hostname = "box1.example.test."\naddress = "192.0.2.10"\n',
     f"{P}:1: hostname: 'box1.example.test.' ends with a dot; write 'box1.example.test'"),
    ("hostname-short", 'address = "192.0.2.10"\nhostname = "box1"\n',
     f"{P}:2: hostname: 'box1' is not a fully qualified domain name; expected lower-case labels joined "
     "by dots, like 'box1.example.org'"),
    ("hostname-label", 'hostname = "-box.example.test"\naddress = "192.0.2.10"\n',
     f"{P}:1: hostname: '-box.example.test' is not a fully qualified domain name; expected lower-case "
     "labels joined by dots, like 'box1.example.org'"),
    ("hostname-stem", 'hostname = "box2.example.test"\naddress = "192.0.2.10"\n',
     f"{P}:1: hostname: 'box2.example.test' does not match the file name box1.example.test.toml; "
     "an inventory file is named after its box: box2.example.test.toml"),
    ("address-ipv4", f'hostname = "{NAME}"\naddress = "192.0.2.300"\n',
     f"{P}:2: address: '192.0.2.300' is not a valid IPv4 address"),
    ("address-brackets", f'hostname = "{NAME}"\naddress = "[2001:db8::1]"\n',
     f"{P}:2: address: '[2001:db8::1]': write the IPv6 address without brackets"),
    ("address-junk", f'hostname = "{NAME}"\naddress = "box one"\n',
     f"{P}:2: address: 'box one' is not an IP address or DNS name; expected like '203.0.113.10', "
     "'2001:db8::10' or 'box1.example.org'"),
    ("provider", HEAD + 'provider = "aws"\n',
     f'{P}:3: provider: \'aws\' is not a provider; accepted: "local", "digitalocean", "linode", "vultr", '
     '"ec2" or "manual"'),
    ("os", HEAD + 'os = "ubuntu-22.04"\n',
     f"{P}:3: os: 'ubuntu-22.04' is not a supported OS profile; supported: debian-13, debian-12"),
    ("os-type", HEAD + "os = 12\n",
     f"{P}:3: os: expected an OS profile id, got an integer 12"),
    # -- unknown keys
    ("unknown-top", HEAD + 'domain = ["example.test"]\n',
     f"{P}:3: domain: unknown key (did you mean 'domains'?); accepted: hostname, address, provider, ssh, "
     "host_keys, os, domains, recipes, users, aliases, options, ipv4, ipv6, dns, node, relay, backup, acme"),
    ("unknown-top-table", HEAD + "\n[sshd]\nport = 22\n",
     f"{P}:4: sshd: unknown key (did you mean 'ssh'?); accepted: hostname, address, provider, ssh, "
     "host_keys, os, domains, recipes, users, aliases, options, ipv4, ipv6, dns, node, relay, backup, acme"),
    ("unknown-quoted-key", HEAD + '"odd key" = 1\n',
     f'{P}:3: "odd key": unknown key; accepted: hostname, address, provider, ssh, '
     "host_keys, os, domains, recipes, users, aliases, options, ipv4, ipv6, dns, node, relay, backup, acme"),
    # -- [ssh]
    ("ssh-type", HEAD + 'ssh = "root"\n',
     f"{P}:3: ssh: expected a table ([ssh] section), got a string 'root'"),
    ("ssh-unknown", HEAD + "[ssh]\nuser = 'root'\nprot = 22\n",
     f"{P}:5: ssh.prot: unknown key in [ssh] (did you mean 'port'?); accepted: user, port, identity_file, jump, "
     "jump_host_keys"),
    ("ssh-jump-option", HEAD + "[ssh]\njump = '-oProxyCommand=sh'\n",
     f"{P}:4: ssh.jump: '-oProxyCommand=sh' is not a jump host; accepted: [user@]host[:port], several "
     "separated by commas, like 'admin@bastion.example.org:22'"),
    ("ssh-jump-port", HEAD + "[ssh]\njump = 'admin@bastion.example.org:70000'\n",
     f"{P}:4: ssh.jump: port 70000 in 'admin@bastion.example.org:70000' is out of range 1..65535; accepted: "
     "[user@]host[:port], several separated by commas, like 'admin@bastion.example.org:22'"),
    ("ssh-jump-user", HEAD + "[ssh]\njump = 'Bad User@bastion'\n",
     f"{P}:4: ssh.jump: 'Bad User@bastion' is not a jump host; accepted: [user@]host[:port], several "
     "separated by commas, like 'admin@bastion.example.org:22'"),
    ("ssh-jump-type", HEAD + "[ssh]\njump = 22\n",
     f"{P}:4: ssh.jump: expected jump hosts like 'admin@bastion.example.org:22', got an integer 22"),
    ("ssh-jump-key-one-word", HEAD + '[ssh]\njump_host_keys = ["AAAA"]\n',
     f"{P}:4: ssh.jump_host_keys[0]: not an SSH public key: 'AAAA'; expected a line like 'ssh-ed25519 "
     "AAAAC3Nza... root@box'"),
    ("ssh-jump-key-twice", HEAD + f'[ssh]\njump_host_keys = ["{KEY}", "{KEY}"]\n',
     f"{P}:4: ssh.jump_host_keys[1]: the same key as jump_host_keys[0]; pin each key once"),
    ("ssh-port-range", HEAD + "[ssh]\nport = 0\n",
     f"{P}:4: ssh.port: 0 is out of range; accepted: 1..65535"),
    ("ssh-port-type", HEAD + '[ssh]\nport = "22"\n',
     f"{P}:4: ssh.port: expected an integer port 1..65535, got a string '22'"),
    ("ssh-port-bool", HEAD + "[ssh]\nport = true\n",
     f"{P}:4: ssh.port: expected an integer port 1..65535, got a boolean True"),
    ("ssh-port-dotted", HEAD + "ssh.port = 65536\n",
     f"{P}:3: ssh.port: 65536 is out of range; accepted: 1..65535"),
    ("ssh-port-inline", HEAD + "ssh = { user = 'root', port = -1 }\n",
     f"{P}:3: ssh.port: -1 is out of range; accepted: 1..65535"),
    ("ssh-user", HEAD + '[ssh]\nuser = "Admin User"\n',
     f"{P}:4: ssh.user: 'Admin User' is not a POSIX user name; expected lower-case letters, digits, '_' "
     "or '-', starting with a letter or '_', at most 32 characters, like 'root'"),
    ("ssh-identity", HEAD + '[ssh]\nidentity_file = ""\n',
     f"{P}:4: ssh.identity_file: '' is not a path; expected like '~/.ssh/id_ed25519'"),
    # -- host_keys
    ("host-key-bad", HEAD + f'host_keys = [\n  "{KEY}",\n  "ssh-ed25519 AAAA",\n]\n',
     f"{P}:5: host_keys[1]: not an SSH public key (type does not match its data): 'ssh-ed25519 AAAA'; "
     "expected a line like 'ssh-ed25519 AAAAC3Nza... root@box'"),
    ("host-key-one-word", HEAD + 'host_keys = ["AAAA"]\n',
     f"{P}:3: host_keys[0]: not an SSH public key: 'AAAA'; expected a line like 'ssh-ed25519 AAAAC3Nza... "
     "root@box'"),
    ("host-key-base64", HEAD + 'host_keys = ["ssh-ed25519 !!!"]\n',
     f"{P}:3: host_keys[0]: not an SSH public key (bad base64): 'ssh-ed25519 !!!'; expected a line like "
     "'ssh-ed25519 AAAAC3Nza... root@box'"),
    ("host-key-truncated", HEAD + f'host_keys = [\n  "{KEY}",\n  "{TRUNCATED_KEY}",\n]\n',
     f"{P}:5: host_keys[1]: not an SSH public key (its ssh-ed25519 key data is truncated or invalid): "
     f"'{TRUNCATED_KEY}'; expected a line like 'ssh-ed25519 AAAAC3Nza... root@box'"),
    ("host-key-trailing-data", HEAD + f'host_keys = ["{LONG_KEY} root@box1"]\n',
     f"{P}:3: host_keys[0]: not an SSH public key (its ssh-ed25519 key data is truncated or invalid): "
     f"'{LONG_KEY} root@box1'; expected a line like 'ssh-ed25519 AAAAC3Nza... root@box'"),
    ("host-key-unknown-type", HEAD + f'\nhost_keys = ["{UNKNOWN_TYPE_KEY}"]\n',
     f"{P}:4: host_keys[0]: not an SSH public key (unsupported key type 'ssh-foo'): '{UNKNOWN_TYPE_KEY}'; "
     "expected a line like 'ssh-ed25519 AAAAC3Nza... root@box'"),
    ("host-key-twice", HEAD + f'host_keys = ["{KEY}", "{KEY.rsplit(" ", 1)[0]} other"]\n',
     f"{P}:3: host_keys[1]: the same key as host_keys[0]; pin each key once"),
    ("host-key-type", HEAD + "host_keys = [1]\n",
     f"{P}:3: host_keys[0]: expected SSH public key lines, got an integer 1"),
    ("host-keys-not-array", HEAD + f'host_keys = "{KEY}"\n',
     f"{P}:3: host_keys: expected an array of SSH public key lines, got a string '{KEY[:66]}..."),
    # -- domains / recipes
    ("domains-twice", HEAD + 'domains = ["example.test", "example.net", "example.test"]\n',
     f"{P}:3: domains[2]: 'example.test' is listed twice (also domains[0])"),
    ("domains-bad", HEAD + 'domains = [\n  "example.test",\n  "exa mple.net",\n]\n',
     f"{P}:5: domains[1]: 'exa mple.net' is not a domain name; expected lower-case labels joined by dots, "
     "like 'example.org'"),
    ("domains-empty", HEAD + "domains = []\n",
     f"{P}:3: domains: is empty; list at least one mail domain, or remove the key to use the hostname's "
     "parent domain ('example.test')"),
    ("recipes-bad", HEAD + 'recipes = ["base", "Web Mail"]\n',
     f"{P}:3: recipes[1]: 'Web Mail' is not a recipe name; expected lower-case letters, digits, '_' and '-'"),
    ("recipes-twice", HEAD + 'recipes = ["base", "base"]\n',
     f"{P}:3: recipes[1]: 'base' is listed twice (also recipes[0])"),
    # -- users (the brief's own example: users[2].email on line 12)
    ("user-email", HEAD + f"""
# The team
[[users]]
email = "alice@example.test"
password_hash = "{HASH}"
[[users]]
email = "carol@example.test"
password_hash = "{HASH}"
[[users]]
email = "bob@"
password_hash = "{HASH}"
""", f"{P}:12: users[2].email: 'bob@' is not an email address"),
    ("user-email-inline", HEAD + f"""users = [
  {{ email = "alice@example.test", password_hash = "{HASH}" }},
  {{ email = "bob@@example.test", password_hash = "{HASH}" }},
]
""", f"{P}:5: users[1].email: 'bob@@example.test' is not an email address"),
    # Only what dovecot logs in (auth_username_chars), postfix maps and the Maildir layout all serve.
    *(
        (f"user-char-{n}", HEAD + f'[[users]]\nemail = "{local}@example.test"\npassword_hash = "{HASH}"\n',
         f"{P}:4: users[0].email: {local + '@example.test'!r} cannot be an address on this box: {shown} in "
         f"{local!r}; accepted before the '@': ASCII letters, digits, '.', '-' and '_' (what dovecot accepts in "
         "a login)")
        for n, (local, shown) in enumerate([
            ("o'neil", '"\'"'), ("a/b", "'/'"), ("`id`", "'`'"), ("a|b", "'|'"), ("{x}", "'{', '}'"),
            ("a#b", "'#'"), ("a$b", "'$'"), ("a+b", "'+'"),
        ])
    ),
    ("user-email-dots", HEAD + f'[[users]]\nemail = "a..b@example.test"\npassword_hash = "{HASH}"\n',
     f"{P}:4: users[0].email: 'a..b@example.test' cannot be an address on this box: a '.' may not start, end "
     "or repeat in 'a..b'; accepted before the '@': ASCII letters, digits, '.', '-' and '_' (what dovecot "
     "accepts in a login)"),
    ("alias-source-char", HEAD + '[[aliases]]\nsource = "a|b@example.test"\ndestinations = ["b@x.org"]\n',
     f"{P}:4: aliases[0].source: 'a|b@example.test' cannot be an address on this box: '|' in 'a|b'; accepted "
     "before the '@': ASCII letters, digits, '.', '-' and '_' (what dovecot accepts in a login); expected an "
     "address, or '@domain' for a catch-all"),
    ("alias-dest-here-char", HEAD + '[[aliases]]\nsource = "a@example.test"\ndestinations = ["b+c@example.test"]\n',
     f"{P}:5: aliases[0].destinations[0]: 'b+c@example.test' cannot be an address on this box: '+' in 'b+c'; "
     "accepted before the '@': ASCII letters, digits, '.', '-' and '_' (what dovecot accepts in a login)"),
    ("user-not-hosted", HEAD + f'[[users]]\nemail = "bob@example.net"\npassword_hash = "{HASH}"\n',
     f"{P}:4: users[0].email: 'bob@example.net' is not in a domain this box hosts; domains: example.test"),
    ("user-twice", HEAD + f"""[[users]]
email = "bob@example.test"
password_hash = "{HASH}"
[[users]]
email = "BOB@example.test"
password_hash = "{HASH}"
""", f"{P}:7: users[1].email: 'BOB@example.test' is listed twice (also users[0].email)"),
    ("user-missing-email", HEAD + f'\n[[users]]\npassword_hash = "{HASH}"\n',
     f"{P}:4: users[0].email: required key is missing; expected the mailbox address, like 'bob@example.org'"),
    ("user-missing-hash", HEAD + '[[users]]\nemail = "bob@example.test"\n',
     f"{P}:3: users[0].password_hash: required key is missing; expected a password hash starting with "
     "{SHA512-CRYPT}$6$, {BLF-CRYPT}$2, {ARGON2ID}$argon2id$"),
    ("user-clear-password", HEAD + '[[users]]\nemail = "bob@example.test"\npassword_hash = "hunter2"\n',
     f"{P}:5: users[0].password_hash: looks like a clear-text password (not shown); store a hash instead, "
     "for example from `doveadm pw -s BLF-CRYPT`; accepted: {SHA512-CRYPT}$6$, {BLF-CRYPT}$2, "
     "{ARGON2ID}$argon2id$"),
    ("user-bare-crypt", HEAD + f'[[users]]\nemail = "bob@example.test"\npassword_hash = "{SHA_HASH[14:]}"\n',
     f"{P}:5: users[0].password_hash: a crypt hash without its {{SCHEME}} prefix; prefix it with "
     "{SHA512-CRYPT}"),
    ("user-plain-scheme", HEAD + '[[users]]\nemail = "bob@example.test"\npassword_hash = "{PLAIN}secret"\n',
     f"{P}:5: users[0].password_hash: unsupported hash scheme {{PLAIN}}; accepted: {{SHA512-CRYPT}}$6$, "
     "{BLF-CRYPT}$2, {ARGON2ID}$argon2id$"),
    ("user-truncated-hash", HEAD + f'[[users]]\nemail = "bob@example.test"\npassword_hash = "{HASH[:-5]}"\n',
     f"{P}:5: users[0].password_hash: malformed or truncated {{BLF-CRYPT}} hash; expected {{BLF-CRYPT}}$2..., "
     "the whole hash (for example from doveadm pw)"),
    ("user-scheme-without-crypt", HEAD + '[[users]]\nemail = "b@example.test"\npassword_hash = "{SHA512-CRYPT}x"\n',
     f"{P}:5: users[0].password_hash: malformed or truncated {{SHA512-CRYPT}} hash; expected "
     "{SHA512-CRYPT}$6$..., the whole hash (for example from doveadm pw)"),
    ("user-email-newline", HEAD + '[[users]]\nemail = "b@example.test\\n"\npassword_hash = "x"\n',
     f"{P}:4: users[0].email: 'b@example.test\\n' is not an email address\n"
     f"{P}:5: users[0].password_hash: looks like a clear-text password (not shown); store a hash instead, "
     "for example from `doveadm pw -s BLF-CRYPT`; accepted: {SHA512-CRYPT}$6$, {BLF-CRYPT}$2, "
     "{ARGON2ID}$argon2id$"),
    ("hostname-newline", 'hostname = "box1.example.test\\n"\naddress = "192.0.2.10"\n',
     f"{P}:1: hostname: 'box1.example.test\\n' is not a fully qualified domain name; expected lower-case "
     "labels joined by dots, like 'box1.example.org'"),
    ("user-quota", HEAD + f'[[users]]\nemail = "b@example.test"\npassword_hash = "{HASH}"\nquota = "2 GB"\n',
     f'{P}:6: users[0].quota: \'2 GB\' is not a quota; expected a size like "500M" or "2G" (suffix K, M, G '
     'or T), or "0" for none'),
    ("user-quota-huge", HEAD + f'[[users]]\nemail = "b@example.test"\npassword_hash = "{HASH}"\n'
     'quota = "99999999999999999999T"\n',
     f"{P}:6: users[0].quota: '99999999999999999999T' is too large; accepted: at most 8388607T "
     "(9223372036854775807 bytes, dovecot's limit: a signed 64-bit count of bytes)"),
    ("user-quota-kib", HEAD + f'[[users]]\nemail = "b@example.test"\npassword_hash = "{HASH}"\n'
     'quota = "9007199254740992"\n',  # no unit: dovecot reads KiB
     f"{P}:6: users[0].quota: '9007199254740992' is too large; accepted: at most 8388607T "
     "(9223372036854775807 bytes, dovecot's limit: a signed 64-bit count of bytes)"),
    ("user-unknown-key", HEAD + f'[[users]]\nemail = "b@example.test"\npasword_hash = "{HASH}"\n',
     f"{P}:3: users[0].password_hash: required key is missing; expected a password hash starting with "
     "{SHA512-CRYPT}$6$, {BLF-CRYPT}$2, {ARGON2ID}$argon2id$\n"
     f"{P}:5: users[0].pasword_hash: unknown key in a user (did you mean 'password_hash'?); accepted: "
     "email, password_hash, quota"),
    ("users-not-array", HEAD + 'users = "bob@example.test"\n',
     f"{P}:3: users: expected an array of tables ([[users]] sections), got a string 'bob@example.test'"),
    ("users-not-table", HEAD + 'users = [\n  "bob@example.test",\n]\n',
     f"{P}:4: users[0]: expected a table (one mailbox), got a string 'bob@example.test'"),
    # -- aliases
    ("alias-itself", HEAD + '[[aliases]]\nsource = "a@example.test"\ndestinations = ["b@x.org", "A@example.test"]\n',
     f"{P}:5: aliases[0].destinations[1]: 'A@example.test' is the alias's own source: an alias to itself"),
    ("alias-dest-twice", HEAD + '[[aliases]]\nsource = "a@example.test"\ndestinations = [\n  "b@x.org",\n'
     '  "B@x.org",\n]\n',
     f"{P}:7: aliases[0].destinations[1]: 'B@x.org' is listed twice (also destinations[0])"),
    ("alias-dest-empty", HEAD + '[[aliases]]\nsource = "a@example.test"\ndestinations = []\n',
     f"{P}:5: aliases[0].destinations: is empty; list at least one address to deliver to"),
    ("alias-dest-bad", HEAD + '[[aliases]]\nsource = "a@example.test"\ndestinations = ["nobody"]\n',
     f"{P}:5: aliases[0].destinations[0]: 'nobody' is not an email address"),
    ("alias-dest-type", HEAD + '[[aliases]]\nsource = "a@example.test"\ndestinations = "b@x.org"\n',
     f"{P}:5: aliases[0].destinations: expected a non-empty array of addresses, got a string 'b@x.org'"),
    ("alias-missing", HEAD + '\n\n[[aliases]]\nsource = "a@example.test"\n',
     f"{P}:5: aliases[0].destinations: required key is missing; expected a non-empty array of addresses"),
    ("alias-source-bad", HEAD + '[[aliases]]\nsource = "postmaster"\ndestinations = ["b@x.org"]\n',
     f"{P}:4: aliases[0].source: 'postmaster' is not an email address; expected an address, or '@domain' "
     "for a catch-all"),
    ("alias-not-hosted", HEAD + '[[aliases]]\nsource = "a@example.net"\ndestinations = ["b@x.org"]\n',
     f"{P}:4: aliases[0].source: 'a@example.net' is not in a domain this box hosts; domains: example.test"),
    ("catch-all-not-hosted", HEAD + '[[aliases]]\nsource = "@example.net"\ndestinations = ["b@x.org"]\n',
     f"{P}:4: aliases[0].source: '@example.net' is not in a domain this box hosts; domains: example.test"),
    ("catch-all-bad", HEAD + '[[aliases]]\nsource = "@example"\ndestinations = ["b@x.org"]\n',
     f"{P}:4: aliases[0].source: catch-all '@example': 'example' is not a domain name; expected lower-case "
     "labels joined by dots, like 'example.org'"),
    ("alias-twice", HEAD + '[[aliases]]\nsource = "a@example.test"\ndestinations = ["b@x.org"]\n'
     '[[aliases]]\nsource = "A@example.test"\ndestinations = ["c@x.org"]\n',
     f"{P}:7: aliases[1].source: 'A@example.test' is listed twice (also aliases[0].source)"),
    ("alias-is-user", HEAD + f'[[users]]\nemail = "bob@example.test"\npassword_hash = "{HASH}"\n'
     '[[aliases]]\nsource = "Bob@example.test"\ndestinations = ["b@x.org"]\n',
     f"{P}:7: aliases[0].source: 'Bob@example.test' is also a user (users[0].email); an address is either "
     "a mailbox or an alias"),
    ("alias-unknown-key", HEAD + '[[aliases]]\nsource = "a@example.test"\ndestination = ["b@x.org"]\n',
     f"{P}:3: aliases[0].destinations: required key is missing; expected a non-empty array of addresses\n"
     f"{P}:5: aliases[0].destination: unknown key in an alias (did you mean 'destinations'?); accepted: "
     "source, destinations"),
    # -- options
    ("option-unknown", HEAD + "[options]\ngreylisting = 0\n",
     f"{P}:4: options.greylisting: unknown option (did you mean 'greylist_delay'?); accepted: "
     "message_size_limit, greylist_delay, dns, resolvers, admin_email"),
    ("option-admin-not-an-address", HEAD + '[options]\nadmin_email = "root"\n',
     f"{P}:4: options.admin_email: 'root' is not an email address"),
    ("option-admin-unknown-here", HEAD + '[options]\nadmin_email = "nobody@example.test"\n',
     f"{P}:4: options.admin_email: 'nobody@example.test' is on this box but is neither a user nor an alias of it; "
     "accepted: a user's address, an alias's source, or an address elsewhere"),
    ("option-admin-hostname", HEAD + f'[options]\nadmin_email = "root@{NAME}"\n',
     f"{P}:4: options.admin_email: 'root@{NAME}' is on this box but is neither a user nor an alias of it; "
     "accepted: a user's address, an alias's source, or an address elsewhere"),
    ("option-range", HEAD + "[options]\ngreylist_delay = 3601\n",
     f"{P}:4: options.greylist_delay: 3601 is out of range; accepted: 0..3600 seconds"),
    ("option-min", HEAD + "options.message_size_limit = 1000\n",
     f"{P}:3: options.message_size_limit: 1000 is out of range; accepted: 1048576..9223372036854775807 bytes "
     "(postfix's largest is 2**63 - 1; it takes mail only while its disk has 1.5 times the limit free)"),
    ("option-max", HEAD + "options.message_size_limit = 99999999999999999999\n",
     f"{P}:3: options.message_size_limit: 99999999999999999999 is out of range; accepted: "
     "1048576..9223372036854775807 bytes (postfix's largest is 2**63 - 1; it takes mail only while its disk "
     "has 1.5 times the limit free)"),
    ("option-type", HEAD + '[options]\nmessage_size_limit = "128M"\n',
     f"{P}:4: options.message_size_limit: expected an integer number of bytes, 1048576..9223372036854775807, "
     "got a string '128M'"),
    ("option-choice", HEAD + 'options = { dns = "bind" }\n',
     f'{P}:3: options.dns: \'bind\' is not accepted; accepted: "nsd" or "external"'),
    ("options-not-table", HEAD + "options = []\n",
     f"{P}:3: options: expected a table ([options] section), got an array []"),
    # -- TOML syntax: file and line, nothing else checked
    ("syntax-value", HEAD + "\n[ssh]\nport = \n",
     f"{P}:5: TOML syntax error at column 8: Invalid value"),
    ("syntax-duplicate", HEAD + 'address = "192.0.2.11"\n',
     f"{P}:3: TOML syntax error at column 23: Cannot overwrite a value"),
    ("syntax-table-twice", HEAD + "[ssh]\nport = 22\n[ssh]\nuser = 'root'\n",
     f"{P}:5: TOML syntax error at column 5: Cannot declare ('ssh',) twice"),
    ("syntax-unterminated", HEAD + 'os = "debian-12\n',
     f"{P}:3: TOML syntax error at column 16: Illegal character '\\n'"),
    ("syntax-eof", HEAD + "recipes = [\n",
     f"{P}:4: TOML syntax error at the end of the file: Invalid value"),
    ("syntax-multiline-inline-table", HEAD + "ssh = {\n  port = 22 }\n",
     f"{P}:3: TOML syntax error at column 8: Invalid initial character for a key part"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_error_messages(text: str, expected: str) -> None:
    assert errors_of(text) == expected


def test_error_is_an_input_error_with_structured_problems() -> None:
    with pytest.raises(InventoryError) as info:
        validate(HEAD + "[ssh]\nport = 0\n", Path(P))
    assert isinstance(info.value, InputError) and info.value.exit_code == 2
    [problem] = info.value.problems
    assert (problem.line, problem.field) == (4, "ssh.port")


def test_all_problems_are_reported_in_file_order() -> None:
    text = """\
hostname = "box1.example.test"
address = "192.0.2.10"
domains = ["example.test"]

[options]
dns = "bind"

[[users]]
email = "bob@example.test"
password_hash = "secret"

[ssh]
port = 0
"""
    assert errors_of(text).splitlines() == [
        f'{P}:6: options.dns: \'bind\' is not accepted; accepted: "nsd" or "external"',
        f"{P}:10: users[0].password_hash: looks like a clear-text password (not shown); store a hash instead, "
        "for example from `doveadm pw -s BLF-CRYPT`; accepted: {SHA512-CRYPT}$6$, {BLF-CRYPT}$2, "
        "{ARGON2ID}$argon2id$",
        f"{P}:13: ssh.port: 0 is out of range; accepted: 1..65535",
    ]


def test_a_clear_password_is_never_echoed() -> None:
    message = errors_of(HEAD + '[[users]]\nemail = "bob@example.test"\npassword_hash = "Tr0ub4dor&3"\n')
    assert "Tr0ub4dor" not in message and "clear-text" in message


def test_invalid_domain_does_not_cascade_into_users() -> None:
    text = HEAD + f'domains = ["Example.test"]\n[[users]]\nemail = "bob@example.test"\npassword_hash = "{HASH}"\n'
    assert errors_of(text) == f"{P}:3: domains[0]: 'Example.test' is not lower-case; write 'example.test'"


def test_path_is_absolute_when_outside_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    path = tmp_path / "elsewhere" / f"{NAME}.toml"
    assert errors_of(HEAD + "os = 1\n", str(path)).startswith(f"{path}:3: os: ")


def test_path_is_relative_when_given_absolute_under_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert errors_of(HEAD + "os = 1\n", str(tmp_path / P)).startswith(f"{P}:3: os: ")


# --------------------------------------------------------------------------------------- valid documents


def test_defaults_are_filled_in() -> None:
    host = validate(HEAD, Path(P))
    assert host.name == host.hostname == NAME
    assert host.path == Path(P)
    assert host.address == "192.0.2.10"
    assert (host.ssh.user, host.ssh.port, host.ssh.identity_file) == ("root", 22, None)
    assert host.domains == ("example.test",)  # the hostname's parent domain
    assert host.recipes == DEFAULT_RECIPES
    assert host.host_keys == () and host.users == () and host.aliases == ()
    assert host.os is None and host.provider is None
    assert host.options == {name: spec.default for name, spec in OPTION_SPECS.items()}
    assert host.options == {
        "message_size_limit": 134217728,
        "greylist_delay": 180,
        "dns": "nsd",
        "resolvers": (),
        "admin_email": None,
    }


def test_a_full_document() -> None:
    text = (
        HEAD
        + f"""provider = "digitalocean"
os = "debian-12"
host_keys = ["{KEY}", "{KEY2}"]
domains = ["example.test", "example.net"]
recipes = ["base", "mail-server_2"]
options = {{ greylist_delay = 0 }}

[[users]]
email = "alice@example.test"
password_hash = "{HASH}"
quota = "0"

[[users]]
email = "bob@example.net"
password_hash = "{SHA_HASH}"

[[users]]
email = "carol@example.net"
password_hash = "{ARGON_HASH}"
quota = "500M"

[[aliases]]
source = "@example.net"
destinations = ["bob@example.net", "someone@elsewhere.org"]
"""
    )
    host = validate(text, Path(P))
    assert host.provider == "digitalocean" and host.os == "debian-12"
    assert host.host_keys == (KEY, KEY2)
    assert host.domains == ("example.test", "example.net")
    assert host.recipes == ("base", "mail-server_2")
    assert [(u.email, u.quota) for u in host.users] == [
        ("alice@example.test", "0"),
        ("bob@example.net", None),
        ("carol@example.net", "500M"),
    ]
    assert host.users[1].password_hash == SHA_HASH
    assert [(a.source, a.destinations) for a in host.aliases] == [
        ("@example.net", ("bob@example.net", "someone@elsewhere.org"))
    ]
    assert host.options["greylist_delay"] == 0 and host.options["dns"] == "nsd"


@pytest.mark.parametrize("address", ["192.0.2.10", "2001:db8::10", "fe80::1%eth0", "box1.example.test", "Box1"])
def test_addresses_accepted(address: str) -> None:
    assert validate(f'hostname = "{NAME}"\naddress = "{address}"\n', Path(P)).address == address


def test_two_label_hostname_serves_itself() -> None:
    assert validate('hostname = "example.test"\naddress = "192.0.2.1"\n', Path("example.test.toml")).domains == (
        "example.test",
    )


def test_identity_file_home_and_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / "hosts" / f"{NAME}.toml"
    home = validate(HEAD + '[ssh]\nidentity_file = "~/.ssh/id_ed25519"\n', path)
    assert home.ssh.identity_file == str(tmp_path / "home" / ".ssh" / "id_ed25519")
    relative = validate(HEAD + '[ssh]\nidentity_file = "keys/box1"\n', path)
    assert relative.ssh.identity_file == str(tmp_path / "hosts" / "keys" / "box1")
    absolute = validate(HEAD + '[ssh]\nidentity_file = "/etc/box1.key"\n', path)
    assert absolute.ssh.identity_file == "/etc/box1.key"


def test_relative_identity_file_is_absolute_even_for_a_relative_inventory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    host = validate(HEAD + '[ssh]\nidentity_file = "keys/box1"\n', Path(P))
    assert host.ssh.identity_file == str(tmp_path / "hosts" / "keys" / "box1")


# ------------------------------------------------------------------------------------------ line finding

# Every integer value is the number of the line it is written on, so the map can be checked against
# what tomllib parsed, for every leaf, whatever the TOML construct.
LINES_DOC = """\
# leading comment
a = 2
"quoted key" = 3
'lit.key' = 4
dotted.x.y = 5
dotted . z = 6
s1 = "has ] and # and \\" inside"
n8 = 8
s2 = '''multi
line ] # "
'''
n12 = 12
s3 = \"\"\"tricky ""\"\"\"
n14 = 14
arr = [
  16,  # comment, with ] and [
  # a whole-line comment
  18, [18,
  19], { k = 19 },
]
inl = { one = 21, two.three = 21, "four" = { five = 21 } }
aoi = [ { p = 22 }, { p = 22 },
  { p = 23 } ]
when = 1979-05-27 07:32:00Z
n25 = 25

[t]
n28 = 28
sub.n29 = 29

[t.deeper]
n32 = 32

[[arr_t]]
n35 = 35
[arr_t.sub]
n37 = 37
[[arr_t.inner]]
n39 = 39
[[arr_t.inner]]
n41 = 41

[[arr_t]]
n44 = 44
[[arr_t.inner]]
n46 = 46

  [ "spaced" . 'header' ]
  n49 = 49
"""


def _leaves(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], Any]]:
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, (*path, k))]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, (*path, i))]
    return [(path, value)]


def test_line_map_matches_every_leaf() -> None:
    lines = line_map(LINES_DOC)
    leaves = _leaves(tomllib.loads(LINES_DOC))
    assert len(leaves) > 30
    for path, value in leaves:
        assert path in lines, path
        if isinstance(value, int) and not isinstance(value, bool):
            assert lines[path] == value, path


def test_line_map_tables_and_arrays_of_tables() -> None:
    lines = line_map(LINES_DOC)
    expected = {
        (): 1,
        ("s2",): 9,
        ("s3",): 13,
        ("arr",): 15,
        ("arr", 2): 18,
        ("arr", 2, 1): 19,
        ("arr", 3): 19,
        ("inl",): 21,
        ("aoi", 2): 23,
        ("when",): 24,
        ("dotted",): 5,
        ("t",): 27,
        ("t", "sub"): 29,
        ("t", "deeper"): 31,
        ("arr_t",): 34,
        ("arr_t", 0): 34,
        ("arr_t", 0, "sub"): 36,
        ("arr_t", 0, "inner"): 38,
        ("arr_t", 0, "inner", 1): 40,
        ("arr_t", 1): 43,
        ("arr_t", 1, "inner", 0): 45,
        ("spaced", "header"): 48,
    }
    assert {k: lines.get(k) for k in expected} == expected


def test_line_map_explicit_header_wins_over_an_earlier_implicit_one() -> None:
    lines = line_map("[a.b]\nx = 1\n[a]\ny = 3\n")
    assert lines[("a",)] == 3 and lines[("a", "b")] == 1


def test_line_map_of_crlf_text() -> None:
    text = HEAD.replace("\n", "\r\n") + "[ssh]\r\nport = 0\r\n"
    assert errors_of(text) == f"{P}:4: ssh.port: 0 is out of range; accepted: 1..65535"


# --------------------------------------------------------------------------------------------- the folder


def test_names_skip_example_dotfiles_and_others(hosts: Inventory) -> None:
    for name in ("b.example.test", "a.example.test", "example", ".hidden", ".b.example.test.toml"):
        (hosts.root / f"{name}.toml").write_text("")
    (hosts.root / "notes.txt").write_text("")
    (hosts.root / "dir.toml").mkdir()
    assert hosts.names() == ["a.example.test", "b.example.test"]


def test_names_of_a_missing_folder(tmp_path: Path) -> None:
    assert Inventory(tmp_path / "nope").names() == []


def test_load(hosts: Inventory) -> None:
    put(hosts, STYLED)
    host = hosts.load(NAME)
    assert host.path == Path("hosts") / f"{NAME}.toml"
    assert host.domains == ("example.test", "example.net")
    assert hosts.load_text(NAME) == STYLED


def test_load_reports_the_file(hosts: Inventory) -> None:
    put(hosts, HEAD + "[ssh]\nport = 0\n")
    with pytest.raises(InputError, match=r"^hosts/box1\.example\.test\.toml:4: ssh\.port: 0 is out of range"):
        hosts.load(NAME)


def parses(action: Callable[[], object]) -> Counter[str]:
    """How many times `action` parses TOML text: calls of tomllib.loads, of tomlkit.parse, and of the
    position scanner, seen by a profiler while the real parsers run (nothing is replaced)."""
    watched = {tomllib.loads.__code__: "tomllib", tomlkit.parse.__code__: "tomlkit"}
    counts: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, _arg: object) -> None:
        if event == "call":
            code = frame.f_code
            if code in watched:
                counts[watched[code]] += 1
            elif code.co_qualname == "_LineScanner.scan":
                counts["positions"] += 1

    sys.setprofile(profile)
    try:
        action()
    except InputError:
        pass
    finally:
        sys.setprofile(None)
    return counts


def test_a_load_parses_the_file_once(hosts: Inventory) -> None:
    put(hosts, STYLED)
    assert parses(lambda: hosts.load(NAME)) == {"tomllib": 1}


def test_a_load_with_a_problem_parses_once_and_scans_for_its_line(hosts: Inventory) -> None:
    put(hosts, HEAD + "[ssh]\nport = 0\n")
    assert parses(lambda: hosts.load(NAME)) == {"tomllib": 1, "positions": 1}


def test_an_edit_parses_the_old_text_once_with_each_parser_and_the_new_once(hosts: Inventory) -> None:
    put(hosts, STYLED)

    def edit() -> None:
        with hosts.edit(NAME) as doc:
            doc["os"] = "debian-12"

    assert parses(edit) == {"tomllib": 2, "tomlkit": 1}
    assert hosts.load(NAME).os == "debian-12"


def test_a_command_that_loads_a_box_again_parses_its_text_once(hosts: Inventory) -> None:
    """A command loads a box for its checks, under its lock and for the push: one parse while the text
    stays the same, and a parse again once anyone changed the file."""
    put(hosts, STYLED)
    assert parses(lambda: [hosts.load(NAME) for _ in range(3)]) == {"tomllib": 1}
    assert parses(lambda: hosts.load(NAME)) == {}
    put(hosts, STYLED + "\n# a comment of another operator\n")
    assert parses(lambda: hosts.load(NAME)) == {"tomllib": 1}


def test_an_edit_leaves_its_result_parsed_for_the_next_load(hosts: Inventory) -> None:
    put(hosts, STYLED)
    with hosts.edit(NAME) as doc:
        doc["os"] = "debian-12"
    assert parses(lambda: hosts.load(NAME)) == {}
    assert hosts.load(NAME).os == "debian-12"


def test_load_unknown_box(hosts: Inventory) -> None:
    put(hosts, HEAD)
    put(hosts, HEAD.replace(NAME, "a.example.test"), "a.example.test")
    for call in (hosts.load, hosts.load_text):
        with pytest.raises(InputError) as info:
            call("box9.example.test")
        assert (
            str(info.value)
            == "no inventory for 'box9.example.test' in hosts/ (known: a.example.test, box1.example.test)"
        )


def test_load_unknown_box_in_an_empty_folder(hosts: Inventory) -> None:
    with pytest.raises(InputError, match=r"^no inventory for 'x\.test' in hosts/ \(known: none\)$"):
        hosts.load("x.test")


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "/etc/passwd", "", ".hidden", "..", "box1.example.test/", "Box1.example.test",
             "a b", "box1..example.test", "-x.test", "x.test\n", "x\\y"]
)  # fmt: skip
def test_bad_names_are_refused(hosts: Inventory, name: str) -> None:
    expected = f"{name!r} is not a box name: expected the box's FQDN, like box1.example.org"
    for call in (hosts.load, hosts.load_text, hosts.path_for):
        with pytest.raises(InputError) as info:
            call(name)
        assert str(info.value) == expected
    with pytest.raises(InputError), hosts.edit(name):
        pass
    with pytest.raises(InputError):
        hosts.create(name, tomlkit.document())


def test_load_rejects_non_utf8(hosts: Inventory) -> None:
    (hosts.root / f"{NAME}.toml").write_bytes(HEAD.encode() + b"# caf\xe9\n")
    with pytest.raises(InputError, match=r"^hosts/box1\.example\.test\.toml:3: not UTF-8 text$"):
        hosts.load(NAME)


# ---------------------------------------------------------------------------------------------- edit()


def test_edit_keeps_untouched_text(hosts: Inventory) -> None:
    path = put(hosts, STYLED)
    with hosts.edit(NAME) as doc:
        doc["ssh"]["port"] = 2222
        doc["options"]["dns"] = "external"
    after = path.read_text()
    changed = [(a, b) for a, b in zip(STYLED.splitlines(), after.splitlines(), strict=True) if a != b]
    assert changed == [
        (
            "options = { greylist_delay = 60 }  # inline",
            'options = { greylist_delay = 60, dns = "external"}  # inline',  # tomlkit's spacing, its key
        ),
        ("port = 22   # non-standard later", "port = 2222   # non-standard later"),
    ]
    host = hosts.load(NAME)
    assert (host.ssh.port, host.options["dns"], host.options["greylist_delay"]) == (2222, "external", 60)


def test_edit_appending_keeps_everything_before(hosts: Inventory) -> None:
    path = put(hosts, STYLED)
    with hosts.edit(NAME) as doc:
        doc["aliases"].append({"source": "@example.net", "destinations": ["alice@example.test"]})
        doc["host_keys"].append(KEY2)
    after = path.read_text()
    assert f'    "{KEY}",  # the ed25519 key\n' in after  # the array's own comment survives
    tail = STYLED[STYLED.index("domains = ") :]
    assert tail in after
    assert after.endswith(tail + '[[aliases]]\nsource = "@example.net"\ndestinations = ["alice@example.test"]\n')
    host = hosts.load(NAME)
    assert host.host_keys == (KEY, KEY2)
    assert host.aliases[-1].source == "@example.net"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["ssh"].__setitem__("port", 0), f"{P}:12: ssh.port: 0 is out of range; accepted: 1..65535"),
        (lambda d: d.__setitem__("hostname", "other.example.test"), f"{P}:2: hostname: 'other.example.test' "
         "does not match the file name box1.example.test.toml; an inventory file is named after its box: "
         "other.example.test.toml"),
        (lambda d: d["users"].append({"email": "eve@example.test", "password_hash": "clear"}),
         f"{P}:22: users[1].password_hash: looks like a clear-text password (not shown); store a hash instead, "
         "for example from `doveadm pw -s BLF-CRYPT`; accepted: {SHA512-CRYPT}$6$, {BLF-CRYPT}$2, "
         "{ARGON2ID}$argon2id$"),
        (lambda d: d.__setitem__("colour", "blue"), f"{P}:9: colour: unknown key; accepted: hostname, address, "
         "provider, ssh, host_keys, os, domains, recipes, users, aliases, options, ipv4, ipv6, dns, node, relay, "
         "backup, acme"),
        (lambda d: d.remove("address"), f"{P}:1: address: required key is missing; expected an IP address or "
         "DNS name to reach the box at"),
    ],
    ids=["range", "hostname", "clear-password", "unknown-key", "missing-key"],
)  # fmt: skip
def test_invalid_edit_writes_nothing(hosts: Inventory, change: Any, message: str) -> None:
    path = put(hosts, STYLED)
    before = (path.read_bytes(), path.stat().st_ino, path.stat().st_mtime_ns)
    with pytest.raises(InputError) as info, hosts.edit(NAME) as doc:
        change(doc)
    assert str(info.value) == message
    assert (path.read_bytes(), path.stat().st_ino, path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in hosts.root.iterdir()) == [f".{NAME}.toml.lock", f"{NAME}.toml"]


def test_exception_in_edit_writes_nothing(hosts: Inventory) -> None:
    path = put(hosts, STYLED)
    with pytest.raises(RuntimeError), hosts.edit(NAME) as doc:
        doc["ssh"]["port"] = 2222
        raise RuntimeError("caller changed its mind")
    assert path.read_text() == STYLED


def test_edit_without_change_does_not_rewrite(hosts: Inventory) -> None:
    path = put(hosts, STYLED)
    path.chmod(0o640)
    inode = path.stat().st_ino
    with hosts.edit(NAME):
        pass
    assert path.stat().st_ino == inode and stat.S_IMODE(path.stat().st_mode) == 0o640


def test_edit_writes_0600(hosts: Inventory) -> None:
    path = put(hosts, STYLED)
    path.chmod(0o644)
    with hosts.edit(NAME) as doc:
        doc["os"] = "debian-12"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert hosts.load(NAME).os == "debian-12"


def test_edit_unknown_box(hosts: Inventory) -> None:
    with (
        pytest.raises(InputError, match=r"^no inventory for 'box9\.example\.test' in hosts/"),
        hosts.edit("box9.example.test"),
    ):
        pass
    assert list(hosts.root.iterdir()) == []  # no lock file left behind for a typo


def test_edit_of_a_file_with_a_syntax_error(hosts: Inventory) -> None:
    put(hosts, HEAD + "[ssh\n")
    with pytest.raises(InputError) as info, hosts.edit(NAME):
        pytest.fail("must not yield")
    assert str(info.value).startswith(f"{P}:3: TOML syntax error")


def test_edit_reads_the_current_file_inside_the_lock(hosts: Inventory) -> None:
    """A writer that changed the file while we waited for the lock is not overwritten with stale data."""
    put(hosts, STYLED)
    absolute = Inventory(hosts.root.resolve())  # the thread must not depend on the current folder
    entered = threading.Event()

    def slow_editor() -> None:
        with absolute.edit(NAME) as doc:
            entered.set()
            time.sleep(0.3)
            doc["os"] = "debian-12"

    worker = threading.Thread(target=slow_editor)
    worker.start()
    try:
        assert entered.wait(5)
        with absolute.edit(NAME) as doc:  # waits for slow_editor, then must see its change
            assert doc.get("os") == "debian-12"
            doc["ssh"]["port"] = 2200
    finally:
        worker.join()
    host = absolute.load(NAME)
    assert (host.os, host.ssh.port) == ("debian-12", 2200)


CONCURRENT = 20


def _append_user(root: str, index: int) -> None:
    """One concurrent editor (a thread, or a separate process: must be importable at top level)."""
    with Inventory(Path(root)).edit(NAME) as doc:
        time.sleep(0.005)  # widen the window a lost update would need
        users = doc["users"]
        users.append({"email": f"user{index}@example.test", "password_hash": HASH})


def _expect_all_users(inv: Inventory) -> None:
    emails = {u.email for u in inv.load(NAME).users}
    assert emails == {"alice@example.test"} | {f"user{i}@example.test" for i in range(CONCURRENT)}


def test_concurrent_edits_from_threads(hosts: Inventory) -> None:
    put(hosts, STYLED)
    with ThreadPoolExecutor(CONCURRENT) as pool:
        list(pool.map(lambda i: _append_user(str(hosts.root.resolve()), i), range(CONCURRENT)))
    _expect_all_users(hosts)


def test_concurrent_edits_from_processes(hosts: Inventory, forkserver: multiprocessing.context.BaseContext) -> None:
    put(hosts, STYLED)
    context = forkserver  # separate processes, without a Python start-up each (tests/unit/conftest.py)
    workers = [context.Process(target=_append_user, args=(str(hosts.root.resolve()), i)) for i in range(CONCURRENT)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0] * CONCURRENT
    _expect_all_users(hosts)
    assert sorted(p.name for p in hosts.root.iterdir()) == [f".{NAME}.toml.lock", f"{NAME}.toml"]


# -------------------------------------------------------------------------------------------- create()


def test_create_writes_0600_in_a_0700_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    inv = Inventory(Path("deep/hosts"))
    doc = new_document(NAME, "192.0.2.10", provider="local", host_keys=[KEY], os="debian-12")
    path = inv.create(NAME, doc)
    assert path == Path("deep/hosts") / f"{NAME}.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(inv.root.stat().st_mode) == 0o700
    assert path.read_text() == doc.as_string()
    assert inv.load(NAME).host_keys == (KEY,)


def test_create_refuses_to_overwrite(hosts: Inventory) -> None:
    path = put(hosts, STYLED)
    doc = new_document(NAME, "192.0.2.99", provider=None, host_keys=[], os=None)
    with pytest.raises(InputError) as info:
        hosts.create(NAME, doc)
    assert str(info.value) == f"{P} already exists; nothing was changed"
    assert path.read_text() == STYLED
    hosts.create(NAME, doc, overwrite=True)
    assert hosts.load(NAME).address == "192.0.2.99"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_create_validates(hosts: Inventory) -> None:
    doc = new_document("box2.example.test", "192.0.2.10", provider=None, host_keys=[], os=None)
    with pytest.raises(InputError, match=r"^hosts/box1\.example\.test\.toml:\d+: hostname: 'box2\.example\.test' "):
        hosts.create(NAME, doc)
    doc = new_document(NAME, "192.0.2.10", provider="aws", host_keys=[], os=None)
    with pytest.raises(InputError, match=r"provider: 'aws' is not a provider"):
        hosts.create(NAME, doc)
    assert hosts.names() == []


# ---------------------------------------------------------------------------------------- new_document()


def test_new_document_minimal_and_full(hosts: Inventory) -> None:
    minimal = new_document(NAME, "192.0.2.10", provider=None, host_keys=[], os=None)
    host = validate(minimal.as_string(), Path(P))
    assert (host.provider, host.os, host.host_keys, host.domains) == (None, None, (), ("example.test",))
    full = new_document(
        NAME, "2001:db8::10", provider="vultr", host_keys=[KEY, KEY2], os="debian-12",
        ssh_user="deploy", ssh_port=2222, identity_file="~/.ssh/box1",
    )  # fmt: skip
    host = validate(full.as_string(), Path(P))
    assert (host.provider, host.os, host.host_keys) == ("vultr", "debian-12", (KEY, KEY2))
    assert (host.ssh.user, host.ssh.port) == ("deploy", 2222)
    assert host.ssh.identity_file == str(Path("~/.ssh/box1").expanduser())


def test_new_document_explains_each_field() -> None:
    text = new_document(NAME, "192.0.2.10", provider="local", host_keys=[KEY], os="debian-12").as_string()
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if " = " in line and not line.startswith(("#", " ")):
            assert lines[index - 1].startswith("#"), f"no comment above {line!r}"
    for name in (*TOP_KEYS, *OPTION_SPECS):
        assert name in text


def test_new_document_comments_stay_with_their_fields_after_edits(hosts: Inventory) -> None:
    """tomlkit files new keys just before the next table header: nothing there must be a comment."""
    hosts.create(NAME, new_document(NAME, "192.0.2.10", provider=None, host_keys=[], os=None))
    with hosts.edit(NAME) as doc:
        doc["os"] = "debian-12"
        doc["provider"] = "manual"
        doc["domains"] = ["example.test", "example.net"]
        doc["ssh"]["identity_file"] = "keys/box1"
        doc["options"] = {"dns": "external"}
        users = tomlkit.aot()
        users.append({"email": "alice@example.test", "password_hash": HASH})
        doc["users"] = users
    text = hosts.load_text(NAME)
    assert "\n[ssh]\n# How to log in" in text
    assert 'domains = ["example.test", "example.net"]\n\n[ssh]' in text
    host = hosts.load(NAME)
    assert host.os == "debian-12" and host.options["dns"] == "external" and len(host.users) == 1


# ----------------------------------------------------------------------------------------- example.toml


def test_example_validates(tmp_path: Path) -> None:
    copy = tmp_path / "mail.example.org.toml"
    shutil.copy(REPO / "hosts" / "example.toml", copy)
    host = validate(copy.read_text(), copy)
    assert host.hostname == "mail.example.org"
    assert len(host.domains) == 2 and len(host.users) == 2 and len(host.host_keys) >= 1
    assert any(len(a.destinations) == 2 for a in host.aliases)
    assert any(a.source.startswith("@") for a in host.aliases)
    assert host.options != {name: spec.default for name, spec in OPTION_SPECS.items()}


EXAMPLES = sorted((REPO / "hosts").glob("*.toml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
@pytest.mark.parametrize("dns", ["nsd", "external"])
def test_every_shipped_example_loads_and_builds(tmp_path: Path, example: Path, dns: str) -> None:
    """A documented inventory an operator copies must work as it is: it loads under its box's name, every
    recipe and template renders for every OS profile, and its zones parse (with the box's own nameserver,
    and as the record set `miab-remote dns` prints for another DNS host)."""
    assert EXAMPLES, "no shipped example inventory"
    doc = tomlkit.parse(example.read_text())
    doc.setdefault("options", {})["dns"] = dns
    hostname = str(doc["hostname"])
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    (hosts / f"{hostname}.toml").write_text(tomlkit.dumps(doc))
    inventory = Inventory(hosts)
    host = inventory.load(hostname)
    assert host.options["dns"] == dns
    for profile in PROFILES.values():
        resources, rendered = build(host, profile, inventory.root)
        assert resources and rendered
    for zone in dnszones.zones_of(host):
        dnszones.zone_body(host, zone)  # raises InputError when the zone does not parse


def test_example_documents_every_field() -> None:
    text = (REPO / "hosts" / "example.toml").read_text()
    for name in (*TOP_KEYS, *SSH_KEYS, "email", "password_hash", "quota", "source",
                 "destinations", *OPTION_SPECS, *NODE_KEYS):  # fmt: skip
        assert f"# {name}" in text or f"#   {name}" in text or f"[{name}]" in text, name


def test_example_is_not_a_box(tmp_path: Path) -> None:
    (tmp_path / "example.toml").write_text("")
    assert Inventory(tmp_path).names() == []


def test_inventory_files_are_private_by_default(hosts: Inventory) -> None:
    hosts.create(NAME, new_document(NAME, "192.0.2.10", provider=None, host_keys=[], os=None))
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in hosts.root.iterdir())
    assert os.access(hosts.path_for(NAME), os.R_OK)


def test_archive_moves_the_file_aside_and_never_overwrites(tmp_path: Path) -> None:
    """destroy's record: hosts/.archive/NAME.TIMESTAMP.toml, 0600 in a 0700 folder, not a box any more."""
    inv = Inventory(tmp_path / "hosts")
    text = new_document(NAME, "192.0.2.10", provider="local", host_keys=[KEY], os=None).as_string()
    first = None
    for _ in range(2):  # the same second twice: the second archive gets its own name
        inv.create(NAME, tomlkit.parse(text))
        os.chmod(inv.path_for(NAME), 0o644)
        archived = inv.archive(NAME)
        assert not inv.path_for(NAME).exists() and archived.read_text() == text
        assert archived.parent == tmp_path / "hosts/.archive" and archived != first
        assert stat.S_IMODE(archived.stat().st_mode) == 0o600
        assert stat.S_IMODE(archived.parent.stat().st_mode) == 0o700
        first = archived
    assert inv.names() == []
    with pytest.raises(InputError, match="no inventory for"):
        inv.archive(NAME)
