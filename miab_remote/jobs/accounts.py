"""Changing a box's mail users and aliases: the inventory first, then only what changed on the box.

Every change follows one path: the caller checks all input against the inventory (exit 2, nothing
touched) and reads the password if any, before any lock, so a slow typist blocks nobody; then under the
box's inventory lock the change is checked again, the file edited and the accounts pushed to the box, so
two operators' pushes never cross. A failed push leaves the inventory updated; `miab-remote deploy NAME`
brings the box in line later.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import tomlkit

from miab_remote.engine.converge import HostRun, Report, purge_mailbox, push_accounts
from miab_remote.errors import MiabError
from miab_remote.fleet.model import Alias, Host
from miab_remote.fleet.store import Inventory
from miab_remote.jobs.deploy import check_builds
from miab_remote.mail import accounts, mailmaps, passwords
from miab_remote.transport.ssh import Transport

# Checks the change against the box as it is under the lock (InputError: nothing written) and edits `doc`.
Edit = Callable[[Host, tomlkit.TOMLDocument], None]
# Runs a push or a purge (given how to report progress) and returns its run.
OnBox = Callable[[Callable[[Report], HostRun]], HostRun]


def change(inv: Inventory, name: str, edit: Edit, push: bool, on_box: OnBox) -> HostRun | None:
    """Under the box's lock: re-check and edit, then push unless `push` is False. The push's run, or None
    when not pushed.

    The SSH connection for the push opens first, in the background, so that it overlaps the build check,
    the password's bcrypt (`edit` may wait for a hash being made in a thread) and the edit."""
    transport = None
    if push:
        host = inv.load(name)
        transport = _connection_ahead(host)
        try:  # a failed recipe or template is bad input, found before the inventory changes
            check_builds(inv, host)
        except BaseException:
            if transport is not None:
                transport.close()
            raise
    try:
        with inv.lock(name):
            with inv.edit(name, locked=True) as doc:
                # Checked again under the lock: another operator may have changed the file since the first check.
                edit(inv.load(name), doc)
            if not push:
                return None
            return on_box(lambda report: push_accounts(inv.load(name), inv.root, report, transport))
    finally:
        if transport is not None:
            transport.close()


def hashing(email: str, from_stdin: bool, pool: ThreadPoolExecutor) -> Future[str]:
    """The new password's hash, being made: the password is read now (the terminal or stdin) and hashed in
    `pool` (bcrypt, ~0.2 s, releases the GIL) while the command goes on; the clear text goes no further. With
    --password-stdin, the entry point started that before the CLI's imports (passwords.hash_early)."""
    if from_stdin and (early := passwords.take_early()) is not None:
        return early
    cost = passwords.bcrypt_cost()  # a bad setting is refused before the operator types anything
    return pool.submit(passwords.hash_password, passwords.read_new_password(email, from_stdin), cost)


def _connection_ahead(host: Host, connect_timeout: float = 10.0) -> Transport | None:
    """A connection to the box, opening in a thread so that it overlaps the build check and the password's
    bcrypt, with the apply script started on it (the box's python3 up and waiting for the push); None if
    it cannot even be started (the push then fails with the reason)."""
    try:
        transport = Transport(host.target, connect_timeout=connect_timeout)
    except MiabError:
        return None
    transport.start_connecting(warm=("apply",))
    return transport


def purge(inv: Inventory, name: str, email: str, on_box: OnBox) -> HostRun | None:
    """Delete a removed user's mailbox on the box. The lock is taken again for it, so a mailbox re-added
    meanwhile is never deleted: None then, and nothing was touched."""
    with inv.lock(name):
        if accounts.find_user(inv.load(name), email) is not None:
            return None
        return on_box(lambda report: purge_mailbox(inv.load(name), email, report))


# -- what the operator should know after a change (computed from the box before it) ------------------------------
def user_added_notes(host: Host, email: str) -> list[str]:
    if not host.users and not host.options.get("admin_email"):
        return [
            f"system mail and postmaster@, abuse@ and hostmaster@ of {', '.join(host.domains)} go to {email} "
            "(automatic, unless [options] admin_email or an alias says otherwise)"
        ]
    return []


def user_removed_notes(host: Host, email: str, purging: bool) -> list[str]:
    notes = []
    if sources := accounts.aliases_to(host, email):
        notes.append(f"these aliases still deliver to {email}: {', '.join(sources)}")
    if mailmaps.admin_email(host) == email and accounts.automatic_aliases(host):
        after = host.users[1].email if len(host.users) > 1 else "nobody (no users left)"
        notes.append(f"system mail and the automatic postmaster@, abuse@ and hostmaster@ now go to {after}")
    if not purging:
        notes.append(f"the mailbox of {email} is kept on the box, with its mail")
    return notes


def alias_added_notes(host: Host, source: str, alias: Alias) -> list[str]:
    notes = []
    if accounts.is_automatic(host, source) and (admin := mailmaps.admin_email(host)):
        notes.append(f"replaces the automatic {source} (to {admin})")
    if lost := accounts.unreachable(host, alias):
        notes.append(f"no user or alias takes {', '.join(lost)} on {host.name}: mail sent there would bounce")
    return notes


def alias_removed_notes(host: Host, source: str) -> list[str]:
    if accounts.is_automatic(host, source) and (admin := mailmaps.admin_email(host)):
        return [f"{source} goes to {admin} again (automatic)"]
    return []
