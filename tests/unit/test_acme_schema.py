"""The [acme] table: every problem one line `file:line: field: what is accepted`, and the Acme it makes."""

from __future__ import annotations

from pathlib import Path

import pytest

from miab_remote.fleet.model import Acme
from miab_remote.fleet.schema import validate
from tests.unit.test_inventory import errors_of

NAME = "box1.acme.test"
P = f"hosts/{NAME}.toml"
HEAD = f'hostname = "{NAME}"\naddress = "192.0.2.10"\n'
LE = "https://acme-v02.api.letsencrypt.org/directory"
LE_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
DIRECTORIES = "accepted: 'production' or 'staging' (Let's Encrypt's), or a directory URL 'https://...'"
UNKNOWN_CAA = (
    "the CAA domain of this directory's CA is not known; set caa to the one its documentation gives "
    "(like caa = 'letsencrypt.org'), or caa = '' to publish no CAA records"
)


def acme(*lines: str, head: str = HEAD) -> str:
    return head + "[acme]\n" + "".join(f"{line}\n" for line in lines)



SCHEMA_CASES: list[tuple[str, str, str]] = [
    ("type", HEAD + 'acme = "production"\n',
     f"{P}:3: acme: expected a table ([acme] section), got a string 'production'"),
    ("unknown", acme('emial = "a@b.test"'),
     f"{P}:4: acme.emial: unknown key in [acme] (did you mean 'email'?); accepted: email, directory, ca_file, caa, "
     "mta_sts"),
    ("email", acme('email = "nobody"'),
     f"{P}:4: acme.email: 'nobody' is not an email address; expected the ACME account's contact address"),
    ("email-type", acme("email = 1"),
     f"{P}:4: acme.email: expected the ACME account's contact address, got an integer 1"),
    ("directory-word", acme('directory = "prod"'),
     f"{P}:4: acme.directory: 'prod' is not an ACME directory; {DIRECTORIES}"),
    ("directory-http", acme('directory = "http://ca.test/dir"'),
     f"{P}:4: acme.directory: 'http://ca.test/dir' is not an ACME directory; {DIRECTORIES}"),
    ("directory-unknown-ca", acme('directory = "https://ca.test/dir"'), f"{P}:4: acme.directory: {UNKNOWN_CAA}"),
    ("caa", acme('caa = "not a domain"'),
     f"{P}:4: acme.caa: 'not a domain' is not a CA's CAA domain; expected a domain like 'letsencrypt.org', or '' "
     "for no CAA records"),
    ("ca-file", acme('ca_file = " "'),
     f"{P}:4: acme.ca_file: ' ' is not a path; expected like 'acme-ca.pem' or '~/ca/acme.pem'"),
    ("mta-sts", acme('mta_sts = "on"'),
     f"{P}:4: acme.mta_sts: 'on' is not an MTA-STS mode; accepted: \"testing\", \"enforce\" or \"none\""),
    ("no-webmail", acme(head=HEAD + 'recipes = ["base", "tls", "postfix"]\n'),
     f"{P}:4: acme: needs the webmail recipe: nginx answers the CA's HTTP-01 challenge on port 80"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in SCHEMA_CASES], ids=[c[0] for c in SCHEMA_CASES])
def test_schema_errors(text: str, expected: str) -> None:
    assert errors_of(text, P) == expected


GOOD_CASES: list[tuple[str, list[str], Acme]] = [
    ("defaults", [], Acme(LE)),
    ("staging", ['directory = "staging"', 'email = "Ops@Example.org"'], Acme(LE_STAGING, "Ops@Example.org")),
    ("url-known-ca", [f'directory = "{LE}"', 'mta_sts = "enforce"'], Acme(LE, mta_sts="enforce")),
    ("private-ca", ['directory = "https://10.78.0.1:14000/dir"', 'caa = "Pebble.Test"', 'mta_sts = "none"'],
     Acme("https://10.78.0.1:14000/dir", caa="pebble.test", mta_sts="none")),
    ("no-caa", ['caa = ""'], Acme(LE, caa=None)),
    ("zerossl", ['directory = "https://acme.zerossl.com/v2/DV90"'],
     Acme("https://acme.zerossl.com/v2/DV90", caa="sectigo.com")),
]  # fmt: skip


@pytest.mark.parametrize(("lines", "expected"), [c[1:] for c in GOOD_CASES], ids=[c[0] for c in GOOD_CASES])
def test_a_good_table_is_read(lines: list[str], expected: Acme) -> None:
    assert validate(acme(*lines), Path(P)).acme == expected


def test_no_table_no_acme_and_ca_file_relative_to_the_inventory(tmp_path: Path) -> None:
    assert validate(HEAD, Path(P)).acme is None
    path = tmp_path / "hosts" / f"{NAME}.toml"
    host = validate(acme('ca_file = "ca/pebble.pem"', 'caa = ""'), path)
    assert host.acme is not None and host.acme.ca_file == tmp_path / "hosts" / "ca" / "pebble.pem"
