"""The account tables rendered for postfix and dovecot from an inventory."""

from __future__ import annotations

from pathlib import Path

from miab_remote.fleet.model import Alias, Host, MailUser
from miab_remote.mail import mailmaps

HASH = "{BLF-CRYPT}$2b$12$" + "a" * 53


def host(
    users: list[str],
    aliases: list[tuple[str, list[str]]],
    domains: tuple[str, ...] = ("a.test", "b.test"),
    admin: str | None = None,
    hostname: str = "mx.a.test",
) -> Host:
    return Host(
        name=hostname,
        path=Path(f"hosts/{hostname}.toml"),
        hostname=hostname,
        address="10.0.0.1",
        domains=domains,
        users=tuple(MailUser(u, HASH, "2G" if u.startswith("q") else None) for u in users),
        aliases=tuple(Alias(s, tuple(d)) for s, d in aliases),
        options={"admin_email": admin},
    )


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_automatic_addresses_point_at_the_first_user() -> None:
    h = host(["alice@a.test", "bob@b.test"], [])
    auto = {(a.source, a.destinations) for a in mailmaps.aliases(h) if a.automatic}
    per_domain = {(f"{x}@{d}", ("alice@a.test",)) for x in ("postmaster", "abuse", "hostmaster") for d in h.domains}
    # The hostname is not a mail domain: its system addresses (where `root` on the box goes) exist too.
    system = {(f"{x}@mx.a.test", ("alice@a.test",)) for x in ("root", "postmaster", "abuse", "hostmaster")}
    assert auto == per_domain | system
    assert mailmaps.system_alias_domain(h) == "mx.a.test"
    assert "root@mx.a.test alice@a.test" in lines(mailmaps.virtual_aliases(h))
    assert "hostmaster@b.test alice@a.test" in lines(mailmaps.virtual_aliases(h))


def test_admin_email_takes_the_automatic_addresses_and_system_mail() -> None:
    h = host(["alice@a.test", "bob@b.test"], [], admin="BOB@b.test")
    assert mailmaps.admin_email(h) == "bob@b.test"  # spelled as the user is
    assert {a.destinations for a in mailmaps.aliases(h) if a.automatic} == {("bob@b.test",)}
    assert "hostmaster@a.test bob@b.test" in lines(mailmaps.sender_logins(h))
    elsewhere = host(["alice@a.test"], [], admin="ops@elsewhere.test")
    assert {a.destinations for a in mailmaps.aliases(elsewhere) if a.automatic} == {("ops@elsewhere.test",)}
    assert not any(line.startswith("postmaster@") for line in lines(mailmaps.sender_logins(elsewhere)))
    assert [a for a in mailmaps.aliases(host([], [])) if a.automatic] == [], "no admin: no automatic aliases"


def test_a_hostname_that_is_a_mail_domain_adds_only_root() -> None:
    h = host(["alice@a.test"], [], domains=("a.test",), hostname="a.test")
    assert mailmaps.system_alias_domain(h) is None
    assert mailmaps.automatic_sources(h) == ["postmaster@a.test", "abuse@a.test", "hostmaster@a.test", "root@a.test"]


def test_inventory_alias_or_mailbox_overrides_the_automatic_one() -> None:
    h = host(["alice@a.test", "postmaster@b.test"], [("Abuse@a.test", ["alice@a.test"])])
    sources = [a.source for a in mailmaps.aliases(h)]
    assert sources.count("postmaster@b.test") == 0
    assert "abuse@a.test" not in sources and "Abuse@a.test" in sources
    assert "postmaster@a.test" in sources


def test_catch_all_keeps_real_mailboxes_and_maps_are_deterministic() -> None:
    h = host(
        ["alice@a.test", "carol@b.test"],
        [("@b.test", ["carol@b.test"]), ("team@a.test", ["alice@a.test", "x@ext.test"])],
    )
    aliases = lines(mailmaps.virtual_aliases(h))
    assert "carol@b.test carol@b.test" in aliases and "@b.test carol@b.test" in aliases
    assert "team@a.test alice@a.test, x@ext.test" in aliases
    assert mailmaps.virtual_aliases(h) == mailmaps.virtual_aliases(h)
    assert lines(mailmaps.virtual_mailboxes(h)) == ["alice@a.test OK", "carol@b.test OK"]


def test_sender_logins_allow_own_address_and_aliases_reaching_the_user() -> None:
    h = host(
        ["alice@a.test", "bob@a.test"],
        [("team@a.test", ["alice@a.test", "bob@a.test"]), ("ext@a.test", ["x@ext.test"])],
    )
    logins = lines(mailmaps.sender_logins(h))
    assert "alice@a.test alice@a.test" in logins and "bob@a.test bob@a.test" in logins
    assert "team@a.test alice@a.test, bob@a.test" in logins
    assert not any(line.startswith("ext@a.test") for line in logins), "nobody may send as a purely external alias"


def test_dovecot_users_carry_hash_and_quota_only() -> None:
    h = host(["alice@a.test", "quota@a.test"], [])
    assert lines(mailmaps.dovecot_users(h)) == [
        f"alice@a.test:{HASH}::::::",
        f"quota@a.test:{HASH}::::::userdb_quota_rule=*:storage=2G",
    ]


def test_a_hand_edited_upper_case_address_is_served_in_lower_case() -> None:
    """dovecot looks logins up as %Lu and postfix folds map keys: the rendered tables are all lower case."""
    from miab_remote.fleet.schema import validate

    text = (
        'hostname = "mx.a.test"\naddress = "10.0.0.1"\ndomains = ["a.test"]\n'
        f'[[users]]\nemail = "Carol@A.Test"\npassword_hash = "{HASH}"\n'
        '[[aliases]]\nsource = "Info@a.test"\ndestinations = ["CAROL@a.test"]\n'
    )
    h = validate(text, Path("hosts/mx.a.test.toml"))
    assert lines(mailmaps.dovecot_users(h)) == [f"carol@a.test:{HASH}::::::"]
    assert lines(mailmaps.virtual_mailboxes(h)) == ["carol@a.test OK"]
    assert "info@a.test carol@a.test" in lines(mailmaps.virtual_aliases(h))
    assert lines(mailmaps.sender_logins(h)) == [
        "carol@a.test carol@a.test",
        "info@a.test carol@a.test",
        "postmaster@a.test carol@a.test",
        "abuse@a.test carol@a.test",
        "hostmaster@a.test carol@a.test",
        "root@mx.a.test carol@a.test",
        "postmaster@mx.a.test carol@a.test",
        "abuse@mx.a.test carol@a.test",
        "hostmaster@mx.a.test carol@a.test",
    ]
