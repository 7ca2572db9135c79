"""Access to a livrable's storage: list its files and read byte ranges, through fsspec.

`open_storage(source, options=...)` turns a SOURCE into a `Storage`: a local folder or
``file://`` URL, an ``http(s)://`` directory listing, ``ftp://`` or ``ftps://`` (explicit TLS),
``sftp://`` or ``s3://bucket/prefix``. Every storage offers the same operations, so the rest of
the indexer never knows where the files are, and the same files give the same listing whichever
way they are served.

Network storages share the rules of this module: a timeout on every call, bounded retries with
backoff on transient failures (`RetryPolicy`), credentials masked wherever a URL is shown
(`mask_url`), caps on the crawl (`Crawl`) and no connection to a non-public address unless the
allow-list lets it through (`indexer.addresses`).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import aiohttp
from fsspec.asyn import sync
from fsspec.implementations.http import HTTPFileSystem
from fsspec.implementations.local import LocalFileSystem

from indexer.addresses import AddressPolicy
from indexer.errors import (
    ForbiddenAddress,
    IndexerError,
    InvalidSource,
    ListingLimitReached,
    ReadError,
    StorageUnreachable,
)
from indexer.listing import parse_listing
from indexer.models import FileEntry

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


def describe_os_error(exc: OSError) -> str:
    """A short cause for a socket error: ``connection refused``, ``connection reset``…"""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, ConnectionAbortedError | BrokenPipeError):
        return "connection closed"
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def _retry_after(value: str | None) -> float | None:
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


def classify_http(exc: BaseException) -> Failure:
    """Transient: HTTP 429 and 5xx, timeouts, refused or reset connections."""
    if isinstance(exc, aiohttp.ClientResponseError):
        transient = exc.status == 429 or exc.status >= 500
        retry_after = _retry_after(exc.headers.get("Retry-After")) if exc.headers else None
        return Failure(transient, f"HTTP {exc.status} {exc.message}".strip(), retry_after)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return Failure(True, "timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Failure(True, describe_os_error(exc.os_error))
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Failure(True, "the server closed the connection")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Failure(True, "the response was cut short")
    if isinstance(exc, aiohttp.ClientOSError | ConnectionError):
        return Failure(True, describe_os_error(exc))
    if isinstance(exc, aiohttp.TooManyRedirects):
        return Failure(False, "too many redirects")
    return Failure(False, str(exc) or type(exc).__name__)


def _backoff(policy: RetryPolicy, what: str, exc: Exception, attempt: int,
             classify: Callable[[BaseException], Failure]) -> float:
    """The wait before the next attempt; raises `ReadError` when the failure is final."""
    failure = classify(exc)
    if not failure.transient or attempt == policy.retries:
        tries = f" ({attempt + 1} attempts)" if attempt else ""
        raise ReadError(f"{what}: {failure.detail}{tries}") from exc
    delay = policy.backoff_s * 2.0**attempt
    if failure.retry_after_s is not None:
        delay = max(delay, min(failure.retry_after_s, MAX_RETRY_AFTER_S))
    log.info("transient failure, retrying", extra={"what": what, "error": failure.detail, "delay": delay})
    return delay


async def retry_async(policy: RetryPolicy, what: str, call: Callable[[], Awaitable[T]],
                      classify: Callable[[BaseException], Failure] = classify_http) -> T:
    """Await `call()` under the policy's timeout, again after a backoff while it fails transiently.

    `FileNotFoundError` and the indexer's own errors pass through; any other failure ends as a
    `ReadError` naming `what` and the cause.
    """
    for attempt in range(policy.retries + 1):
        try:
            return await asyncio.wait_for(call(), policy.timeout_s)
        except (FileNotFoundError, IndexerError):
            raise
        except Exception as exc:  # noqa: BLE001 - classified by _backoff
            await asyncio.sleep(_backoff(policy, what, exc, attempt, classify))
    raise AssertionError("unreachable")


def retry_sync(policy: RetryPolicy, what: str, call: Callable[[], T],
               classify: Callable[[BaseException], Failure]) -> T:
    """`retry_async` for blocking calls, whose sockets carry the timeout themselves."""
    for attempt in range(policy.retries + 1):
        try:
            return call()
        except (FileNotFoundError, IndexerError):
            raise
        except Exception as exc:  # noqa: BLE001 - classified by _backoff
            time.sleep(_backoff(policy, what, exc, attempt, classify))
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class AccessOptions:
    """How storages are reached: retries and timeouts, limits, allowed addresses, protocol settings."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    user_agent: str = "pcrs-indexer"
    addresses: AddressPolicy = field(default_factory=AddressPolicy)
    max_depth: int = 32
    max_entries: int = 2_000_000
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
            max_depth=settings.max_depth,
            max_entries=settings.max_entries,
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


class Storage:
    """A livrable's storage. Paths are relative to the root, '/'-separated.

    Safe to call from several threads at once. `close` releases its connections; a storage is
    also a context manager doing so.
    """

    url: str
    """The root URL, credentials masked: the only form that appears in outputs and logs."""

    def list_files(self) -> list[FileEntry]:
        """Every file below the root. Raises `StorageUnreachable` when the root cannot be listed."""
        raise NotImplementedError

    def read_prefix(self, entry: FileEntry, length: int) -> tuple[bytes, int]:
        """The first `length` bytes of a file (fewer if it is shorter) and its total size."""
        raise NotImplementedError

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a file."""
        raise NotImplementedError

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop running `aread_start` for a storage read with coroutines, else None."""
        return None

    async def aread_start(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        """`read_start` as a coroutine, on `loop`, for storages that have one."""
        raise NotImplementedError

    def read_start(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        """The first `length` bytes of a file, and its entry completed by that read as `stat` would
        complete it: the exact size, and the date and ETag the read told where the listing had none."""
        data, size = self.read_prefix(entry, length)
        return data, replace(entry, size=size)

    def stat(self, entry: FileEntry) -> FileEntry:
        """The entry completed with what the listing did not show (size, date, ETag), when it costs
        a request, for change detection. Storages whose listing shows it all return it unchanged."""
        return entry

    def close(self) -> None:
        """Release the storage's connections. Listing or reading again opens new ones."""

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@dataclass
class LocalStorage(Storage):
    """A folder on a local or mounted file system."""

    root: Path
    fs: LocalFileSystem = field(default_factory=LocalFileSystem)

    def __post_init__(self) -> None:
        self.url = self.root.as_uri()

    def list_files(self) -> list[FileEntry]:
        """Walk the folder; symbolic links to folders are not followed (no loops)."""
        if not self.root.is_dir():
            raise StorageUnreachable(f"{self.root}: not a folder")
        entries = []
        for folder, dirs, files in os.walk(self.root, onerror=_raise_unreachable):
            dirs.sort()
            for name in sorted(files):
                full = Path(folder, name)
                try:
                    st = full.stat()
                except OSError:
                    continue
                mtime = datetime.fromtimestamp(st.st_mtime, tz=UTC).isoformat()
                entries.append(FileEntry(full.relative_to(self.root).as_posix(), st.st_size, mtime))
        return entries

    def read_prefix(self, entry: FileEntry, length: int) -> tuple[bytes, int]:
        """Read the start of the file from disk."""
        full = self.root / entry.path
        try:
            with open(full, "rb") as f:
                data = f.read(length)
                size = os.fstat(f.fileno()).st_size
        except OSError as exc:
            raise ReadError(f"{entry.path}: {exc.strerror or exc}") from exc
        return data, size

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """Read bytes from disk."""
        try:
            with open(self.root / path, "rb") as f:
                f.seek(start)
                return f.read(end - start)
        except OSError as exc:
            raise ReadError(f"{path}: {exc.strerror or exc}") from exc


def _raise_unreachable(exc: OSError) -> None:
    raise StorageUnreachable(f"{exc.filename}: {exc.strerror}")


@dataclass(frozen=True, slots=True)
class Child:
    """One entry of a folder as a remote listing shows it."""

    name: str
    is_dir: bool
    size: int | None = None
    mtime: str | None = None
    etag: str | None = None
    ref: str | None = None
    """How the transport addresses it when that is not derived from the path (a listing's href)."""


class Crawl:
    """The rules every remote listing follows, whatever the transport.

    Folders are visited breadth first. A folder whose listing repeats one of its ancestors' is
    a link looping back up (a symbolic link to ``..``): it is skipped. Going deeper than
    `max_depth` folders or past `max_entries` files ends the listing with `ListingLimitReached`
    rather than a crawl without end.
    """

    def __init__(self, url: str, max_depth: int, max_entries: int) -> None:
        self.url = url
        self.max_depth = max_depth
        self.max_entries = max_entries
        self.entries: list[FileEntry] = []
        self.refs: dict[str, str] = {}
        self._prints: dict[str, int] = {}

    def visit(self, folder: str, children: list[Child]) -> list[tuple[str, Child]]:
        """Record the files of `folder` ('' for the root, else ending in '/'); its sub-folders to visit.

        Returns (path, child) pairs, the path ending in '/'.
        """
        depth = folder.count("/")
        fingerprint = hash(tuple(sorted((c.name, c.is_dir, c.size, c.mtime) for c in children)))
        ancestor = folder
        while ancestor:
            ancestor = ancestor[: ancestor.rstrip("/").rfind("/") + 1]
            if self._prints.get(ancestor) == fingerprint:
                log.warning("folder skipped: it repeats an ancestor (a link looping back up)",
                            extra={"storage": self.url, "folder": folder})
                return []
        self._prints[folder] = fingerprint
        folders = []
        for child in sorted(children, key=lambda c: c.name):
            path = folder + child.name
            if child.is_dir:
                if depth >= self.max_depth:
                    raise ListingLimitReached(f"cannot list {self.url}: {path}/ is more than {self.max_depth} "
                                              "folder levels deep (the max_depth setting)")
                folders.append((path + "/", child))
                continue
            self.entries.append(FileEntry(path, child.size, child.mtime, child.etag))
            if child.ref is not None:
                self.refs[path] = child.ref
            if len(self.entries) > self.max_entries:
                raise ListingLimitReached(f"cannot list {self.url}: more than {self.max_entries} files "
                                          "(the max_entries setting)")
        return folders

    def result(self) -> list[FileEntry]:
        """The files found, sorted by path."""
        return sorted(self.entries, key=lambda e: e.path)


def listing_failure(url: str, where: str, exc: BaseException) -> BaseException:
    """The error ending a listing that failed at `where` ('' for the root), one line naming the cause.

    `exc` is a `ReadError` (its cause follows the first ``": "``), a `FileNotFoundError` (its message,
    if any, says how the server put it) or a `ForbiddenAddress`; anything else is returned as is.
    """
    prefix = f"cannot list {url}: {where}: " if where else f"cannot list {url}: "
    if isinstance(exc, ForbiddenAddress):
        return ForbiddenAddress(f"cannot list {url}: {exc}")
    if isinstance(exc, ReadError):
        return StorageUnreachable(prefix + str(exc).partition(": ")[2])
    if isinstance(exc, FileNotFoundError):
        return StorageUnreachable(prefix + (f"not found ({exc})" if str(exc) else "not found"))
    return exc


def crawl_in_threads(crawl: Crawl, list_folder: Callable[[str], list[Child]], workers: int) -> list[FileEntry]:
    """Crawl level by level, listing up to `workers` folders of a level at once with `list_folder`.

    `list_folder` takes a folder ('' for the root, else ending in '/') and raises what
    `listing_failure` describes; the first failure ends the listing.
    """
    level = [""]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="list") as pool:
        while level:
            futures = [pool.submit(list_folder, folder) for folder in level]
            next_level = []
            for folder, future in zip(level, futures, strict=True):
                try:
                    children = future.result()
                except (ReadError, FileNotFoundError, ForbiddenAddress) as exc:
                    for pending in futures:
                        pending.cancel()
                    raise listing_failure(crawl.url, folder, exc) from None
                next_level += [path for path, _ in crawl.visit(folder, children)]
            level = next_level
    return crawl.result()


_CONTENT_RANGE = re.compile(r"bytes \d+-\d+/(\d+)")
LISTING_CONCURRENCY = 4
"""Listing pages fetched at once from one server."""


class _GuardedConnector(aiohttp.TCPConnector):
    """A connector that checks every address it connects to, redirects included."""

    def __init__(self, addresses: AddressPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._addresses = addresses

    async def _resolve_host(self, host: str, port: int, traces: Any = None) -> Any:
        results = await super()._resolve_host(host, port, traces=traces)
        for result in results:
            self._addresses.check(host, result["host"])
        return results


def _http_last_modified(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).astimezone(UTC).replace(tzinfo=None).isoformat()
    except (TypeError, ValueError):
        return None


class HTTPListingStorage(Storage):
    """Files published behind an HTTP server's directory listings (nginx, Apache, lighttpd, IIS…).

    Listing pages are crawled breadth-first, a few folders of one level fetched at once; size and
    modification time are taken from the listing when it shows them. A dalle's header costs one
    ranged GET, whose ``Content-Range`` also gives the size when the listing did not; `stat`
    costs a HEAD, for change detection only.
    """

    def __init__(
        self,
        url: str,
        policy: RetryPolicy,
        user_agent: str,
        max_depth: int = 32,
        max_entries: int = 2_000_000,
        addresses: AddressPolicy | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connections: int = 32,
    ) -> None:
        self.root_url = url if url.endswith("/") else url + "/"
        self.connections = connections
        self.url = mask_url(self.root_url)
        self.policy = policy
        self.max_depth = max_depth
        self.max_entries = max_entries
        self.addresses = addresses or AddressPolicy()
        self._ssl = ssl_context
        self._refs: dict[str, str] = {}
        timeout = aiohttp.ClientTimeout(total=None, connect=policy.timeout_s, sock_read=policy.timeout_s)
        self.fs = HTTPFileSystem(
            client_kwargs={"timeout": timeout, "headers": {"User-Agent": user_agent}, "auto_decompress": False},
            get_client=self._client, skip_instance_cache=True,
        )

    async def _client(self, **kwargs: Any) -> aiohttp.ClientSession:
        kwargs.pop("loop", None)
        connector = _GuardedConnector(self.addresses, limit_per_host=self.connections, ssl=self._ssl or True)
        return aiohttp.ClientSession(connector=connector, **kwargs)

    async def _session(self) -> aiohttp.ClientSession:
        return await self.fs.set_session()  # type: ignore[no-any-return]

    def _file_url(self, path: str) -> str:
        return self._refs.get(path) or self.root_url + quote(path, safe="/")

    def list_files(self) -> list[FileEntry]:
        """Crawl the listing pages below the root."""
        return sync(self.fs.loop, self._crawl)  # type: ignore[no-any-return]

    async def _page(self, url: str) -> str:
        session = await self._session()

        async def get() -> str:
            async with session.get(url) as response:
                if response.status == 404:
                    raise FileNotFoundError(mask_url(url))
                response.raise_for_status()
                return await response.text(errors="replace")

        return await retry_async(self.policy, mask_url(url), get)

    async def _crawl(self) -> list[FileEntry]:
        crawl = Crawl(self.url, self.max_depth, self.max_entries)
        level = [("", self.root_url)]
        slots = asyncio.Semaphore(LISTING_CONCURRENCY)

        async def fetch(url: str) -> str:
            async with slots:
                return await self._page(url)

        while level:
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(fetch(url)) for _, url in level]
            except BaseExceptionGroup as failures:
                raise self._unlistable(failures.exceptions[0]) from None
            next_level = []
            for (folder, page_url), task in zip(level, tasks, strict=True):
                children = [Child(link.name, link.is_dir, link.size, link.mtime, ref=link.url)
                            for link in parse_listing(task.result(), page_url)]
                next_level += [(path, child.ref or "") for path, child in crawl.visit(folder, children)]
            level = next_level
        self._refs = crawl.refs
        return crawl.result()

    def _unlistable(self, exc: BaseException) -> BaseException:
        """The error ending a listing whose page failed, naming the page unless it is the root."""
        if isinstance(exc, FileNotFoundError):  # its message is the page's URL
            page = str(exc)
            return listing_failure(self.url, "" if page == self.url else page, FileNotFoundError("HTTP 404"))
        if isinstance(exc, ReadError):  # "page: cause"
            page = str(exc).partition(": ")[0]
            return listing_failure(self.url, "" if page == self.url else page, exc)
        return listing_failure(self.url, "", exc)

    def read_prefix(self, entry: FileEntry, length: int) -> tuple[bytes, int]:
        """One ranged GET; the size comes from the listing or the ``Content-Range`` header."""
        data, completed = self.read_start(entry, length)
        return data, completed.size or 0

    def read_start(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        """One ranged GET, whose headers complete the entry as a HEAD would (see `stat`)."""
        return sync(self.fs.loop, self._read_start, entry, length)  # type: ignore[no-any-return]

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """fsspec's event loop, where the HTTP session lives."""
        return self.fs.loop  # type: ignore[no-any-return]

    async def aread_start(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        """One ranged GET, as a coroutine on `loop`."""
        return await self._read_start(entry, length)

    async def _request(self, path: str, call: Callable[[aiohttp.ClientSession, str], Awaitable[T]]) -> T:
        session = await self._session()
        url = self._file_url(path)
        try:
            return await retry_async(self.policy, path, lambda: call(session, url))
        except FileNotFoundError as exc:
            raise ReadError(f"{path}: not found (HTTP 404)") from exc
        except ForbiddenAddress as exc:
            raise ReadError(f"{path}: {exc}") from exc

    async def _read_start(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        async def get(session: aiohttp.ClientSession, url: str) -> tuple[bytes, FileEntry]:
            async with session.get(url, headers={"Range": f"bytes=0-{length - 1}"}) as response:
                if response.status == 416:  # empty file: no byte satisfies the range
                    return b"", replace(entry, size=0)
                if response.status == 404:
                    raise FileNotFoundError(mask_url(url))
                response.raise_for_status()
                data = await response.content.read(length)
                total = entry.size
                match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
                if match:
                    total = int(match.group(1))
                elif response.status == 200 and response.content_length is not None:
                    total = response.content_length
                if total is None:
                    total = len(data)
                return data, self._completed(entry, total, response.headers)

        return await self._request(entry.path, get)

    @staticmethod
    def _completed(entry: FileEntry, size: int | None, headers: Any) -> FileEntry:
        """The entry with what a response tells and the listing did not show."""
        if entry.size is not None and (entry.mtime is not None or entry.etag is not None):
            return entry if entry.size == size or size is None else replace(entry, size=size)
        return FileEntry(
            entry.path,
            size if size is not None else entry.size,
            entry.mtime or _http_last_modified(headers.get("Last-Modified")),
            entry.etag or headers.get("ETag"),
        )

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """A ranged GET."""
        return sync(self.fs.loop, self._read_range, path, start, end)  # type: ignore[no-any-return]

    async def _read_range(self, path: str, start: int, end: int) -> bytes:
        async def get(session: aiohttp.ClientSession, url: str) -> bytes:
            async with session.get(url, headers={"Range": f"bytes={start}-{end - 1}"}) as response:
                if response.status == 404:
                    raise FileNotFoundError(mask_url(url))
                response.raise_for_status()
                if response.status == 200:  # the server ignored the range
                    body = await response.read()
                    return body[start:end]
                return await response.read()

        return await self._request(path, get)

    def stat(self, entry: FileEntry) -> FileEntry:
        """A HEAD when the listing showed no exact size or no date; else the entry unchanged.

        Only what the listing lacks is filled in, so a date stays in the listing's form.
        """
        if entry.size is not None and (entry.mtime is not None or entry.etag is not None):
            return entry
        return sync(self.fs.loop, self._stat, entry)  # type: ignore[no-any-return]

    async def _stat(self, entry: FileEntry) -> FileEntry:
        async def head(session: aiohttp.ClientSession, url: str) -> FileEntry:
            async with session.head(url, allow_redirects=True) as response:
                if response.status == 404:
                    raise FileNotFoundError(mask_url(url))
                response.raise_for_status()
                return self._completed(entry, response.content_length, response.headers)

        return await self._request(entry.path, head)

    def close(self) -> None:
        """Close the HTTP session."""
        session = self.fs._session
        if session is not None and not session.closed:
            sync(self.fs.loop, session.close)
        self.fs._session = None


REMOTE_SCHEMES = ("http", "https", "ftp", "ftps", "sftp", "s3")


def open_storage(source: str, policy: RetryPolicy | None = None, user_agent: str | None = None, *,
                 options: AccessOptions | None = None) -> Storage:
    """The storage a SOURCE names; nothing is contacted until it is listed or read.

    SOURCE is a folder, a ``file://`` URL, an ``http(s)://`` listing, ``ftp://[user[:password]@]host[:port]/path``,
    ``ftps://…`` (explicit TLS), ``sftp://[user[:password]@]host[:port]/path`` or ``s3://bucket/prefix``
    (``?endpoint_url=…&region=…`` for an S3-compatible store). `policy` and `user_agent`, when given,
    override those of `options`.
    """
    options = options or AccessOptions()
    if policy is not None:
        options = replace(options, retry=policy)
    if user_agent is not None:
        options = replace(options, user_agent=user_agent)
    parts = urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme in REMOTE_SCHEMES and not (parts.hostname or parts.netloc):
        raise InvalidSource(f"{mask_url(source)}: no {'bucket' if scheme == 's3' else 'host'} in the URL")
    if scheme in ("http", "https"):
        return HTTPListingStorage(source, options.retry, options.user_agent, options.max_depth, options.max_entries,
                                  options.addresses, options.ssl_context() if scheme == "https" else None,
                                  options.connections)
    if scheme in ("ftp", "ftps"):
        from indexer.ftp import FTPStorage

        return FTPStorage.from_url(source, options)
    if scheme == "sftp":
        from indexer.sftp import SFTPStorage

        return SFTPStorage.from_url(source, options)
    if scheme == "s3":
        from indexer.s3 import S3Storage

        return S3Storage.from_url(source, options)
    if scheme == "file":
        return LocalStorage(Path(unquote(parts.path)))
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        path = Path(source).expanduser()
        if not path.exists():
            raise InvalidSource(f"{source}: no such folder")
        if not path.is_dir():
            raise InvalidSource(f"{source}: not a folder")
        return LocalStorage(path.resolve())
    raise InvalidSource(f"{mask_url(source)}: unsupported scheme {scheme!r} "
                        "(use a folder, file://, http(s)://, ftp(s)://, sftp:// or s3://)")
