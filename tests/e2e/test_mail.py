"""The mail box against a real local box, with real SMTP and IMAP clients: submission and auth, port 25
rules (no AUTH, no relay, unknown users, greylisting, SMTP smuggling, sender domains, DMARC), anti-spoofing,
delivery, spam filing and learning, DKIM, the submitter's privacy, aliases, account commands, and a second
deploy that touches nothing.

Mail from "outside" comes from this machine (HOST_ADDRESS on the test bridge), which the fixture makes an
authorised server of OTHER (its SPF lists it): such senders resolve, pass SPF and DMARC, as a real
server's would. OTHER publishes DMARC p=reject, DOMAIN keeps the generated p=quarantine."""

from __future__ import annotations

import contextlib
import email.message
import imaplib
import signal
import smtplib
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest

from miab_remote.mail import layout
from miab_remote.mail.passwords import hash_password
from tests.e2e.helpers import (
    HOST_ADDRESS,
    Box,
    cli,
    deployed_box,
    edit_inventory,
    new_inventory,
    operator_key,
    start_cli,
    wait_until,
)
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
def inv(tmp_path_factory: pytest.TempPathFactory, image: str) -> Path:
    return new_inventory(tmp_path_factory.mktemp(f"mail-{image}") / "hosts")


@pytest.fixture(scope="module")
def box(inv: Path, tmp_path_factory: pytest.TempPathFactory, image: str) -> Iterator[Box]:
    inventory = {
        "domains": [DOMAIN, OTHER],
        "users": [{"email": e, "password_hash": hash_password(p)} for e, p in PASSWORDS.items()],
        "aliases": [
            {"source": f"team@{DOMAIN}", "destinations": [f"alice@{DOMAIN}", f"bob@{DOMAIN}"]},
            {"source": f"@{OTHER}", "destinations": [f"carol@{OTHER}"]},
        ],
        "options": {"greylist_delay": 2},
        "dns": {
            "records": [
                {"name": OTHER, "type": "TXT", "value": f'"v=spf1 mx ip4:{HOST_ADDRESS} -all"'},
                {"name": f"_dmarc.{OTHER}", "type": "TXT", "value": '"v=DMARC1; p=reject;"'},
            ]
        },
    }
    with deployed_box(inv, operator_key(tmp_path_factory.mktemp("operator")), {NAME: inventory}, image=image) as made:
        yield made.box


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
    conn.mail(f"someone@{OTHER}")
    code, text = conn.rcpt("victim@gmail.com")
    assert code == 554 and b"Relay access denied" in text
    code, text = conn.rcpt(f"nobody@{DOMAIN}")
    assert code == 550, text
    conn.quit()


def test_greylisting_first_attempt_then_accepted_after_delay(mail: Mail) -> None:
    conn = mail.smtp(25)
    conn.mail(f"first-time@{OTHER}")
    code, text = conn.rcpt(f"bob@{DOMAIN}")
    assert code == 450 and b"Greylisted" in text
    conn.quit()
    msg = message(f"first-time@{OTHER}", f"bob@{DOMAIN}", "after greylisting")
    mail.deliver_25(f"first-time@{OTHER}", [f"bob@{DOMAIN}"], msg)
    mail.wait_for(f"bob@{DOMAIN}", PASSWORDS[f"bob@{DOMAIN}"], "INBOX", lambda m: m["Subject"] == "after greylisting")


def test_authenticated_user_cannot_send_as_another(mail: Mail) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        mail.submit(
            f"alice@{DOMAIN}", PASSWORDS[f"alice@{DOMAIN}"], message(f"bob@{DOMAIN}", f"carol@{OTHER}", "spoof")
        )
    code, text = next(iter(refused.value.recipients.values()))
    assert code == 553 and b"not owned by user" in text


def subjects(mail: Mail, user: str, folders: tuple[str, ...] = ("INBOX", "Spam")) -> list[str]:
    """Every subject in the user's `folders`, read over IMAPS."""
    out = []
    conn = mail.imap(user, PASSWORDS[user])
    try:
        for folder in folders:
            conn.select(f'"{folder}"', readonly=True)
            _, data = conn.search(None, "ALL")
            for num in data[0].split():
                _, parts = conn.fetch(num, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                raw = parts[0][1]
                assert isinstance(raw, bytes)
                out.append(raw.decode().partition(":")[2].strip())
    finally:
        conn.logout()
    return out


class RawSMTP:
    """Port 25 over a raw socket, to send bytes that smtplib would never write (bare newlines)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.create_connection((address, 25), timeout=20)
        self.buf = b""
        assert self.reply().startswith(b"220")

    def reply(self) -> bytes:
        """One (possibly multi-line) reply."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(4096)
                if not chunk:
                    return b"".join(lines)
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line + b"\r\n")
            if line[3:4] != b"-":
                return b"".join(lines)

    def cmd(self, line: str) -> bytes:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def replies(self) -> list[bytes]:
        """Every reply until the server closes the connection."""
        out = []
        while reply := self.reply():
            out.append(reply)
        self.sock.close()
        return out


def open_envelope(address: str, sender: str, rcpt: str, timeout: float = 60) -> RawSMTP:
    """A raw connection with MAIL and RCPT accepted, retried past greylisting like a real server."""
    deadline = time.monotonic() + timeout
    conn = RawSMTP(address)
    assert conn.cmd("EHLO client.e2e.test").startswith(b"250")
    while True:
        assert conn.cmd(f"MAIL FROM:<{sender}>").startswith(b"250")
        got = conn.cmd(f"RCPT TO:<{rcpt}>")
        if got.startswith(b"250"):
            return conn
        assert got.startswith(b"450") and time.monotonic() < deadline, got
        conn.cmd("RSET")
        time.sleep(1)


SMUGGLING = {"lf-dot-lf": b"\n.\n", "crlf-dot-lf": b"\r\n.\n", "lf-dot-crlf": b"\n.\r\n"}


@pytest.mark.parametrize("ending", list(SMUGGLING), ids=list(SMUGGLING))
def test_smtp_smuggling_each_end_of_data_variant_delivers_one_message(mail: Mail, box: Box, ending: str) -> None:
    bob, sender, tag = f"bob@{DOMAIN}", f"smuggler@{OTHER}", f"{ending} {uuid.uuid4().hex[:8]}"
    conn = open_envelope(box.address, sender, bob)
    assert conn.cmd("DATA").startswith(b"354")
    smuggled = (
        f"MAIL FROM:<{sender}>\r\nRCPT TO:<{bob}>\r\nDATA\r\n"
        f"From: alice@{DOMAIN}\r\nTo: {bob}\r\nSubject: smuggled {tag}\r\n\r\nforged\r\n.\r\nQUIT\r\n"
    )
    outer = f"From: {sender}\r\nTo: {bob}\r\nSubject: outer {tag}\r\n\r\nhello".encode()
    conn.sock.sendall(outer + SMUGGLING[ending] + smuggled.encode())
    conn.replies()
    mail.wait_for(bob, PASSWORDS[bob], "INBOX", lambda m: m["Subject"] == f"outer {tag}")
    box.run("postqueue -f; sleep 2")  # anything still queued would be delivered by now
    seen = subjects(mail, bob)
    assert seen.count(f"outer {tag}") == 1
    assert f"smuggled {tag}" not in seen, "a second, smuggled message was delivered"


@pytest.mark.parametrize(
    "sender",
    [
        f"alice@{DOMAIN}.",
        f"alice@{DOMAIN}..",
        f"alice@.{DOMAIN}",
        f"alice@[{HOST_ADDRESS}]",
        "alice@mailtest",
        "alice@no-such-domain.test",
    ],
    ids=["trailing-dot", "double-dot", "leading-dot", "address-literal", "non-fqdn", "unknown-domain"],
)
def test_port_25_refuses_non_canonical_non_fqdn_and_unknown_sender_domains(mail: Mail, sender: str) -> None:
    conn = mail.smtp(25)
    mail.starttls(conn)
    code, text = conn.docmd(f"MAIL FROM:<{sender}>")
    if code == 250:  # postfix refuses at RCPT (smtpd_delay_reject)
        code, text = conn.docmd(f"RCPT TO:<bob@{DOMAIN}>")
    conn.quit()
    assert 500 <= code < 600, (code, text)


def forged_results(domain: str) -> str:
    """An Authentication-Results header an outside sender writes to look as if the box had checked it."""
    return (
        f"{NAME}; dkim=pass header.d={domain} header.i=@{domain}; spf=pass smtp.mailfrom={domain}; "
        f"dmarc=pass (p=none dis=none) header.from={domain}"
    )


@pytest.mark.parametrize("forged", [False, True], ids=["plain", "forged-results"])
def test_dmarc_p_reject_is_refused_with_5xx(mail: Mail, forged: bool) -> None:
    bob = f"bob@{DOMAIN}"
    msg = message(f"carol@{OTHER}", bob, f"dmarc reject {uuid.uuid4().hex[:8]}")
    if forged:
        msg["Authentication-Results"] = forged_results(OTHER)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        mail.deliver_25("", [bob], msg)  # a null sender: only the header From names a domain
    assert 500 <= refused.value.smtp_code < 600, refused.value


def test_dmarc_p_quarantine_goes_to_spam_with_authentication_results(mail: Mail) -> None:
    bob = f"bob@{DOMAIN}"
    subject = f"dmarc quarantine {uuid.uuid4().hex[:8]}"
    msg = message(f"alice@{DOMAIN}", bob, subject)
    msg["Authentication-Results"] = forged_results(DOMAIN)
    mail.deliver_25("", [bob], msg)
    got = mail.wait_for(bob, PASSWORDS[bob], "Spam", lambda m: m["Subject"] == subject)
    results = [" ".join(str(r).split()) for r in got.get_all("Authentication-Results", [])]
    assert any(r.startswith(f"{NAME}; dmarc=fail") and "p=quarantine" in r for r in results), results
    assert not any("dmarc=pass" in r or "dkim=pass" in r for r in results), "a forged result was kept"


def test_dmarc_pass_from_the_domains_own_server_lands_in_inbox(mail: Mail) -> None:
    bob, sender, subject = f"bob@{DOMAIN}", f"dave@{OTHER}", f"dmarc pass {uuid.uuid4().hex[:8]}"
    mail.deliver_25(sender, [bob], message(sender, bob, subject))
    got = mail.wait_for(bob, PASSWORDS[bob], "INBOX", lambda m: m["Subject"] == subject)
    results = [" ".join(str(r).split()) for r in got.get_all("Authentication-Results", [])]
    assert any(r.startswith(f"{NAME}; dmarc=pass") for r in results), results
def _send(mail: Mail, login: str, envelope: str, header_from: str, to: str, subject: str, port: int = 587) -> None:
    """Submit as `login` with one envelope sender and another header From (smtplib raises on a refusal)."""
    conn = mail.smtp(port)
    try:
        if port == 587:
            mail.starttls(conn)
        conn.login(login, PASSWORDS[login])
        msg = message(header_from, to, subject)
        conn.sendmail(envelope, [to], msg.as_bytes())
    finally:
        with contextlib.suppress(smtplib.SMTPServerDisconnected):
            conn.quit()


@pytest.mark.parametrize("port", [587, 465])
def test_authenticated_user_cannot_forge_the_header_from(mail: Mail, port: int) -> None:
    alice, bob, carol = f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{OTHER}"
    # The envelope is alice's own (postfix's envelope check passes); the header says bob.
    for forged in (f"Bob <{bob}>", f"Alice <{alice}>, Bob <{bob}>", f"carol@{OTHER}", f"someone@{OTHER}"):
        with pytest.raises(smtplib.SMTPDataError) as refused:
            _send(mail, alice, alice, forged, carol, f"forged {port}", port)
        assert 500 <= refused.value.smtp_code < 600, refused.value
        assert b"may not send as" in refused.value.smtp_error, refused.value.smtp_error


def test_header_from_of_own_address_alias_and_catch_all_goes_through(mail: Mail) -> None:
    alice, bob, carol = f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{OTHER}"
    allowed = [
        (alice, alice, f"Alice <{alice}>", "own address"),
        (alice, alice, f"Alice <Alice+News@{DOMAIN.upper()}>", "own address, extension, upper case"),
        (alice, f"team@{DOMAIN}", f"The team <team@{DOMAIN}>", "alias of the login"),
        (bob, f"team@{DOMAIN}", f"team@{DOMAIN}", "alias of the login, second owner"),
        (carol, f"anything@{OTHER}", f"Anything <anything@{OTHER}>", "catch-all domain"),
        (alice, f"postmaster@{DOMAIN}", f"postmaster@{DOMAIN}", "automatic alias of the admin"),
    ]
    for login, envelope, header_from, subject in allowed:
        _send(mail, login, envelope, header_from, carol, f"allowed: {subject}")
    for *_, subject in allowed:
        mail.wait_for(carol, PASSWORDS[carol], "INBOX", lambda m, s=subject: m["Subject"] == f"allowed: {s}")


def test_mail_to_root_on_the_box_and_its_bounces_reach_the_admin(mail: Mail, box: Box) -> None:
    alice = f"alice@{DOMAIN}"  # the first user: the admin by default
    box.run("printf 'Subject: cron says hello\\n\\nbody\\n' | /usr/sbin/sendmail root")
    mail.wait_for(alice, PASSWORDS[alice], "INBOX", lambda m: m["Subject"] == "cron says hello")
    # A bounce of system mail goes back to root, so it reaches the admin too.
    box.run(f"printf 'Subject: to nobody\\n\\nbody\\n' | /usr/sbin/sendmail -f root nobody-here@{NAME}")
    bounce = mail.wait_for(
        alice,
        PASSWORDS[alice],
        "INBOX",
        lambda m: "to nobody" in m.as_string() and m.get_content_type() == "multipart/report",
    )
    assert bounce["From"] and "MAILER-DAEMON" in bounce["From"]


def test_postmaster_abuse_root_hostmaster_of_the_hostname_from_outside_reach_the_admin(mail: Mail) -> None:
    alice = f"alice@{DOMAIN}"
    for local in ("postmaster", "abuse", "root", "hostmaster"):
        msg = message(f"reporter@{OTHER}", f"{local}@{NAME}", f"for {local} of the hostname")
        mail.deliver_25(f"reporter@{OTHER}", [f"{local}@{NAME}"], msg)
    for local in ("postmaster", "abuse", "root", "hostmaster"):
        mail.wait_for(alice, PASSWORDS[alice], "INBOX", lambda m, x=local: m["Subject"] == f"for {x} of the hostname")
    # Other names of the hostname are refused, not relayed or looped.
    conn = mail.smtp(25)
    conn.mail(f"reporter@{OTHER}")
    code, _ = conn.rcpt(f"nobody-here@{NAME}")
    assert code == 550
    conn.quit()


def test_hostmaster_of_every_domain_delivers(mail: Mail) -> None:
    alice = f"alice@{DOMAIN}"
    for domain in (DOMAIN, OTHER):
        msg = message(f"reporter@{OTHER}", f"hostmaster@{domain}", f"hostmaster of {domain}")
        mail.deliver_25(f"reporter@{OTHER}", [f"hostmaster@{domain}"], msg)
    mail.wait_for(alice, PASSWORDS[alice], "INBOX", lambda m: m["Subject"] == f"hostmaster of {DOMAIN}")
    # @OTHER has a catch-all to carol, but hostmaster@ is the admin's like postmaster@.
    mail.wait_for(alice, PASSWORDS[alice], "INBOX", lambda m: m["Subject"] == f"hostmaster of {OTHER}")


def test_check_says_the_admin_addresses_are_delivered(inv: Path, box: Box) -> None:
    res = cli(inv, "check", NAME, "--json")
    checks = {c["name"]: c for c in res.json()["hosts"][NAME]["checks"]}
    for address in (f"alice@{DOMAIN}", f"postmaster@{NAME}", f"abuse@{DOMAIN}", f"hostmaster@{OTHER}"):
        line = next((c for n, c in checks.items() if address in n), None)
        assert line is not None and line["ok"], (address, sorted(checks))


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


def test_a_users_own_sieve_script_from_managesieve_files_their_mail(mail: Mail) -> None:
    """ManageSieve (4190, what roundcube's filters use) keeps a user's script where delivery runs it, after
    the global one: mail it matches lands in the folder it names."""
    alice, bob = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
    script = 'require ["fileinto", "mailbox"];\nif header :contains "Subject" "sorted" { fileinto :create "Sorted"; }\n'
    mail.sieve_activate(bob, PASSWORDS[bob], "e2e", script)
    try:
        mail.submit(alice, PASSWORDS[alice], message(alice, bob, "mail to be sorted"))
        mail.wait_for(bob, PASSWORDS[bob], "Sorted", lambda m: m["Subject"] == "mail to be sorted")
    finally:
        mail.sieve_activate(bob, PASSWORDS[bob], "e2e", None)


def test_gtube_lands_in_spam_and_moving_into_spam_trains_bayes(mail: Mail, box: Box) -> None:
    bob = (f"bob@{DOMAIN}", PASSWORDS[f"bob@{DOMAIN}"])
    mail.deliver_25(f"spammer@{OTHER}", [bob[0]], message(f"spammer@{OTHER}", bob[0], "gtube", GTUBE))
    spam = mail.wait_for(*bob, "Spam", lambda m: m["Subject"] == "gtube")
    assert spam["X-Spam-Flag"] == "YES"

    def nspam() -> int:
        if box.run(f"test -e {layout.SPAMASSASSIN}/bayes_toks", check=False)[0] != 0:
            return 0  # nothing learned yet
        out = box.run("runuser -u debian-spamd -- sa-learn --dump magic")[1]
        return next(int(line.split()[2]) for line in out.splitlines() if line.rstrip().endswith("nspam"))

    mail.deliver_25(f"friend@{OTHER}", [bob[0]], message(f"friend@{OTHER}", bob[0], "to be junked"))
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


def dkim_verifies(box: Box, msg: email.message.Message) -> bool:
    """dkimpy's verdict on `msg`'s signature, with the box's public key as the only DNS answer."""
    public = box.run(f"cat {layout.DKIM_PUBLIC}")[1]
    record = "".join(part for part in public.split('"')[1::2]).encode()

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == f"mail._domainkey.{DOMAIN}.".encode()
        return record

    return bool(dkim.verify(msg.as_bytes(), dnsfunc=dns))


def test_dkim_signature_verifies_against_the_box_key(mail: Mail, box: Box) -> None:
    alice = f"alice@{DOMAIN}"
    mail.submit(alice, PASSWORDS[alice], message(alice, f"carol@{OTHER}", "signed"))
    got = mail.wait_for(f"carol@{OTHER}", PASSWORDS[f"carol@{OTHER}"], "INBOX", lambda m: m["Subject"] == "signed")
    assert f"d={DOMAIN}" in got["DKIM-Signature"].replace(" ", "") and "s=mail" in got["DKIM-Signature"]
    assert dkim_verifies(box, got)


@pytest.mark.parametrize("port", [587, 465])
def test_submitted_mail_hides_the_client_address_and_still_verifies(mail: Mail, box: Box, port: int) -> None:
    alice, carol = f"alice@{DOMAIN}", f"carol@{OTHER}"
    subject = f"private {port} {uuid.uuid4().hex[:8]}"
    mail.submit(alice, PASSWORDS[alice], message(alice, carol, subject), port)
    got = mail.wait_for(carol, PASSWORDS[carol], "INBOX", lambda m: m["Subject"] == subject)
    received = [str(r) for r in got.get_all("Received", [])]
    assert received, "the box still records that it received the message"
    leaks = [r for r in received if HOST_ADDRESS in r or "client.e2e.test" in r]
    assert not leaks, f"the submitter's address or name is in a Received header: {leaks}"
    assert any("ESMTPSA" in r for r in received), received
    assert dkim_verifies(box, got)


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


def test_a_users_quota_is_the_limit_imap_reports_on_either_releases_dovecot(
    inv: Path, mail: Mail, box: Box, image: str
) -> None:
    """The same users file on dovecot 2.3 (quota rules) and 2.4 (no rules, only a size, which its file
    computes from the same field): a quota with a unit, one without (KiB), none (no limit)."""
    version = box.run("dovecot --version")[1]
    assert version.startswith({"debian-12": "2.3.", "debian-13": "2.4."}[image]), version
    kib = {f"quota-big@{DOMAIN}": ("2G", 2 * 1024 * 1024), f"quota-kib@{DOMAIN}": ("500", 500)}
    password = "quota-secret-55"
    try:
        for user, (quota, _) in kib.items():
            res = cli(inv, "user", "add", NAME, user, "--quota", quota, "--password-stdin", stdin=password + "\n")
            assert res.code == 0, res.err + res.out
        for user, (_, limit) in kib.items():
            conn = mail.imap(user, password)
            _, data = conn.getquotaroot("INBOX")
            conn.logout()
            assert data[1] == [f'"User quota" (STORAGE 0 {limit})'.encode()], data
        conn = mail.imap(alice := f"alice@{DOMAIN}", PASSWORDS[alice])
        _, data = conn.getquotaroot("INBOX")
        conn.logout()
        assert data[1] == [None], data  # a quota root without limits: no QUOTA line
    finally:
        for user in kib:
            cli(inv, "user", "remove", NAME, user)


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


# postmap on the box, while /run/hold-postmap exists: waits, then fails, so that a push is cut off after the
# maps' text moved into place and before any .db was rebuilt (a killed `user add`, deterministically).
HELD_POSTMAP = """#!/bin/sh
if test -e /run/hold-postmap; then
    touch /run/held-postmap
    while test -e /run/hold-postmap; do sleep 0.2; done
    exit 1
fi
exec /usr/sbin/postmap.real "$@"
"""


def test_a_killed_user_add_is_finished_by_the_next_deploy(inv: Path, mail: Mail, box: Box) -> None:
    frank, bob = f"frank@{DOMAIN}", f"bob@{DOMAIN}"
    box.run(
        "dpkg-divert --local --rename --divert /usr/sbin/postmap.real --add /usr/sbin/postmap >/dev/null && "
        "cat > /usr/sbin/postmap && chmod 755 /usr/sbin/postmap && rm -f /run/held-postmap && touch /run/hold-postmap",
        stdin=HELD_POSTMAP.encode(),
    )
    try:
        proc = start_cli(
            inv,
            *("user", "add", NAME, frank, "--password-stdin"),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdin is not None
        proc.stdin.write(b"frank-password-1\n")
        proc.stdin.close()
        wait_until(
            lambda: box.run("test -e /run/held-postmap", check=False)[0] == 0, "postmap ran (user add)", running=proc
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        box.run("rm -f /run/hold-postmap; timeout 60 flock /run/lock/miab-remote.lock true")
    finally:
        box.run(
            "rm -f /run/hold-postmap /usr/sbin/postmap && "
            "dpkg-divert --local --rename --remove /usr/sbin/postmap >/dev/null"
        )
    # frank's login works (dovecot's file moved), but the maps' .db files are stale: he may not send as himself.
    mail.imap(frank, "frank-password-1").logout()
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        mail.submit(frank, "frank-password-1", message(frank, bob, "frank before"))
    res = cli(inv, "deploy", NAME, "--json")
    assert res.code == 0, res.errors()
    run = res.json()["hosts"][NAME]
    rebuilt = {a["resource"]: a for a in run["actions"] if a["resource"].startswith("command:postmap-")}
    assert "command:postmap-sender_logins" in rebuilt, run["actions"]
    assert all(a["status"] == "changed" for a in rebuilt.values())
    assert any("interrupted" in n for n in run["notes"]), run["notes"]
    mail.submit(frank, "frank-password-1", message(frank, bob, "frank after"))
    mail.wait_for(bob, PASSWORDS[bob], "INBOX", lambda m: m["Subject"] == "frank after")
def test_an_alias_added_later_may_be_sent_as_at_once(inv: Path, mail: Mail, box: Box) -> None:
    bob, carol = f"bob@{DOMAIN}", f"carol@{OTHER}"
    guard_pid = box.run("systemctl show -p MainPID --value miab-sender-guard")[1].strip()
    with pytest.raises(smtplib.SMTPDataError):
        _send(mail, bob, bob, f"news@{DOMAIN}", carol, "news before the alias")
    assert cli(inv, "alias", "add", NAME, f"news@{DOMAIN}", bob).code == 0  # pushed: the guard re-reads its table
    _send(mail, bob, f"news@{DOMAIN}", f"News <news@{DOMAIN}>", carol, "news from the new alias")
    mail.wait_for(carol, PASSWORDS[carol], "INBOX", lambda m: m["Subject"] == "news from the new alias")
    assert box.run("systemctl show -p MainPID --value miab-sender-guard")[1].strip() == guard_pid, "no restart"


def test_admin_email_moves_system_mail_and_the_automatic_addresses(inv: Path, mail: Mail, box: Box) -> None:
    bob = f"bob@{DOMAIN}"
    edit_inventory(inv, NAME, options={"admin_email": bob})
    res = cli(inv, "deploy", NAME, "--json")
    assert res.code == 0, res.errors()
    box.run("printf 'Subject: for the new admin\\n\\nbody\\n' | /usr/sbin/sendmail root")
    mail.wait_for(bob, PASSWORDS[bob], "INBOX", lambda m: m["Subject"] == "for the new admin")
    msg = message(f"reporter@{OTHER}", f"hostmaster@{OTHER}", "hostmaster for the new admin")
    mail.deliver_25(f"reporter@{OTHER}", [f"hostmaster@{OTHER}"], msg)
    mail.wait_for(bob, PASSWORDS[bob], "INBOX", lambda m: m["Subject"] == "hostmaster for the new admin")
    shown = cli(inv, "hosts", "--json").json()["hosts"][NAME]
    assert shown["admin_email"] == bob
    again = cli(inv, "deploy", NAME, "--json").json()["hosts"][NAME]
    assert again["changed"] == 0, again["actions"]


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
            f"someone@{OTHER}",
            [f"DAVE@{DOMAIN.upper()}"],
            message(f"someone@{OTHER}", f"dave@{DOMAIN}", "upper-case rcpt"),
        )
        mail.deliver_25(
            f"someone@{OTHER}",
            [f"sales@{DOMAIN}"],
            message(f"someone@{OTHER}", f"sales@{DOMAIN}", "via the alias"),
        )
        mail.submit(f"Dave@{DOMAIN}", password, message(f"sales@{DOMAIN}", f"dave@{DOMAIN}", "as the alias"))
        for subject in ("upper-case rcpt", "via the alias", "as the alias"):
            mail.wait_for(f"dave@{DOMAIN}", password, "INBOX", lambda m, s=subject: m["Subject"] == s)
    finally:
        path.write_text(before)
        assert cli(inv, "deploy", NAME).code == 0
