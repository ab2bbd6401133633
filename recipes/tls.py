"""The box's TLS certificate: made once on the box (self-signed until ACME arrives), never regenerated."""

from __future__ import annotations

import shlex
from collections.abc import Iterator

from miab_remote import layout
from miab_remote.recipes import RecipeContext
from miab_remote.resources import Command, Directory, Package, Resource


def resources(ctx: RecipeContext) -> Iterator[Resource]:
    yield Package("openssl")
    yield Directory(layout.SSL, mode=0o755)
    name = ctx.host.hostname
    key, cert = layout.TLS_KEY, layout.TLS_CERT
    # Key and certificate are written beside their final names and renamed, key first, so a crash never
    # leaves a certificate without its key; `creates` makes this run once in the box's life.
    yield Command(
        "tls-certificate",
        run=(
            f"umask 077 && openssl req -x509 -newkey rsa:3072 -sha256 -nodes -days 3650 "
            f"-subj {shlex.quote('/CN=' + name)} -addext {shlex.quote('subjectAltName=DNS:' + name)} "
            f"-keyout {key}.new -out {cert}.new && chmod 644 {cert}.new && mv {key}.new {key} && mv {cert}.new {cert}"
        ),
        creates=cert,
    )
