"""Real SMTP and IMAP clients for the mail e2e tests, verifying the box's certificate and its name: against the
box's own certificate (pinned: a self-signed box) or a CA's root (a box with a certificate from ACME)."""

from __future__ import annotations

import base64
import contextlib
import email
import email.message
import email.policy
import email.utils
import imaplib
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from tests.e2e.helpers import Box


class _SMTPS(smtplib.SMTP_SSL):
    """Implicit TLS to an address, verifying the certificate against the box's name."""

    def __init__(self, address: str, verify_name: str, context: ssl.SSLContext) -> None:
        self.verify_name = verify_name
        super().__init__(address, 465, timeout=20, context=context, local_hostname="client.e2e.test")

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((host, port), timeout)
        return self.context.wrap_socket(sock, server_hostname=self.verify_name)


class _IMAPS(imaplib.IMAP4_SSL):
    def __init__(self, address: str, verify_name: str, context: ssl.SSLContext) -> None:
        self.verify_name = verify_name
        super().__init__(address, 993, ssl_context=context, timeout=20)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = imaplib.IMAP4._create_socket(self, timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.verify_name)


class _ManageSieve:
    """One ManageSieve connection (RFC 5804): a command, then its response up to the OK that ends it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def command(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.response()

    def response(self) -> bytes:
        lines: list[bytes] = []
        while line := self.file.readline():
            lines.append(line)
            if line.startswith((b"OK", b"NO", b"BYE")):
                assert line.startswith(b"OK"), b"".join(lines).decode(errors="replace")
                return b"".join(lines)
        raise AssertionError("ManageSieve: connection closed after " + b"".join(lines).decode(errors="replace"))


class Mail:
    """Talks to one box as a mail client would: SMTP on 25/465/587, IMAPS on 993. It trusts either the box's
    own certificate `cert_pem` (a self-signed box: exactly that certificate) or the CA whose root is in
    `ca_file` (a box with [acme]: only that root, not the system's); the name is checked either way."""

    def __init__(self, box: Box, hostname: str, cert_pem: str | None = None, *, ca_file: Path | None = None) -> None:
        if (cert_pem is None) == (ca_file is None):
            raise TypeError("Mail: give the box's own certificate (cert_pem) or a CA's root (ca_file), one of them")
        self.box = box
        self.hostname = hostname
        if ca_file is not None:
            self.tls = ssl.create_default_context(cafile=str(ca_file))
        else:
            self.tls = ssl.create_default_context(cadata=cert_pem)
        self.tls.minimum_version = ssl.TLSVersion.TLSv1_2

    def smtp(self, port: int = 587) -> smtplib.SMTP:
        if port == 465:
            return _SMTPS(self.box.address, self.hostname, self.tls)
        conn = smtplib.SMTP(self.box.address, port, timeout=20, local_hostname="client.e2e.test")
        conn.ehlo()
        return conn

    def starttls(self, conn: smtplib.SMTP) -> None:
        conn._host = self.hostname  # type: ignore[attr-defined]  # the name STARTTLS verifies
        conn.starttls(context=self.tls)
        conn.ehlo()

    def submit(self, user: str, password: str, msg: email.message.EmailMessage, port: int = 587) -> None:
        conn = self.smtp(port)
        try:
            if port == 587:
                self.starttls(conn)
            conn.login(user, password)
            conn.send_message(msg)
        finally:
            conn.quit()

    def deliver_25(self, sender: str, rcpts: list[str], msg: email.message.EmailMessage, timeout: float = 60) -> None:
        """Deliver as another mail server would on port 25, retrying after greylisting like a real one."""
        deadline = time.monotonic() + timeout
        while True:
            conn = self.smtp(25)
            try:
                self.starttls(conn)
                conn.sendmail(sender, rcpts, msg.as_bytes())
                return
            except smtplib.SMTPRecipientsRefused as e:
                codes = {code for code, _ in e.recipients.values()}
                if codes != {450} or time.monotonic() > deadline:
                    raise
            finally:
                with contextlib.suppress(smtplib.SMTPServerDisconnected):
                    conn.quit()
            time.sleep(1)

    def imap(self, user: str, password: str) -> imaplib.IMAP4_SSL:
        conn = _IMAPS(self.box.address, self.hostname, self.tls)
        conn.login(user, password)
        return conn

    def sieve_activate(self, user: str, password: str, name: str, script: str | None) -> None:
        """Make `script` the user's active sieve script over ManageSieve (port 4190, STARTTLS, then PLAIN),
        as a client such as roundcube's filters does; None: deactivate and delete `name`."""
        conn = _ManageSieve(socket.create_connection((self.box.address, 4190), timeout=20))
        conn.response()  # the greeting: capabilities, then OK
        conn.command(b"STARTTLS")
        conn = _ManageSieve(self.tls.wrap_socket(conn.sock, server_hostname=self.hostname))
        conn.response()  # the capabilities again, now over TLS
        plain = base64.b64encode(f"\0{user}\0{password}".encode())
        conn.command(b'AUTHENTICATE "PLAIN" "' + plain + b'"')
        quoted = f'"{name}"'.encode()
        if script is None:
            conn.command(b'SETACTIVE ""')
            conn.command(b"DELETESCRIPT " + quoted)
        else:
            data = script.encode()
            conn.command(b"PUTSCRIPT " + quoted + b" {%d+}\r\n" % len(data) + data)
            conn.command(b"SETACTIVE " + quoted)
        conn.command(b"LOGOUT")
        conn.sock.close()

    def wait_for(
        self, user: str, password: str, folder: str, match: Callable[[email.message.Message], bool], timeout: float = 60
    ) -> email.message.Message:
        """Poll `folder` over IMAPS until a message satisfying `match` is there."""
        deadline = time.monotonic() + timeout
        while True:
            conn = self.imap(user, password)
            try:
                typ, _ = conn.select(f'"{folder}"', readonly=True)
                assert typ == "OK", f"cannot select {folder}"
                _, data = conn.search(None, "ALL")
                for num in data[0].split():
                    _, parts = conn.fetch(num, "(BODY.PEEK[])")
                    raw = parts[0][1]
                    assert isinstance(raw, bytes)
                    msg = email.message_from_bytes(raw, policy=email.policy.default)
                    if match(msg):
                        return msg
            finally:
                conn.logout()
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching message in {user}'s {folder} after {timeout} s")
            time.sleep(0.5)


def message(sender: str, to: str, subject: str, body: str = "hello\n") -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = email.utils.make_msgid(domain="e2e.test")
    msg.set_content(body)
    return msg
