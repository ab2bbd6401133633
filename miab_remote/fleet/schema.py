"""The inventory's schema: a parsed `hosts/NAME.toml` checked field by field into a `Host`.

Every problem is collected (the operator fixes them all in one go) and reported as
`file:line: field: what is wrong, what is accepted`, in file order.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from pathlib import Path
from typing import Any, TypeVar

from miab_remote import names
from miab_remote.errors import InputError
from miab_remote.fleet import dnsrules
from miab_remote.fleet.model import (
    DEFAULT_RECIPES,
    Acme,
    Alias,
    Backup,
    DNSRecord,
    DNSSettings,
    Host,
    MailUser,
    Relay,
    SSHSettings,
)
from miab_remote.fleet.options import OPTION_SPECS
from miab_remote.fleet.positions import KeyPath, field_name, line_map
from miab_remote.fleet.problems import InventoryError, Problem, or_list, short, toml_type
from miab_remote.fleet.rules import (
    ACME_CAA,
    ACME_DIRECTORIES,
    ACME_DIRECTORIES_ACCEPTED,
    BACKUP_KEEP_MAX,
    BACKUP_TARGETS_ACCEPTED,
    MTA_STS_MODES,
    PASSWORD_SCHEMES,
    PROVIDERS,
    RELAY_PORTS_ACCEPTED,
    acme_directory,
    address_problem,
    backup_keep_problem,
    backup_kind,
    backup_target_problem,
    caa_domain_problem,
    default_domain,
    destination,
    is_served,
    jump_problem,
    password_problem,
    posix_user_problem,
    quota_problem,
    recipe_name_problem,
    relay_port_problem,
    relay_user_problem,
)
from miab_remote.fleet.syntax import read_data
from miab_remote.profiles import PROFILES
from miab_remote.transport import sshkeys

TOP_KEYS: tuple[str, ...] = (
    "hostname",
    "address",
    "provider",
    "ssh",
    "host_keys",
    "os",
    "domains",
    "recipes",
    "users",
    "aliases",
    "options",
    "ipv4",
    "ipv6",
    "dns",
    "node",
    "relay",
    "backup",
    "acme",
)
ACME_KEYS: tuple[str, ...] = ("email", "directory", "ca_file", "caa", "mta_sts")
RELAY_KEYS: tuple[str, ...] = ("host", "port", "user", "ca_file")
BACKUP_KEYS: tuple[str, ...] = ("target", "keep", "append_only", "ca_file", "host_key")
BACKUP_KEEP_KEYS: tuple[str, ...] = ("daily", "weekly", "monthly")
# Keys an operator may reach for to put a credential here: each refused with where it goes instead.
SECRET_KEYS: tuple[str, ...] = ("password", "pass", "secret")
BACKUP_SECRET_KEYS: tuple[str, ...] = (*SECRET_KEYS, "user", "access_key_id", "secret_access_key", "key")
DNS_KEYS: tuple[str, ...] = ("records", "dnssec_algorithm", "secondaries")
DNS_RECORD_KEYS: tuple[str, ...] = ("name", "type", "value", "ttl")
# The cloud server a provider made (what its destroy needs): provider-made, so checked for shape only.
NODE_KEYS: tuple[str, ...] = ("id", "region", "size", "image", "endpoint", "security_group", "elastic_ip", "key_name")
SSH_KEYS: tuple[str, ...] = ("user", "port", "identity_file", "jump", "jump_host_keys")
USER_KEYS: tuple[str, ...] = ("email", "password_hash", "quota")
ALIAS_KEYS: tuple[str, ...] = ("source", "destinations")

_T = TypeVar("_T")


def validate(document_text: str, path: Path) -> Host:
    """Parse and check one inventory text; `path` names it in messages and its stem must be the hostname.

    The text is parsed once; its positions are looked up only when there is a problem to report.
    Raises InventoryError (an InputError) listing every problem, one per line, in file order.
    """
    path = Path(path)
    checker = Checker(read_data(document_text, path), path)
    host = checker.check()
    if host is None:
        raise InventoryError(path, checker.problems(document_text))
    return host


def _normal_address(value: str) -> str:
    """An IP address in its short form, a DNS name in lower case without its final dot."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value.rstrip(".").lower()


class Checker:
    """Checks a parsed inventory against the schema, collecting every problem with its key path."""

    def __init__(self, data: dict[str, Any], path: Path) -> None:
        self.data = data
        self.path = path
        # (key path, message): placed on lines only when the check is over and something was found.
        self.found: list[tuple[KeyPath, str]] = []
        self.user_index: dict[str, int] = {}  # lower-cased user email -> index in users

    def problems(self, text: str) -> list[Problem]:
        """What was found, each on the line of its value, or of the nearest enclosing table when the
        value itself is not there (a missing key). The text is scanned for positions only now."""
        lines = line_map(text)

        def line(key: KeyPath) -> int:
            while key not in lines:
                key = key[:-1]
            return lines[key]

        return [Problem(line(key), field_name(key), message) for key, message in self.found]

    def fail(self, key: KeyPath, message: str) -> None:
        self.found.append((key, message))

    def unknown_keys(self, table: dict[str, Any], at: KeyPath, accepted: tuple[str, ...], what: str) -> None:
        for name in table:
            if name not in accepted:
                close = difflib.get_close_matches(name, accepted, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.fail((*at, name), f"unknown {what}{hint}; accepted: {', '.join(accepted)}")

    def typed(
        self,
        table: dict[str, Any],
        at: KeyPath,
        name: str,
        kind: type[_T],
        expected: str,
        *,
        required: bool = False,
    ) -> _T | None:
        """The value of `name` if present and of the right TOML type; None (and a problem) otherwise."""
        key = (*at, name)
        if name not in table:
            if required:
                self.fail(key, f"required key is missing; expected {expected}")
            return None
        value = table[name]
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            self.fail(key, f"expected {expected}, got {toml_type(value)} {short(value)}")
            return None
        return value

    def string_list(self, table: dict[str, Any], at: KeyPath, name: str, expected: str) -> list[tuple[int, str]]:
        """The (index, string) elements of an array of strings, with a problem for each non-string."""
        items = self.typed(table, at, name, list, f"an array of {expected}")
        out: list[tuple[int, str]] = []
        for index, item in enumerate(items or []):
            if isinstance(item, str):
                out.append((index, item))
            else:
                self.fail((*at, name, index), f"expected {expected}, got {toml_type(item)} {short(item)}")
        return out

    def tables(self, name: str, what: str) -> list[tuple[int, dict[str, Any]]]:
        """The (index, table) elements of an array of tables such as [[users]]."""
        items = self.typed(self.data, (), name, list, f"an array of tables ([[{name}]] sections)")
        out: list[tuple[int, dict[str, Any]]] = []
        for index, item in enumerate(items or []):
            if isinstance(item, dict):
                out.append((index, item))
            else:
                self.fail((name, index), f"expected a table ({what}), got {toml_type(item)} {short(item)}")
        return out

    # -- the schema

    def check(self) -> Host | None:
        data = self.data
        self.unknown_keys(data, (), TOP_KEYS, "key")
        hostname = self.check_hostname()
        address = self.typed(data, (), "address", str, "an IP address or DNS name to reach the box at", required=True)
        if address is not None and (problem := address_problem(address)):
            self.fail(("address",), problem)
        provider = self.typed(data, (), "provider", str, f"one of {or_list(PROVIDERS)}")
        if provider is not None and provider not in PROVIDERS:
            self.fail(("provider",), f"{provider!r} is not a provider; accepted: {or_list(PROVIDERS)}")
        ssh = self.check_ssh()
        host_keys = self.check_host_keys()
        os_id = self.typed(data, (), "os", str, "an OS profile id")
        if os_id is not None and os_id not in PROFILES:
            supported = ", ".join(PROFILES)
            self.fail(("os",), f"{os_id!r} is not a supported OS profile; supported: {supported}")
        domains = self.check_domains(hostname)
        recipes = self.check_recipes()
        users = self.check_users(domains)
        aliases = self.check_aliases(domains)
        options = self.check_options()
        self.check_admin_email(options.get("admin_email"), hostname, domains, users, aliases)
        ipv4 = self.check_ip("ipv4", 4)
        ipv6 = self.check_ip("ipv6", 6)
        dns_records = self.check_dns_records(hostname, domains)
        dns_settings = self.check_dns_settings(hostname, options)
        node = self.check_node()
        relay = self.check_relay()
        backup = self.check_backup()
        acme = self.check_acme(recipes)
        if self.found or hostname is None or address is None:
            return None
        return Host(
            name=self.path.stem,
            path=self.path,
            hostname=hostname,
            address=address,
            ssh=ssh,
            host_keys=host_keys,
            os=os_id,
            domains=domains or (),
            users=users,
            aliases=aliases,
            recipes=recipes,
            provider=provider,
            options=options,
            ipv4=ipv4,
            ipv6=ipv6,
            dns_records=dns_records,
            dns=dns_settings,
            node=node,
            relay=relay,
            backup=backup,
            acme=acme,
        )

    def check_node(self) -> dict[str, str]:
        table = self.typed(self.data, (), "node", dict, "a table ([node] section, written by create)")
        if table is None:
            return {}
        self.unknown_keys(table, ("node",), NODE_KEYS, "key in [node]")
        out: dict[str, str] = {}
        for key in NODE_KEYS:
            value = self.typed(table, ("node",), key, str, "a string (as create wrote it)")
            if value is not None and (not value.strip() or any(c in value for c in "\0\n\r")):
                self.fail(
                    ("node", key), f"{value!r} is not a value create writes; expected a non-empty one-line string"
                )
            elif value is not None:
                out[key] = value
        return out

    def check_ip(self, name: str, version: int) -> str | None:
        value = self.typed(self.data, (), name, str, f"the box's public IPv{version} address")
        if value is None:
            return None
        try:
            parsed = ipaddress.ip_address(value)
        except ValueError:
            parsed = None
        if parsed is None or parsed.version != version:
            self.fail((name,), f"{value!r} is not an IPv{version} address")
            return None
        return str(parsed)

    def check_dns_records(self, hostname: str | None, domains: tuple[str, ...] | None) -> tuple[DNSRecord, ...]:
        """[[dns.records]]: extra records, each checked with dnspython as data of one of the box's zones;
        types limited to what makes sense."""
        zones = dnsrules.zones_for(hostname, domains) if hostname is not None and domains is not None else None
        needed = dnsrules.mail_names(hostname, domains) if hostname is not None and domains is not None else None
        at_name: dict[str, list[tuple[str, str]]] = {}  # name -> (where, type) of the records so far
        table = self.typed(self.data, (), "dns", dict, "a table ([dns] section)")
        if table is None:
            return ()
        self.unknown_keys(table, ("dns",), DNS_KEYS, "key in [dns]")
        items = self.typed(table, ("dns",), "records", list, "an array of tables ([[dns.records]] sections)")
        out: list[DNSRecord] = []
        for index, item in enumerate(items or []):
            at = ("dns", "records", index)
            if not isinstance(item, dict):
                self.fail(at, f"expected a table, got {toml_type(item)} {short(item)}")
                continue
            self.unknown_keys(item, at, DNS_RECORD_KEYS, "key in [[dns.records]]")
            name = self.typed(item, at, "name", str, "an absolute name like 'www.example.org'", required=True)
            rtype = self.typed(item, at, "type", str, f"one of {or_list(dnsrules.EXTRA_TYPES)}", required=True)
            value = self.typed(item, at, "value", str, "the record's data, as in a zone file", required=True)
            ttl = self.typed(item, at, "ttl", int, "seconds, 60 to 86400")
            if ttl is not None and not 60 <= ttl <= 86400:
                self.fail((*at, "ttl"), f"{ttl} is out of range; expected 60 to 86400 seconds")
            if name is None or rtype is None or value is None:
                continue
            problem = dnsrules.record_problem(name, rtype, value, zones, needed)
            if problem:
                self.fail((*at, problem[0]), problem[1])
                continue
            key = name.lower().rstrip(".")
            if clash := dnsrules.shared_name_problem(name, rtype, at_name.get(key, [])):
                self.fail((*at, "name"), clash)
                continue
            at_name.setdefault(key, []).append((field_name(at), rtype.upper()))
            out.append(DNSRecord(key, rtype.upper(), value, ttl or 1800))
        return tuple(out)

    def check_dns_settings(self, hostname: str | None, options: dict[str, Any]) -> DNSSettings:
        """[dns]'s settings (its records aside; the table's shape and unknown keys are checked with them):
        the DNSSEC algorithm (dnsrules.dnssec_algorithm) and the secondaries."""
        table = self.data.get("dns")
        if not isinstance(table, dict):
            return DNSSettings()
        algorithm = DNSSettings.dnssec_algorithm
        if "dnssec_algorithm" in table:
            number, problem = dnsrules.dnssec_algorithm(table["dnssec_algorithm"])
            if number is None:
                self.fail(("dns", "dnssec_algorithm"), problem or "")
            else:
                algorithm = number
        return DNSSettings(dnssec_algorithm=algorithm, secondaries=self.check_secondaries(table, hostname, options))

    def check_secondaries(
        self, table: dict[str, Any], hostname: str | None, options: dict[str, Any]
    ) -> tuple[str, ...]:
        """[dns] secondaries: other boxes' hostnames, each once, not this box, and only where this box runs
        nsd. Whether each is an inventory of the folder that runs nsd is checked with the folder
        (fleet/peers.py): one file cannot know."""
        if "secondaries" not in table:
            return ()
        expected = "another box's hostname, like 'box2.example.com'"
        entries = self.string_list(table, ("dns",), "secondaries", expected)
        if entries and options.get("dns") == "external":
            self.fail(
                ("dns", "secondaries"),
                'this box serves no zones (options dns = "external"), so no box can be its secondary; '
                "accepted: secondaries with dns = \"nsd\", or no secondaries",
            )
            return ()
        seen: dict[str, int] = {}
        for index, name in entries:
            key: KeyPath = ("dns", "secondaries", index)
            if problem := names.fqdn_problem(name, "a box's hostname", "box2.example.com"):
                self.fail(key, f"{problem}; expected {expected}")
            elif hostname is not None and name == hostname:
                self.fail(key, f"{name!r} is this box; expected {expected}")
            elif name in seen:
                self.fail(key, f"{name!r} is listed twice (also dns.secondaries[{seen[name]}])")
            else:
                seen[name] = index
        return tuple(seen)

    def check_relay(self) -> Relay | None:
        """[relay]: the smarthost for all outgoing mail. Its password is never here (the secrets store)."""
        table = self.typed(self.data, (), "relay", dict, "a table ([relay] section)")
        if table is None:
            return None
        at: KeyPath = ("relay",)
        for secret in SECRET_KEYS:
            if secret in table:
                self.fail(
                    (*at, secret),
                    "a password is never kept in the inventory; remove this line and store it with "
                    "`miab-remote relay set NAME ...` (it asks for it, or reads --password-stdin)",
                )
        self.unknown_keys(
            {k: v for k, v in table.items() if k not in SECRET_KEYS},
            at,
            RELAY_KEYS,
            "key in [relay]",
        )
        host = self.typed(table, at, "host", str, "the relay's DNS name or IP address", required=True)
        if host is not None and (problem := address_problem(host)):
            self.fail((*at, "host"), problem)
            host = None
        port = self.typed(table, at, "port", int, f"an integer port; {RELAY_PORTS_ACCEPTED}", required=True)
        if port is not None and (problem := relay_port_problem(port)):
            self.fail((*at, "port"), problem)
            port = None
        user = self.typed(table, at, "user", str, "the relay login's user name", required=True)
        if user is not None and (problem := relay_user_problem(user)):
            self.fail((*at, "user"), problem)
            user = None
        ca_file = self.typed(
            table, at, "ca_file", str, "a path to a PEM file of the CA that signs the relay's certificate"
        )
        if ca_file is not None and (not ca_file.strip() or "\0" in ca_file):
            self.fail((*at, "ca_file"), f"{ca_file!r} is not a path; expected like 'relay-ca.pem' or '~/ca/relay.pem'")
            ca_file = None
        if host is None or port is None or user is None:
            return None
        # `~` is the operator's home; a relative path is relative to the inventory folder (as identity_file).
        ca_path = None if ca_file is None else Path(os.path.abspath(self.path.parent / Path(ca_file).expanduser()))
        return Relay(_normal_address(host), port, user, ca_path)

    def check_backup(self) -> Backup | None:
        """[backup]: where the nightly restic backups go. No credential is ever here (the secrets store)."""
        table = self.typed(self.data, (), "backup", dict, "a table ([backup] section)")
        if table is None:
            return None
        at: KeyPath = ("backup",)
        for secret in BACKUP_SECRET_KEYS:
            if secret in table:
                self.fail(
                    (*at, secret),
                    "credentials are never kept in the inventory; remove this line: credentials go in the secrets "
                    "store: `miab-remote backup-target set NAME --target ...` (it asks for them, or reads "
                    "--credentials-stdin)",
                )
        self.unknown_keys(
            {k: v for k, v in table.items() if k not in BACKUP_SECRET_KEYS}, at, BACKUP_KEYS, "key in [backup]"
        )
        target = self.typed(table, at, "target", str, f"a restic repository; {BACKUP_TARGETS_ACCEPTED}", required=True)
        if target is not None and (problem := backup_target_problem(target)):
            self.fail((*at, "target"), problem)
            target = None
        kind = None if target is None else backup_kind(target)
        keep = self.check_backup_keep(table, at)
        append_only = self.typed(table, at, "append_only", bool, "true or false (true: never forget or prune)")
        ca_file = self.typed(
            table, at, "ca_file", str, "a path to a PEM file of the CA that signs the target's certificate"
        )
        if ca_file is not None and (not ca_file.strip() or "\0" in ca_file):
            expected = "expected like 'backup-ca.pem' or '~/ca/backup.pem'"
            self.fail((*at, "ca_file"), f"{ca_file!r} is not a path; {expected}")
            ca_file = None
        elif ca_file is not None and kind in ("sftp", "local"):
            self.fail((*at, "ca_file"), f"a {kind} target has no certificate; accepted: ca_file for rest and s3 only")
            ca_file = None
        host_key = self.check_backup_host_key(table, at, kind)
        if target is None or kind is None or keep is None:
            return None
        ca_path = None if ca_file is None else Path(os.path.abspath(self.path.parent / Path(ca_file).expanduser()))
        daily, weekly, monthly = keep
        return Backup(target, kind, daily, weekly, monthly, bool(append_only), ca_path, host_key)

    def check_acme(self, recipes: tuple[str, ...]) -> Acme | None:
        """[acme]: a trusted certificate ordered by certbot on the box (HTTP-01, so nginx must answer port 80)."""
        table = self.typed(self.data, (), "acme", dict, "a table ([acme] section)")
        if table is None:
            return None
        at: KeyPath = ("acme",)
        before = len(self.found)
        self.unknown_keys(table, at, ACME_KEYS, "key in [acme]")
        email = self.typed(table, at, "email", str, "the ACME account's contact address")
        if email is not None and (problem := names.email_problem(email, served=False)):
            self.fail((*at, "email"), f"{problem}; expected the ACME account's contact address")
        word = self.typed(table, at, "directory", str, ACME_DIRECTORIES_ACCEPTED)
        directory = ACME_DIRECTORIES["production"] if word is None else acme_directory(word)
        if directory is None:
            self.fail((*at, "directory"), f"{short(word)} is not an ACME directory; {ACME_DIRECTORIES_ACCEPTED}")
        ca_file = self.typed(
            table, at, "ca_file", str, "a path to a PEM file of the CA that signs the directory's certificate"
        )
        if ca_file is not None and (not ca_file.strip() or "\0" in ca_file):
            self.fail((*at, "ca_file"), f"{ca_file!r} is not a path; expected like 'acme-ca.pem' or '~/ca/acme.pem'")
        caa = self.typed(table, at, "caa", str, "the CA's CAA domain, like 'letsencrypt.org' ('' for no CAA records)")
        if caa is not None and caa != "" and (problem := caa_domain_problem(caa)):
            self.fail((*at, "caa"), problem)
        if caa is None and "caa" not in table and directory is not None and directory not in ACME_CAA:
            self.fail(
                (*at, "directory"),
                "the CAA domain of this directory's CA is not known; set caa to the one its documentation gives "
                "(like caa = 'letsencrypt.org'), or caa = '' to publish no CAA records",
            )
        mode = self.typed(table, at, "mta_sts", str, f"the MTA-STS policy mode, one of {or_list(MTA_STS_MODES)}")
        if mode is not None and mode not in MTA_STS_MODES:
            self.fail((*at, "mta_sts"), f"{mode!r} is not an MTA-STS mode; accepted: {or_list(MTA_STS_MODES)}")
        if "webmail" not in recipes:
            self.fail(at, "needs the webmail recipe: nginx answers the CA's HTTP-01 challenge on port 80")
        if len(self.found) > before or directory is None:
            return None
        ca_path = None if ca_file is None else Path(os.path.abspath(self.path.parent / Path(ca_file).expanduser()))
        issuer = ACME_CAA.get(directory) if caa is None else (caa.lower() or None)
        return Acme(directory, email, ca_path, issuer, mode or "testing")

    def check_backup_keep(self, table: dict[str, Any], at: KeyPath) -> tuple[int, int, int] | None:
        """[backup] keep: snapshots kept per day, week and month (a count left out of a given table is 0);
        absent: 7, 5, 12."""
        accepted = f"a table like {{ daily = 7, weekly = 5, monthly = 12 }}, each 0..{BACKUP_KEEP_MAX}"
        keep = self.typed(table, at, "keep", dict, accepted)
        if keep is None:
            return None if "keep" in table else (7, 5, 12)
        before = len(self.found)
        self.unknown_keys(keep, (*at, "keep"), BACKUP_KEEP_KEYS, "key in [backup] keep")
        counts: list[int] = []
        for name in BACKUP_KEEP_KEYS:
            value = self.typed(keep, (*at, "keep"), name, int, f"a count of snapshots, 0..{BACKUP_KEEP_MAX}")
            if value is not None and (problem := backup_keep_problem(value)):
                self.fail((*at, "keep", name), problem)
            counts.append(value or 0)
        if len(self.found) > before:
            return None
        if not any(counts):
            self.fail((*at, "keep"), f"keeps nothing; accepted: {accepted}, at least one above 0")
            return None
        daily, weekly, monthly = counts
        return daily, weekly, monthly

    def check_backup_host_key(self, table: dict[str, Any], at: KeyPath, kind: str | None) -> str | None:
        """An sftp target's pinned SSH host key: required there, refused anywhere else."""
        expected = "the sftp target's SSH host key, a line like 'ssh-ed25519 AAAAC3Nza...'"
        host_key = self.typed(table, at, "host_key", str, expected, required=kind == "sftp")
        if host_key is None:
            return None
        if kind is not None and kind != "sftp":
            self.fail((*at, "host_key"), f"a {kind} target has no SSH host key; accepted: host_key for sftp only")
            return None
        if "\n" in host_key.strip():
            self.fail((*at, "host_key"), f"an SSH public key is one line; expected {expected}")
            return None
        try:
            sshkeys.parse_public_line(host_key)
        except InputError as e:
            self.fail((*at, "host_key"), f"{e}; expected {expected}")
            return None
        return " ".join(host_key.split()[:2])

    def check_hostname(self) -> str | None:
        hostname = self.typed(self.data, (), "hostname", str, "the box's FQDN, like 'box1.example.org'", required=True)
        if hostname is None:
            return None
        problem = names.fqdn_problem(hostname, "a fully qualified domain name", "box1.example.org")
        if problem:
            self.fail(("hostname",), problem)
            return None
        if hostname != self.path.stem:
            self.fail(
                ("hostname",),
                f"{hostname!r} does not match the file name {self.path.name}; "
                f"an inventory file is named after its box: {hostname}.toml",
            )
        return hostname  # still used for the default domain, so one mistake does not cascade

    def check_ssh(self) -> SSHSettings:
        ssh = self.typed(self.data, (), "ssh", dict, "a table ([ssh] section)")
        if ssh is None:
            return SSHSettings()
        at: KeyPath = ("ssh",)
        self.unknown_keys(ssh, at, SSH_KEYS, "key in [ssh]")
        user = self.typed(ssh, at, "user", str, "a POSIX user name like 'root'")
        if user is not None and (problem := posix_user_problem(user)):
            self.fail((*at, "user"), problem)
            user = None
        port = self.typed(ssh, at, "port", int, "an integer port 1..65535")
        if port is not None and not 1 <= port <= 65535:
            self.fail((*at, "port"), f"{port} is out of range; accepted: 1..65535")
            port = None
        identity = self.typed(ssh, at, "identity_file", str, "a path to an SSH private key")
        if identity is not None and (not identity.strip() or "\0" in identity):
            self.fail((*at, "identity_file"), f"{identity!r} is not a path; expected like '~/.ssh/id_ed25519'")
            identity = None
        if identity is not None:
            # `~` is the operator's home; a relative path is relative to the inventory folder.
            identity = str(Path(os.path.abspath(self.path.parent)) / Path(identity).expanduser())
        jump = self.typed(ssh, at, "jump", str, "jump hosts like 'admin@bastion.example.org:22'")
        if jump is not None and (problem := jump_problem(jump)):
            self.fail((*at, "jump"), problem)
            jump = None
        return SSHSettings(
            user=user or "root",
            port=port or 22,
            identity_file=identity,
            jump=None if jump is None else ",".join(h.strip() for h in jump.split(",")),
            jump_host_keys=self.check_host_keys(ssh, at, "jump_host_keys"),
            given=frozenset(k for k in ("user", "port", "identity_file", "jump") if k in ssh),
        )

    def check_host_keys(
        self, table: dict[str, Any] | None = None, at: KeyPath = (), name: str = "host_keys"
    ) -> tuple[str, ...]:
        """Pinned SSH public keys: the box's `host_keys`, or its jump hosts' `[ssh] jump_host_keys`."""
        keys: list[str] = []
        seen: dict[bytes, int] = {}
        for index, line in self.string_list(self.data if table is None else table, at, name, "SSH public key lines"):
            key: KeyPath = (*at, name, index)
            if "\n" in line.strip():
                self.fail(key, "an SSH public key is one line; put each key in its own string")
                continue
            try:
                _type, blob = sshkeys.parse_public_line(line)
            except InputError as e:
                self.fail(key, f"{e}; expected a line like 'ssh-ed25519 AAAAC3Nza... root@box'")
                continue
            if blob in seen:
                self.fail(key, f"the same key as {name}[{seen[blob]}]; pin each key once")
                continue
            seen[blob] = index
            keys.append(line.strip())
        return tuple(keys)

    def check_domains(self, hostname: str | None) -> tuple[str, ...] | None:
        """The hosted domains, or None when they cannot be known because of a problem already reported."""
        if "domains" not in self.data:
            return (default_domain(hostname),) if hostname else None
        before = len(self.found)
        entries = self.string_list(self.data, (), "domains", "domain names")
        if isinstance(self.data["domains"], list) and not self.data["domains"]:
            default = f" ({default_domain(hostname)!r})" if hostname else ""
            self.fail(
                ("domains",),
                f"is empty; list at least one mail domain, or remove the key to use the "
                f"hostname's parent domain{default}",
            )
        domains: dict[str, int] = {}
        for index, domain in entries:
            problem = names.fqdn_problem(domain, "a domain name", "example.org")
            if problem:
                self.fail(("domains", index), problem)
            elif domain in domains:
                self.fail(("domains", index), f"{domain!r} is listed twice (also domains[{domains[domain]}])")
            else:
                domains[domain] = index
        return tuple(domains) if len(self.found) == before else None

    def check_recipes(self) -> tuple[str, ...]:
        if "recipes" not in self.data:
            return DEFAULT_RECIPES
        recipes: dict[str, int] = {}
        for index, name in self.string_list(self.data, (), "recipes", "recipe names"):
            if problem := recipe_name_problem(name):
                self.fail(("recipes", index), problem)
            elif name in recipes:
                self.fail(("recipes", index), f"{name!r} is listed twice (also recipes[{recipes[name]}])")
            else:
                recipes[name] = index
        return tuple(recipes)

    def hosted(self, key: KeyPath, address: str, domain: str, domains: tuple[str, ...] | None) -> bool:
        """Whether `domain` is served here; None domains means unknown (already reported), so no noise."""
        if domains is None or domain in domains:
            return True
        hosted = ", ".join(domains) or "none"
        self.fail(key, f"{address!r} is not in a domain this box hosts; domains: {hosted}")
        return False

    def check_users(self, domains: tuple[str, ...] | None) -> tuple[MailUser, ...]:
        """The users; also fills `user_index` so aliases can check that they do not shadow a mailbox."""
        users: list[MailUser] = []
        first = self.user_index
        for index, table in self.tables("users", "one mailbox"):
            at: KeyPath = ("users", index)
            self.unknown_keys(table, at, USER_KEYS, "key in a user")
            email = self.typed(table, at, "email", str, "the mailbox address, like 'bob@example.org'", required=True)
            if email is not None:
                problem = names.email_problem(email)
                if problem:
                    self.fail((*at, "email"), problem)
                    email = None
                elif not self.hosted((*at, "email"), email, email.rpartition("@")[2].lower(), domains):
                    email = None
                elif names.normal_email(email) in first:
                    self.fail(
                        (*at, "email"),
                        f"{email!r} is listed twice (also users[{first[names.normal_email(email)]}].email)",
                    )
                    email = None
                else:
                    email = names.normal_email(email)  # dovecot and postfix look addresses up in lower case
            password_hash = self.typed(
                table,
                at,
                "password_hash",
                str,
                f"a password hash starting with {', '.join(PASSWORD_SCHEMES)}",
                required=True,
            )
            if password_hash is not None and (problem := password_problem(password_hash)):
                self.fail((*at, "password_hash"), problem)
                password_hash = None
            quota = self.typed(table, at, "quota", str, 'a size like "500M" or "2G", or "0" for none')
            if quota is not None and (problem := quota_problem(quota)):
                self.fail((*at, "quota"), problem)
            if email is not None:
                first[email] = index
                if password_hash is not None:
                    users.append(MailUser(email, password_hash, quota))
        return tuple(users)

    def check_aliases(self, domains: tuple[str, ...] | None) -> tuple[Alias, ...]:
        aliases: list[Alias] = []
        sources: dict[str, int] = {}  # lower-cased source -> alias index
        for index, table in self.tables("aliases", "one alias"):
            at: KeyPath = ("aliases", index)
            self.unknown_keys(table, at, ALIAS_KEYS, "key in an alias")
            source = self.typed(table, at, "source", str, "an address, or '@domain' for a catch-all", required=True)
            if source is not None:
                source = self.check_source((*at, "source"), source, domains, sources)
                if source is not None:
                    sources[source] = index
            destinations = self.typed(table, at, "destinations", list, "a non-empty array of addresses", required=True)
            if destinations is not None and not destinations:
                self.fail((*at, "destinations"), "is empty; list at least one address to deliver to")
            checked: list[str] = []
            seen: dict[str, int] = {}
            for n, dest in enumerate(destinations or []):
                key = (*at, "destinations", n)
                if not isinstance(dest, str):
                    self.fail(key, f"expected an address, got {toml_type(dest)} {short(dest)}")
                elif problem := names.email_problem(dest, served=is_served(dest, domains)):
                    self.fail(key, problem)
                elif source is not None and dest.lower() == source:
                    self.fail(key, f"{dest!r} is the alias's own source: an alias to itself")
                elif dest.lower() in seen:
                    self.fail(key, f"{dest!r} is listed twice (also destinations[{seen[dest.lower()]}])")
                else:
                    seen[dest.lower()] = n
                    checked.append(destination(dest, domains))
            if source is not None and destinations and len(checked) == len(destinations):
                aliases.append(Alias(source, tuple(checked)))
        return tuple(aliases)

    def check_source(
        self, key: KeyPath, source: str, domains: tuple[str, ...] | None, sources: dict[str, int]
    ) -> str | None:
        """The alias source, in lower case, if it is an address or '@domain' in a hosted domain, used once,
        not a user."""
        if source.startswith("@"):
            domain = source[1:].lower()
            problem = names.fqdn_problem(domain, "a domain name", "example.org")
            if problem:
                self.fail(key, f"catch-all {source!r}: {problem}")
                return None
        else:
            problem = names.email_problem(source)
            if problem:
                self.fail(key, f"{problem}; expected an address, or '@domain' for a catch-all")
                return None
            domain = source.rpartition("@")[2].lower()
        if not self.hosted(key, source, domain, domains):
            return None
        normal = names.normal_email(source)
        if normal in sources:
            self.fail(key, f"{source!r} is listed twice (also aliases[{sources[normal]}].source)")
            return None
        if normal in self.user_index:
            self.fail(
                key,
                f"{source!r} is also a user (users[{self.user_index[normal]}].email); "
                "an address is either a mailbox or an alias",
            )
            return None
        return normal

    def check_admin_email(
        self,
        admin: str | None,
        hostname: str | None,
        domains: tuple[str, ...] | None,
        users: tuple[MailUser, ...],
        aliases: tuple[Alias, ...],
    ) -> None:
        """An admin address on this box must be a mailbox or an alias of the inventory: the automatic
        addresses forward to it, so anything else would bounce, or loop back to itself."""
        if admin is None or hostname is None:
            return
        domain = admin.rpartition("@")[2]
        if domain != hostname and domain not in (domains or ()):
            return  # elsewhere: the box forwards system mail there
        known = {u.email.lower() for u in users} | {a.source.lower() for a in aliases}
        if admin.lower() not in known:
            self.fail(
                ("options", "admin_email"),
                f"{admin!r} is on this box but is neither a user nor an alias of it; "
                "accepted: a user's address, an alias's source, or an address elsewhere",
            )

    def check_options(self) -> dict[str, Any]:
        options = {name: spec.default for name, spec in OPTION_SPECS.items()}
        table = self.typed(self.data, (), "options", dict, "a table ([options] section)")
        if table is None:
            return options
        self.unknown_keys(table, ("options",), tuple(OPTION_SPECS), "option")
        for name, spec in OPTION_SPECS.items():
            value = self.typed(table, ("options",), name, spec.type, spec.accepted)
            if value is None:
                continue
            problem = spec.check(value)
            if problem:
                self.fail(("options", name), problem)
            else:
                options[name] = value
        return options
