"""Tests for mail passwords: the stored hash is exactly what dovecot's {BLF-CRYPT} and the inventory
validator accept, it verifies with bcrypt, weak or unusable passwords are refused without showing them,
and the two prompts must agree."""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest

from miab_remote.errors import InputError
from miab_remote.fleet.schema import validate
from miab_remote.mail import passwords

HASH_RE = re.compile(r"^\{BLF-CRYPT\}\$2b\$12\$[./0-9A-Za-z]{53}$")
NAME = "box1.example.test"


@pytest.fixture(scope="module")
def stored() -> str:
    """One hash, made once, at the production cost (the unit tests' conftest lowers it for every other
    test): cost 12 takes a quarter of a second."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(passwords.COST_VARIABLE, raising=False)
        return passwords.hash_password("correct horse 1")


@pytest.fixture(scope="module")
def fast() -> str:
    """The same password hashed at the unit tests' low cost, for the tests about checking, not the format."""
    return passwords.hash_password("correct horse 1")


def test_hash_format(stored: str) -> None:
    assert HASH_RE.fullmatch(stored), stored


def test_hash_verifies_with_bcrypt(fast: str) -> None:
    stored = fast
    digest = stored.removeprefix("{BLF-CRYPT}").encode()
    assert bcrypt.checkpw(b"correct horse 1", digest)
    assert not bcrypt.checkpw(b"correct horse 2", digest)
    assert passwords.verify_password("correct horse 1", stored)
    assert not passwords.verify_password("correct horse 2", stored)


def test_each_hash_has_its_own_salt(fast: str) -> None:
    stored = fast  # the same cost as `again`: only the salt can differ
    again = passwords.hash_password("correct horse 1")
    assert again != stored
    assert passwords.verify_password("correct horse 1", again)


def test_inventory_validator_accepts_the_hash(stored: str) -> None:
    text = (
        f'hostname = "{NAME}"\naddress = "192.0.2.10"\n\n'
        f'[[users]]\nemail = "alice@example.test"\npassword_hash = "{stored}"\n'
    )
    host = validate(text, Path(f"hosts/{NAME}.toml"))
    assert host.users[0].password_hash == stored


def test_non_ascii_password_round_trips() -> None:
    stored = passwords.hash_password("pässwörd-ü")
    assert bcrypt.checkpw("pässwörd-ü".encode(), stored.removeprefix("{BLF-CRYPT}").encode())


# ------------------------------------------------------------------------------------- the cost setting


def test_lower_cost_is_used_and_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIAB_REMOTE_BCRYPT_COST", "5")
    with pytest.warns(passwords.WeakCostWarning) as caught:
        stored = passwords.hash_password("correct horse 1")
    assert stored.startswith("{BLF-CRYPT}$2b$05$")  # the cost shows in every hash it made
    assert str(caught[0].message) == (
        "MIAB_REMOTE_BCRYPT_COST=5 hashes with bcrypt cost 5, below the default 12: "
        "meant for tests; unset it for real mailboxes"
    )
    assert passwords.verify_password("correct horse 1", stored)
    host = validate(
        f'hostname = "{NAME}"\naddress = "192.0.2.10"\n\n'
        f'[[users]]\nemail = "alice@example.test"\npassword_hash = "{stored}"\n',
        Path(f"hosts/{NAME}.toml"),
    )
    assert host.users[0].password_hash == stored


def test_default_cost_set_explicitly_does_not_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIAB_REMOTE_BCRYPT_COST", " 12 ")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert passwords.bcrypt_cost() == 12


COST_REFUSED: list[tuple[str, str]] = [
    ("3", "is out of bounds"),
    ("32", "is out of bounds"),
    ("-1", "is out of bounds"),
    ("", "is not a bcrypt cost"),
    ("four", "is not a bcrypt cost"),
    ("4.5", "is not a bcrypt cost"),
]


@pytest.mark.parametrize(("value", "problem"), COST_REFUSED, ids=[c[0] or "empty" for c in COST_REFUSED])
def test_cost_setting_out_of_bounds_is_refused(monkeypatch: pytest.MonkeyPatch, value: str, problem: str) -> None:
    monkeypatch.setenv("MIAB_REMOTE_BCRYPT_COST", value)
    with pytest.raises(InputError) as info:
        passwords.hash_password("correct horse 1")
    assert str(info.value) == (
        f"MIAB_REMOTE_BCRYPT_COST={value!r} {problem}; accepted: a whole number from 4 to 31 "
        "(unset, the cost is 12); nothing was changed"
    )


# -------------------------------------------------------------------------------------------- the rules

REFUSED: list[tuple[str, str, str]] = [
    ("empty", "", "the password is empty; nothing was changed"),
    ("one-char", "x", "the password is too short (1 characters); at least 8 are needed; nothing was changed"),
    ("seven", "abcdefg", "the password is too short (7 characters); at least 8 are needed; nothing was changed"),
    # 7 characters even though they are 14 bytes: the rule counts characters.
    ("seven-wide", "ééééééé", "the password is too short (7 characters); at least 8 are needed; nothing was changed"),
    (
        "73-bytes",
        "a" * 73,
        "the password is longer than 72 bytes (UTF-8), the most bcrypt uses; choose a shorter one; nothing was changed",
    ),
    (
        "37-two-byte",
        "é" * 37,
        "the password is longer than 72 bytes (UTF-8), the most bcrypt uses; choose a shorter one; nothing was changed",
    ),
    ("nul", "abcd\x00efgh", "the password contains a control character (not shown); nothing was changed"),
    ("tab", "abcd\tefgh", "the password contains a control character (not shown); nothing was changed"),
]


@pytest.mark.parametrize(("password", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused(password: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        passwords.hash_password(password)
    assert str(info.value) == message


@pytest.mark.parametrize("password", ["abcdefgh", "a" * 72, "é" * 36, "  spaced  out  "])
def test_accepted_at_the_limits(password: str) -> None:
    passwords.check_password(password)


# ------------------------------------------------------------------------------------------------ input

STDIN: list[tuple[str, bytes, str]] = [
    ("newline", b"secret-pass\n", "secret-pass"),
    ("crlf", b"secret-pass\r\n", "secret-pass"),
    ("no-newline", b"secret-pass", "secret-pass"),
    ("spaces-kept", b"  secret pass  \n", "  secret pass  "),
    ("first-line-only", b"secret-pass\nsecond line\n", "secret-pass"),
    ("utf8", "pässwörd-1\n".encode(), "pässwörd-1"),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in STDIN], ids=[c[0] for c in STDIN])
def test_read_password_stdin(data: bytes, expected: str) -> None:
    assert passwords.read_password_stdin(io.BytesIO(data)) == expected


STDIN_REFUSED: list[tuple[str, bytes, str]] = [
    ("nothing", b"", "no password on stdin (empty line or end of input); nothing was changed"),
    ("empty-line", b"\n", "no password on stdin (empty line or end of input); nothing was changed"),
    ("short", b"short\n", "the password is too short (5 characters); at least 8 are needed; nothing was changed"),
    ("not-utf8", b"secret-\xff\xfe\n", "the password on stdin is not UTF-8 text; nothing was changed"),
]


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in STDIN_REFUSED], ids=[c[0] for c in STDIN_REFUSED])
def test_read_password_stdin_refused(data: bytes, message: str) -> None:
    with pytest.raises(InputError) as info:
        passwords.read_password_stdin(io.BytesIO(data))
    assert str(info.value) == message


def answers(*typed: str) -> tuple[list[str], Callable[[str], str]]:
    """A stand-in for getpass that types `typed` in turn and records the prompts it was shown."""
    prompts: list[str] = []
    it: Iterator[str] = iter(typed)

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return prompts, ask


def test_prompt_twice_matching() -> None:
    prompts, ask = answers("secret-pass", "secret-pass")
    assert passwords.prompt_password("alice@example.test", ask) == "secret-pass"
    assert prompts == ["New password for alice@example.test: ", "New password for alice@example.test (again): "]


def test_prompt_mismatch() -> None:
    _, ask = answers("secret-pass", "secret-pasS")
    with pytest.raises(InputError) as info:
        passwords.prompt_password("alice@example.test", ask)
    assert str(info.value) == "the two passwords do not match; nothing was changed"
    assert "secret" not in str(info.value)


def test_prompt_short_is_refused_before_the_second_prompt() -> None:
    prompts, ask = answers("short", "short")
    with pytest.raises(InputError, match="too short"):
        passwords.prompt_password("alice@example.test", ask)
    assert len(prompts) == 1


def test_prompt_end_of_input() -> None:
    _, ask = answers()
    with pytest.raises(InputError) as info:
        passwords.prompt_password("alice@example.test", ask)
    assert str(info.value) == "no password entered; nothing was changed"


def test_the_entry_point_hashes_a_piped_password_before_the_cli_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b"early-password\nnext line\n"))
    monkeypatch.setattr("sys.stdin", stdin)
    passwords.hash_early(["--inventory", "hosts", "user", "add", "box1.example.test", "a@example.test", "-v"])
    assert passwords.take_early() is None  # no --password-stdin: nothing read
    passwords.hash_early(["user", "add", "box1.example.test", "a@example.test", "--password-stdin"])
    early = passwords.take_early()
    assert early is not None and passwords.take_early() is None  # taken once
    assert passwords.verify_password("early-password", early.result(timeout=30))
    assert stdin.buffer.read() == b"next line\n"  # exactly the one line was read


def test_an_early_hash_of_a_bad_password_is_the_same_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"short\n")))
    passwords.hash_early(["user", "password", "box1.example.test", "a@example.test", "--password-stdin"])
    early = passwords.take_early()
    assert early is not None
    with pytest.raises(InputError, match="too short"):
        early.result(timeout=30)
