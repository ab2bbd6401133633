"""The error kinds the CLI maps to exit codes: bad input is 2, a failed host is 1."""

from __future__ import annotations


class MiabError(Exception):
    """Base of every error the tool reports to the operator as one clear message."""

    exit_code = 1


class InputError(MiabError):
    """Bad usage or bad input (an inventory value, an argument): nothing was changed. Exit 2."""

    exit_code = 2


class HostError(MiabError):
    """A host could not be reached or converged. Exit 1."""

    exit_code = 1


class HostKeyMismatch(HostError):
    """The box presented a host key that the inventory does not pin: refused before anything is sent."""

    def __init__(self, host: str, offered: str, pinned: list[str], hint: str | None = None) -> None:
        self.host = host
        self.offered = offered
        self.pinned = pinned
        pinned_text = "\n".join(f"    pinned:  {fp}" for fp in pinned) or "    pinned:  (none)"
        how = hint or f"re-pin it with\n    miab-remote trust {host} --fingerprint {offered.split()[-1]}"
        super().__init__(
            f"{host}: host key mismatch, connection refused before anything was sent\n"
            f"    offered: {offered}\n{pinned_text}\n"
            f"If the box was really re-installed, check the new key out of band and {how}"
        )


class ProviderError(MiabError):
    """A provider (local, or a cloud) could not create or destroy a box."""

    exit_code = 1
