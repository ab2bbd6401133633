"""Tests for `miab-remote user ...` and `alias ...` through the real CLI (its `main`, in this process) on real files.

Bad input must exit 2 with one message naming what is wrong and what is accepted, and leave the inventory
byte-for-byte as it was. Good input must change exactly the lines it is about and keep the operator's
comments. Concurrent commands on one inventory must not lose each other's changes.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import multiprocessing.context
import os
import pty
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomlkit

from miab_remote.cli import main
from miab_remote.fleet.store import Inventory, new_document
from miab_remote.mail import passwords
from miab_remote.remote import script_head
from tests.unit.sshbox import SSHBox

NAME = "box1.example.test"
P = f"hosts/{NAME}.toml"  # as messages show it: the CLI runs from the folder holding hosts/
PASSWORD = "secret-pass-1"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFsdu096fuX3ehLTX3FBmjxFy/DzQYQzK5HcyvHBFZt1 root@box1"

# The operator's own part: users and aliases with comments that every edit must keep.
OPERATOR_TEXT = """
[[users]]
# The boss. Keep this comment.
email = "alice@example.test"
password_hash = "{hash}"
quota = "2G"   # raised in May

[[users]]
email = "bob@example.org"  # the .org domain
password_hash = "{hash}"

[[aliases]]
# Sales: keep this comment too.
source = "info@example.test"
destinations = ["alice@example.test"]
"""


@pytest.fixture(scope="module")
def known_hash() -> str:
    return passwords.hash_password(PASSWORD)


@pytest.fixture
def root(tmp_path: Path, known_hash: str) -> Path:
    """tmp/hosts/box1.example.test.toml: a new_document box hosting example.test and example.org, with two
    users and an alias. No host key is pinned and SSH points at a closed port, so a push fails at once."""
    doc = new_document(NAME, "127.0.0.1", provider="manual", host_keys=[], os="debian-12", ssh_port=1)
    doc["domains"] = ["example.test", "example.org"]
    text = doc.as_string() + OPERATOR_TEXT.format(hash=known_hash)
    Inventory(tmp_path / "hosts").create(NAME, tomlkit.parse(text))
    return tmp_path


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli(root: Path, *args: str, stdin: str | None = PASSWORD + "\n") -> Result:
    """Run `miab-remote --inventory hosts ARGS` in `root`, in this process (the same `main` the entry point
    calls, without a Python start-up per command); stdin None means an empty stdin that is not a terminal.
    What the process itself shows (a real terminal, its exit status) is tested through cli_process."""
    out, err = io.StringIO(), io.StringIO()
    stdin_bytes = b"" if stdin is None else stdin.encode()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("NO_COLOR", "1")
        mp.setenv("COLUMNS", "1000")
        mp.delenv("MIAB_REMOTE_INVENTORY", raising=False)
        mp.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin_bytes), encoding="utf-8"))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["--inventory", "hosts", *args])
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 2
    return Result(code, out.getvalue(), err.getvalue())


def cli_process(root: Path, *args: str, stdin: str | None = PASSWORD + "\n") -> Result:
    """Run `python -m miab_remote --inventory hosts ARGS` in `root` as its own process; stdin None means
    /dev/null (no terminal). For what only a real process shows: the entry point's exit status and stdin."""
    # This checkout's code, not whatever copy of miab_remote the interpreter would find from `root`.
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "1000", "PYTHONPATH": str(Path(__file__).parents[2])}
    env.pop("MIAB_REMOTE_INVENTORY", None)
    env.pop("MIAB_REMOTE_BCRYPT_COST", None)  # its warning would be in stderr; these cases never hash
    proc = subprocess.run(
        [sys.executable, "-m", "miab_remote", "--inventory", "hosts", *args],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env=env,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def inventory_bytes(root: Path) -> bytes:
    return (root / P).read_bytes()


def diff(before: str, after: str) -> tuple[list[str], list[str]]:
    """(removed lines, added lines) between two texts."""
    lines = list(difflib.ndiff(before.splitlines(), after.splitlines()))
    return [x[2:] for x in lines if x.startswith("- ")], [x[2:] for x in lines if x.startswith("+ ")]


# -------------------------------------------------------------------------------------------- bad input

STDIN_FLAGS = ("--password-stdin", "--no-push")
NOT_PUSHED = f"{P} updated; not pushed (--no-push): `miab-remote deploy {NAME}` applies it"

BAD_INPUT: list[tuple[str, list[str], str | None, str]] = [
    # -- the box
    (
        "unknown-box",
        ["user", "add", "box9.example.test", "carol@example.test", *STDIN_FLAGS],
        PASSWORD,
        "no inventory for 'box9.example.test' in hosts/ (known: box1.example.test)",
    ),
    (
        "not-a-box-name",
        ["alias", "list", "../box1"],
        None,
        "'../box1' is not a box name: expected the box's FQDN, like box1.example.org",
    ),
    (
        "unknown-box-list",
        ["user", "list", "box9.example.test", "--json"],
        None,
        "no inventory for 'box9.example.test' in hosts/ (known: box1.example.test)",
    ),
    # -- user add
    (
        "add-malformed",
        ["user", "add", NAME, "carol@@example.test", *STDIN_FLAGS],
        PASSWORD,
        "'carol@@example.test' is not a valid address; expected local@domain, like 'alice@example.org'",
    ),
    (
        "add-no-at",
        ["user", "add", NAME, "carol", *STDIN_FLAGS],
        PASSWORD,
        "'carol' is not a valid address; expected local@domain, like 'alice@example.org'",
    ),
    *(
        (
            f"add-unservable-{n}",
            ["user", "add", NAME, f"{local}@example.test", *STDIN_FLAGS],
            PASSWORD,
            f"{local + '@example.test'!r} cannot be an address on this box: {shown} in {local!r}; accepted before "
            "the '@': ASCII letters, digits, '.', '-' and '_' (what dovecot accepts in a login)",
        )
        for n, (local, shown) in enumerate(
            [("o'neil", '"\'"'), ("a/b", "'/'"), ("`id`", "'`'"), ("a|b", "'|'"), ("{x}", "'{', '}'"),
             ("a#b", "'#'"), ("a$b", "'$'")]
        )
    ),
    (
        "alias-unservable-source",
        ["alias", "add", NAME, "a|b@example.test", "alice@example.test", "--no-push"],
        None,
        "'a|b@example.test' cannot be an address on this box: '|' in 'a|b'; accepted before the '@': ASCII "
        "letters, digits, '.', '-' and '_' (what dovecot accepts in a login)",
    ),
    (
        "alias-unservable-destination-here",
        ["alias", "add", NAME, "sales@example.test", "x+y@example.test", "--no-push"],
        None,
        "'x+y@example.test' cannot be an address on this box: '+' in 'x+y'; accepted before the '@': ASCII "
        "letters, digits, '.', '-' and '_' (what dovecot accepts in a login)",
    ),
    (
        "add-huge-quota",
        ["user", "add", NAME, "carol@example.test", "--quota", "99999999999999999999T", *STDIN_FLAGS],
        PASSWORD,
        "--quota '99999999999999999999T' is too large; accepted: at most 8388607T (9223372036854775807 bytes, "
        "dovecot's limit: a signed 64-bit count of bytes)",
    ),
    (
        "add-catch-all",
        ["user", "add", NAME, "@example.test", *STDIN_FLAGS],
        PASSWORD,
        "'@example.test' is not a valid address; expected local@domain, like 'alice@example.org'",
    ),
    (
        "add-not-hosted",
        ["user", "add", NAME, "carol@example.net", *STDIN_FLAGS],
        PASSWORD,
        f"'carol@example.net' is not in a domain {NAME} hosts; its domains: example.test, example.org "
        "(add the domain to `domains` in its inventory first)",
    ),
    (
        "add-exists",
        ["user", "add", NAME, "alice@example.test", *STDIN_FLAGS],
        PASSWORD,
        f"alice@example.test is already a user of {NAME}; to change its password: "
        f"miab-remote user password {NAME} alice@example.test",
    ),
    (
        "add-exists-other-case",
        ["user", "add", NAME, "Alice@Example.TEST", *STDIN_FLAGS],
        PASSWORD,
        f"alice@example.test is already a user of {NAME}; to change its password: "
        f"miab-remote user password {NAME} alice@example.test",
    ),
    (
        "add-is-alias",
        ["user", "add", NAME, "info@example.test", *STDIN_FLAGS],
        PASSWORD,
        f"info@example.test is an alias of {NAME} (to alice@example.test); an address is either a mailbox or "
        f"an alias: remove the alias first (miab-remote alias remove {NAME} info@example.test)",
    ),
    (
        "add-bad-quota",
        ["user", "add", NAME, "carol@example.test", "--quota", "2GB", *STDIN_FLAGS],
        PASSWORD,
        '--quota \'2GB\' is not a quota; expected a size like "500M" or "2G" (suffix K, M, G or T), or "0" for none',
    ),
    (
        "add-short-password",
        ["user", "add", NAME, "carol@example.test", *STDIN_FLAGS],
        "short12",
        "the password is too short (7 characters); at least 8 are needed; nothing was changed",
    ),
    (
        "add-empty-password",
        ["user", "add", NAME, "carol@example.test", *STDIN_FLAGS],
        "",
        "no password on stdin (empty line or end of input); nothing was changed",
    ),
    (
        "add-long-password",
        ["user", "add", NAME, "carol@example.test", *STDIN_FLAGS],
        "x" * 73,
        "the password is longer than 72 bytes (UTF-8), the most bcrypt uses; choose a shorter one; nothing was changed",
    ),
    (
        "add-no-terminal",
        ["user", "add", NAME, "carol@example.test", "--no-push"],
        None,
        "no terminal to ask for the password on; pipe it in with --password-stdin (one line on stdin); "
        "nothing was changed",
    ),
    # -- user password
    (
        "password-unknown-user",
        ["user", "password", NAME, "carol@example.test", *STDIN_FLAGS],
        PASSWORD,
        f"no user carol@example.test on {NAME}; users: alice@example.test, bob@example.org",
    ),
    (
        "password-of-alias",
        ["user", "password", NAME, "info@example.test", *STDIN_FLAGS],
        PASSWORD,
        f"info@example.test is an alias of {NAME}, not a user (a mailbox); users: alice@example.test, bob@example.org",
    ),
    (
        "password-malformed",
        ["user", "password", NAME, "alice", *STDIN_FLAGS],
        PASSWORD,
        "'alice' is not a valid address; expected local@domain, like 'alice@example.org'",
    ),
    (
        "password-short",
        ["user", "password", NAME, "alice@example.test", *STDIN_FLAGS],
        "1234567",
        "the password is too short (7 characters); at least 8 are needed; nothing was changed",
    ),
    (
        "password-no-terminal",
        ["user", "password", NAME, "alice@example.test", "--no-push"],
        None,
        "no terminal to ask for the password on; pipe it in with --password-stdin (one line on stdin); "
        "nothing was changed",
    ),
    # -- user remove
    (
        "remove-unknown-user",
        ["user", "remove", NAME, "carol@example.test", "--no-push"],
        None,
        f"no user carol@example.test on {NAME}; users: alice@example.test, bob@example.org",
    ),
    (
        "remove-purge-no-terminal",
        ["user", "remove", NAME, "bob@example.org", "--purge"],
        None,
        "--purge deletes the mailbox of bob@example.org and needs confirmation: pass --yes (no terminal to ask "
        "on); nothing was changed",
    ),
    (
        "remove-purge-no-push",
        ["user", "remove", NAME, "bob@example.org", "--purge", "--yes", "--no-push"],
        None,
        "--purge needs the push: the box must stop delivering to the mailbox before it is deleted; drop "
        "--no-push; nothing was changed",
    ),
    (
        "remove-yes-without-purge",
        ["user", "remove", NAME, "bob@example.org", "--yes", "--no-push"],
        None,
        "--yes only goes with --purge; nothing was changed",
    ),
    # -- alias add
    (
        "alias-source-is-user",
        ["alias", "add", NAME, "alice@example.test", "bob@example.org", "--no-push"],
        None,
        f"alice@example.test is a user (a mailbox) of {NAME}; an address is either a mailbox or an alias",
    ),
    (
        "alias-to-itself",
        ["alias", "add", NAME, "sales@example.test", "bob@example.org", "Sales@example.test", "--no-push"],
        None,
        "'Sales@example.test' is the alias's own source: an alias to itself would loop",
    ),
    (
        "alias-duplicate",
        ["alias", "add", NAME, "INFO@example.test", "bob@example.org", "--no-push"],
        None,
        f"info@example.test is already an alias of {NAME} (to alice@example.test); remove it first: "
        f"miab-remote alias remove {NAME} info@example.test",
    ),
    (
        "alias-not-hosted",
        ["alias", "add", NAME, "info@example.net", "bob@example.org", "--no-push"],
        None,
        f"'info@example.net' is not in a domain {NAME} hosts; its domains: example.test, example.org "
        "(add the domain to `domains` in its inventory first)",
    ),
    (
        "alias-catch-all-not-hosted",
        ["alias", "add", NAME, "@example.net", "bob@example.org", "--no-push"],
        None,
        f"'@example.net' is not in a domain {NAME} hosts; its domains: example.test, example.org "
        "(add the domain to `domains` in its inventory first)",
    ),
    (
        "alias-malformed-source",
        ["alias", "add", NAME, "info", "bob@example.org", "--no-push"],
        None,
        "'info' is not a valid alias source; expected an address like 'info@example.org', or '@example.org' "
        "for a catch-all",
    ),
    (
        "alias-malformed-catch-all",
        ["alias", "add", NAME, "@example", "bob@example.org", "--no-push"],
        None,
        "'@example' is not a valid catch-all; expected '@' and a domain, like '@example.org'",
    ),
    (
        "alias-malformed-destination",
        ["alias", "add", NAME, "sales@example.test", "bob@", "--no-push"],
        None,
        "'bob@' is not a valid destination address; expected local@domain, like 'alice@example.org'",
    ),
    (
        "alias-catch-all-destination",
        ["alias", "add", NAME, "sales@example.test", "@example.org", "--no-push"],
        None,
        "'@example.org' is not a valid destination address; expected local@domain, like 'alice@example.org'",
    ),
    (
        "alias-destination-twice",
        ["alias", "add", NAME, "sales@example.test", "bob@example.org", "BOB@example.org", "--no-push"],
        None,
        "destination 'BOB@example.org' is given twice; give each destination once",
    ),
    # -- alias remove
    (
        "alias-remove-unknown",
        ["alias", "remove", NAME, "sales@example.test", "--no-push"],
        None,
        f"no alias sales@example.test on {NAME}; aliases: info@example.test",
    ),
    (
        "alias-remove-automatic",
        ["alias", "remove", NAME, "postmaster@example.org", "--no-push"],
        None,
        f"postmaster@example.org is automatic on {NAME} (to alice@example.test) and cannot be removed; "
        f"`miab-remote alias add {NAME} postmaster@example.org ADDRESS...` sends it elsewhere",
    ),
    (
        "alias-remove-user",
        ["alias", "remove", NAME, "alice@example.test", "--no-push"],
        None,
        f"alice@example.test is a user (a mailbox) of {NAME}, not an alias; aliases: info@example.test",
    ),
]


# The cases where the process itself matters, run once more as a real process (cli_process): the entry
# point's exit status is 2, and with stdin on /dev/null (no terminal at all) or a pipe nothing waits for a prompt.
PROCESS_CASES = ("add-no-terminal", "remove-purge-no-terminal", "add-short-password")
RUNS = [
    pytest.param(run, *c[1:], id=f"{c[0]}-{run.__name__}")
    for c in BAD_INPUT
    for run in (cli, cli_process)
    if run is cli or c[0] in PROCESS_CASES
]


@pytest.mark.parametrize(("run", "args", "typed", "message"), RUNS)
def test_bad_input(
    root: Path, run: Callable[..., Result], args: list[str], typed: str | None, message: str
) -> None:
    before = inventory_bytes(root)
    result = run(root, *args, stdin=None if typed is None else typed + "\n")
    assert (result.code, result.err, result.out) == (2, f"miab-remote: {message}\n", "")
    assert inventory_bytes(root) == before
    if typed:
        assert typed not in result.err


def test_bad_cost_setting_is_refused_before_any_change(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = inventory_bytes(root)
    monkeypatch.setenv("MIAB_REMOTE_BCRYPT_COST", "3")
    result = cli(root, "user", "add", NAME, "carol@example.test", *STDIN_FLAGS)
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        "miab-remote: MIAB_REMOTE_BCRYPT_COST='3' is out of bounds; accepted: a whole number from 4 to 31 "
        "(unset, the cost is 12); nothing was changed\n"
    )
    assert inventory_bytes(root) == before


# ---------------------------------------------------------------------------------------- good changes


def test_user_add(root: Path) -> None:
    before = inventory_bytes(root).decode()
    result = cli(root, "user", "add", NAME, "Carol@Example.TEST", "--quota", "500m", *STDIN_FLAGS)
    assert (result.code, result.err) == (0, "")
    assert result.out == f"{NAME}: added user carol@example.test (quota 500M); {NOT_PUSHED}\n"
    after = inventory_bytes(root).decode()
    removed, added = diff(before, after)
    assert removed == []
    assert added[:3] == ["[[users]]", 'email = "carol@example.test"', added[2]]
    assert added[3:] == ['quota = "500M"', ""]
    stored = added[2].removeprefix('password_hash = "').removesuffix('"')
    assert passwords.verify_password(PASSWORD, stored)
    host = Inventory(root / "hosts").load(NAME)
    assert [u.email for u in host.users] == ["alice@example.test", "bob@example.org", "carol@example.test"]
    assert (root / P).stat().st_mode & 0o777 == 0o600


def test_user_add_interactive(root: Path) -> None:
    code, output = in_terminal(
        root, ["user", "add", NAME, "dave@example.org", "--no-push"], ["pässwörd-1", "pässwörd-1"]
    )
    assert code == 0, output
    assert f"{NAME}: added user dave@example.org;" in output
    assert "pässwörd" not in output
    user = next(u for u in Inventory(root / "hosts").load(NAME).users if u.email == "dave@example.org")
    assert passwords.verify_password("pässwörd-1", user.password_hash)


def test_user_add_mismatch_on_the_terminal(root: Path) -> None:
    before = inventory_bytes(root)
    code, output = in_terminal(
        root, ["user", "add", NAME, "dave@example.org", "--no-push"], ["secret-one", "secret-two"]
    )
    assert code == 2, output
    assert "miab-remote: the two passwords do not match; nothing was changed" in output
    assert "secret-" not in output
    assert inventory_bytes(root) == before


def test_first_user_of_an_empty_box(tmp_path: Path) -> None:
    doc = new_document(NAME, "127.0.0.1", provider="manual", host_keys=[KEY], os=None)
    Inventory(tmp_path / "hosts").create(NAME, doc)
    before = inventory_bytes(tmp_path).decode()
    result = cli(tmp_path, "user", "add", NAME, "alice@example.test", *STDIN_FLAGS)
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        f"{NAME}: added user alice@example.test; {NOT_PUSHED}",
        "  note: system mail and postmaster@, abuse@ and hostmaster@ of example.test go to alice@example.test "
        "(automatic, unless [options] admin_email or an alias says otherwise)",
    ]
    after = inventory_bytes(tmp_path).decode()
    assert after.startswith(before + "\n[[users]]\n")  # a blank line before the new table, nothing else moved
    assert cli(tmp_path, "alias", "add", NAME, "info@example.test", "alice@example.test", "--no-push").code == 0
    assert inventory_bytes(tmp_path).decode().startswith(after + "\n[[aliases]]\n")


def test_hand_edited_upper_case_address_is_one_address(root: Path, known_hash: str) -> None:
    """An operator's `Carol@...` is carol@: the model, every duplicate check and lookup use lower case."""
    path = root / P
    path.write_text(
        path.read_text()
        + f'\n[[users]]\nemail = "Carol@Example.Test"\npassword_hash = "{known_hash}"\n'
        + '\n[[aliases]]\nsource = "Sales@example.test"\ndestinations = ["CAROL@example.test", "Ext@Other.Example"]\n'
    )
    host = Inventory(root / "hosts").load(NAME)
    assert host.users[-1].email == "carol@example.test"
    assert host.aliases[-1].source == "sales@example.test"
    assert host.aliases[-1].destinations == ("carol@example.test", "Ext@other.example")
    assert cli(root, "user", "add", NAME, "carol@example.test", *STDIN_FLAGS).code == 2
    assert cli(root, "alias", "add", NAME, "SALES@example.test", "alice@example.test", "--no-push").code == 2
    result = cli(root, "user", "password", NAME, "CAROL@example.test", *STDIN_FLAGS)
    assert (result.code, result.err) == (0, ""), result.out
    result = cli(root, "alias", "remove", NAME, "sales@EXAMPLE.test", "--no-push")
    assert (result.code, result.err) == (0, ""), result.out
    result = cli(root, "user", "remove", NAME, "carol@example.test", "--no-push")
    assert (result.code, result.err) == (0, ""), result.out
    assert "Carol@" not in path.read_text() and "Sales@" not in path.read_text()


def test_user_password(root: Path, known_hash: str) -> None:
    before = inventory_bytes(root).decode()
    result = cli(root, "user", "password", NAME, "BOB@example.org", *STDIN_FLAGS, stdin="new secret 2\n")
    assert (result.code, result.err) == (0, "")
    assert result.out == f"{NAME}: changed the password of bob@example.org; {NOT_PUSHED}\n"
    removed, added = diff(before, inventory_bytes(root).decode())
    assert removed == [f'password_hash = "{known_hash}"']
    assert len(added) == 1
    bob = Inventory(root / "hosts").load(NAME).users[1]
    assert passwords.verify_password("new secret 2", bob.password_hash)
    assert Inventory(root / "hosts").load(NAME).users[0].password_hash == known_hash  # alice untouched


def test_user_remove(root: Path, known_hash: str) -> None:
    before = inventory_bytes(root).decode()
    result = cli(root, "user", "remove", NAME, "alice@example.test", "--no-push")
    assert (result.code, result.err) == (0, "")
    assert result.out.splitlines() == [
        f"{NAME}: removed user alice@example.test; {NOT_PUSHED}",
        "  note: these aliases still deliver to alice@example.test: info@example.test",
        "  note: system mail and the automatic postmaster@, abuse@ and hostmaster@ now go to bob@example.org",
        "  note: the mailbox of alice@example.test is kept on the box, with its mail",
    ]
    alice = (
        '[[users]]\n# The boss. Keep this comment.\nemail = "alice@example.test"\n'
        f'password_hash = "{known_hash}"\nquota = "2G"   # raised in May\n\n'
    )
    assert before.count(alice) == 1
    assert inventory_bytes(root).decode() == before.replace(alice, "")


def test_remove_every_user_and_alias(root: Path) -> None:
    for args in (
        ["user", "remove", NAME, "bob@example.org"],
        ["user", "remove", NAME, "alice@example.test"],
        ["alias", "remove", NAME, "info@example.test"],
    ):
        result = cli(root, *args, "--no-push")
        assert result.code == 0, result.err
    text = inventory_bytes(root).decode()
    assert "users" not in text.split("forwarding addresses")[1]  # only the header comment mentions them
    host = Inventory(root / "hosts").load(NAME)
    assert (host.users, host.aliases) == ((), ())
    assert cli(root, "alias", "list", NAME).out == f"no aliases on {NAME}\n"


def test_alias_add(root: Path) -> None:
    before = inventory_bytes(root).decode()
    result = cli(
        root, "alias", "add", NAME, "Sales@Example.test", "alice@example.test", "Ops@Elsewhere.TEST", "--no-push"
    )
    assert (result.code, result.err) == (0, "")
    assert result.out == (
        f"{NAME}: added alias sales@example.test -> alice@example.test, Ops@elsewhere.test; {NOT_PUSHED}\n"
    )
    removed, added = diff(before, inventory_bytes(root).decode())
    assert removed == []
    assert added == [
        "",
        "[[aliases]]",
        'source = "sales@example.test"',
        'destinations = ["alice@example.test", "Ops@elsewhere.test"]',
    ]


def test_alias_add_catch_all_and_notes(root: Path) -> None:
    result = cli(root, "alias", "add", NAME, "@Example.org", "nobody@example.test", "--no-push")
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        f"{NAME}: added alias @example.org -> nobody@example.test; {NOT_PUSHED}",
        f"  note: no user or alias takes nobody@example.test on {NAME}: mail sent there would bounce",
    ]
    assert Inventory(root / "hosts").load(NAME).aliases[1].source == "@example.org"


def test_alias_overrides_and_restores_automatic(root: Path) -> None:
    result = cli(root, "alias", "add", NAME, "postmaster@example.org", "bob@example.org", "--no-push")
    assert result.code == 0, result.err
    assert result.out.splitlines()[1] == "  note: replaces the automatic postmaster@example.org (to alice@example.test)"
    listed = json.loads(cli(root, "alias", "list", NAME, "--json").out)["aliases"]
    assert {"source": "postmaster@example.org", "destinations": ["bob@example.org"], "automatic": False} in listed
    assert [a["source"] for a in listed].count("postmaster@example.org") == 1

    result = cli(root, "alias", "remove", NAME, "postmaster@example.org", "--no-push")
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        f"{NAME}: removed alias postmaster@example.org; {NOT_PUSHED}",
        "  note: postmaster@example.org goes to alice@example.test again (automatic)",
    ]
    listed = json.loads(cli(root, "alias", "list", NAME, "--json").out)["aliases"]
    assert {"source": "postmaster@example.org", "destinations": ["alice@example.test"], "automatic": True} in listed


def test_alias_remove(root: Path) -> None:
    before = inventory_bytes(root).decode()
    result = cli(root, "alias", "remove", NAME, "Info@example.test", "--no-push")
    assert (result.code, result.err) == (0, "")
    assert result.out == f"{NAME}: removed alias info@example.test; {NOT_PUSHED}\n"
    removed, added = diff(before, inventory_bytes(root).decode())
    assert removed == [
        "[[aliases]]",
        "# Sales: keep this comment too.",
        'source = "info@example.test"',
        'destinations = ["alice@example.test"]',
    ]
    assert added == []


def test_comments_survive_a_series_of_edits(root: Path) -> None:
    for args, stdin in (
        (["user", "add", NAME, "carol@example.test", *STDIN_FLAGS], PASSWORD + "\n"),
        (["user", "password", NAME, "alice@example.test", *STDIN_FLAGS], "another one\n"),
        (["alias", "add", NAME, "sales@example.org", "carol@example.test", "--no-push"], None),
        (["user", "remove", NAME, "bob@example.org", "--no-push"], None),
    ):
        result = cli(root, *args, stdin=stdin)
        assert result.code == 0, result.err
    text = inventory_bytes(root).decode()
    for comment in (
        "# The boss. Keep this comment.",
        'quota = "2G"   # raised in May',
        "# Sales: keep this comment too.",
        "# The box's SSH host keys. Any other key is refused before anything is sent; if none is",
    ):
        assert comment in text


def test_inline_arrays_stay_inline(tmp_path: Path, known_hash: str) -> None:
    """An operator who wrote users and aliases as inline arrays gets inline entries added and removed."""
    doc = new_document(NAME, "127.0.0.1", provider=None, host_keys=[], os=None)
    text = doc.as_string().replace(
        "host_keys = []\n",
        "host_keys = []\n"
        f'users = [\n  {{ email = "alice@example.test", password_hash = "{known_hash}" }},  # alice\n]\n'
        'aliases = [{ source = "info@example.test", destinations = ["alice@example.test"] }]\n',
    )
    Inventory(tmp_path / "hosts").create(NAME, tomlkit.parse(text))
    assert cli(tmp_path, "user", "add", NAME, "bob@example.test", *STDIN_FLAGS).code == 0
    assert cli(tmp_path, "alias", "remove", NAME, "info@example.test", "--no-push").code == 0
    assert cli(tmp_path, "alias", "add", NAME, "sales@example.test", "bob@example.test", "--no-push").code == 0
    after = inventory_bytes(tmp_path).decode()
    assert "\n[[" not in after  # no table headers, only the header comment's mention
    assert f'  {{ email = "alice@example.test", password_hash = "{known_hash}" }},  # alice\n' in after
    assert 'aliases = [{source = "sales@example.test", destinations = ["bob@example.test"]}]' in after
    host = Inventory(tmp_path / "hosts").load(NAME)
    assert [u.email for u in host.users] == ["alice@example.test", "bob@example.test"]


# ---------------------------------------------------------------------------------------------- lists


def test_user_list_json(root: Path) -> None:
    result = cli(root, "user", "list", NAME, "--json")
    assert (result.code, result.err) == (0, "")
    assert json.loads(result.out) == {
        "users": [{"email": "alice@example.test", "quota": "2G"}, {"email": "bob@example.org", "quota": None}]
    }
    assert "CRYPT" not in result.out and "$2b$" not in result.out


def test_user_list_table(root: Path) -> None:
    result = cli(root, "user", "list", NAME)
    assert result.code == 0
    rows = [line.split() for line in result.out.splitlines()]
    assert rows == [["email", "quota"], ["alice@example.test", "2G"], ["bob@example.org", "-"]]


def test_alias_list_json(root: Path) -> None:
    result = cli(root, "alias", "list", NAME, "--json")
    assert (result.code, result.err) == (0, "")
    alice = ["alice@example.test"]
    assert json.loads(result.out) == {
        "aliases": [
            {"source": "info@example.test", "destinations": alice, "automatic": False},
            *(
                {"source": f"{local}@{domain}", "destinations": alice, "automatic": True}
                for domain in ("example.test", "example.org")
                for local in ("postmaster", "abuse", "hostmaster")
            ),
            # The hostname is not a mail domain: its system addresses go to the administrator too.
            *(
                {"source": f"{local}@{NAME}", "destinations": alice, "automatic": True}
                for local in ("root", "postmaster", "abuse", "hostmaster")
            ),
        ]
    }


def test_alias_list_table(root: Path) -> None:
    result = cli(root, "alias", "list", NAME)
    assert result.code == 0
    rows = [line.split() for line in result.out.splitlines()]
    assert rows[:3] == [
        ["source", "destinations"],
        ["info@example.test", "alice@example.test"],
        ["postmaster@example.test", "alice@example.test", "automatic"],
    ]
    assert len(rows) == 12


def test_no_automatic_aliases_without_users(tmp_path: Path) -> None:
    Inventory(tmp_path / "hosts").create(NAME, new_document(NAME, "127.0.0.1", provider=None, host_keys=[], os=None))
    assert json.loads(cli(tmp_path, "alias", "list", NAME, "--json").out) == {"aliases": []}
    assert cli(tmp_path, "user", "list", NAME).out == f"no users on {NAME}\n"


# ------------------------------------------------------------------------------------------------ push


def test_failed_push_keeps_the_inventory_change(root: Path) -> None:
    """The box cannot be reached (no pinned key, closed port): the inventory is updated, the box is not."""
    result = cli(root, "user", "password", NAME, "alice@example.test", "--password-stdin", stdin="fresh pass 3\n")
    assert result.code == 1
    assert result.out == ""
    first, second = result.err.splitlines()[:2]
    assert first.startswith(
        f"{NAME}: changed the password of alice@example.test: {P} WAS updated, but the box was NOT: "
    )
    assert second == f"  `miab-remote deploy {NAME}` will bring the box in line with the inventory."
    assert "fresh pass" not in result.err
    alice = Inventory(root / "hosts").load(NAME).users[0]
    assert passwords.verify_password("fresh pass 3", alice.password_hash)


def test_failed_push_never_purges(root: Path) -> None:
    result = cli(root, "user", "remove", NAME, "bob@example.org", "--purge", "--yes")
    assert result.code == 1
    assert f"{NAME}: removed user bob@example.org: {P} WAS updated, but the box was NOT: " in result.err
    assert "  The mailbox of bob@example.org was NOT deleted: the box still has the user." in result.err
    assert [u.email for u in Inventory(root / "hosts").load(NAME).users] == ["alice@example.test"]


# ----------------------------------------------------------------------------------------- concurrency


def _add_user_in_child(root: str, index: int, password: str, err_path: str) -> None:
    """One of the concurrent `user add` commands, in its own process: `main` as the entry point runs it, with
    the password on stdin and stderr kept in a file (top level, so a forkserver child can run it)."""
    os.chdir(root)
    sys.stdin = io.TextIOWrapper(io.BytesIO(f"{password}\n".encode()), encoding="utf-8")
    with open(err_path, "w") as err, contextlib.redirect_stderr(err):
        address = f"user{index:02}@example.test"
        code = main(["--inventory", "hosts", "user", "add", NAME, address, "--password-stdin", "--no-push"])
    sys.exit(code)


def test_concurrent_adds_lose_nothing(
    root: Path, tmp_path_factory: pytest.TempPathFactory, forkserver: multiprocessing.context.BaseContext
) -> None:
    """Twenty commands at once in separate processes (the inventory lock is a file lock between processes,
    so this stays a multi-process test). The children are forked from a forkserver that imported the CLI
    once (tests/unit/conftest.py), instead of twenty Python start-ups."""
    errors = tmp_path_factory.mktemp("stderr")
    context = forkserver
    procs = [
        context.Process(
            target=_add_user_in_child, args=(str(root), i, f"password-{i:02}-x", str(errors / f"{i}.txt"))
        )
        for i in range(20)
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NO_COLOR", "1")
        for proc in procs:
            proc.start()
    for i, proc in enumerate(procs):
        proc.join(300)
        assert proc.exitcode == 0, (errors / f"{i}.txt").read_text()
    emails = [u.email for u in Inventory(root / "hosts").load(NAME).users]
    assert sorted(emails[2:]) == [f"user{i:02}@example.test" for i in range(20)]
    assert emails[:2] == ["alice@example.test", "bob@example.org"]


# --------------------------------------------------------------------------------------------- helpers


def in_terminal(root: Path, args: list[str], typed: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal (so getpass really prompts, without echo) and answer each
    'New password' prompt in turn. Returns the exit code and everything the terminal showed."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "1000", "TERM": "dumb"}
    argv = [sys.executable, "-m", "miab_remote", "--inventory", "hosts", *args]
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        try:
            os.chdir(root)
            os.execve(sys.executable, argv, env)
        finally:
            os._exit(127)
    shown = b""
    pending = list(typed)
    prompts_seen = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            if pending and shown.count(b"New password for") > prompts_seen:
                prompts_seen += 1
                os.write(fd, pending.pop(0).encode() + b"\n")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_hosts_shows_the_admin_and_hostmaster_is_automatic(root: Path) -> None:
    shown = cli(root, "hosts", "--json").out
    assert json.loads(shown)["hosts"][NAME]["admin_email"] == "alice@example.test"  # the first user
    result = cli(root, "alias", "remove", NAME, "hostmaster@example.org", "--no-push")
    assert result.code == 2 and "hostmaster@example.org is automatic" in result.err
    (root / P).write_text((root / P).read_text() + '\n[options]\nadmin_email = "bob@example.org"\n')
    assert json.loads(cli(root, "hosts", "--json").out)["hosts"][NAME]["admin_email"] == "bob@example.org"
    assert "bob@example.org" in cli(root, "hosts").out
    listed = json.loads(cli(root, "alias", "list", NAME, "--json").out)["aliases"]
    assert {"source": "root@box1.example.test", "destinations": ["bob@example.org"], "automatic": True} in listed



def _pin_to(root: Path, box: SSHBox) -> None:
    with Inventory(root / "hosts").edit(NAME) as doc:
        doc["host_keys"] = [box.host_key.public_line]
        doc["ssh"]["port"] = box.port
        doc["ssh"]["identity_file"] = str(box.identity)


@contextlib.contextmanager
def _lock_held_until_exec(root: Path, box: SSHBox, then: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Another operator holds the box's inventory lock until the box is asked to run a command (at most
    5 s), and does `then` under it: a command started only after the edit would find the lock held."""
    held, asked = threading.Event(), threading.Event()
    path = root / P

    def on_exec() -> bool:
        edited = "carol@example.test" in path.read_text()
        asked.set()
        return edited

    def hold() -> None:
        with Inventory(root / "hosts").lock(NAME):
            held.set()
            asked.wait(5)
            then()

    box.server.on_exec = on_exec
    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    try:
        yield
    finally:
        holder.join()


def test_the_push_script_is_started_on_the_box_before_the_edit(root: Path, ssh_box: SSHBox) -> None:
    """The box's apply script is started (its source sent, the box's python3 starting up) as soon as the
    connection is up, before the inventory changes, and the push then sends it only the spec: one command,
    one round trip, the box's start-up off the operator's wait."""
    _pin_to(root, ssh_box)
    with _lock_held_until_exec(root, ssh_box):
        result = cli(root, "user", "add", NAME, "carol@example.test", "--password-stdin")
    assert result.code == 1 and "python3 is missing on the box" in result.err, result.err
    assert len(ssh_box.server.commands) == 1, ssh_box.server.commands
    assert ssh_box.server.seen == [False], "the script was started before the inventory was edited"
    (sent,) = ssh_box.server.inputs
    head = script_head("apply")
    assert sent.startswith(head)
    spec = json.loads(sent[len(head) :].split(b"\n", 1)[0])
    assert next(a["path"] for a in spec["actions"] if a["op"] == "file") == "/etc/dovecot/users"
    assert "carol@example.test" in Inventory(root / "hosts").load(NAME).users[-1].email


def test_a_script_started_ahead_and_never_used_is_ended(root: Path, ssh_box: SSHBox, known_hash: str) -> None:
    """A change refused under the lock (here: the user another operator added meanwhile) never sends the
    started script its input: its input is ended, so the box's script reads nothing and exits."""
    _pin_to(root, ssh_box)
    path = root / P

    def someone_else_adds_carol() -> None:
        carol = f'\n[[users]]\nemail = "carol@example.test"\npassword_hash = "{known_hash}"\n'
        path.write_text(path.read_text() + carol)

    with _lock_held_until_exec(root, ssh_box, then=someone_else_adds_carol):
        result = cli(root, "user", "add", NAME, "carol@example.test", "--password-stdin")
    assert result.code == 2 and "carol@example.test is already a user" in result.err, result.err
    assert ssh_box.server.seen == [False]
    wait = time.monotonic() + 5
    while not ssh_box.server.inputs and time.monotonic() < wait:
        time.sleep(0.01)
    assert ssh_box.server.inputs == [script_head("apply")], "the script got its source, then the end of its input"


@pytest.mark.parametrize("action", [["add", "--no-push"], ["password", "--no-push"]])
@pytest.mark.parametrize("argv", [["--password", "hunter2-on-argv"], ["--password=hunter2-on-argv"], ["--pass", "x"]])
def test_a_password_on_the_command_line_is_refused_unseen(root: Path, action: list[str], argv: list[str]) -> None:
    """argparse took `--password X` for --password-stdin (an abbreviation) and printed X among the
    unrecognized arguments; now one refusal, X nowhere, nothing changed."""
    before = (root / P).read_text()
    verb, *rest = action
    email = "new@example.test" if verb == "add" else "alice@example.test"
    res = cli(root, "user", verb, NAME, email, *rest, *argv)
    assert res.code == 2
    assert "hunter2-on-argv" not in res.out + res.err
    if argv[0].startswith("--password"):
        assert "a password is never taken from the command line" in res.err
    assert (root / P).read_text() == before
