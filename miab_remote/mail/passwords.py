"""Mail passwords: read once from the operator, hashed on the laptop, and only the hash is ever kept.

The hash is bcrypt (cost 12) with dovecot's scheme prefix, `{BLF-CRYPT}$2b$12$...`, which dovecot 2.3
(Debian 12) verifies as is. It is computed once, when the password is entered; nothing re-hashes it, so
a deploy never changes a stored hash. The clear password never reaches argv, a log, an exception or
the output: every message here says what is wrong with it without showing it.

The cost can be changed through the environment, MIAB_REMOTE_BCRYPT_COST (4 to 31, bcrypt's own bounds),
so that the test suite can hash in milliseconds. Unset, it is 12. A value outside the bounds is bad input;
a value below 12 works but warns (WeakCostWarning) every time it is used, and the cost stays visible in
each hash it makes (`$2b$04$`), so a weaker setting never goes unnoticed.
"""

from __future__ import annotations

import getpass
import os
import sys
import threading
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import BinaryIO

import bcrypt

from miab_remote.errors import InputError

SCHEME = "{BLF-CRYPT}"
COST = 12  # the default; MIAB_REMOTE_BCRYPT_COST changes it (see bcrypt_cost)
COST_VARIABLE = "MIAB_REMOTE_BCRYPT_COST"
MIN_COST, MAX_COST = 4, 31  # what bcrypt.gensalt accepts
MIN_LENGTH = 8
# bcrypt reads at most 72 bytes; a longer password would be cut silently (or refused by bcrypt >= 5).
MAX_BYTES = 72


def check_password(password: str) -> None:
    """Refuse a password dovecot could not check reliably, naming the rule and never the password."""
    if not password:
        raise InputError("the password is empty; nothing was changed")
    if len(password) < MIN_LENGTH:
        raise InputError(
            f"the password is too short ({len(password)} characters); at least {MIN_LENGTH} are needed; "
            "nothing was changed"
        )
    if len(password.encode("utf-8")) > MAX_BYTES:
        raise InputError(
            f"the password is longer than {MAX_BYTES} bytes (UTF-8), the most bcrypt uses; "
            "choose a shorter one; nothing was changed"
        )
    # bcrypt stops at a NUL byte, and mail clients cannot send control characters reliably.
    if any(unicodedata.category(c) == "Cc" for c in password):
        raise InputError("the password contains a control character (not shown); nothing was changed")


class WeakCostWarning(UserWarning):
    """MIAB_REMOTE_BCRYPT_COST asks for fewer rounds than the default: fine for tests, not for real mail."""


def bcrypt_cost() -> int:
    """The bcrypt cost to hash with: COST unless MIAB_REMOTE_BCRYPT_COST says otherwise.

    Read on every hash (not once at import) so a test can set it for itself. A lower cost than the
    default warns each time, so a leftover setting on an operator's laptop shows instead of weakening
    every new hash in silence.
    """
    raw = os.environ.get(COST_VARIABLE)
    if raw is None:
        return COST
    accepted = f"accepted: a whole number from {MIN_COST} to {MAX_COST} (unset, the cost is {COST})"
    try:
        cost = int(raw.strip())
    except ValueError:
        raise InputError(f"{COST_VARIABLE}={raw!r} is not a bcrypt cost; {accepted}; nothing was changed") from None
    if not MIN_COST <= cost <= MAX_COST:
        raise InputError(f"{COST_VARIABLE}={raw!r} is out of bounds; {accepted}; nothing was changed")
    if cost < COST:
        warnings.warn(
            WeakCostWarning(
                f"{COST_VARIABLE}={cost} hashes with bcrypt cost {cost}, below the default {COST}: "
                "meant for tests; unset it for real mailboxes"
            ),
            stacklevel=3,
        )
    return cost


def hash_password(password: str, cost: int | None = None) -> str:
    """The dovecot-ready hash of a checked password: `{BLF-CRYPT}$2b$12$` + salt and digest
    (another cost than 12 only when MIAB_REMOTE_BCRYPT_COST says so; `cost` is bcrypt_cost() read earlier)."""
    check_password(password)
    if cost is None:
        cost = bcrypt_cost()
    digest = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=cost, prefix=b"2b"))
    return SCHEME + digest.decode("ascii")


def verify_password(password: str, password_hash: str) -> bool:
    """Whether `password` matches a hash made by hash_password (for tests and checks)."""
    if not password_hash.startswith(SCHEME):
        return False
    try:
        return bcrypt.checkpw(password.encode("utf-8"), password_hash[len(SCHEME) :].encode("ascii"))
    except ValueError:
        return False


def read_password_stdin(stream: BinaryIO | None = None, check: Callable[[str], None] = check_password) -> str:
    """One line from stdin (for scripts: `--password-stdin`); only the trailing line break is removed.
    `check` refuses what the password is for cannot take (a mailbox's by default; the relay's has its own)."""
    raw = (stream if stream is not None else sys.stdin.buffer).readline()
    if raw.endswith(b"\n"):
        raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
    try:
        password = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("the password on stdin is not UTF-8 text; nothing was changed") from None
    if not password:
        raise InputError("no password on stdin (empty line or end of input); nothing was changed")
    check(password)
    return password


def prompt_password(
    email: str, ask: Callable[[str], str] = getpass.getpass, check: Callable[[str], None] = check_password
) -> str:
    """Ask twice without echo (the second time to catch typos) and return the checked password.

    `ask` is getpass.getpass; it is a parameter so tests can drive the two prompts.
    """
    try:
        password = ask(f"New password for {email}: ")
        check(password)
        again = ask(f"New password for {email} (again): ")
    except EOFError:
        raise InputError("no password entered; nothing was changed") from None
    if again != password:
        raise InputError("the two passwords do not match; nothing was changed")
    return password


def read_new_password(email: str, from_stdin: bool, check: Callable[[str], None] = check_password) -> str:
    """The new password: from stdin with --password-stdin, else from two hidden prompts on the terminal."""
    if from_stdin:
        return read_password_stdin(check=check)
    if not sys.stdin.isatty():
        raise InputError(
            "no terminal to ask for the password on; pipe it in with --password-stdin "
            "(one line on stdin); nothing was changed"
        )
    return prompt_password(email, check=check)


# -- hashing before the CLI's imports -----------------------------------------------------------------------
_early: Future[str] | None = None


def hash_early(argv: Sequence[str]) -> None:
    """For `user add|password ... --password-stdin`: read the password line now and hash it in a thread,
    while the CLI imports its modules (~0.15 s, which bcrypt's ~0.2 s then overlaps: it releases the GIL).
    The entry point calls this before importing the CLI; the command takes the result (take_early)."""
    global _early
    words = list(argv)
    if "--password-stdin" not in words or "user" not in words:
        return
    i = words.index("user")
    if i + 1 >= len(words) or words[i + 1] not in ("add", "password"):
        return
    future: Future[str] = Future()

    def run() -> None:
        try:
            future.set_result(hash_password(read_password_stdin(), bcrypt_cost()))
        except BaseException as e:
            future.set_exception(e)

    threading.Thread(target=run, name="bcrypt", daemon=True).start()
    _early = future


def take_early() -> Future[str] | None:
    """The hash hash_early started (once), or None."""
    global _early
    future, _early = _early, None
    return future
