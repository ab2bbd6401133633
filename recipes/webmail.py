"""Webmail and mail client autoconfiguration: roundcube on nginx + php-fpm over HTTPS.

- `https://HOSTNAME/mail/` is roundcube (`/` redirects there); plain HTTP redirects to HTTPS; HSTS; TLS 1.2
  at least; the box's own certificate. roundcube reaches dovecot over IMAPS (993) and postfix over
  submission (587, STARTTLS) on the box itself, verifying the box's certificate by name.
- Thunderbird-style autoconfiguration: `https://HOSTNAME/.well-known/autoconfig/mail/config-v1.1.xml` and
  `https://autoconfig.DOMAIN/mail/config-v1.1.xml` for every hosted domain.
- With [acme] (unless mta_sts = "none"): the MTA-STS policy at `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`
  (mail/mtasts.py; its DNS record is published once the certificate covers the name, mail/dnszones.py).

roundcube's state (its sqlite database, and the des_key that encrypts the IMAP passwords kept in its
sessions) lives in the state tree, in `ROUNDCUBE`. The des_key is made once on the box and never leaves
it: the rendered config.inc.php only `require`s the file that holds it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath

from miab_remote.api import (
    Command,
    Directory,
    File,
    Package,
    RecipeContext,
    Resource,
    Service,
    acme,
    layout,
    mtasts,
)

# roundcube's part of the state tree (to move into miab_remote/layout.py).
ROUNDCUBE = layout.ROUNDCUBE
ROUNDCUBE_SECRETS = f"{ROUNDCUBE}/secrets.inc.php"
ROUNDCUBE_DB_DIR = f"{ROUNDCUBE}/db"
ROUNDCUBE_DB = f"{ROUNDCUBE_DB_DIR}/roundcube.sqlite"
# Debian's roundcube: code in /usr/share/roundcube, the web root (only public files) in public_html.
ROUNDCUBE_WEBROOT = "/var/lib/roundcube/public_html"
ROUNDCUBE_SQL = "/usr/share/roundcube/SQL"
AUTOCONFIG_ROOT = "/var/www/autoconfig"
AUTOCONFIG_XML = f"{AUTOCONFIG_ROOT}/mail/config-v1.1.xml"
WEB_USER = "www-data"
CLEANUP_JOBS = ("roundcube-gc", "roundcube-cleandb")


def _php_fpm_service(ctx: RecipeContext) -> str:
    """php-fpm's unit carries PHP's version (php8.2-fpm); the profile's socket path names it too."""
    named = ctx.profile.services.get("php-fpm")
    return named or PurePosixPath(ctx.profile.paths["php_fpm_socket"]).name.removesuffix(".sock")


def _upload_limit_mb(ctx: RecipeContext) -> int:
    """The largest attachment upload: what fits in postfix's message size limit once base64-encoded."""
    limit = int(ctx.host.options.get("message_size_limit", 128 * 1024 * 1024))
    return max(1, limit * 3 // 4 // (1024 * 1024))


def _context(ctx: RecipeContext) -> dict[str, object]:
    return {
        "roundcube_db": ROUNDCUBE_DB,
        "roundcube_secrets": ROUNDCUBE_SECRETS,
        "roundcube_webroot": ROUNDCUBE_WEBROOT,
        "autoconfig_root": AUTOCONFIG_ROOT,
        "acme_webroot": acme.WEBROOT,
        "roundcube_cafile": acme.local_trust(ctx.host),
        "php_fpm_socket": ctx.profile.paths["php_fpm_socket"],
        "upload_mb": _upload_limit_mb(ctx),
        "mta_sts_names": mtasts.policy_names(ctx.host),
        "mta_sts_root": mtasts.ROOT,
    }


def resources(ctx: RecipeContext) -> Iterator[Resource]:
    # php-fpm comes before roundcube: the `php` metapackage roundcube depends on wants
    # "libapache2-mod-php | php-fpm | php-cgi", and apt takes the first alternative (apache's module and
    # apache2-bin) unless php-fpm is already chosen when it gets there. All packages go in one apt
    # transaction in declaration order, so this order is what keeps apache out (checked by the e2e test).
    for name in ctx.profile.package_names("php-fpm"):
        yield Package(name)
    yield Package("nginx")
    for name in ("roundcube", "roundcube-core", "roundcube-sqlite3", "roundcube-plugins", "sqlite3"):
        yield Package(name)
    # The zipdownload plugin needs php-zip; nothing else pulls it in.
    yield Package("php-zip")
    # apache2 would take port 80 (and 443) from nginx: never on a box with webmail.
    yield Package("apache2", present=False)

    # roundcube's state. The top is root's (the secrets file must not be replaceable by the web server's
    # user); the database folder is the web server's, since sqlite writes its journal beside the file.
    yield Directory(ROUNDCUBE, mode=0o750, owner="root", group=WEB_USER)
    yield Directory(ROUNDCUBE_DB_DIR, mode=0o700, owner=WEB_USER, group=WEB_USER)
    # The des_key: 24 random bytes, base64 (32 characters, an AES-256 key), made on the box once. It is
    # never on a command line (the shell pipes it straight into the file), in the inventory or a template.
    tmp = f"{ROUNDCUBE_SECRETS}.new"
    yield Command(
        "roundcube-des-key",
        run=(
            f"umask 027 && rm -f {tmp} && "
            "{ printf '<?php\\n// Made once on this box by miab-remote: keep it with the state tree.\\n"
            '$config["des_key"] = "\'; '
            "head -c 24 /dev/urandom | base64 -w0; "
            "printf '\";\\n'; } "
            f"> {tmp} && chgrp {WEB_USER} {tmp} && mv {tmp} {ROUNDCUBE_SECRETS}"
        ),
        creates=ROUNDCUBE_SECRETS,
    )
    yield File("/etc/roundcube/config.inc.php", mode=0o640, owner="root", group=WEB_USER, context=_context(ctx))
    # The database: made from roundcube's schema on the first run (into a new file, renamed when
    # complete), then brought up to the installed roundcube's schema whenever a package upgrade (or a
    # restored older backup) leaves it behind. As the web server's user, so every file sqlite makes is its.
    latest = f"ls {ROUNDCUBE_SQL}/sqlite | sed -n 's/[.]sql$//p' | sort | tail -n 1"
    current = f"sqlite3 -readonly {ROUNDCUBE_DB} \"SELECT value FROM system WHERE name='roundcube-version'\""
    as_web = f"runuser -u {WEB_USER} --"
    yield Command(
        "roundcube-database",
        run=(
            f"cd / && {as_web} sh -c 'umask 077 && test -s {ROUNDCUBE_DB} || "
            f"{{ rm -f {ROUNDCUBE_DB}.new && sqlite3 {ROUNDCUBE_DB}.new < {ROUNDCUBE_SQL}/sqlite.initial.sql "
            f"&& mv {ROUNDCUBE_DB}.new {ROUNDCUBE_DB}; }}' "
            f"&& {as_web} php /usr/share/roundcube/bin/updatedb.sh --package=roundcube --dir={ROUNDCUBE_SQL}"
        ),
        unless=f'cd / && test -s {ROUNDCUBE_DB} && test "$({as_web} {current})" = "$({latest})"',
    )
    yield Service(_php_fpm_service(ctx))
    # Debian's daily clean-up jobs (expired sessions, caches, deleted records) run with ProtectHome=yes,
    # which hides the state tree under /home: show them roundcube's part of it, and nothing else there.
    for job in CLEANUP_JOBS:
        yield Directory(f"/etc/systemd/system/{job}.service.d")
        yield File(
            f"/etc/systemd/system/{job}.service.d/miab-remote.conf",
            content=f"[Service]\nProtectHome=tmpfs\nBindPaths={ROUNDCUBE}\n",
            notify=("command:roundcube-jobs-daemon-reload",),
        )
    yield Command("roundcube-jobs-daemon-reload", run="systemctl daemon-reload", on_notify=True)

    # Autoconfiguration, one document for every hosted domain.
    yield Directory(AUTOCONFIG_ROOT)
    yield Directory(f"{AUTOCONFIG_ROOT}/mail")
    yield File(AUTOCONFIG_XML)
    if mtasts.enabled(ctx.host):
        yield Directory(mtasts.ROOT)
        yield Directory(f"{mtasts.ROOT}/.well-known")
        yield File(mtasts.POLICY_FILE, content=mtasts.policy(ctx.host), mode=0o644)

    yield File("/etc/nginx/nginx.conf", notify=("service:nginx",))
    yield File("/etc/nginx/conf.d/miab-remote-webmail.conf", context=_context(ctx), notify=("service:nginx",))
    yield Service("nginx", reload=True, validator="nginx -t")
