"""The mail box against a real local box, with real SMTP and IMAP clients: submission and auth, port 25
rules (no AUTH, no relay, unknown users, greylisting), anti-spoofing, delivery, spam filing and learning,
DKIM, aliases, account commands, and a second deploy that touches nothing."""

from __future__ import annotations

import imaplib
import smtplib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest

from miab_remote import layout
from miab_remote.passwords import hash_password
from tests.e2e.helpers import Box, cli, create_box, edit_inventory, new_inventory, operator_key
from tests.e2e.mailclients import Mail, message

pytestmark = pytest.mark.e2e

NAME = "mx.mailtest.test"
DOMAIN = "mailtest.test"
OTHER = "other.test"
PASSWORDS = {
    f"alice@{DOMAIN}": "alice-secret-1",
    f"bob@{DOMAIN}": "bob-secret-22",
    f"carol@{OTHER}": "carol-secret-333",
}
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
KEEP = [layout.DKIM_KEY, layout.TLS_CERT, layout.TLS_KEY]


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_inventory(tmp_path_factory.mktemp("mail") / "hosts")


@pytest.fixture(scope="module")
def box(inv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    b = create_box(inv, operator_key(tmp_path_factory.mktemp("operator")), NAME)
    try:
        edit_inventory(
            inv,
            NAME,
            domains=[DOMAIN, OTHER],
            users=[{"email": e, "password_hash": hash_password(p)} for e, p in PASSWORDS.items()],
            aliases=[
                {"source": f"team@{DOMAIN}", "destinations": [f"alice@{DOMAIN}", f"bob@{DOMAIN}"]},
                {"source": f"@{OTHER}", "destinations": [f"carol@{OTHER}"]},
            ],
            options={"greylist_delay": 2},
        )
        res = cli(inv, "deploy", NAME, "--json")
        assert res.code == 0, res.errors()
        yield b
    finally:
        assert cli(inv, "destroy", "--yes", NAME).code == 0


@pytest.fixture(scope="module")
def mail(box: Box) -> Mail:
    return Mail(box, NAME, box.run(f"cat {layout.TLS_CERT}")[1])


def test_submission_587_requires_starttls_before_auth(mail: Mail) -> None:
    conn = mail.smtp(587)
    assert not conn.has_extn("auth"), "AUTH must not be offered before STARTTLS"
    mail.starttls(conn)
    assert "PLAIN" in conn.esmtp_features["auth"]
    with pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
        conn.login(f"alice@{DOMAIN}", "not-the-password")
    assert wrong.value.smtp_code == 535
    conn.quit()
    mail.submit(f"alice@{DOMAIN}", PASSWORDS[f"alice@{DOMAIN}"], message(f"alice@{DOMAIN}", f"bob@{DOMAIN}", "via 587"))
    mail.wait_for(f"bob@{DOMAIN}", PASSWORDS[f"bob@{DOMAIN}"], "INBOX", lambda m: m["Subject"] == "via 587")


def test_submission_465_implicit_tls(mail: Mail) -> None:
    mail.submit(
        f"bob@{DOMAIN}", PASSWORDS[f"bob@{DOMAIN}"], message(f"bob@{DOMAIN}", f"alice@{DOMAIN}", "via 465"), 465
    )
    mail.wait_for(f"alice@{DOMAIN}", PASSWORDS[f"alice@{DOMAIN}"], "INBOX", lambda m: m["Subject"] == "via 465")


def test_port_25_no_auth_no_relay_unknown_user_refused(mail: Mail) -> None:
    conn = mail.smtp(25)
    assert not conn.has_extn("auth")
    mail.starttls(conn)
    assert not conn.has_extn("auth"), "port 25 never offers AUTH, even over TLS"
    conn.mail("someone@elsewhere.test")
    code, text = conn.rcpt("victim@gmail.com")
    assert code == 554 and b"Relay access denied" in text
    code, text = conn.rcpt(f"nobody@{DOMAIN}")
    assert code == 550, text
    conn.quit()


def test_greylisting_first_attempt_then_accepted_after_delay(mail: Mail) -> None:
    conn = mail.smtp(25)
    conn.mail("first-time@sender-grey.test")
    code, text = conn.rcpt(f"bob@{DOMAIN}")
    assert code == 450 and b"Greylisted" in text
    conn.quit()
    msg = message("first-time@sender-grey.test", f"bob@{DOMAIN}", "after greylisting")
    mail.deliver_25("first-time@sender-grey.test", [f"bob@{DOMAIN}"], msg)
    mail.wait_for(f"bob@{DOMAIN}", PASSWORDS[f"bob@{DOMAIN}"], "INBOX", lambda m: m["Subject"] == "after greylisting")


def test_authenticated_user_cannot_send_as_another(mail: Mail) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        mail.submit(
            f"alice@{DOMAIN}", PASSWORDS[f"alice@{DOMAIN}"], message(f"bob@{DOMAIN}", f"carol@{OTHER}", "spoof")
        )
    code, text = next(iter(refused.value.recipients.values()))
    assert code == 553 and b"not owned by user" in text


def test_imap_only_over_tls(mail: Mail, box: Box) -> None:
    with pytest.raises(OSError):  # refused, or dropped by the firewall: either way nothing answers
        socket.create_connection((box.address, 143), timeout=3).close()
    conn = mail.imap(f"carol@{OTHER}", PASSWORDS[f"carol@{OTHER}"])
    _, folders = conn.list()
    names = b" ".join(folders)
    for special in (b"Drafts", b"Sent", b"Trash", b"Spam", b"Archive"):
        assert special in names
    _, subscribed = conn.lsub()
    assert all(s in b" ".join(subscribed) for s in (b"Drafts", b"Sent", b"Trash", b"Spam", b"Archive"))
    conn.logout()


def test_gtube_lands_in_spam_and_moving_into_spam_trains_bayes(mail: Mail, box: Box) -> None:
    bob = (f"bob@{DOMAIN}", PASSWORDS[f"bob@{DOMAIN}"])
    mail.deliver_25("spammer@sender-spam.test", [bob[0]], message("spammer@sender-spam.test", bob[0], "gtube", GTUBE))
    spam = mail.wait_for(*bob, "Spam", lambda m: m["Subject"] == "gtube")
    assert spam["X-Spam-Flag"] == "YES"

    def nspam() -> int:
        if box.run(f"test -e {layout.SPAMASSASSIN}/bayes_toks", check=False)[0] != 0:
            return 0  # nothing learned yet
        out = box.run("runuser -u debian-spamd -- sa-learn --dump magic")[1]
        return next(int(line.split()[2]) for line in out.splitlines() if line.rstrip().endswith("nspam"))

    mail.deliver_25("friend@sender-ham.test", [bob[0]], message("friend@sender-ham.test", bob[0], "to be junked"))
    mail.wait_for(*bob, "INBOX", lambda m: m["Subject"] == "to be junked")
    before = nspam()
    conn = mail.imap(*bob)
    conn.select("INBOX")
    _, data = conn.search(None, 'SUBJECT "to be junked"')
    num = data[0].split()[0]
    typ, _ = conn.copy(num, "Spam")
    assert typ == "OK"
    conn.logout()
    assert nspam() == before + 1


def test_dkim_signature_verifies_against_the_box_key(mail: Mail, box: Box) -> None:
    public = box.run(f"cat {layout.DKIM_PUBLIC}")[1]
    record = "".join(part for part in public.split('"')[1::2]).encode()
    alice = f"alice@{DOMAIN}"
    mail.submit(alice, PASSWORDS[alice], message(alice, f"carol@{OTHER}", "signed"))
    got = mail.wait_for(f"carol@{OTHER}", PASSWORDS[f"carol@{OTHER}"], "INBOX", lambda m: m["Subject"] == "signed")
    assert f"d={DOMAIN}" in got["DKIM-Signature"].replace(" ", "") and "s=mail" in got["DKIM-Signature"]

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == f"mail._domainkey.{DOMAIN}.".encode()
        return record

    assert dkim.verify(got.as_bytes(), dnsfunc=dns)


def test_aliases_catch_all_and_postmaster_deliver(mail: Mail) -> None:
    alice, bob, carol = f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{OTHER}"
    mail.submit(bob, PASSWORDS[bob], message(bob, f"team@{DOMAIN}", "to the team"))
    for user in (alice, bob):
        mail.wait_for(user, PASSWORDS[user], "INBOX", lambda m: m["Subject"] == "to the team")
    mail.submit(bob, PASSWORDS[bob], message(bob, f"anything-at-all@{OTHER}", "catch-all"))
    mail.wait_for(carol, PASSWORDS[carol], "INBOX", lambda m: m["Subject"] == "catch-all")
    mail.submit(bob, PASSWORDS[bob], message(bob, f"postmaster@{OTHER}", "to postmaster"))
    mail.wait_for(alice, PASSWORDS[alice], "INBOX", lambda m: m["Subject"] == "to postmaster")
    mail.submit(bob, PASSWORDS[bob], message(bob, f"abuse@{DOMAIN}", "to abuse"))
    mail.wait_for(alice, PASSWORDS[alice], "INBOX", lambda m: m["Subject"] == "to abuse")


def test_user_add_password_remove(inv: Path, mail: Mail, box: Box) -> None:
    dave = f"dave@{DOMAIN}"
    res = cli(inv, "user", "add", NAME, dave, "--password-stdin", stdin="dave-first-pass\n")
    assert res.code == 0, res.err + res.out
    mail.imap(dave, "dave-first-pass").logout()  # live right away
    mail.submit(bob_ := f"bob@{DOMAIN}", PASSWORDS[bob_], message(bob_, dave, "for dave"))
    mail.wait_for(dave, "dave-first-pass", "INBOX", lambda m: m["Subject"] == "for dave")

    res = cli(inv, "user", "password", NAME, dave, "--password-stdin", stdin="dave-second-pass\n")
    assert res.code == 0, res.err + res.out
    with pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED"):
        mail.imap(dave, "dave-first-pass")
    mail.imap(dave, "dave-second-pass").logout()

    res = cli(inv, "user", "remove", NAME, dave)
    assert res.code == 0, res.err + res.out
    with pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED"):
        mail.imap(dave, "dave-second-pass")
    kept = box.run(f"grep -rl 'Subject: for dave' {layout.mailbox_dir(dave)}", check=False)[1]
    assert kept.strip(), "the mail stays on the box"


def test_second_deploy_changes_nothing_and_keeps_state(inv: Path, box: Box) -> None:
    before = {p: box.sha256(p) for p in KEEP}
    bayes = box.run(f"ls {layout.SPAMASSASSIN}")[1]
    mailboxes = box.run(f"find {layout.MAILBOXES} -type f -path '*/cur/*' | sort")[1]
    res = cli(inv, "deploy", NAME, "--json")
    assert res.code == 0, res.err
    run = res.json()["hosts"][NAME]
    assert run["changed"] == 0 and run["failed"] == 0, run["actions"]
    assert run["round_trips"] <= 3
    assert {p: box.sha256(p) for p in KEEP} == before
    assert box.run(f"ls {layout.SPAMASSASSIN}")[1] == bayes
    assert box.run(f"find {layout.MAILBOXES} -type f -path '*/cur/*' | sort")[1] == mailboxes


def test_concurrent_user_adds_all_land(inv: Path, mail: Mail) -> None:
    results: list[int] = []

    def add(i: int) -> None:
        results.append(
            cli(inv, "user", "add", NAME, f"crowd{i}@{DOMAIN}", "--password-stdin", stdin=f"crowd-pass-{i}\n").code
        )

    threads = [threading.Thread(target=add, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [0] * 20
    text = (inv / f"{NAME}.toml").read_text()
    assert all(f'"crowd{i}@{DOMAIN}"' in text for i in range(20))
    for i in (0, 7, 19):
        mail.imap(f"crowd{i}@{DOMAIN}", f"crowd-pass-{i}").logout()


def test_user_remove_purge_deletes_the_mailbox_after_confirmation(inv: Path, mail: Mail, box: Box) -> None:
    erin = f"erin@{DOMAIN}"
    assert cli(inv, "user", "add", NAME, erin, "--password-stdin", stdin="erin-password-1\n").code == 0
    bob = f"bob@{DOMAIN}"
    mail.submit(bob, PASSWORDS[bob], message(bob, erin, "for erin"))
    mail.wait_for(erin, "erin-password-1", "INBOX", lambda m: m["Subject"] == "for erin")
    folder = layout.mailbox_dir(erin)
    # Without a terminal and without --yes: refused before anything changes.
    before = (inv / f"{NAME}.toml").read_bytes()
    res = cli(inv, "user", "remove", NAME, erin, "--purge")
    assert res.code == 2 and (inv / f"{NAME}.toml").read_bytes() == before
    assert box.run(f"test -d {folder}", check=False)[0] == 0
    res = cli(inv, "user", "remove", NAME, erin, "--purge", "--yes")
    assert res.code == 0, res.err + res.out
    assert box.run(f"test -e {folder}", check=False)[0] != 0, "the mailbox is gone"
    assert f'"{erin}"' not in (inv / f"{NAME}.toml").read_text()


def test_a_hand_edited_mixed_case_address_logs_in_and_receives(inv: Path, mail: Mail, box: Box) -> None:
    """Addresses match without regard to case everywhere: an operator's hand-written `Dave@` is served as
    dave@ (dovecot looks logins up as %Lu, postfix folds its map keys), so the login and mail in any case
    work. Before, the users file said `Dave@...` and every login failed."""
    path = inv / f"{NAME}.toml"
    before = path.read_text()
    password = "dave-secret-4444"
    path.write_text(
        before
        + f'\n[[users]]\nemail = "Dave@{DOMAIN}"\npassword_hash = "{hash_password(password)}"\n'
        + f'\n[[aliases]]\nsource = "Sales@{DOMAIN}"\ndestinations = ["DAVE@{DOMAIN}"]\n'
    )
    try:
        res = cli(inv, "deploy", NAME, "--json")
        assert res.code == 0, res.errors()
        for login in (f"Dave@{DOMAIN}", f"dave@{DOMAIN}", f"DAVE@{DOMAIN.upper()}"):
            mail.imap(login, password).logout()
        mail.deliver_25(
            "someone@elsewhere.test",
            [f"DAVE@{DOMAIN.upper()}"],
            message("someone@elsewhere.test", f"dave@{DOMAIN}", "upper-case rcpt"),
        )
        mail.deliver_25(
            "someone@elsewhere.test",
            [f"sales@{DOMAIN}"],
            message("someone@elsewhere.test", f"sales@{DOMAIN}", "via the alias"),
        )
        mail.submit(f"Dave@{DOMAIN}", password, message(f"sales@{DOMAIN}", f"dave@{DOMAIN}", "as the alias"))
        for subject in ("upper-case rcpt", "via the alias", "as the alias"):
            mail.wait_for(f"dave@{DOMAIN}", password, "INBOX", lambda m, s=subject: m["Subject"] == s)
    finally:
        path.write_text(before)
        assert cli(inv, "deploy", NAME).code == 0
