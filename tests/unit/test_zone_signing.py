"""remote/zone_build.py's DNSSEC signing as shipped, with Debian's real ldns-keygen and ldns-signzone: the
signed zone validates with dnspython from the DS that `miab-remote dns` derives from the key file, for
every algorithm the inventory accepts; the deploy's guard fails when the key or the algorithm changed and
when the signatures are due, and holds otherwise."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dns.dnssec
import dns.name
import dns.rdatatype
import dns.zone
import pytest

from miab_remote.fleet.dnsrules import DNSSEC_ALGORITHMS
from miab_remote.fleet.problems import InventoryError
from miab_remote.fleet.schema import validate
from miab_remote.mail import dnszones
from miab_remote.mail.dnssec import parse_key_files
from miab_remote.remote import BOOTSTRAP, script_input
from tests.unit.test_zone_build import DKIM_FILE, builder, host

ZONE = "alpha.test"
DAY = 86400


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    (tmp_path / "mail.txt").write_text(DKIM_FILE)
    (tmp_path / f"{ZONE}.body").write_text(dnszones.zone_body(host(acme=None), ZONE))
    return tmp_path


def argv(tmp: Path, algorithm: int) -> list[str]:
    keys = str(tmp / "keys")
    return [
        "--sign",
        str(algorithm),
        keys,
        ZONE,
        str(tmp / f"{ZONE}.body"),
        str(tmp / f"{ZONE}.zone"),
        str(tmp / "mail.txt"),
        str(tmp / "tls.key"),  # none here: the zone has no TLSA records
    ]


def guard(tmp: Path, algorithm: int) -> int:
    """The deploy's guard (`--check`), run as the box runs it."""
    proc = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP, "--check", *argv(tmp, algorithm)],
        input=script_input("zone_build", b""),
        capture_output=True,
        check=False,
    )
    assert not proc.stderr, proc.stderr
    return proc.returncode


def sign(tmp: Path, algorithm: int, now: float | None = None) -> str:
    """What a build writes as FINAL (nsd-checkzone aside: it is on the boxes, not here): the key made once,
    the text signed at `now`."""
    zb: dict[str, Any] = builder()
    keys = str(tmp / "keys")
    key = zb["key_base"](keys, ZONE, algorithm) or zb["make_key"](keys, ZONE, algorithm)
    final = tmp / f"{ZONE}.zone"
    old_serial, _ = zb["state_of"](str(final))
    source, serial, text = zb["zone_text"](
        (tmp / f"{ZONE}.body").read_text(), zb["dkim_rdata"](str(tmp / "mail.txt")), None, old_serial
    )
    signed: str = zb["signed_text"](ZONE, text, key, zb["keyed_source"](source, key), serial, now or time.time())
    final.write_text(signed)
    return signed


def printed_keys(tmp: Path, algorithm: int, *zones: str) -> str:
    """What `zone-build --keys` prints (run as the box runs it), which `miab-remote dns` reads."""
    proc = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP, "--keys", str(algorithm), str(tmp / "keys"), *zones],
        input=script_input("zone_build", b""),
        capture_output=True,
        check=True,
    )
    return proc.stdout.decode()


def the_ds(tmp: Path, algorithm: int) -> Any:
    """The zone's DS as `miab-remote dns` makes it: from the key file the builder signs with."""
    return parse_key_files(printed_keys(tmp, algorithm, ZONE), [ZONE], algorithm)[ZONE]


@pytest.mark.parametrize("algorithm", sorted(DNSSEC_ALGORITHMS))
def test_a_signed_zone_validates_from_the_ds_down(tmp: Path, algorithm: int) -> None:
    text = sign(tmp, algorithm)
    key = the_ds(tmp, algorithm)
    assert key.ds.digest_type == 2 and key.ds.algorithm == algorithm
    zone = dns.zone.from_text(text, origin=ZONE, relativize=False)
    origin = dns.name.from_text(ZONE)
    dnskeys = zone.find_rrset(origin, "DNSKEY")
    assert [dns.dnssec.make_ds(origin, k, "SHA256") for k in dnskeys] == [key.ds]  # one key, the one of the DS
    keyring = {origin: dnskeys}
    for name, rtype in [(ZONE, "DNSKEY"), (ZONE, "SOA"), (ZONE, "MX"), (f"mail._domainkey.{ZONE}", "TXT")]:
        owner = dns.name.from_text(name)
        rrset = zone.find_rrset(owner, rtype)
        sigs = zone.find_rrset(owner, "RRSIG", dns.rdatatype.from_text(rtype))
        dns.dnssec.validate(rrset, sigs, keyring)  # raises dns.dnssec.ValidationFailure when it does not hold
    nsec3param = zone.find_rdataset(origin, "NSEC3PARAM")[0]
    assert (nsec3param.iterations, nsec3param.salt) == (0, b"")  # RFC 9276
    assert text.startswith("; miab-remote serial ")


def test_the_guard_holds_for_a_signed_zone_and_fails_when_it_is_due_or_the_key_changes(tmp: Path) -> None:
    assert guard(tmp, 13) == 1  # no key yet: the build makes one
    sign(tmp, 13)
    assert guard(tmp, 13) == 0  # a no-op deploy: nothing signed again
    sign(tmp, 13, now=time.time() - 17 * DAY)  # the signatures expire in 13 days: due
    assert guard(tmp, 13) == 1
    sign(tmp, 13, now=time.time() - 15 * DAY)  # 15 days left: not yet
    assert guard(tmp, 13) == 0
    assert guard(tmp, 15) == 1  # another algorithm: a new key, a new signed zone
    keys = sorted((tmp / "keys").glob("K*.key"))
    assert len(keys) == 1 and len(list((tmp / "keys").glob("K*.private"))) == 1
    assert oct((tmp / "keys").stat().st_mode & 0o777) == "0o700"


def test_a_new_key_changes_the_source(tmp: Path) -> None:
    """A key made anew (a restore of an old tree, a lost key) signs a new zone: the guard fails."""
    sign(tmp, 13)
    for f in (tmp / "keys").glob("K*"):
        f.unlink()
    builder()["make_key"](str(tmp / "keys"), ZONE, 13)
    assert guard(tmp, 13) == 1


BOX = 'hostname = "mx.alpha.test"\naddress = "203.0.113.7"\ndomains = ["alpha.test"]\n\n[dns]\n'


@pytest.mark.parametrize(("value", "number"), [("13", 13), ("8", 8), ('"ECDSAP384SHA384"', 14), ('"ed25519"', 15)])
def test_the_dnssec_algorithm_is_a_number_or_its_name(tmp_path: Path, value: str, number: int) -> None:
    assert (
        validate(BOX + f"dnssec_algorithm = {value}\n", tmp_path / "mx.alpha.test.toml").dns.dnssec_algorithm == number
    )
    assert validate(BOX.replace("[dns]\n", ""), tmp_path / "mx.alpha.test.toml").dns.dnssec_algorithm == 13


@pytest.mark.parametrize("value", ["5", '"RSASHA1"', "true", '"13x"', "[13]"])
def test_another_dnssec_algorithm_is_one_clear_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(InventoryError) as e:
        validate(BOX + f"dnssec_algorithm = {value}\n", tmp_path / "mx.alpha.test.toml")
    message = str(e.value)
    assert message.count("\n") == 0, message
    assert message.startswith(f"{tmp_path / 'mx.alpha.test.toml'}:6: dns.dnssec_algorithm: ")
    assert "accepted: 13 (ECDSAP256SHA256), 8 (RSASHA256), 14 (ECDSAP384SHA384), 15 (ED25519)" in message


def zone_keys(text: str) -> set[str]:
    zone = dns.zone.from_text(text, origin=ZONE, relativize=False)
    return {k.to_text() for k in zone.find_rrset(dns.name.from_text(ZONE), "DNSKEY")}


def test_the_printed_key_is_the_one_the_zone_is_signed_with(tmp: Path) -> None:
    """Two keys of one zone and algorithm (a second one made beside the first): `--keys` prints the one the
    builder signs with, and only that one; a zone without a key prints nothing."""
    zb: dict[str, Any] = builder()
    zb["make_key"](str(tmp / "keys"), ZONE, 13)
    zb["make_key"](str(tmp / "keys"), ZONE, 13)
    used = zone_keys(sign(tmp, 13))
    printed = printed_keys(tmp, 13, ZONE, "other.test")
    assert len([line for line in printed.splitlines() if "DNSKEY" in line]) == 1, printed
    assert len(used) == 1 and {parse_key_files(printed, [ZONE], 13)[ZONE].dnskey.to_text()} == used


def test_what_ldns_keygen_says_on_stderr_is_not_taken_for_the_key(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key made is the file ldns-keygen wrote, whatever it also says (a warning after its output here)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ldns-keygen"
    wrapper.write_text('#!/bin/sh\n/usr/bin/ldns-keygen "$@" && echo "ldns-keygen: a warning" >&2\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path('/usr/bin')}:{Path('/bin')}")
    zb: dict[str, Any] = builder()
    key = zb["make_key"](str(tmp / "keys"), ZONE, 13)
    assert Path(key + ".key").is_file() and Path(key + ".private").is_file()
    assert key == zb["key_base"](str(tmp / "keys"), ZONE, 13)
