"""The rules every network storage follows: retries, failure classes, credentials kept out of sight.

A timeout on every call, bounded retries with backoff on transient failures (`RetryPolicy`,
`retry_async`, `retry_sync`), each transport classifying its own errors into a `Failure`, and
credentials masked wherever a URL is shown (`mask_url`). `AccessOptions` gathers how storages
are reached, from the settings.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from indexer.errors import IndexerError, ReadError
from indexer.storages.addresses import AddressPolicy
from indexer.storages.crawl import CrawlLimits

if TYPE_CHECKING:
    from indexer.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_RETRY_AFTER_S = 30.0
"""The longest wait a server's ``Retry-After`` may impose between two attempts."""

_SECRET_PARAMS = re.compile(r"pass|pwd|secret|token|key|signature|sig$|credential|auth", re.IGNORECASE)


def mask_url(url: str) -> str:
    """The URL with any password, and query values that look like secrets, replaced by ``***``.

    The form safe for logs, outputs and messages; the user name is kept.
    """
    parts = urlsplit(url)
    if parts.password is None and not (parts.query and _SECRET_PARAMS.search(parts.query)):
        return url
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=f"{user}:***@{host}")
    if parts.query and _SECRET_PARAMS.search(parts.query):
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        parts = parts._replace(query=urlencode(
            [(k, "***" if _SECRET_PARAMS.search(k) else v) for k, v in pairs], safe="/:*"))
    return urlunsplit(parts)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries with exponential backoff for transient failures, and the per-call timeout."""

    retries: int = 3
    backoff_s: float = 0.5
    timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Failure:
    """How a failed network call is reported and whether trying again may help."""

    transient: bool
    detail: str
    retry_after_s: float | None = None


Classify = Callable[[BaseException], Failure]
"""A transport's rule turning one of its errors into a `Failure`."""


def describe_os_error(exc: OSError) -> str:
    """A short cause for a socket error: ``connection refused``, ``connection reset``…"""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, ConnectionAbortedError | BrokenPipeError):
        return "connection closed"
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def retry_after_s(value: str | None) -> float | None:
    """The seconds a ``Retry-After`` header asks to wait (a number or an HTTP date), if any."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when: datetime = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, float((when - datetime.now(UTC)).total_seconds()))


def _backoff(policy: RetryPolicy, what: str, exc: Exception, attempt: int, classify: Classify) -> float:
    """The wait before the next attempt; raises `ReadError` when the failure is final."""
    failure = classify(exc)
    if not failure.transient or attempt >= policy.retries:
        tries = f" ({attempt + 1} attempts)" if attempt else ""
        raise ReadError(what, failure.detail + tries) from exc
    delay = policy.backoff_s * 2.0**attempt
    if failure.retry_after_s is not None:
        delay = max(delay, min(failure.retry_after_s, MAX_RETRY_AFTER_S))
    log.info("transient failure, retrying", extra={"what": what, "error": failure.detail, "delay": delay})
    return delay


async def retry_async(policy: RetryPolicy, what: str, call: Callable[[], Awaitable[T]], classify: Classify) -> T:
    """Await `call()` under the policy's timeout, again after a backoff while it fails transiently.

    `FileNotFoundError` and the indexer's own errors pass through; any other failure ends as a
    `ReadError` naming `what` and the cause.
    """
    attempt = 0
    while True:
        try:
            return await asyncio.wait_for(call(), policy.timeout_s)
        except (FileNotFoundError, IndexerError):
            raise
        except Exception as exc:  # noqa: BLE001 - classified by _backoff
            await asyncio.sleep(_backoff(policy, what, exc, attempt, classify))
        attempt += 1


def retry_sync(policy: RetryPolicy, what: str, call: Callable[[], T], classify: Classify) -> T:
    """`retry_async` for blocking calls, whose sockets carry the timeout themselves."""
    attempt = 0
    while True:
        try:
            return call()
        except (FileNotFoundError, IndexerError):
            raise
        except Exception as exc:  # noqa: BLE001 - classified by _backoff
            time.sleep(_backoff(policy, what, exc, attempt, classify))
        attempt += 1


@dataclass(frozen=True, slots=True)
class AccessOptions:
    """How storages are reached: retries and timeouts, limits, allowed addresses, protocol settings."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    user_agent: str = "pcrs-indexer"
    addresses: AddressPolicy = field(default_factory=AddressPolicy)
    crawl: CrawlLimits = field(default_factory=CrawlLimits)
    ftp_max_connections: int = 2
    connections: int = 32
    """Connections to one HTTP server at once (the scan's concurrency)."""
    tls_ca_file: Path | None = None
    sftp_key_file: Path | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessOptions:
        """The options the settings describe."""
        return cls(
            retry=RetryPolicy(retries=settings.retries, timeout_s=settings.timeout_s),
            user_agent=settings.user_agent,
            addresses=AddressPolicy.of(settings.allowed_networks),
            crawl=CrawlLimits(settings.max_depth, settings.max_entries, settings.max_folders),
            ftp_max_connections=settings.ftp_max_connections,
            connections=settings.concurrency,
            tls_ca_file=settings.tls_ca_file,
            sftp_key_file=settings.sftp_key_file,
            s3_endpoint_url=settings.s3_endpoint_url,
            s3_region=settings.s3_region,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context of https:// and ftps://: system CAs, plus ``tls_ca_file`` when set."""
        context = ssl.create_default_context()
        if self.tls_ca_file is not None:
            context.load_verify_locations(cafile=str(self.tls_ca_file))
        return context
