"""The validated, immutable view of one box's inventory that the rest of the tool works from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miab_remote.transport.target import SSHSettings, SSHTarget

__all__ = [
    "DEFAULT_RECIPES",
    "Acme",
    "Alias",
    "Backup",
    "DNSRecord",
    "DNSSettings",
    "Host",
    "MailUser",
    "Relay",
    "SSHSettings",
]

DEFAULT_RECIPES: tuple[str, ...] = (
    "base",
    "hardening",
    "tls",
    "opendkim",
    "opendmarc",
    "nsd",
    "spamassassin",
    "dovecot",
    "postfix",
    "webmail",
    "acme",
    "backup",
)


@dataclass(frozen=True)
class MailUser:
    email: str
    password_hash: str
    quota: str | None = None


@dataclass(frozen=True)
class Alias:
    source: str
    destinations: tuple[str, ...]


@dataclass(frozen=True)
class DNSRecord:
    """An extra record the operator publishes in the box's zones: absolute `name`, a type, rdata text."""

    name: str
    type: str
    value: str
    ttl: int = 1800


@dataclass(frozen=True)
class DNSSettings:
    """The [dns] table's settings beside its records. `dnssec_algorithm`: the DNSSEC algorithm number the
    box signs its zones with (fleet/dnsrules.DNSSEC_ALGORITHMS; 13 unless a TLD wants another).
    `secondaries`: the hostnames of other boxes of the same inventory folder whose nsd serves this box's
    zones as a secondary (AXFR with a TSIG key, NOTIFY on change); that they exist and run nsd is checked
    against their inventories (fleet/peers.py)."""

    dnssec_algorithm: int = 13
    secondaries: tuple[str, ...] = ()


@dataclass(frozen=True)
class Relay:
    """The smarthost all outgoing mail goes through ([relay]): where, and the login's user; its password
    is in the laptop's secrets store (fleet/secrets.py), never here. `ca_file`: a PEM on the laptop, the
    only CA the relay's certificate is checked against (absolute; None: the system's CAs)."""

    host: str
    port: int
    user: str
    ca_file: Path | None = None


@dataclass(frozen=True)
class Backup:
    """Where the box's nightly restic backups go ([backup]). `target` is restic's repository string without
    any credential (`rest:https://host:port/path`, `s3:https://host[:port]/bucket[/path]`,
    `sftp:user@host:/path`, `local:/path` on the box); `kind` is its scheme. The credentials and the
    repository's password are in the laptop's secrets store (fleet/secrets.py), never here. `ca_file`: a PEM
    on the laptop, the only CA the target's certificate is checked against (absolute; None: the system's).
    `host_key`: an sftp target's pinned SSH host key (an OpenSSH public key line)."""

    target: str
    kind: str  # "rest" | "s3" | "sftp" | "local"
    keep_daily: int = 7
    keep_weekly: int = 5
    keep_monthly: int = 12
    append_only: bool = False
    ca_file: Path | None = None
    host_key: str | None = None


@dataclass(frozen=True)
class Acme:
    """A trusted certificate from an ACME CA ([acme]), ordered and renewed by certbot on the box.

    `directory` is the CA's directory URL (the inventory's words `production` and `staging` are Let's
    Encrypt's); `email` the account's contact (None: the box's admin address, or none at all); `ca_file` a PEM
    on the laptop, the only CA the directory's own HTTPS certificate is checked against (absolute; None: the
    system's CAs), for a private CA; `caa` the CA's CAA domain published as `issue` (None: no CAA records);
    `mta_sts` the MTA-STS policy mode (`testing`, `enforce`, or `none` for no policy)."""

    directory: str
    email: str | None = None
    ca_file: Path | None = None
    caa: str | None = "letsencrypt.org"
    mta_sts: str = "testing"


@dataclass(frozen=True)
class Host:
    """One box. `name` is the inventory file's stem and equals `hostname` (the box's FQDN)."""

    name: str
    path: Path
    hostname: str
    address: str
    ssh: SSHSettings = field(default_factory=SSHSettings)
    host_keys: tuple[str, ...] = ()
    os: str | None = None
    domains: tuple[str, ...] = ()
    users: tuple[MailUser, ...] = ()
    aliases: tuple[Alias, ...] = ()
    recipes: tuple[str, ...] = DEFAULT_RECIPES
    provider: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # Public addresses published in DNS, when they differ from `address` (or it is a name).
    ipv4: str | None = None
    ipv6: str | None = None
    dns_records: tuple[DNSRecord, ...] = ()
    dns: DNSSettings = field(default_factory=DNSSettings)
    # The cloud server a provider made: id, region, size, image, and what else its destroy needs.
    node: dict[str, str] = field(default_factory=dict)
    relay: Relay | None = None
    backup: Backup | None = None
    acme: Acme | None = None

    @property
    def serves_dns(self) -> bool:
        """Whether the box's own nsd serves its zones (dns = "nsd" and the nsd recipe): what its NS records,
        its registrar's delegation and a primary that names it as its secondary rely on."""
        return self.options.get("dns", "nsd") == "nsd" and "nsd" in self.recipes

    @property
    def has_box(self) -> bool:
        """Whether the inventory records a box: a pinned host key or a cloud server ([node] id). `destroy
        --keep-inventory` removes both, so `create` may make the box anew, of any provider (a move)."""
        return bool(self.host_keys) or bool(self.node.get("id"))

    @property
    def target(self) -> SSHTarget:
        """How the transport reaches this box."""
        return SSHTarget(self.name, self.address, self.host_keys, self.ssh, self.path)
