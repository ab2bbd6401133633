"""The per-box options, the `[options]` table: adding an option is adding an entry to OPTION_SPECS, nothing
else (the checker, the defaults and the comment in a new inventory file all read it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from miab_remote import names
from miab_remote.fleet.problems import or_list
from miab_remote.fleet.rules import ip_list_problem

# postfix 3.7 parses message_size_limit as a signed 64-bit `long` (`postfix check` refuses 2**63).
# roundcube, PHP and nginx derive their limits from it and take as much.
MESSAGE_SIZE_MAX = 2**63 - 1


@dataclass(frozen=True)
class OptionSpec:
    """One per-box option: adding an option is adding an entry to OPTION_SPECS, nothing else."""

    type: type[Any]
    default: Any
    doc: str
    # Returns what is wrong with an already type-checked value, with what is accepted; None if fine.
    check: Callable[[Any], str | None] = lambda value: None
    accepted: str = ""


def _int_range(low: int, high: int | None, unit: str) -> Callable[[Any], str | None]:
    """A checker for an integer option that must lie in [low, high] (no upper bound when high is None)."""

    def check(value: Any) -> str | None:
        if value < low or (high is not None and value > high):
            bounds = f"{low}..{high}" if high is not None else f">= {low}"
            return f"{value!r} is out of range; accepted: {bounds} {unit}"
        return None

    return check


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    """A checker for a string option with a fixed set of values."""

    def check(value: Any) -> str | None:
        if value not in choices:
            return f"{value!r} is not accepted; accepted: {or_list(choices)}"
        return None

    return check


OPTION_SPECS: dict[str, OptionSpec] = {
    "message_size_limit": OptionSpec(
        type=int,
        default=134217728,
        doc="largest message accepted, in bytes (postfix message_size_limit)",
        check=_int_range(
            1048576,
            MESSAGE_SIZE_MAX,
            "bytes (postfix's largest is 2**63 - 1; it takes mail only while its disk has 1.5 times the limit free)",
        ),
        accepted=f"an integer number of bytes, 1048576..{MESSAGE_SIZE_MAX}",
    ),
    "greylist_delay": OptionSpec(
        type=int,
        default=180,
        doc="seconds a first-time sender must wait before its retry is accepted; 0 turns greylisting off",
        check=_int_range(0, 3600, "seconds"),
        accepted="an integer number of seconds, 0..3600",
    ),
    "dns": OptionSpec(
        type=str,
        default="nsd",
        doc='who serves the domains\' DNS: "nsd" on the box, or "external" (you publish the records)',
        check=_one_of("nsd", "external"),
        accepted='"nsd" or "external"',
    ),
    "resolvers": OptionSpec(
        type=list,
        default=(),
        doc="nameservers the box's mail filters ask (DKIM keys); empty: they resolve from the DNS root",
        check=lambda value: ip_list_problem(value),
        accepted='a list of IP addresses, like ["10.77.0.1"]',
    ),
    "admin_email": OptionSpec(
        type=str,
        default=None,
        doc="who gets system mail (root, cron) and postmaster@, abuse@, hostmaster@; default: the first user",
        check=lambda value: names.email_problem(value, served=False),
        accepted='an email address, like "admin@example.org"',
    ),
}

