"""Part of scripts/demo: send a mail from one user to another through the box (submission on 587 with
STARTTLS and AUTH) and read it back over IMAPS. The box's self-signed certificate is fetched over the
pinned SSH connection and trusted exactly; the connection checks that it names the box."""

from __future__ import annotations

import email
import email.message
import email.policy
import imaplib
import smtplib
import socket
import ssl
import sys
import time
from pathlib import Path

from miab_remote.fleet.store import Inventory
from miab_remote.mail import layout
from miab_remote.transport.ssh import Transport


class IMAPS(imaplib.IMAP4_SSL):
    def __init__(self, address: str, name: str, context: ssl.SSLContext) -> None:
        self.verify_name = name
        super().__init__(address, 993, ssl_context=context, timeout=20)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return self.ssl_context.wrap_socket(
            imaplib.IMAP4._create_socket(self, timeout), server_hostname=self.verify_name
        )


def main(inventory: str, name: str, sender: str, sender_password: str, rcpt: str, rcpt_password: str) -> int:
    host = Inventory(Path(inventory)).load(name)
    with Transport(host) as t:
        cert = t.exec(f"cat {layout.TLS_CERT}").stdout.decode()
    tls = ssl.create_default_context(cadata=cert)
    subject = f"Hello from miab-remote {time.strftime('%H:%M:%S')}"
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, rcpt, subject
    msg.set_content("Sent through the box's submission port, read back over IMAPS.\n")
    smtp = smtplib.SMTP(host.address, 587, timeout=20)
    smtp._host = name  # type: ignore[attr-defined]  # the name STARTTLS checks the certificate against
    smtp.starttls(context=tls)
    smtp.login(sender, sender_password)
    smtp.send_message(msg)
    smtp.quit()
    print(f"sent     {sender} -> {rcpt} via {name}:587 (STARTTLS, AUTH): {subject!r}")
    for _ in range(60):
        imap = IMAPS(host.address, name, tls)
        imap.login(rcpt, rcpt_password)
        imap.select("INBOX", readonly=True)
        _, found = imap.search(None, "SUBJECT", f'"{subject}"')
        if found[0]:
            _, parts = imap.fetch(found[0].split()[-1], "(BODY.PEEK[])")
            got = email.message_from_bytes(parts[0][1], policy=email.policy.default)  # type: ignore[index]
            imap.logout()
            print(
                f"received in {rcpt}'s INBOX over IMAPS: {got['Subject']!r}, "
                f"DKIM-signed: {'DKIM-Signature' in got}, spam score: {got['X-Spam-Score']}"
            )
            return 0
        imap.logout()
        time.sleep(0.5)
    print("the mail did not arrive within 30 s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3], *sys.stdin.read().split()))  # type: ignore[misc]
