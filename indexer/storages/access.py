"""The rules every network storage follows: retries, failure classes, credentials kept out of sight.

A timeout on every call and a total deadline over its retries, bounded retries with backoff on
transient failures (`RetryPolicy`, `retry_async`, `retry_sync`), each transport classifying its
own errors into a `Failure`, responses read up to a cap (`ResponseTooLarge`), and credentials
read once from a storage URL (`parse_location`), kept out of every URL shown (`mask_url`) and
scrubbed from every message (`keep_secret`, `scrub`, `ScrubFilter`). `AccessOptions` gathers how
storages are reached, from the settings.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlencode

from indexer.errors import IndexerError, InvalidSource, ReadError
from indexer.storages.addresses import AddressPolicy
from indexer.storages.crawl import CrawlLimits

if TYPE_CHECKING:
    from indexer.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

_SECRET_PARAMS = re.compile(r"pass|pwd|secret|token|key|signature|sig$|credential|auth", re.IGNORECASE)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_PORT = re.compile(r"[0-9]{1,5}")
MASK = "***"

MAX_SECRETS = 4096
"""Forms of credentials remembered at once, the least recently given forgotten first (a storage's
are given again each time it is opened)."""
WHOLE_WORD_BELOW = 6
"""Secrets shorter than this are scrubbed only where they stand alone, not inside other words."""

_known: dict[str, None] = {}
_secrets: tuple[tuple[str, re.Pattern[str] | None], ...] = ()
_secrets_lock = threading.Lock()


def keep_secret(*values: str | None) -> None:
    """Remember credentials that no message may show: `scrub` replaces them, as given and percent-encoded."""
    global _secrets
    forms = {form for value in values if value for form in (value, quote(value, safe=""), quote(value),
                                                              quote_plus(value))}
    with _secrets_lock:
        for form in forms:
            _known.pop(form, None)
            _known[form] = None
        while len(_known) > MAX_SECRETS:
            del _known[next(iter(_known))]
        _secrets = tuple(
            (secret, re.compile(rf"(?<![^\W_]){re.escape(secret)}(?![^\W_])") if len(secret) < WHOLE_WORD_BELOW
             else None) for secret in sorted(_known, key=len, reverse=True))


def scrub(text: str) -> str:
    """`text` with every credential this process was given (`keep_secret`) replaced by ``***``.

    Every message is scrubbed before it is logged, stored, published or printed: a server may
    repeat a password in its error reply. A secret shorter than `WHOLE_WORD_BELOW` characters is
    replaced where it stands alone only.
    """
    for secret, alone in _secrets:
        if secret in text:
            text = text.replace(secret, MASK) if alone is None else alone.sub(MASK, text)
    return text


class ScrubFilter(logging.Filter):
    """A handler's filter scrubbing each record: its message, its ``extra`` fields and its traceback.

    Every door adds it to the handlers it installs, so that no log line, the libraries' included,
    shows a credential.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Scrub the record in place; every record passes."""
        if not _secrets:
            return True
        record.msg = scrub(record.getMessage())
        record.args = None
        for key, value in log_extras(record).items():
            if isinstance(value, str):
                setattr(record, key, scrub(value))
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))  # formatters use it
        return True


_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
"""The attributes every log record has; the others came from ``extra``."""


def log_extras(record: logging.LogRecord) -> dict[str, object]:
    """The fields a log record got from ``extra``: the context every formatter shows."""
    return {key: value for key, value in vars(record).items() if key not in _RECORD_FIELDS}


@dataclass(frozen=True, slots=True)
class Location:
    """A storage URL read once: where to connect and as whom, and the form that may be shown (`shown`).

    Credentials are taken as written, percent-encoded or not: in
    ``ftp://user:Pa/ss#w@rd@host/path`` the password is ``Pa/ss#w@rd``. An ``@`` in the path
    after a proper ``user:password@host`` stays in the path; a password holding both an
    unencoded ``@`` and ``/`` must be percent-encoded.
    """

    scheme: str
    username: str
    password: str | None = field(repr=False)
    host: str
    port: int | None
    rest: str
    """The path, query and fragment, as written (percent-encoded)."""
    shown: str
    """The URL with the password replaced by ``***`` (and secret query values): `mask_url`'s form."""

    @property
    def url(self) -> str:
        """The URL as RFC 3986 writes it, its credentials percent-encoded: the form transports are given."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port is None else f":{self.port}"
        user = quote(self.username, safe="")
        userinfo = f"{user}@" if user else ""
        if self.password is not None:
            userinfo = f"{user}:{quote(self.password, safe='')}@"
        return f"{self.scheme}://{userinfo}{host}{port}{self.rest}"

    @property
    def path(self) -> str:
        """The path, percent-encoded, without query or fragment."""
        return self.rest[:_first_of(self.rest, "?#")]

    @property
    def query(self) -> str:
        """The query, without ``?`` nor fragment."""
        path_end = _first_of(self.rest, "?#")
        if self.rest[path_end:path_end + 1] != "?":
            return ""
        return self.rest[path_end + 1:_first_of(self.rest, "#")]

def _first_of(text: str, delimiters: str) -> int:
    """The index of the first of `delimiters` in `text`, its length when there is none."""
    return min((i for i in (text.find(d) for d in delimiters) if i >= 0), default=len(text))


def _split(url: str) -> tuple[str, str | None, str, str] | None:
    """(scheme, user info or None, host[:port], rest) of a URL with an authority; never raises."""
    scheme, sep, tail = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return None
    end = _first_of(tail, "/?#")
    authority, rest = tail[:end], tail[end:]
    if "@" in authority:
        userinfo, _, hostport = authority.rpartition("@")
        return scheme, userinfo, hostport, rest
    if "@" in rest and _holds_password(authority, rest[0]):
        userinfo, _, after = tail.rpartition("@")
        end = _first_of(after, "/?#")
        return scheme, userinfo, after[:end], after[end:]
    return scheme, None, authority, rest


def _holds_password(authority: str, delimiter: str) -> bool:
    """Whether `authority`, cut short by `delimiter` before an ``@``, is ``user:`` and the start of a
    password holding that delimiter unencoded (and not ``host:port`` followed by a path or query)."""
    if ":" not in authority or authority.startswith("["):
        return False
    port = authority.partition(":")[2]
    return delimiter == "#" or not (_PORT.fullmatch(port) and int(port) <= 65535)


def _show(scheme: str, user: str, has_password: bool, hostport: str, rest: str) -> str:
    userinfo = f"{user}:{MASK}@" if has_password else f"{user}@" if user else ""
    return f"{scheme}://{userinfo}{hostport}{_masked_rest(rest)}"


def _masked_rest(rest: str) -> str:
    """The path, query and fragment, with secret query values and credentials in URL values masked."""
    query_start = rest.find("?")
    if query_start < 0:
        return rest
    fragment_start = _first_of(rest[query_start:], "#") + query_start
    query = rest[query_start + 1:fragment_start]
    pairs = parse_qsl(query, keep_blank_values=True)
    masked = [(k, MASK if _SECRET_PARAMS.search(k) else _mask_nested(v)) for k, v in pairs]
    if masked == pairs:
        return rest
    return f"{rest[:query_start]}?{urlencode(masked, safe='/:*@')}{rest[fragment_start:]}"


def _mask_nested(value: str) -> str:
    """A query value that is itself a URL (``endpoint_url``), its whole user info masked."""
    split = _split(value)
    if split is None or split[1] is None:
        return value
    scheme, _, hostport, rest = split
    return f"{scheme}://{MASK}@{hostport}{_masked_rest(rest)}"


def mask_url(url: str) -> str:
    """The URL with any password, and query values that look like secrets, replaced by ``***``.

    The form safe for logs, outputs and messages; the user name is kept. Never raises: a URL that
    does not parse (a port out of range) is masked all the same.
    """
    split = _split(url)
    if split is None:
        return url
    scheme, userinfo, hostport, rest = split
    if userinfo is None:
        return _show(scheme, "", False, hostport, rest)
    user, colon, _ = userinfo.partition(":")
    return _show(scheme, user, bool(colon), hostport, rest)


def parse_location(url: str) -> Location:
    """Read a storage URL once; its password (and the user info of nested URLs) is kept secret.

    Raises `InvalidSource` (with the URL masked) for a port that is not a number from 0 to 65535,
    or an IPv6 address without its closing bracket.
    """
    split = _split(url)
    if split is None:
        raise InvalidSource(f"{mask_url(url)}: not a URL with a host")
    scheme, userinfo, hostport, rest = split
    username = password = None
    if userinfo is not None:
        user, colon, secret = userinfo.partition(":")
        username, password = unquote(user), unquote(secret) if colon else None
        keep_secret(password, secret if colon else None)
    for _, value in parse_qsl(rest.partition("?")[2].partition("#")[0]):
        nested = _split(value)
        if nested is not None and nested[1] is not None:
            keep_secret(nested[1], unquote(nested[1]), *unquote(nested[1]).split(":", 1))
    host, port_text = hostport, ""
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise InvalidSource(f"{mask_url(url)}: the IPv6 address misses its closing bracket")
        host, port_text = hostport[1:close], hostport[close + 1:].removeprefix(":")
        if hostport[close + 1:] and not hostport[close + 1:].startswith(":"):
            port_text = hostport[close + 1:]
    elif ":" in hostport:
        host, _, port_text = hostport.partition(":")
    if port_text and not (_PORT.fullmatch(port_text) and int(port_text) <= 65535):
        raise InvalidSource(f"{mask_url(url)}: the port must be a number from 0 to 65535, not {port_text!r}")
    return Location(scheme.lower(), username or "", password, unquote(host), int(port_text) if port_text else None,
                    rest, mask_url(url))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries with exponential backoff for transient failures, the per-call timeout, and
    the total deadline of a call with all its retries: ``timeout_s × (retries + 1)``."""

    retries: int = 3
    backoff_s: float = 0.5
    timeout_s: float = 30.0
    retry_after_max_s: float = 30.0
    """The longest wait a server's ``Retry-After`` may impose between two attempts."""

    @property
    def deadline_s(self) -> float:
        """The longest a call may take, every attempt and wait between them included."""
        return self.timeout_s * (self.retries + 1)


class ResponseTooLarge(Exception):
    """A response went past what it can legitimately need: reading stopped at the cap. Not transient."""

    def __init__(self, cap: int, setting: str, unit: str = "bytes") -> None:
        super().__init__(f"the response is larger than {cap} {unit} (the {setting} setting): reading stopped there")
        self.cap = cap
        self.setting = setting


@dataclass(frozen=True, slots=True)
class Failure:
    """How a failed network call is reported and whether trying again may help.

    The detail is scrubbed of every known credential (`scrub`) as the failure is made.
    """

    transient: bool
    detail: str
    retry_after_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", scrub(self.detail))


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


def _backoff(policy: RetryPolicy, what: str, exc: Exception, attempt: int, classify: Classify,
             remaining_s: float) -> float:
    """The wait before the next attempt; raises `ReadError` when the failure is final.

    Final: a failure that is not transient, the last retry, or no time left before the deadline
    for a wait and one more attempt.
    """
    if isinstance(exc, ResponseTooLarge):
        raise ReadError(what, str(exc)) from exc
    failure = classify(exc)
    delay = policy.backoff_s * 2.0**attempt
    if failure.retry_after_s is not None:
        delay = max(delay, min(failure.retry_after_s, policy.retry_after_max_s))
    tries = f" ({attempt + 1} attempts)" if attempt else ""
    if not failure.transient or attempt >= policy.retries:
        raise ReadError(what, failure.detail + tries, permanent=not failure.transient) from exc
    if delay >= remaining_s:
        raise ReadError(what, f"{failure.detail}{tries}; no retry: it would end past the {policy.deadline_s:g} s "
                              "deadline (timeout_s × (retries + 1))") from exc
    log.info("transient failure, retrying", extra={"what": what, "error": failure.detail, "delay": delay})
    return delay


async def retry_async(policy: RetryPolicy, what: str, call: Callable[[], Awaitable[T]], classify: Classify) -> T:
    """Await `call()` under the policy's timeout, again after a backoff while it fails transiently.

    Each attempt has `timeout_s` at most, and all of them with their waits `deadline_s`: the call
    ends by then whatever the server does. `FileNotFoundError` and the indexer's own errors pass
    through, and so does a `ReadError` (a final answer); any other failure ends as a `ReadError`
    naming `what` and the cause.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + policy.deadline_s
    attempt = 0
    while True:
        try:
            async with asyncio.timeout(max(0.001, min(policy.timeout_s, deadline - loop.time()))):
                return await call()  # in this task: no task made per attempt, as wait_for would
        except (FileNotFoundError, IndexerError, ReadError):
            raise
        except Exception as exc:  # noqa: BLE001 - classified by _backoff
            await asyncio.sleep(_backoff(policy, what, exc, attempt, classify, deadline - loop.time()))
        attempt += 1


def retry_sync(policy: RetryPolicy, what: str, call: Callable[[], T], classify: Classify) -> T:
    """`retry_async` for blocking calls, whose sockets carry the timeout themselves.

    No attempt starts after the deadline, and no wait runs past it.
    """
    deadline = time.monotonic() + policy.deadline_s
    attempt = 0
    while True:
        try:
            return call()
        except (FileNotFoundError, IndexerError, ReadError):
            raise
        except Exception as exc:  # noqa: BLE001 - classified by _backoff
            time.sleep(_backoff(policy, what, exc, attempt, classify, deadline - time.monotonic()))
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
    max_listing_bytes: int = 16 * 1024 * 1024
    """Largest listing response (an HTTP listing page, decoded; an S3 listing page)."""
    max_document_bytes: int = 4 * 1024 * 1024
    """Largest projet document, decoded."""
    max_document_depth: int = 64
    """Deepest nesting of arrays and objects in a projet document."""
    tls_ca_file: Path | None = None
    sftp_key_file: Path | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessOptions:
        """The options the settings describe."""
        return cls(
            retry=RetryPolicy(retries=settings.retries, timeout_s=settings.timeout_s,
                              retry_after_max_s=settings.retry_after_max_s),
            user_agent=settings.user_agent,
            addresses=AddressPolicy.of(settings.allowed_networks),
            crawl=CrawlLimits(settings.max_depth, settings.max_entries, settings.max_folders),
            ftp_max_connections=settings.ftp_max_connections,
            connections=settings.concurrency,
            max_listing_bytes=settings.max_listing_bytes,
            max_document_bytes=settings.max_document_bytes,
            max_document_depth=settings.max_document_depth,
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
