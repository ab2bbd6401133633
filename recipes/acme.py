"""A trusted certificate from an ACME CA ([acme]): Debian's certbot on the box, HTTP-01 through nginx's port
80 (the webmail recipe serves WEBROOT's challenges there), renewed by Debian's certbot.timer.

The box's program (remote/acme.py, as acme.PROGRAM) orders for the wanted names that resolve to the box
(the others are the deploy's notes), installs the certificate and key where postfix, dovecot and nginx read
them (also as certbot's deploy hook after each renewal) and reloads them. The self-signed certificate of
recipes/tls.py stays the bootstrap: the services start with it before the first order.

Without [acme]: certbot removed and its cli.ini with it, so nothing renews; the lineage in the state tree
stays (a later [acme] reuses its account and key), and recipes/tls.py goes back to a self-signed certificate.
"""

from __future__ import annotations

from collections.abc import Iterator

from miab_remote.api import Command, Directory, File, Package, RecipeContext, Resource, Service, acme, script

UNIT_DIR = acme.DROP_IN.rsplit("/", 1)[0]


def resources(ctx: RecipeContext) -> Iterator[Resource]:
    host = ctx.host
    if host.acme is None:
        yield from _forget()
        return
    yield Package("certbot")
    yield Directory(acme.WEBROOT)
    yield Directory("/etc/letsencrypt")
    yield File(acme.CLI_INI, content=acme.cli_ini())
    # certbot.service's renewals check the directory against the same CA file as the deploy's order.
    yield Directory(UNIT_DIR)
    yield File(acme.DROP_IN, content=acme.drop_in(host), notify=("command:acme-daemon-reload",))
    yield Command("acme-daemon-reload", run="systemctl daemon-reload", on_notify=True)
    yield Service("certbot.timer")
    yield Directory(acme.CONFIG_DIR, mode=0o755)
    if (ca := acme.ca_pem(host)) is not None:
        yield File(acme.CA_FILE, content=ca)
    yield File(acme.SETTINGS, content=acme.settings_text(host))
    yield File(acme.PROGRAM, content=script("acme"), mode=0o755)
    # Its guard resolves the names: a name that came to point at the box (or away) orders again; a deploy
    # that changes nothing else orders nothing (certbot.timer renews).
    yield Command("acme-order", run=f"{acme.RUN} order", unless=f"{acme.RUN} --current")
    # roundcube's CA file (acme.local_trust), also when nothing was ordered (the self-signed bootstrap).
    yield Command("acme-trust", run=f"{acme.RUN} trust", unless=f"{acme.RUN} --trusted")


def _forget() -> Iterator[Resource]:
    yield Package("certbot", present=False)
    files = (acme.CLI_INI, acme.DROP_IN, acme.SETTINGS, acme.CA_FILE, acme.TRUST, acme.PROGRAM, acme.STATUS)
    yield Command(
        "forget-acme",
        run=f"rm -f -- {' '.join(files)} && {{ rmdir -- {acme.CONFIG_DIR} {UNIT_DIR} 2>/dev/null; "
        "systemctl daemon-reload; }",
        unless=f"! test -e {acme.CLI_INI} && ! test -e {acme.DROP_IN} && ! test -e {acme.PROGRAM}",
    )
