"""Calling a cloud's API through libcloud: every error becomes one clear message, with the credentials
masked out of it (a cloud may echo a request back), and the refusals that are the operator's to fix (bad
credentials, a quota, a name or size the cloud does not take) are exit 2.

libcloud logs whole requests, headers and their bearer token included, when LIBCLOUD_DEBUG is set: the
providers refuse to run then (`refuse_debug_log`), before libcloud is imported."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from miab_remote.engine.redact import SecretMask
from miab_remote.errors import InputError, MiabError, ProviderError


class CloudRefused(InputError):
    """The cloud refused a request for a reason the operator fixes (credentials, quota, a bad value): exit 2."""


def refuse_debug_log() -> None:
    """InputError when LIBCLOUD_DEBUG is set (libcloud would write every request, token included, to it)."""
    if os.environ.get("LIBCLOUD_DEBUG"):
        raise InputError("LIBCLOUD_DEBUG is set: libcloud would log every API request with its credentials; unset it")


@contextlib.contextmanager
def api_call(label: str, doing: str, mask: SecretMask, url: str) -> Iterator[None]:
    """Run a block of libcloud calls for `doing` (e.g. "creating the server") against the API at `url`."""
    from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
    from libcloud.common.types import InvalidCredsError, LibcloudError, MalformedResponseError

    try:
        yield
    except MiabError:
        raise
    except InvalidCredsError as e:
        raise CloudRefused(mask(f"{label} refused the credentials while {doing}: {_message(e)}")) from None
    except RateLimitReachedError as e:
        raise ProviderError(
            mask(f"{label} is rate limiting us while {doing}; try again later ({_message(e)})")
        ) from None
    except BaseHTTPError as e:
        code = getattr(e, "code", None)
        text = mask(f"{label} refused {doing}: {_message(e)}")
        if isinstance(code, int) and 400 <= code < 500:
            raise CloudRefused(text) from None
        raise ProviderError(text) from None
    except (LibcloudError, MalformedResponseError) as e:
        raise ProviderError(mask(f"{label}: {doing} failed: {_message(e)}")) from None
    except OSError as e:
        raise ProviderError(mask(f"cannot reach the {label} API at {url} while {doing}: {e}")) from None
    except Exception as e:  # requests' errors and anything else a driver raises
        name = type(e).__name__
        if "Connection" in name or "Timeout" in name or "SSL" in name:
            raise ProviderError(mask(f"cannot reach the {label} API at {url} while {doing}: {name}")) from None
        raise ProviderError(mask(f"{label}: {doing} failed: {name}: {e}")) from None


def _message(e: Exception) -> str:
    value = getattr(e, "message", None) or getattr(e, "value", None) or str(e)
    return str(value).strip()
