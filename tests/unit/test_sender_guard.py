"""The submission milter's rule (miab_remote/remote/sender_guard.py): the table mailmaps renders for
postfix's smtpd_sender_login_maps, looked up in postfix's order, applied to header From values."""

from __future__ import annotations

from pathlib import Path

import pytest

from miab_remote.checks.outside import delivery_of
from miab_remote.fleet.model import Alias, Host, MailUser
from miab_remote.mail import mailmaps
from miab_remote.remote import sender_guard as guard

HASH = "{BLF-CRYPT}$2b$12$" + "a" * 53
HOST = Host(
    name="mx.a.test",
    path=Path("hosts/mx.a.test.toml"),
    hostname="mx.a.test",
    address="10.0.0.1",
    domains=("a.test", "b.test"),
    users=tuple(MailUser(e, HASH) for e in ("alice@a.test", "bob@a.test", "carol@b.test")),
    aliases=(Alias("team@a.test", ("alice@a.test", "bob@a.test")), Alias("@b.test", ("carol@b.test",))),
)
TABLE = guard.parse_table(mailmaps.sender_logins(HOST))


@pytest.mark.parametrize(
    ("login", "address", "allowed"),
    [
        ("alice@a.test", "alice@a.test", True),
        ("ALICE@a.test", "Alice@A.TEST", True),  # case-insensitive, like postfix's hash map and login compare
        ("alice@a.test", "alice+news@a.test", True),  # the address without its extension
        ("alice@a.test", "team@a.test", True),  # an alias that lists the login
        ("bob@a.test", "team+x@a.test", True),
        ("alice@a.test", "postmaster@a.test", True),  # automatic: alice is the admin (first user)
        ("bob@a.test", "postmaster@a.test", False),
        ("carol@b.test", "anything@b.test", True),  # the catch-all
        ("alice@a.test", "bob@a.test", False),
        ("alice@a.test", "anything@b.test", False),
        ("alice@a.test", "nobody@a.test", False),  # no entry, and no catch-all for a.test
        ("carol@b.test", "alice@a.test", False),
        ("alice@a.test", "alice@elsewhere.test", False),
    ],
)
def test_login_may_send_as(login: str, address: str, allowed: bool) -> None:
    assert guard.may_send_as(TABLE, login, address) is allowed


def test_first_key_found_decides_like_postfix() -> None:
    # bob@b.test has its own entry: the catch-all of b.test does not make it carol's.
    table = guard.parse_table("bob@b.test bob@b.test\n@b.test carol@b.test\n")
    assert not guard.may_send_as(table, "carol@b.test", "bob@b.test")
    assert guard.may_send_as(table, "carol@b.test", "bob2@b.test")
    assert guard.lookup_keys("Postmaster+x@B.test") == ["postmaster+x@b.test", "postmaster@b.test", "@b.test"]
    assert guard.lookup_keys("+x@b.test") == ["+x@b.test", "@b.test"]  # postfix never leaves an empty local part
    assert guard.lookup_keys("postmaster@b.test") == ["postmaster@b.test", "@b.test"]


def test_table_text_as_postmap_reads_it() -> None:
    text = "# comment\n\n  # indented comment\nteam@a.test alice@a.test,\n  bob@a.test\nteam@a.test eve@a.test\n"
    assert guard.parse_table(text) == {"team@a.test": ("alice@a.test", "bob@a.test")}  # continuation; first wins


@pytest.mark.parametrize(
    ("froms", "why"),
    [
        (["Alice <alice@a.test>"], None),
        (['"alice@a.test" <alice@a.test>'], None),
        (["John Q. Alice <alice+x@a.test>", "team@a.test"], None),  # obsolete but unambiguous syntax
        ([], None),  # no From: the envelope (already checked by postfix) is all there is
        (["Bob <bob@a.test>"], "header From <bob@a.test> is an address alice@a.test may not send as"),
        (["alice@a.test, bob@a.test"], "header From <bob@a.test> is an address alice@a.test may not send as"),
        (["Alice <alice@a.test>", "bob@a.test"], "header From <bob@a.test> is an address alice@a.test may not send as"),
        (["alice@a.test <bob@a.test>"], "the header From does not parse as an address; write it as Name <address>"),
        (["<alice@a.test> <bob@a.test>"], "the header From does not parse as an address; write it as Name <address>"),
        (["undisclosed:;"], "the header From does not parse as an address; write it as Name <address>"),
        (["b%b@a.test"], "header From <bb@a.test> is an address alice@a.test may not send as"),
    ],
)
def test_refusal_of_header_from(froms: list[str], why: str | None) -> None:
    assert guard.refusal(TABLE, "alice@a.test", froms) == why


def test_refusal_without_login_and_folded_header() -> None:
    assert guard.refusal(TABLE, None, ["alice@a.test"]) == "authentication required"
    assert guard.refusal(TABLE, "alice@a.test", ["Alice\r\n\t<alice@a.test>"]) is None


def test_table_is_reread_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "sender_logins"
    path.write_text("alice@a.test alice@a.test\n")
    table = guard.Table(str(path))
    assert not guard.may_send_as(table.get(), "alice@a.test", "new@a.test")
    path.write_text("alice@a.test alice@a.test\nnew@a.test alice@a.test\n")
    assert guard.may_send_as(table.get(), "alice@a.test", "new@a.test")
    path.unlink()
    assert table.get() == {}


BOX = {  # what the check reads on the box: postmap -s of the live tables, postconf, doveadm user '*'
    "aliases": [
        "alice@a.test alice@a.test",
        "team@a.test alice@a.test, ext@elsewhere.test",
        "postmaster@a.test team@a.test",
        "root@mx.a.test alice@a.test",
        "lost@a.test ghost@a.test",
        "@b.test carol@b.test",
    ],
    "mailboxes": ["alice@a.test OK", "carol@b.test OK", "gone@a.test OK"],
    "domains": ["mx.a.test", "a.test, b.test"],
    "users": ["alice@a.test", "carol@b.test"],
}
OURS = {"mx.a.test", "a.test", "b.test", "c.test"}


@pytest.mark.parametrize(
    ("address", "ok", "detail"),
    [
        ("alice@a.test", True, "delivered to alice@a.test's mailbox"),
        ("postmaster@a.test", True, "delivered to alice@a.test's mailbox, ext@elsewhere.test (another server)"),
        ("root@mx.a.test", True, "delivered to alice@a.test's mailbox"),
        ("hostmaster@b.test", True, "delivered to carol@b.test's mailbox"),
        ("alice+tag@a.test", True, "delivered to alice@a.test's mailbox"),
        ("abuse@a.test", False, "abuse@a.test is neither a mailbox nor an alias on the box"),
        ("lost@a.test", False, "ghost@a.test is neither a mailbox nor an alias on the box: mail to lost@a.test"),
        ("gone@a.test", False, "dovecot has no such user: mail would bounce"),
        ("postmaster@c.test", False, "postfix does not take mail for c.test as its own"),
    ],
)
def test_delivery_of_an_address_through_the_live_tables(address: str, ok: bool, detail: str) -> None:
    got_ok, got = delivery_of(address, BOX, OURS)
    assert got_ok is ok and (got == detail if ok else detail in got), got
