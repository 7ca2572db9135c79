"""Who may do what: the admin token of the admin routes, and the download tokens of the file proxy.

Admin routes need ``Authorization: Token <PCRS_INDEXER_ADMIN_TOKEN>`` (the header the PCRS site
sends); with no token configured they answer 503 and say so, never open by default. A download
token is ``<expiry>.<signature>``: the Unix time it expires at and an HMAC-SHA256, keyed with
``PCRS_INDEXER_DOWNLOAD_TOKEN_SECRET``, of the storage's id and that time, so a token opens one
storage's files only, until it expires (24 to 72 hours after it was issued). Every comparison of
a secret is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from indexer.api.deps import ApiState, get_state

MIN_TTL_S = 24 * 3600
"""Shortest life of a download token."""
MAX_TTL_S = 72 * 3600
"""Longest life of a download token; a token claiming to live longer is refused."""
MAX_TOKEN_CHARS = 128
"""Longest download token looked at."""


class Unauthorized(Exception):
    """A missing or wrong admin token: 401."""


class Unavailable(Exception):
    """What the server is not configured for (no admin token, no download secret): 503, with the reason."""


class TokenRefused(Exception):
    """A download token missing, malformed, wrong, expired or for another storage: 403, with the reason."""


def is_admin(state: ApiState, authorization: str | None) -> bool:
    """Whether an ``Authorization`` header carries the admin token (False when none is configured)."""
    if state.settings.admin_token is None or not authorization:
        return False
    expected = f"Token {state.settings.admin_token.get_secret_value()}".encode()
    return hmac.compare_digest(authorization.strip().encode("utf-8", "replace"), expected)


def admin_header(request: Request, authorization: Annotated[str | None, Header()] = None) -> bool:
    """Whether the request is the admin's (for public routes that show the admin more)."""
    return is_admin(get_state(request), authorization)


def require_admin(state: Annotated[ApiState, Depends(get_state)],
                  authorization: Annotated[str | None, Header()] = None) -> None:
    """The dependency of every admin route: 503 with no token configured, 401 for a missing or wrong one."""
    if state.settings.admin_token is None:
        raise Unavailable("admin routes are disabled: PCRS_INDEXER_ADMIN_TOKEN is not set")
    if not is_admin(state, authorization):
        raise Unauthorized("Unauthorized: send Authorization: Token <admin token>")


def download_secret(state: ApiState) -> str:
    """The secret signing download tokens; `Unavailable` when none is configured."""
    if state.settings.download_token_secret is None:
        raise Unavailable("downloads are disabled: PCRS_INDEXER_DOWNLOAD_TOKEN_SECRET is not set")
    return state.settings.download_token_secret.get_secret_value()


def _signature(storage_id: int | str, expires: int, secret: str) -> str:
    digest = hmac.new(secret.encode(), f"pcrs-download:{storage_id}:{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue_download_token(storage_id: int | str, secret: str, now: float, ttl: float = 48 * 3600) -> str:
    """A token opening the files of one storage until ``now + ttl`` (`ttl` 24 to 72 hours, Unix seconds)."""
    if not MIN_TTL_S <= ttl <= MAX_TTL_S:
        raise ValueError(f"a download token lives 24 to 72 hours, not {ttl} s")
    expires = int(now + ttl)
    return f"{expires}.{_signature(storage_id, expires, secret)}"


def check_download_token(token: str | None, storage_id: int | str, secret: str, now: float) -> None:
    """Accept a token for the files of `storage_id` at `now`; raises `TokenRefused` saying why not."""
    if not token:
        raise TokenRefused("a download token is required (?token=…)")
    expiry, _, signature = token[:MAX_TOKEN_CHARS + 1].partition(".")
    if len(token) > MAX_TOKEN_CHARS or not expiry.isascii() or not expiry.isdigit() or not signature:
        raise TokenRefused("download token not valid")
    expires = int(expiry)
    if not hmac.compare_digest(signature.encode("utf-8", "replace"),
                               _signature(storage_id, expires, secret).encode()):
        raise TokenRefused("download token not valid for this storage")
    if expires <= now:
        raise TokenRefused("download token expired")
    if expires > now + MAX_TTL_S:
        raise TokenRefused("download token not valid")
