"""The box's TLS certificate: self-signed, for the hostname and the client autoconfiguration names of every
hosted domain; with [acme], the bootstrap the services start with until recipes/acme.py installs the CA's
certificate (then this recipe leaves it alone; without [acme] again, it makes a self-signed one again).

The key is made once in the box's life and never regenerated. The certificate is an end-entity one
(`CA:FALSE`, keyUsage, extendedKeyUsage serverAuth, subjectAltName): strict verifiers (webpki, rustls,
`cryptography`'s verifier) refuse a `CA:TRUE` certificate as a server's even when told to trust it, and
the first versions of this recipe made one. Its guard reads the certificate on the box, so a box deployed
before gets a new certificate from its existing key (and again when the hosted domains change, or
RENEW_DAYS before it expires); a second deploy finds it right and changes nothing.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator

from miab_remote.api import Command, Directory, Package, RecipeContext, Resource, acme, layout

DAYS = 3650
RENEW_DAYS = 30  # a certificate this close to its end is re-issued (from the same key)
EXTENSIONS = (
    "basicConstraints=critical,CA:FALSE",
    "keyUsage=critical,digitalSignature,keyEncipherment",
    "extendedKeyUsage=serverAuth",
)
# The services that load the certificate, by the recipe that declares them: re-issuing it reloads them.
USERS = (("dovecot", "dovecot"), ("postfix", "postfix"), ("webmail", "nginx"))


def names(ctx: RecipeContext) -> list[str]:
    """The certificate's DNS names: the hostname first, then autoconfig./autodiscover. of each domain."""
    return acme.certificate_names(ctx.host, acme.CLIENT_SUBDOMAINS)


def certificate_guard(dns_names: list[str]) -> str:
    """A read-only test that the certificate on the box is the one this recipe makes: an end-entity
    certificate with these extensions and exactly these names, for the box's key. It reads what openssl
    prints of each extension loosely (words, not layout), so another openssl version agrees."""
    cert, key = layout.TLS_CERT, layout.TLS_KEY

    def ext(name: str) -> str:
        return f"openssl x509 -in {cert} -noout -ext {name} 2>/dev/null"

    want_names = " ".join(shlex.quote(f"DNS:{n}") for n in sorted(dns_names))
    return (
        f"openssl x509 -in {cert} -noout -checkend {RENEW_DAYS * 86400} >/dev/null"
        f" && {ext('basicConstraints')} | grep -q 'CA:FALSE'"
        f" && {ext('keyUsage')} | grep 'Digital Signature' | grep -q 'Key Encipherment'"
        f" && {ext('extendedKeyUsage')} | grep -q 'TLS Web Server Authentication'"
        f' && [ "$({ext("subjectAltName")} | sed 1d | tr -d " " | tr , "\\n" | LC_ALL=C sort)"'
        f' = "$(printf "%s\\n" {want_names})" ]'
        f' && [ "$(openssl x509 -in {cert} -noout -pubkey)" = "$(openssl pkey -in {key} -pubout)" ]'
        f"  # an end-entity certificate (CA:FALSE, serverAuth) for these names and this key, {RENEW_DAYS}+ days left"
    )


def resources(ctx: RecipeContext) -> Iterator[Resource]:
    yield Package("openssl")
    yield Directory(layout.SSL, mode=0o755)
    key, cert = layout.TLS_KEY, layout.TLS_CERT
    dns_names = names(ctx)
    # Each file is written beside its final name and renamed, so a crash never leaves half a file; the key
    # comes first, so a certificate is never without its key.
    yield Command(
        "tls-key",
        run=f"umask 077 && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out {key}.new "
        f"&& mv {key}.new {key}",
        creates=key,
    )
    exts = " ".join(f"-addext {shlex.quote(e)}" for e in EXTENSIONS)
    san = "subjectAltName=" + ",".join(f"DNS:{n}" for n in dns_names)
    guard = certificate_guard(dns_names)
    if ctx.host.acme is not None:  # the CA's certificate, once installed, is not replaced
        guard = f"{acme.RUN} --installed 2>/dev/null || {{\n{guard}\n}}"
    yield Command(
        "tls-certificate",
        run=(
            f"openssl req -x509 -new -key {key} -sha256 -days {DAYS} -subj {shlex.quote('/CN=' + dns_names[0])} "
            f"{exts} -addext {shlex.quote(san)} -out {cert}.new && chmod 644 {cert}.new && mv {cert}.new {cert}"
        ),
        unless=guard,
        notify=tuple(f"service:{svc}" for recipe, svc in USERS if recipe in ctx.host.recipes),
    )
