"""Files published behind an HTTP server's directory listings (nginx, Apache, lighttpd, IIS…).

Listing pages are crawled breadth-first, a few folders of one level fetched at once, and parsed
by `indexer.storages.html_listing`; size and modification time are taken from the listing when
it shows them. A dalle's header costs one ranged GET, whose ``Content-Range`` also gives the
size when the listing did not; `stat` costs a HEAD, for change detection only.

Bounds: listing pages (and documents, `fetch_document`) are asked for gzip or deflate and read
decoded up to a cap; a file read takes the bytes asked for and no more, even from a server that
ignores ``Range``, and the listing's size, the ``Content-Range`` total and the bytes received must
agree. Every call, retries included, ends within the retry policy's deadline.

One aiohttp session per storage, on fsspec's IO loop, serves every request; header reads are
also offered as coroutines on that loop (`async_reads`). Every address connected to is checked
by the address policy through aiohttp's public hooks: the resolver for names, the socket
factory for every connection (IP literals and redirects included).
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import socket
import ssl
import time
import weakref
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from fsspec.asyn import get_loop, sync

from indexer.errors import ForbiddenAddress, NotFound, ReadError
from indexer.models import FileEntry
from indexer.read.formats import raster_mime
from indexer.storages.access import (
    AccessOptions,
    Failure,
    ResponseTooLarge,
    RetryPolicy,
    describe_os_error,
    mask_url,
    retry_after_s,
    retry_async,
)
from indexer.storages.addresses import AddressPolicy
from indexer.storages.base import STREAM_CHUNK, AsyncReads, CoroutineReads, Storage
from indexer.storages.crawl import LISTING_CONCURRENCY, Child, Crawl, CrawlLimits, listing_failure
from indexer.storages.html_listing import parse_listing

T = TypeVar("T")

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

ASKED_ENCODINGS = "gzip, deflate"
"""What listing pages and documents are asked to be encoded in; file reads ask for ``identity``."""
_CHUNK = 64 * 1024


class BadEncoding(Exception):
    """A response encoded in a way not asked for, or whose encoding does not decode. Not transient."""


def classify_http(exc: BaseException) -> Failure:
    """Transient: HTTP 429 and 5xx, timeouts, refused or reset connections."""
    if isinstance(exc, BadEncoding):
        return Failure(False, str(exc))
    if isinstance(exc, aiohttp.ClientResponseError):
        transient = exc.status == 429 or exc.status >= 500
        retry_after = retry_after_s(exc.headers.get("Retry-After")) if exc.headers else None
        return Failure(transient, f"HTTP {exc.status} {exc.message}".strip(), retry_after)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return Failure(True, "timed out")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return Failure(False, f"TLS certificate not trusted: {exc.certificate_error}")
    if isinstance(exc, aiohttp.ClientSSLError):
        return Failure(False, f"TLS error: {exc.os_error}")
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


class GuardedResolver(AbstractResolver):
    """aiohttp's default resolver, every address it returns checked by the address policy."""

    def __init__(self, addresses: AddressPolicy) -> None:
        self._addresses = addresses
        self._inner: AbstractResolver | None = None  # made on the loop, at the first resolution

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        """Resolve `host`; raises `ForbiddenAddress` when one of its addresses is refused."""
        if self._inner is None:
            self._inner = DefaultResolver()
        results = await self._inner.resolve(host, port, family)
        for result in results:
            self._addresses.check(host, result["host"])
        return results

    async def close(self) -> None:
        """Close the default resolver."""
        if self._inner is not None:
            await self._inner.close()


def guarded_socket_factory(addresses: AddressPolicy) -> Callable[[Any], socket.socket]:
    """A socket factory for aiohttp that refuses to connect to an address the policy refuses."""

    def make(addr_info: Any) -> socket.socket:
        family, kind, proto, _, address = addr_info
        addresses.check(str(address[0]), str(address[0]))
        return socket.socket(family=family, type=kind, proto=proto)

    return make


def _single_file(url: str) -> str | None:
    """The name of the dalle a URL names (its last segment has a raster extension, no query), else None."""
    parts = urlsplit(url)
    name = unquote(parts.path.rsplit("/", 1)[-1])
    return name if name and not parts.query and not parts.fragment and raster_mime(name) else None


def guarded_session(addresses: AddressPolicy, policy: RetryPolicy, user_agent: str,
                    ssl_context: ssl.SSLContext | None, connections: int) -> aiohttp.ClientSession:
    """An aiohttp session connecting only where `addresses` allows, on every connection and redirect.

    Call it on the loop the session will run on. Its requests ask for ``identity`` unless told otherwise.
    """
    connector = aiohttp.TCPConnector(
        limit_per_host=connections, ssl=ssl_context or True,
        resolver=GuardedResolver(addresses), socket_factory=guarded_socket_factory(addresses))
    timeout = aiohttp.ClientTimeout(total=None, connect=policy.timeout_s, sock_read=policy.timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                 headers={"User-Agent": user_agent, "Accept-Encoding": "identity"})


async def read_at_most(response: aiohttp.ClientResponse, length: int) -> bytes:
    """The first `length` bytes of a body (fewer when it ends before), however the server trickles them."""
    data = bytearray()
    while len(data) < length:
        chunk = await response.content.read(min(length - len(data), _CHUNK))
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def _skip(response: aiohttp.ClientResponse, length: int) -> None:
    """Read and drop the first `length` bytes of a body."""
    while length > 0:
        chunk = await response.content.read(min(length, _CHUNK))
        if not chunk:
            return
        length -= len(chunk)


def _decoder(encoding: str) -> Any:
    """A zlib decompressor for a ``Content-Encoding`` asked for, None for ``identity``."""
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib-wrapped, as RFC 9110 says; see _inflate
    raise BadEncoding(f"the response is encoded as {encoding!r}, which was not asked for")


async def read_decoded(response: aiohttp.ClientResponse, cap: int, setting: str) -> bytes:
    """The body of a response asked for with `ASKED_ENCODINGS`, decoded; at most `cap` bytes read and
    decoded, else `ResponseTooLarge` (reading stops there). Raises `BadEncoding`."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    decoder = _decoder(encoding)
    if response.content_length is not None and response.content_length > cap:
        raise ResponseTooLarge(cap, setting)
    raw = 0
    body = bytearray()
    async for chunk in response.content.iter_chunked(_CHUNK):
        raw += len(chunk)
        if raw > cap:
            raise ResponseTooLarge(cap, setting)
        if decoder is None:
            body += chunk
            continue
        try:
            decoder = _inflate(decoder, encoding, chunk, body, cap)
        except zlib.error as exc:
            raise BadEncoding(f"the {encoding} response does not decode ({exc})") from None
        if len(body) > cap:
            raise ResponseTooLarge(cap, setting)
    return bytes(body)


def _inflate(decoder: Any, encoding: str, chunk: bytes, body: bytearray, cap: int) -> Any:
    """Decode `chunk` into `body`, never more than one byte past `cap`; the decoder to go on with.

    A ``deflate`` body without its zlib header (some servers send raw deflate) is decoded raw.
    """
    if encoding == "deflate" and not body and decoder.unused_data == b"" and chunk and chunk[0] & 0x0F != 8:
        decoder = zlib.decompressobj(-zlib.MAX_WBITS)
    data = chunk
    while data and len(body) <= cap:
        body += decoder.decompress(data, cap + 1 - len(body))
        data = decoder.unconsumed_tail
    return decoder


def _http_last_modified(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).astimezone(UTC).replace(tzinfo=None).isoformat()
    except (TypeError, ValueError):
        return None


class HTTPListingStorage(Storage):
    """A livrable behind an HTTP server's directory listings (see the module's docstring)."""

    def __init__(
        self,
        url: str,
        policy: RetryPolicy,
        user_agent: str,
        limits: CrawlLimits | None = None,
        addresses: AddressPolicy | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connections: int = 32,
        max_listing_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.single = _single_file(url)
        """The file's name when the URL names one dalle (``…/dalle.tif``): the storage is that file."""
        if self.single is not None:
            self.root_url, self.url = url[: url.rfind("/") + 1], mask_url(url)
        else:
            self.root_url = url if url.endswith("/") else url + "/"
            self.url = mask_url(self.root_url)
        self.connections = connections
        self.policy = policy
        self.user_agent = user_agent
        self.limits = limits or CrawlLimits()
        self.max_listing_bytes = max_listing_bytes
        self.addresses = addresses or AddressPolicy()
        self._ssl = ssl_context
        self._refs: dict[str, str] = {}
        self.loop: asyncio.AbstractEventLoop = get_loop()
        self._client: aiohttp.ClientSession | None = None

    @classmethod
    def from_url(cls, url: str, options: AccessOptions) -> HTTPListingStorage:
        """The storage of an ``http(s)://`` listing URL."""
        https = url.lower().startswith("https:")
        return cls(url, options.retry, options.user_agent, options.crawl,
                   options.addresses, options.ssl_context() if https else None, options.connections,
                   options.max_listing_bytes)

    async def _session(self) -> aiohttp.ClientSession:
        """The storage's session, made on first use on `loop` (no await between test and set)."""
        if self._client is None or self._client.closed:
            self._client = guarded_session(self.addresses, self.policy, self.user_agent, self._ssl, self.connections)
            # A storage dropped without `close` still closes its session, on the loop.
            weakref.finalize(self, _close_later, self.loop, self._client)
        return self._client

    def _file_url(self, path: str) -> str:
        return self._refs.get(path) or self.root_url + quote(path, safe="/")

    def list_files(self) -> list[FileEntry]:
        """Crawl the listing pages below the root; for a one-file storage, that file (a HEAD)."""
        if self.single is not None:
            try:
                return [self.stat(FileEntry(self.single, None, None, None))]
            except ReadError as exc:
                cause = exc.__cause__
                raise listing_failure(self.url, "", cause if isinstance(cause, ForbiddenAddress) else exc) from None
        return sync(self.loop, self._crawl)  # type: ignore[no-any-return]

    async def _page(self, url: str) -> str:
        session = await self._session()

        async def get() -> str:
            async with session.get(url, headers={"Accept-Encoding": ASKED_ENCODINGS}) as response:
                if response.status == 404:
                    raise NotFound("HTTP 404", mask_url(url))
                response.raise_for_status()
                body = await read_decoded(response, self.max_listing_bytes, "max_listing_bytes")
                try:
                    return body.decode(response.charset or "utf-8", errors="replace")
                except LookupError:  # a charset Python does not know
                    return body.decode("utf-8", errors="replace")

        return await retry_async(self.policy, mask_url(url), get, classify_http)

    async def _crawl(self) -> list[FileEntry]:
        crawl = Crawl(self.url, self.limits)
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
        if isinstance(exc, NotFound):
            return listing_failure(self.url, "" if exc.where == self.url else exc.where, exc)
        if isinstance(exc, ReadError):
            return listing_failure(self.url, "" if exc.what == self.url else exc.what, exc)
        return listing_failure(self.url, "", exc)

    def read_start(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        """One ranged GET, whose headers complete the entry as a HEAD would (see `stat`)."""
        return sync(self.loop, self._read_start, entry, length)  # type: ignore[no-any-return]

    def async_reads(self) -> AsyncReads:
        """Ranged GETs as coroutines on `loop`, where the session lives."""
        return CoroutineReads(self.loop, self._read_start)

    async def _request(self, path: str, call: Callable[[aiohttp.ClientSession, str], Awaitable[T]]) -> T:
        session = await self._session()
        url = self._file_url(path)
        try:
            return await retry_async(self.policy, path, lambda: call(session, url), classify_http)
        except FileNotFoundError as exc:
            raise ReadError(path, "not found (HTTP 404)") from exc
        except ForbiddenAddress as exc:
            raise ReadError(path, str(exc)) from exc

    async def _read_start(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        async def get(session: aiohttp.ClientSession, url: str) -> tuple[bytes, FileEntry]:
            async with session.get(url, headers={"Range": f"bytes=0-{length - 1}"}) as response:
                if response.status == 416:  # empty file: no byte satisfies the range
                    return b"", replace(entry, size=0)
                if response.status == 404:
                    raise NotFound("HTTP 404", mask_url(url))
                response.raise_for_status()
                _refuse_encoded(entry.path, response)
                data = await read_at_most(response, length)
                return data, self._completed(entry, _checked_size(entry, response, len(data), length),
                                             response.headers)

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
        return sync(self.loop, self._read_range, path, start, end)  # type: ignore[no-any-return]

    async def _read_range(self, path: str, start: int, end: int) -> bytes:
        async def get(session: aiohttp.ClientSession, url: str) -> bytes:
            async with session.get(url, headers={"Range": f"bytes={start}-{end - 1}"}) as response:
                await _at_range_start(path, url, response, start, end)  # then read up to `end` only
                return await read_at_most(response, end - start)

        return await self._request(path, get)

    def stream_range(self, path: str, start: int, end: int, deadline_s: float,
                     chunk: int = STREAM_CHUNK) -> Iterator[bytes]:
        """One ranged GET whose body is passed on a piece at a time (see `Storage.stream_range`).

        The request and its retries have the retry policy's deadline; each piece then the
        session's read timeout, and no piece starts after `deadline_s` in all. A server ignoring
        ``Range`` is read past `start` and hung up on at `end`. The connection is given back to
        the session once the range is read, closed when the reading stops before.
        """
        started = time.monotonic()
        response: aiohttp.ClientResponse = sync(self.loop, self._open_range, path, start, end)
        complete = False
        try:
            remaining = end - start
            while remaining > 0:
                if time.monotonic() - started > deadline_s:
                    raise ReadError(path, f"the download took more than {deadline_s:g} s")
                try:
                    data: bytes = sync(self.loop, read_at_most, response, min(chunk, remaining))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise ReadError(path, classify_http(exc).detail) from exc
                if not data:
                    raise ReadError(path, f"the file ends at byte {end - remaining}, before byte {end}")
                remaining -= len(data)
                yield data
            complete = True
        finally:
            sync(self.loop, _finish, response, complete)

    async def _open_range(self, path: str, start: int, end: int) -> aiohttp.ClientResponse:
        async def get(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
            response = await session.get(url, headers={"Range": f"bytes={start}-{end - 1}"})
            try:
                await _at_range_start(path, url, response, start, end)
            except BaseException:
                response.close()
                raise
            return response

        return await self._request(path, get)

    def stat(self, entry: FileEntry) -> FileEntry:
        """A HEAD when the listing showed no exact size or no date; else the entry unchanged.

        Only what the listing lacks is filled in, so a date stays in the listing's form.
        """
        if entry.size is not None and (entry.mtime is not None or entry.etag is not None):
            return entry
        return sync(self.loop, self._stat, entry)  # type: ignore[no-any-return]

    async def _stat(self, entry: FileEntry) -> FileEntry:
        async def head(session: aiohttp.ClientSession, url: str) -> FileEntry:
            async with session.head(url, allow_redirects=True) as response:
                if response.status == 404:
                    raise NotFound("HTTP 404", mask_url(url))
                response.raise_for_status()
                return self._completed(entry, response.content_length, response.headers)

        return await self._request(entry.path, head)

    def close(self) -> None:
        """Close the HTTP session."""
        client, self._client = self._client, None
        if client is not None and not client.closed:
            sync(self.loop, client.close)


def fetch_document(url: str, options: AccessOptions, headers: Mapping[str, str] | None = None) -> bytes:
    """GET one document (a projet) as a storage is reached: the address policy on every connection
    and redirect, the user agent, retries within the deadline, gzip or deflate decoded; at most
    ``options.max_document_bytes`` read and decoded.

    Raises `ReadError`, `NotFound` or `ForbiddenAddress`.
    """
    return sync(get_loop(), _fetch_document, url, options, dict(headers or {}))  # type: ignore[no-any-return]


async def _fetch_document(url: str, options: AccessOptions, headers: dict[str, str]) -> bytes:
    https = url.lower().startswith("https:")
    session = guarded_session(options.addresses, options.retry, options.user_agent,
                              options.ssl_context() if https else None, 1)

    async def get() -> bytes:
        async with session.get(url, headers={"Accept-Encoding": ASKED_ENCODINGS, **headers}) as response:
            if response.status == 404:
                raise NotFound("HTTP 404", mask_url(url))
            response.raise_for_status()
            return await read_decoded(response, options.max_document_bytes, "max_document_bytes")

    async with session:
        return await retry_async(options.retry, mask_url(url), get, classify_http)


def _refuse_encoded(path: str, response: aiohttp.ClientResponse) -> None:
    """A file read asks for ``identity``: an encoded answer's bytes are not the file's."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise ReadError(path, f"the server sent the file encoded as {encoding[:40]!r} though asked not to")


def _checked_size(entry: FileEntry, response: aiohttp.ClientResponse, received: int, asked: int) -> int:
    """The file's size from a first read of `asked` bytes, once the listing's size, the response's
    total (``Content-Range``, or ``Content-Length`` of a 200) and the bytes received agree.

    Raises `ReadError` saying which disagree.
    """
    claimed: int | None = None
    source = "Content-Length"
    if response.status == 206:
        header = response.headers.get("Content-Range", "")
        match = _CONTENT_RANGE.fullmatch(header.strip())
        if match is None or int(match.group(1)) != 0:
            raise ReadError(entry.path, f"asked for bytes 0-{asked - 1}, the server sent Content-Range {header[:80]!r}")
        source = "Content-Range"
        claimed = None if match.group(3) == "*" else int(match.group(3))
    elif response.content_length is not None:
        claimed = response.content_length
    if claimed is not None and entry.size is not None and claimed != entry.size:
        raise ReadError(entry.path, f"sizes disagree: the listing says {entry.size} bytes, the {source} header "
                                    f"{claimed}")
    size = claimed if claimed is not None else entry.size
    if size is not None and received != min(asked, size):
        raise ReadError(entry.path, f"sizes disagree: received {received} bytes of the first {asked} of a "
                                    f"{size}-byte file")
    return size if size is not None else received


async def _finish(response: aiohttp.ClientResponse, complete: bool) -> None:
    """Give a response's connection back to its session once its body was read as asked, else close it."""
    if complete:
        response.release()
    else:
        response.close()


async def _at_range_start(path: str, url: str, response: aiohttp.ClientResponse, start: int, end: int) -> None:
    """Check the answer to a ranged GET of bytes `start` to `end` and leave its body at `start`.

    404 is `NotFound`, other errors raise; an encoded body is refused; a 206 must start at
    `start`; a 200 (the server ignored ``Range``) is read past `start`.
    """
    if response.status == 404:
        raise NotFound("HTTP 404", mask_url(url))
    response.raise_for_status()
    _refuse_encoded(path, response)
    if response.status == 206:
        header = response.headers.get("Content-Range", "")
        match = _CONTENT_RANGE.fullmatch(header.strip())
        if match is None or int(match.group(1)) != start:
            raise ReadError(path, f"asked for bytes {start}-{end - 1}, the server sent "
                                  f"Content-Range {header[:80]!r}")
    else:
        await _skip(response, start)


def _close_later(loop: asyncio.AbstractEventLoop, client: aiohttp.ClientSession) -> None:
    """Close a session on its loop without waiting, from any thread (a finalizer's)."""
    if not client.closed and not loop.is_closed():
        asyncio.run_coroutine_threadsafe(client.close(), loop)
