"""What a box's [acme] comes to on the box: the names its certificate should cover, the settings the box's
program (remote/acme.py, installed as PROGRAM) reads, and where certbot keeps its state.

certbot's configuration directory is in the state tree, so a restored box keeps its ACME account, its
lineage and the key (`--reuse-key`: a TLSA record stays valid across renewals). Debian's certbot.timer and
an operator's `certbot renew` find it through /etc/letsencrypt/cli.ini, which certbot reads whatever
--config-dir says (certbot's constants.CLI_DEFAULTS["config_files"], in 2.1 and 4.0 alike).
"""

from __future__ import annotations

import json
from typing import Any

from miab_remote.fleet.dnsrules import CLIENT_SETUP_LABELS
from miab_remote.fleet.model import Acme, Host
from miab_remote.fleet.problems import display_path
from miab_remote.mail import dnszones, layout, mailmaps, mtasts, relay

PROGRAM = "/usr/local/sbin/miab-acme"  # run as `python3 PROGRAM SUB` (order, install, --current, --installed)
RUN = f"python3 {PROGRAM}"
CONFIG_DIR = "/etc/miab-remote/acme"
SETTINGS = f"{CONFIG_DIR}/settings.json"
CA_FILE = f"{CONFIG_DIR}/ca.pem"  # the laptop's ca_file: the only CA certbot checks the directory against
TRUST = f"{CONFIG_DIR}/trust.pem"  # roundcube's CA file with [acme] (local_trust)
STATUS = "/var/lib/miab-remote/acme.json"  # what the program last did (check reads it)
WEBROOT = "/var/www/acme"  # certbot --webroot writes HTTP-01 answers here; nginx serves them on port 80
CERTBOT_DIR = f"{layout.SSL}/letsencrypt"  # certbot's --config-dir: account, lineage, key
CLI_INI = "/etc/letsencrypt/cli.ini"
LINEAGE = "miab-remote"  # certbot's --cert-name
LIVE_CHAIN = f"{CERTBOT_DIR}/live/{LINEAGE}/fullchain.pem"  # the lineage's newest certificate and chain
DROP_IN = "/etc/systemd/system/certbot.service.d/miab-remote.conf"
# Besides the autoconfiguration names (Thunderbird's and Outlook's), with MTA-STS: the policy's host.
CLIENT_SUBDOMAINS = CLIENT_SETUP_LABELS
MTA_STS = mtasts.LABEL


def certificate_names(host: Host, subdomains: tuple[str, ...]) -> list[str]:
    """The hostname first, then each of `subdomains` of every hosted domain, sorted, each once."""
    first = host.hostname.lower()
    extra = {f"{sub}.{d.lower()}" for d in host.domains for sub in subdomains}
    return [first, *sorted(extra - {first})]


def acme_of(host: Host) -> Acme:
    assert host.acme is not None, "only for a box with [acme]"
    return host.acme


def wanted_names(host: Host) -> list[str]:
    """The names to order for: the hostname, autoconfig./autodiscover. and (unless mta_sts is "none")
    mta-sts. of each hosted domain. The box orders only those that resolve to it."""
    subs = CLIENT_SUBDOMAINS + ((MTA_STS,) if mtasts.enabled(host) else ())
    return certificate_names(host, subs)


def ca_pem(host: Host) -> str | None:
    """The CA file sent to the box (checked, certificates only), or None: the system's CAs."""
    a = acme_of(host)
    if a.ca_file is None:
        return None
    where = f"{display_path(host.path)}: acme.ca_file: {display_path(a.ca_file)}"
    return relay.read_ca(a.ca_file, where, "the ACME directory")


def local_trust(host: Host) -> str:
    """The CA file the box's own TLS clients (roundcube, to dovecot and postfix) check the box's certificate
    against. Self-signed: the certificate itself. With [acme], TRUST (the program keeps it): OpenSSL trusts only
    a chain that ends at a root in that file, and the served chain stops below the root, so the system's CAs
    (a public CA's root), the CA file (a private CA's root) and the certificate itself (the self-signed
    bootstrap, until the first order)."""
    return layout.TLS_CERT if host.acme is None else TRUST


def settings(host: Host) -> dict[str, Any]:
    """The program's settings (no secret). Paths are here, not in the program, so there is one copy."""
    a = acme_of(host)
    v4, v6 = dnszones.addresses(host)
    return {
        "directory": a.directory,
        "email": a.email or mailmaps.admin_email(host),
        "ca_file": CA_FILE if a.ca_file is not None else None,
        "hostname": host.hostname.lower(),
        "names": wanted_names(host),
        "addresses": [x for x in (v4, v6) if x],
        "certbot_dir": CERTBOT_DIR,
        "lineage": LINEAGE,
        "webroot": WEBROOT,
        "tls_cert": layout.TLS_CERT,
        "tls_key": layout.TLS_KEY,
        "status": STATUS,
        "trust": TRUST,
        "system_cas": relay.SYSTEM_CAS,
        "program": PROGRAM,
    }


def settings_text(host: Host) -> str:
    return json.dumps(settings(host), indent=2, sort_keys=True) + "\n"


def cli_ini() -> str:
    return (
        "# Written by miab-remote (recipes/acme.py): certbot's state lives in the box's state tree, so that\n"
        "# Debian's certbot.timer and `certbot renew` by hand use the account and lineage a restore brings back.\n"
        f"config-dir = {CERTBOT_DIR}\n"
    )


def drop_in(host: Host) -> str:
    """certbot.service's drop-in: with a CA file of the operator's, the renewals check the directory against it."""
    text = "# Written by miab-remote (recipes/acme.py).\n[Service]\n"
    if acme_of(host).ca_file is not None:
        text += f"Environment=REQUESTS_CA_BUNDLE={CA_FILE}\n"
    return text
