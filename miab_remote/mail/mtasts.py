"""MTA-STS (RFC 8461): the policy a box with [acme] serves at https://mta-sts.DOMAIN/.well-known/mta-sts.txt,
telling other servers to insist on TLS (with a trusted certificate) when they deliver to it.

The policy is one text for every hosted domain (the same MX, the same mode), so its id, which the
`_mta-sts.DOMAIN` TXT record carries (mail/dnszones.py), is derived from that text: it changes exactly when
the policy does, and senders fetch the policy again only then.
"""

from __future__ import annotations

import hashlib

from miab_remote.fleet.model import Host

LABEL = "mta-sts"
RECORD_LABEL = "_mta-sts"
# nginx serves this folder at the policy's well-known path for the mta-sts names (recipes/webmail.py).
ROOT = "/var/www/mta-sts"
POLICY_FILE = f"{ROOT}/.well-known/mta-sts.txt"
MAX_AGE = 604800  # a week, as RFC 8461's examples and Mail-in-a-Box use


def enabled(host: Host) -> bool:
    """A policy is published with [acme] (a trusted certificate is the point of it) unless mta_sts = "none"."""
    return host.acme is not None and host.acme.mta_sts != "none"


def policy_names(host: Host) -> list[str]:
    """mta-sts.DOMAIN of each hosted domain, sorted; none without a policy."""
    if not enabled(host):
        return []
    return [f"{LABEL}.{d}" for d in sorted({d.lower() for d in host.domains})]


def policy(host: Host) -> str:
    """The policy text: RFC 8461 section 3.2, CRLF line ends, the box as the only MX."""
    assert host.acme is not None
    lines = ["version: STSv1", f"mode: {host.acme.mta_sts}", f"mx: {host.hostname.lower()}", f"max_age: {MAX_AGE}"]
    return "".join(line + "\r\n" for line in lines)


def policy_id(host: Host) -> str:
    """The first 20 hex digits of the policy's sha256 (RFC 8461 allows 1 to 32 letters and digits)."""
    return hashlib.sha256(policy(host).encode()).hexdigest()[:20]


def record_text(host: Host) -> str:
    """The text of the `_mta-sts` TXT record."""
    return f"v=STSv1; id={policy_id(host)}"
