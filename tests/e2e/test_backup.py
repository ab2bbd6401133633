"""Backups and restore against real boxes and real targets on this machine's bridge address (REST by `rclone
serve restic` behind a login, the same append-only, S3 by moto's server; TLS from a test CA that is the
inventory's ca_file, tests/standins/backuptargets.py).

The whole life: a Debian 12 box with two users, delivered mail, flags and keywords, a sieve script, a roundcube
contact and trained bayes data is backed up; destroyed keeping its inventory; made again under the same name on
Debian 13, deployed, restored: every folder's UIDVALIDITY, UIDs, flags and Message-IDs, the DKIM record the
box's nsd answers, the certificates on 993 and 443, the bayes counts and the contact are what they were, the
original passwords log in, new mail on port 25 arrives and the restored sieve files it, a second deploy
changes nothing and the next backup is incremental. Then on that box: a restore onto a box with mail refused
without --force, an interrupted restore finished by running it again (port 25 closed meanwhile), one user's
mailbox restored into a folder, S3 and append-only targets (a `forget` there gets 403, the snapshot survives
and restores). No credential is in any process's command line on the laptop or the box while backup and
restore run (one watch of this machine's /proc sees both: a local box's processes are in a child PID namespace).

One box at a time (the Debian 12 one, then its Debian 13 successor), so the module stays lean."""

from __future__ import annotations

import datetime
import email
import email.policy
import hashlib
import imaplib
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest

from miab_remote.mail import layout
from miab_remote.mail.passwords import hash_password
from tests.e2e.helpers import (
    HOST_ADDRESS,
    Box,
    CLIResult,
    Deployed,
    cli,
    deployed_box,
    new_inventory,
    operator_key,
    private_config,
    start_cli,
    wait_until,
)
from tests.e2e.leakwatch import LeakWatch
from tests.e2e.mailclients import Mail, message
from tests.standins.backuptargets import RestTarget, S3Target
from tests.standins.testca import CA

pytestmark = pytest.mark.e2e

NAME = "bk-life.example.test"
DOMAIN = "example.test"
ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
PASSWORDS = {ALICE: "alice-backup-secret-1", BOB: "bob-backup-secret-22"}
ELSEWHERE = "elsewhere.test"  # also served by the box, with this machine as its SPF-authorised sender
OTHER = f"friend@{ELSEWHERE}"
SORTED = "Sorted"  # the folder bob's own sieve script files mail into
SIEVE = f'require ["fileinto", "mailbox"];\nif header :contains "Subject" "sort me" {{ fileinto :create "{SORTED}"; }}'
ROUNDCUBE_DB = f"{layout.ROUNDCUBE}/db/roundcube.sqlite"
CONTACT = ("Carol Contact", "carol@elsewhere.example")
JOURNAL = "/var/lib/miab-remote/restore.json"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
# Files made once on the first box and never again: a restore brings them back, a deploy leaves them.
KEPT_FILES = (layout.DKIM_KEY, layout.TLS_CERT, layout.TLS_KEY, f"{layout.ROUNDCUBE}/secrets.inc.php")
RECORDED: dict[str, Any] = {}  # what the tests before measured, for the ones after (the module runs in order)


# ------------------------------------------------------------------------------------------- what a box holds
@dataclass(frozen=True)
class Folder:
    uidvalidity: int
    uidnext: int
    messages: tuple[tuple[int, tuple[str, ...], str], ...]  # (UID, flags, Message-ID), by UID


_LIST = re.compile(rb'^\((?P<flags>[^)]*)\) (?P<delim>"[^"]*"|NIL) (?P<name>.+)$')


def folders(conn: imaplib.IMAP4) -> list[str]:
    typ, lines = conn.list()
    assert typ == "OK", lines
    names = []
    for line in lines:
        assert isinstance(line, bytes), line
        m = _LIST.match(line)
        assert m, line
        names.append(m["name"].decode().strip('"'))
    return sorted(names)


def folder_state(conn: imaplib.IMAP4, name: str) -> Folder:
    typ, _ = conn.select(f'"{name}"', readonly=True)
    assert typ == "OK", name
    uidvalidity = int(conn.response("UIDVALIDITY")[1][0])
    uidnext = int(conn.response("UIDNEXT")[1][0])
    typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert typ == "OK", data
    messages = []
    for part in data:
        if not isinstance(part, tuple):
            continue  # the ")" closing each message, or None in an empty folder
        head, body = part
        uid = re.search(rb"UID (\d+)", head)
        flags = re.search(rb"FLAGS \(([^)]*)\)", head)
        assert uid and flags, head
        msg = email.message_from_bytes(body, policy=email.policy.default)
        shown = tuple(sorted(f for f in flags[1].decode().split() if f != "\\Recent"))  # \Recent is per session
        messages.append((int(uid[1]), shown, str(msg["Message-ID"])))
    return Folder(uidvalidity, uidnext, tuple(sorted(messages)))


def mailbox_state(mail: Mail, user: str) -> dict[str, Folder]:
    """Every folder of `user` (logged in with the original password): UIDVALIDITY, UIDNEXT, UIDs, flags,
    Message-IDs."""
    conn = mail.imap(user, PASSWORDS[user])
    try:
        return {name: folder_state(conn, name) for name in folders(conn)}
    finally:
        conn.logout()


def dkim_txt(box: Box) -> list[str]:
    """The DKIM record as the box's own nsd answers it."""
    name = f"{layout.DKIM_SELECTOR}._domainkey.{DOMAIN}"
    r = dns.query.udp(dns.message.make_query(name, "TXT"), box.address, timeout=5)
    assert r.flags & dns.flags.AA, f"{box.address} is not authoritative for {name}"
    return sorted(rd.to_text() for rrset in r.answer if rrset.rdtype == dns.rdatatype.TXT for rd in rrset)


def certificate_sha256(box: Box, port: int) -> str:
    """The SHA-256 of the certificate the box presents on `port` (recorded, not verified)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((box.address, port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der
    return hashlib.sha256(der).hexdigest()


def bayes_magic(box: Box) -> str:
    return box.run("runuser -u debian-spamd -- sa-learn --dump magic")[1]


def contacts(box: Box) -> list[str]:
    sql = "SELECT u.username, c.name, c.email FROM contacts c JOIN users u USING (user_id) ORDER BY 1, 2"
    return box.run(f"runuser -u www-data -- sqlite3 -readonly {ROUNDCUBE_DB} '{sql}'")[1].splitlines()


def sieve_files(box: Box) -> str:
    """The users' sieve scripts and which is active (dovecot's compiled .svbin files aside: a newer dovecot
    compiles them again)."""
    return box.run(
        f"cd {layout.SIEVE} && find . -name '*.svbin' -prune -o \\( -type f -o -type l \\) -print | sort | "
        'while read -r f; do echo "== $f"; if [ -L "$f" ]; then readlink "$f"; else cat "$f"; fi; done'
    )[1]


def record(box: Box, mail: Mail) -> dict[str, Any]:
    """Everything the restore must bring back unchanged."""
    return {
        "mailboxes": {user: mailbox_state(mail, user) for user in PASSWORDS},
        "dkim": dkim_txt(box),
        "certificates": {port: certificate_sha256(box, port) for port in (993, 443)},
        "bayes": bayes_magic(box),
        "contacts": contacts(box),
        "sieve": sieve_files(box),
        "files": {path: box.sha256(path) for path in KEPT_FILES},
    }


def message_ids(state: dict[str, Folder]) -> set[str]:
    return {mid for f in state.values() for _uid, _flags, mid in f.messages}


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tool's private folder (secrets, recovery sheets) for every CLI run of this module."""
    with private_config(tmp_path_factory, "backup-config") as folder:
        yield folder


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory, config_dir: Path) -> Path:
    return new_inventory(tmp_path_factory.mktemp("backup") / "hosts")


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return operator_key(tmp_path_factory.mktemp("operator"))


@pytest.fixture(scope="module")
def ca(inv: Path) -> CA:
    made = CA.make("miab-remote backup test CA")
    (inv / "backup-ca.pem").write_bytes(made.pem())
    return made


@pytest.fixture(scope="module")
def first(inv: Path, identity: Path) -> Iterator[Deployed]:
    """The Debian 12 box, created but not deployed (the targets need the bridge its creation brings up). Its
    destroy at the module's end is of whichever box then has the name: the Debian 13 one after the move."""
    inventory = {
        "users": [{"email": e, "password_hash": hash_password(p)} for e, p in PASSWORDS.items()],
        "domains": [DOMAIN, ELSEWHERE],
        "options": {"greylist_delay": 0},
        "dns": {"records": [{"name": ELSEWHERE, "type": "TXT", "value": f'"v=spf1 mx ip4:{HOST_ADDRESS} -all"'}]},
    }
    with deployed_box(inv, identity, {NAME: inventory}, deploy=False, image="debian-12") as made:
        yield made


@dataclass
class Targets:
    rest: RestTarget
    append_only: RestTarget
    s3: S3Target


@pytest.fixture(scope="module")
def targets(first: Deployed, ca: CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Targets]:
    """The three targets on the bridge address, for the whole module (a listening socket outlives the bridge
    going away between the destroy and the create, and serves again once it is back)."""
    folder = tmp_path_factory.mktemp("targets")
    with (
        RestTarget(folder / "rest", ca, HOST_ADDRESS, user="bk-life") as rest,
        RestTarget(folder / "append-only", ca, HOST_ADDRESS, append_only=True, user="bk-life-ao") as append_only,
        S3Target(folder / "s3", ca, HOST_ADDRESS) as s3,
    ):
        yield Targets(rest, append_only, s3)


def set_target(inv: Path, target: str, credentials: list[str], *extra: str) -> CLIResult:
    res = cli(inv, "backup-target", "set", NAME, "--target", target, "--ca-file", str(inv / "backup-ca.pem"),
              "--credentials-stdin", *extra, stdin="".join(f"{c}\n" for c in credentials))  # fmt: skip
    assert res.code == 0, res.err + res.out
    return res


def secret(config_dir: Path, key: str) -> str:
    value = tomllib.loads((config_dir / "secrets" / f"{NAME}.toml").read_text())[key]
    assert isinstance(value, str)
    return value


def the_box(inv: Path, identity: Path) -> Box:
    doc = tomllib.loads((inv / f"{NAME}.toml").read_text())
    return Box(str(doc["address"]), str(doc["host_keys"][0]), identity)


def diagnosis(box: Box) -> str:
    """What the box's failed units said, for an assertion's message."""
    units = "opendkim spamd dovecot postgrey postfix nginx php8.2-fpm php8.4-fpm"
    return box.run(
        f"systemctl --failed --no-pager; systemctl show -p Id -p ActiveState -p Result -p ExecMainStatus {units}; "
        "journalctl -n 60 --no-pager -u opendkim -u spamd -u nginx -u php8.4-fpm; journalctl -n 60 --no-pager",
        check=False,
    )[1]


def mail_of(box: Box) -> Mail:
    return Mail(box, NAME, box.run(f"cat {layout.TLS_CERT}")[1])


def backup_now(inv: Path) -> dict[str, Any]:
    """`backup NAME --json`: the box's program's result (snapshot, files, bytes, added, seconds, parent, forgot)."""
    res = cli(inv, "backup", NAME, "--json")
    assert res.code == 0, res.errors()
    got: dict[str, Any] = res.json()["hosts"][NAME]["result"]
    return got


def same_snapshot(a: str | None, b: str | None) -> bool:
    """Whether two snapshot ids name the same snapshot (one may be restic's short form of the other)."""
    return bool(a and b) and (str(a).startswith(str(b)) or str(b).startswith(str(a)))


def snapshots(inv: Path) -> list[dict[str, Any]]:
    res = cli(inv, "backups", NAME, "--json")
    assert res.code == 0, res.err + res.out
    listed: list[dict[str, Any]] = res.json()["snapshots"]
    return listed


def populate(box: Box, mail: Mail) -> None:
    """Two users' mail as a user's mailbox holds it: delivered on 25 and submitted, flags and a keyword,
    a folder of one's own with an appended message, a sieve script that filed a message, a learned spam,
    a roundcube contact."""
    mail.sieve_activate(BOB, PASSWORDS[BOB], "e2e", SIEVE)
    for n in range(3):
        mail.deliver_25(OTHER, [ALICE], message(OTHER, ALICE, f"hello alice {n}", f"message {n}\n" * 50))
    mail.submit(ALICE, PASSWORDS[ALICE], message(ALICE, BOB, "from alice to bob"))
    mail.deliver_25(OTHER, [BOB], message(OTHER, BOB, "please sort me"))
    mail.deliver_25(OTHER, [BOB], message(OTHER, BOB, "gtube", GTUBE))
    mail.deliver_25(OTHER, [BOB], message(OTHER, BOB, "to be junked"))
    mail.wait_for(ALICE, PASSWORDS[ALICE], "INBOX", lambda m: m["Subject"] == "hello alice 2")
    mail.wait_for(BOB, PASSWORDS[BOB], SORTED, lambda m: m["Subject"] == "please sort me")
    mail.wait_for(BOB, PASSWORDS[BOB], "Spam", lambda m: m["Subject"] == "gtube")
    mail.wait_for(BOB, PASSWORDS[BOB], "INBOX", lambda m: m["Subject"] == "to be junked")
    mail.wait_for(BOB, PASSWORDS[BOB], "INBOX", lambda m: m["Subject"] == "from alice to bob")

    conn = mail.imap(ALICE, PASSWORDS[ALICE])
    conn.select("INBOX")
    conn.store("1", "+FLAGS", "(\\Seen)")
    conn.store("2", "+FLAGS", "(\\Flagged \\Answered $Work)")
    assert conn.create("Projects")[0] == "OK" and conn.subscribe("Projects")[0] == "OK"
    kept = message(ALICE, ALICE, "a note kept in Projects")
    assert conn.append("Projects", "(\\Seen $Later)", None, kept.as_bytes())[0] == "OK"
    conn.logout()

    bayes_before = nspam(box)
    conn = mail.imap(BOB, PASSWORDS[BOB])
    conn.select("INBOX")
    _, found = conn.search(None, 'SUBJECT "to be junked"')
    assert conn.copy(found[0].split()[0], "Spam")[0] == "OK"  # the imapsieve rule trains bayes with it
    conn.logout()
    assert nspam(box) == bayes_before + 1

    sql = (
        f"INSERT INTO users (username, mail_host, created, language) VALUES ('{ALICE}', 'localhost', "
        "datetime('now'), 'en_US');\n"
        "INSERT INTO contacts (changed, del, name, email, firstname, surname, words, user_id) VALUES "
        f"(datetime('now'), 0, '{CONTACT[0]}', '{CONTACT[1]}', 'Carol', 'Contact', ' carol contact', "
        f"(SELECT user_id FROM users WHERE username = '{ALICE}'));\n"
    )
    box.run(f"runuser -u www-data -- sqlite3 {ROUNDCUBE_DB}", stdin=sql.encode())


def nspam(box: Box) -> int:
    if box.run(f"test -e {layout.SPAMASSASSIN}/bayes_toks", check=False)[0] != 0:
        return 0
    return next(int(line.split()[2]) for line in bayes_magic(box).splitlines() if line.rstrip().endswith("nspam"))


@dataclass
class Life:
    """The whole life's steps, done once by the `life` fixture; the tests check what they gave."""

    before: dict[str, Any]
    after: dict[str, Any]
    first_deploy: CLIResult
    backup: dict[str, Any]
    restore: CLIResult
    box: Box
    watches: dict[str, LeakWatch] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def life(inv: Path, identity: Path, config_dir: Path, first: Deployed, targets: Targets) -> Life:
    old = first.box
    rest = targets.rest
    assert rest.user and rest.password
    watches: dict[str, LeakWatch] = {}
    with LeakWatch(rest.password, expect=b"backup-target") as watches["backup-target set"]:
        set_target(inv, rest.url(NAME), [rest.user, rest.password])
    deployed = cli(inv, "deploy", NAME, "--json")
    assert deployed.code == 0, deployed.errors()
    password = secret(config_dir, "backup_password")
    old_mail = mail_of(old)
    populate(old, old_mail)
    before = record(old, old_mail)

    with LeakWatch(password, rest.password, expect=b"restic") as watches["backup"]:
        backed_up = backup_now(inv)

    gone = cli(inv, "destroy", "--keep-inventory", "--yes", NAME)
    assert gone.code == 0, gone.err + gone.out
    made = cli(inv, "create", "--provider", "local", "--image", "debian-13", "--identity-file", str(identity), NAME)
    assert made.code == 0, made.err + made.out
    box = the_box(inv, identity)
    assert box.address and box.host_key.asbytes() != old.host_key.asbytes()
    deployed_again = cli(inv, "deploy", NAME, "--json")
    assert deployed_again.code == 0, deployed_again.errors()
    with LeakWatch(password, rest.password, expect=b"restic") as watches["restore"]:
        restored = cli(inv, "restore", NAME, "-v")
    assert restored.code == 0, restored.err + restored.out + diagnosis(box)
    after = record(box, mail_of(box))
    return Life(before, after, deployed, backed_up, restored, box, watches, [password, rest.password])


# ------------------------------------------------------------------------------------------- the whole life
def test_the_first_deploy_made_the_password_and_a_recovery_sheet(life: Life, config_dir: Path) -> None:
    password = life.secrets[0]
    sheet = config_dir / "recovery" / f"{NAME}.txt"
    assert sheet.stat().st_mode & 0o777 == 0o600
    text = sheet.read_text()
    assert password in text and f"miab-remote restore {NAME}" in text and "restic" in text
    assert "offline" in life.first_deploy.out + life.first_deploy.err
    assert password not in life.first_deploy.out + life.first_deploy.err


def test_the_backup_is_listed_with_its_size_and_files(life: Life, inv: Path) -> None:
    listed = snapshots(inv)
    assert [s["id"] for s in listed if same_snapshot(s["id"], life.backup["snapshot"])], (listed, life.backup)
    assert life.backup["files"] > 0 and life.backup["bytes"] > 0 and life.backup["parent"] is None


def test_after_the_move_to_debian_13_every_recorded_value_is_equal(life: Life) -> None:
    assert life.box.run(". /etc/os-release; echo $VERSION_CODENAME")[1].strip() == "trixie"
    before, after = life.before, life.after
    assert before["mailboxes"][ALICE]["INBOX"].messages, "alice's mail was recorded"
    for what in before:
        assert after[what] == before[what], what
    alice = before["mailboxes"][ALICE]
    assert {"Projects", "INBOX", "Sent", "Spam"} <= set(alice)
    flags = {flags for _uid, flags, _mid in alice["INBOX"].messages}
    assert ("$Work", "\\Answered", "\\Flagged") in flags and ("\\Seen",) in flags
    assert before["contacts"] == [f"{ALICE}|{CONTACT[0]}|{CONTACT[1]}"]
    assert "fileinto" in before["sieve"]
    assert re.search(r"\s1\s+0\s+non-token data: nspam", before["bayes"]), before["bayes"]


def test_the_restore_said_its_phases_and_the_check_passed(life: Life) -> None:
    said = life.restore.out + life.restore.err
    for phase in ("closing", "stopping", "restoring", "swapping", "deploy", "check"):
        assert phase in said.lower(), (phase, said)
    assert life.box.run(f"test -e {JOURNAL}", check=False)[0] != 0, "restore-finish removed the journal"
    assert life.box.run("nft list table inet miab_restore", check=False)[0] != 0, "port 25 is open again"
    assert life.box.run("systemctl is-active miab-backup.timer")[1].strip() == "active"


def test_the_original_passwords_log_in_and_new_mail_on_25_arrives_filed_by_the_restored_sieve(life: Life) -> None:
    mail = mail_of(life.box)
    mail.deliver_25(OTHER, [ALICE], message(OTHER, ALICE, "after the move"))
    mail.deliver_25(OTHER, [BOB], message(OTHER, BOB, "sort me after the move"))
    got = mail.wait_for(ALICE, PASSWORDS[ALICE], "INBOX", lambda m: m["Subject"] == "after the move")
    assert "after the move" in str(got["Subject"])
    mail.wait_for(BOB, PASSWORDS[BOB], SORTED, lambda m: m["Subject"] == "sort me after the move")
    mail.submit(BOB, PASSWORDS[BOB], message(BOB, ALICE, "bob still sends"))
    mail.wait_for(ALICE, PASSWORDS[ALICE], "INBOX", lambda m: m["Subject"] == "bob still sends")
    # New mail gets the next UIDs of the restored folders, under the same UIDVALIDITY.
    inbox = mailbox_state(mail, ALICE)["INBOX"]
    old = life.before["mailboxes"][ALICE]["INBOX"]
    assert inbox.uidvalidity == old.uidvalidity and inbox.messages[: len(old.messages)] == old.messages
    assert min(uid for uid, _f, _m in inbox.messages[len(old.messages) :]) >= old.uidnext


def test_a_second_deploy_changes_nothing(life: Life, inv: Path) -> None:
    res = cli(inv, "deploy", NAME, "--json")
    assert res.code == 0, res.errors()
    run = res.json()["hosts"][NAME]
    assert run["changed"] == 0, run["actions"]
    assert {p: life.box.sha256(p) for p in KEPT_FILES} == life.before["files"]


def test_the_next_backup_is_incremental(life: Life, inv: Path, targets: Targets) -> None:
    mail = mail_of(life.box)
    RECORDED["rest"] = {user: mailbox_state(mail, user) for user in PASSWORDS}
    with LeakWatch(*life.secrets, expect=b"restic") as watch:
        again = backup_now(inv)
    life.watches["second backup"] = watch
    first = life.backup
    assert same_snapshot(again["parent"], first["snapshot"]), (first, again)
    assert again["added"] < max(first["added"] // 4, 2_000_000), (first, again)
    assert again["files"] >= first["files"]
    assert check_passes(inv)


def check_passes(inv: Path) -> bool:
    res = cli(inv, "check", NAME)
    assert res.code == 0, res.out + res.err
    return True


def test_no_credential_in_any_command_line_while_backup_and_restore_run(life: Life, config_dir: Path) -> None:
    for step, watch in life.watches.items():
        assert not watch.hits, (step, watch.hits)
        assert watch.seen, f"{step}: the watch never saw the process it watches ({watch.expect!r})"
    outputs = life.restore.out + life.restore.err + json.dumps(life.backup)
    journal = life.box.run("journalctl --no-pager -o cat")[1]
    for value in life.secrets:
        assert value not in outputs and value not in journal


# ------------------------------------------------------------------------------------------- on the new box
def test_a_restore_onto_a_box_with_mail_is_refused_without_force(life: Life, inv: Path) -> None:
    mail = mail_of(life.box)
    before = {user: mailbox_state(mail, user) for user in PASSWORDS}
    kept = life.box.run(f"ls -d {layout.STATE}.before-restore-* 2>/dev/null; true")[1]
    refused = cli(inv, "restore", NAME)
    assert refused.code == 2, refused.out + refused.err
    assert "--force" in refused.err and "mail" in refused.err, refused.err
    assert {user: mailbox_state(mail, user) for user in PASSWORDS} == before
    assert life.box.run(f"test -e {JOURNAL}", check=False)[0] != 0
    assert life.box.run("nft list table inet miab_restore", check=False)[0] != 0
    assert life.box.run(f"ls -d {layout.STATE}.before-restore-* 2>/dev/null; true")[1] == kept
    assert life.box.run("systemctl is-active postfix dovecot")[1].split() == ["active", "active"]


def test_one_users_mailbox_is_restored_into_a_restored_folder(life: Life, inv: Path) -> None:
    res = cli(inv, "restore", NAME, "--user", ALICE)
    assert res.code == 0, res.out + res.err
    day = datetime.datetime.now(datetime.UTC).date().isoformat()
    mail = mail_of(life.box)
    state = mailbox_state(mail, ALICE)
    restored = {name: f for name, f in state.items() if name.startswith(f"Restored-{day}")}
    assert restored, sorted(state)
    assert message_ids(restored) == message_ids(RECORDED["rest"][ALICE])
    # the live folders keep what they had, and bob's mailbox is untouched
    assert {n: f for n, f in state.items() if n not in restored} == RECORDED["rest"][ALICE]
    assert mailbox_state(mail, BOB) == RECORDED["rest"][BOB]


class Output:
    """A running CLI's output, read line by line in a thread (for a test that waits for a phase)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.decode(errors="replace"))

    def text(self) -> str:
        return "".join(self.lines)


def big_message(sender: str, to: str, size: int) -> bytes:
    """A message with an attachment of `size` random bytes (incompressible, as photos are)."""
    msg = message(sender, to, "the big one")
    msg.add_attachment(os.urandom(size), maintype="application", subtype="octet-stream", filename="big.bin")
    return msg.as_bytes()


def test_an_interrupted_restore_keeps_port_25_closed_and_running_it_again_finishes_it(
    life: Life, inv: Path, targets: Targets
) -> None:
    """The CLI is killed while restic restores (the target slowed down so that the phase lasts): the box is
    left mid-restore with port 25 closed; the same command again says it finishes the interrupted restore,
    and the box then holds exactly the backup."""
    mail = mail_of(life.box)
    conn = mail.imap(ALICE, PASSWORDS[ALICE])
    assert conn.create("Big")[0] == "OK"
    assert conn.append("Big", "(\\Seen)", None, big_message(OTHER, ALICE, 12_000_000))[0] == "OK"
    conn.logout()
    backup_now(inv)
    backed_up = {user: mailbox_state(mail, user) for user in PASSWORDS}
    mail.deliver_25(OTHER, [ALICE], message(OTHER, ALICE, "arrived after the backup"))
    mail.wait_for(ALICE, PASSWORDS[ALICE], "INBOX", lambda m: m["Subject"] == "arrived after the backup")

    rest = targets.rest
    rest.bwlimit = "1M"  # about 10 s of restoring
    rest.restart()
    try:
        proc = start_cli(inv, "restore", NAME, "--force", "-v", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = Output(proc)
        try:
            wait_until(lambda: "restoring" in out.text().lower(), "the restore reaches its restoring phase",
                       timeout=300, running=proc)  # fmt: skip
        finally:
            proc.kill()
            proc.wait(30)
        # Mid-restore: mail is refused (a sender queues and retries), and the journal says where it was.
        assert life.box.run(f"test -e {JOURNAL}", check=False)[0] == 0, out.text()
        with pytest.raises(OSError):
            socket.create_connection((life.box.address, 25), timeout=5).close()
    finally:
        rest.bwlimit = None
        rest.restart()

    again = cli(inv, "restore", NAME, "--force", "-v")
    assert again.code == 0, again.out + again.err + diagnosis(life.box)
    said = again.out + again.err
    assert re.search(r"note: (finishing the interrupted restore|the restore) of snapshot [0-9a-f]+", said), said
    assert life.box.run(f"test -e {JOURNAL}", check=False)[0] != 0
    assert life.box.run("nft list table inet miab_restore", check=False)[0] != 0
    assert {user: mailbox_state(mail, user) for user in PASSWORDS} == backed_up
    socket.create_connection((life.box.address, 25), timeout=5).close()
    conn = mail.imap(ALICE, PASSWORDS[ALICE])
    assert conn.delete("Big")[0] == "OK"  # the later backups need not carry it
    conn.logout()


# ------------------------------------------------------------------------------------------- other targets
def backup_then_restore(inv: Path, life: Life, watch: LeakWatch, *restore_args: str) -> dict[str, Any]:
    """A backup to the inventory's target, a message after it, then a restore: the box holds exactly what was
    backed up (the later message only in the kept tree before the restore). The backup's result."""
    mail = mail_of(life.box)
    state = {user: mailbox_state(mail, user) for user in PASSWORDS}
    with watch:
        done = backup_now(inv)
        mail.deliver_25(OTHER, [BOB], message(OTHER, BOB, "after this backup"))
        mail.wait_for(BOB, PASSWORDS[BOB], "INBOX", lambda m: m["Subject"] == "after this backup")
        restored = cli(inv, "restore", NAME, "--force", *restore_args)
    assert restored.code == 0, restored.out + restored.err + diagnosis(life.box)
    assert {user: mailbox_state(mail, user) for user in PASSWORDS} == state
    assert watch.seen and not watch.hits, watch.hits
    return done


def test_s3_target_through_moto(life: Life, inv: Path, config_dir: Path, targets: Targets) -> None:
    s3 = targets.s3
    s3.make_bucket("backups", inv / "backup-ca.pem")
    set_target(inv, s3.url("backups", NAME), [s3.access_key_id, s3.secret_access_key])
    assert s3.secret_access_key not in (inv / f"{NAME}.toml").read_text()
    deployed = cli(inv, "deploy", NAME, "--json")
    assert deployed.code == 0, deployed.errors() + diagnosis(life.box)
    # restic reads the keys from its environment (the `env` file): watched for on command lines only.
    watch = LeakWatch(*life.secrets, s3.secret_access_key, s3.access_key_id, env_secrets=tuple(life.secrets),
                      expect=b"restic")  # fmt: skip
    done = backup_then_restore(inv, life, watch)
    assert done["parent"] is None and same_snapshot(snapshots(inv)[-1]["id"], done["snapshot"])


def test_append_only_target_refuses_forget_and_its_snapshot_survives_and_restores(
    life: Life, inv: Path, targets: Targets
) -> None:
    ao = targets.append_only
    assert ao.user and ao.password
    set_target(inv, ao.url(NAME), [ao.user, ao.password], "--append-only")
    deployed = cli(inv, "deploy", NAME, "--json")
    assert deployed.code == 0, deployed.errors() + diagnosis(life.box)
    watch = LeakWatch(*life.secrets, ao.password, expect=b"restic")
    done = backup_then_restore(inv, life, watch)
    assert done["forgot"] is False
    [snap] = snapshots(inv)
    # By hand on the box, as an intruder with root there would: the server refuses the delete.
    _code, said = life.box.run(
        "cd /etc/miab-remote/backup && RESTIC_CACHE_DIR=/var/cache/restic restic --repository-file repository "
        f"--password-file password --cacert ca.pem forget {snap['id']}",
        check=False,
    )
    assert "403 Forbidden" in said and "unable to remove" in said, said  # restic 0.18 warns, and exits 0
    assert [s["id"] for s in snapshots(inv)] == [snap["id"]]
    restored = cli(inv, "restore", NAME, "--force", "--snapshot", snap["id"])
    assert restored.code == 0, restored.out + restored.err + diagnosis(life.box)
    assert check_passes(inv)


def test_no_credential_reached_the_box_logs(life: Life, targets: Targets) -> None:
    logs = life.box.run("journalctl --no-pager -o cat; find /var/log -type f -size -20M -exec cat {} + 2>/dev/null")[1]
    for value in [*life.secrets, targets.s3.secret_access_key, str(targets.append_only.password)]:
        assert value not in logs
