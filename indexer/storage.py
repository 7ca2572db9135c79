"""Access to a livrable's storage: list its files and read byte ranges, through fsspec.

`open_storage(source)` turns a SOURCE (local folder, ``file://`` or ``http(s)://`` listing URL)
into a `Storage`. Every storage offers the same three operations, so the rest of the indexer
never knows where the files are.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aiohttp
from fsspec.asyn import sync
from fsspec.implementations.http import HTTPFileSystem
from fsspec.implementations.local import LocalFileSystem

from indexer.errors import InvalidSource, StorageUnreachable
from indexer.listing import parse_listing
from indexer.models import FileEntry

log = logging.getLogger(__name__)

T = TypeVar("T")


class ReadError(Exception):
    """A file could not be read after retries; the message names the cause."""


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe for logs, outputs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries with exponential backoff for transient failures."""

    retries: int = 3
    backoff_s: float = 0.5
    timeout_s: float = 30.0


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, aiohttp.ClientConnectionError | asyncio.TimeoutError | ConnectionError | TimeoutError)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status} {exc.message}".strip()
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


async def _with_retries(policy: RetryPolicy, what: str, call: Callable[[], Awaitable[T]]) -> T:
    for attempt in range(policy.retries + 1):
        try:
            return await asyncio.wait_for(call(), policy.timeout_s)
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below
            if not _is_transient(exc) or attempt == policy.retries:
                raise ReadError(f"{what}: {_describe(exc)}") from exc
            delay = policy.backoff_s * 2**attempt
            log.info("transient failure, retrying", extra={"what": what, "error": _describe(exc), "delay": delay})
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


class Storage:
    """A livrable's storage. Paths are relative to the root, '/'-separated."""

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


_CONTENT_RANGE = re.compile(r"bytes \d+-\d+/(\d+)")


class HTTPListingStorage(Storage):
    """Files published behind an HTTP server's directory listings (nginx, Apache, lighttpd…).

    Listing pages are crawled breadth-first, folders of one level fetched concurrently; size and
    modification time are taken from the listing when it shows them. A dalle's header costs one
    ranged GET, whose ``Content-Range`` also gives the size when the listing did not.
    """

    def __init__(
        self,
        url: str,
        policy: RetryPolicy,
        user_agent: str,
        max_depth: int = 32,
        max_entries: int = 2_000_000,
    ) -> None:
        self.root_url = url if url.endswith("/") else url + "/"
        self.url = mask_url(self.root_url)
        self.policy = policy
        self.max_depth = max_depth
        self.max_entries = max_entries
        timeout = aiohttp.ClientTimeout(total=None, connect=policy.timeout_s, sock_read=policy.timeout_s)
        self.fs = HTTPFileSystem(
            client_kwargs={"timeout": timeout, "headers": {"User-Agent": user_agent}, "auto_decompress": False},
            skip_instance_cache=True,
        )

    async def _session(self) -> aiohttp.ClientSession:
        return await self.fs.set_session()  # type: ignore[no-any-return]

    def _file_url(self, path: str) -> str:
        return self.root_url + quote(path, safe="/")

    def list_files(self) -> list[FileEntry]:
        """Crawl the listing pages below the root."""
        return sync(self.fs.loop, self._crawl)  # type: ignore[no-any-return]

    async def _page(self, url: str) -> str:
        session = await self._session()

        async def get() -> str:
            async with session.get(url) as response:
                if response.status == 404:
                    raise FileNotFoundError(url)
                response.raise_for_status()
                return await response.text(errors="replace")

        return await _with_retries(self.policy, mask_url(url), get)

    def _listing_failure(self, exc: ReadError | FileNotFoundError) -> str:
        """Why a listing page failed, naming the page unless it is the root."""
        if isinstance(exc, ReadError):
            what, _, cause = str(exc).partition(": ")
            return cause if what == self.url else str(exc)
        page = mask_url(str(exc))
        return "not found (HTTP 404)" if page == self.url else f"{page}: not found (HTTP 404)"

    async def _crawl(self) -> list[FileEntry]:
        seen = {self.root_url}
        level = [self.root_url]
        entries: list[FileEntry] = []
        for depth in range(self.max_depth + 1):
            if not level:
                break
            try:
                pages = await asyncio.gather(*(self._page(url) for url in level))
            except (ReadError, FileNotFoundError) as exc:
                raise StorageUnreachable(f"cannot list {self.url}: {self._listing_failure(exc)}") from exc
            next_level = []
            for page_url, html in zip(level, pages, strict=True):
                for link in parse_listing(html, page_url):
                    if link.is_dir:
                        if link.url not in seen and depth < self.max_depth:
                            seen.add(link.url)
                            next_level.append(link.url)
                        elif depth >= self.max_depth:
                            log.warning("folder deeper than the depth cap not crawled", extra={"url": mask_url(link.url)})
                        continue
                    path = unquote(link.url[len(self.root_url):])
                    entries.append(FileEntry(path, link.size, link.mtime))
                    if len(entries) >= self.max_entries:
                        raise StorageUnreachable(
                            f"cannot list {self.url}: more than {self.max_entries} files, the entry cap"
                        )
            level = sorted(next_level)
        entries.sort(key=lambda e: e.path)
        return entries

    def read_prefix(self, entry: FileEntry, length: int) -> tuple[bytes, int]:
        """One ranged GET; the size comes from the listing or the ``Content-Range`` header."""
        return sync(self.fs.loop, self._read_prefix, entry, length)  # type: ignore[no-any-return]

    async def _read_prefix(self, entry: FileEntry, length: int) -> tuple[bytes, int]:
        session = await self._session()
        url = self._file_url(entry.path)

        async def get() -> tuple[bytes, int]:
            async with session.get(url, headers={"Range": f"bytes=0-{length - 1}"}) as response:
                if response.status == 416:  # empty file: no byte satisfies the range
                    return b"", 0
                if response.status == 404:
                    raise FileNotFoundError(url)
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
                return data, total

        try:
            return await _with_retries(self.policy, entry.path, get)
        except FileNotFoundError as exc:
            raise ReadError(f"{entry.path}: not found (HTTP 404)") from exc

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """A ranged GET."""
        return sync(self.fs.loop, self._read_range, path, start, end)  # type: ignore[no-any-return]

    async def _read_range(self, path: str, start: int, end: int) -> bytes:
        session = await self._session()
        url = self._file_url(path)

        async def get() -> bytes:
            async with session.get(url, headers={"Range": f"bytes={start}-{end - 1}"}) as response:
                response.raise_for_status()
                if response.status == 200:  # the server ignored the range
                    body = await response.read()
                    return body[start:end]
                return await response.read()

        return await _with_retries(self.policy, path, get)


def open_storage(source: str, policy: RetryPolicy | None = None, user_agent: str = "pcrs-indexer") -> Storage:
    """The storage a SOURCE names: a local folder, a ``file://`` URL or an ``http(s)://`` listing."""
    policy = policy or RetryPolicy()
    parts = urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise InvalidSource(f"{mask_url(source)}: no host in the URL")
        return HTTPListingStorage(source, policy, user_agent)
    if scheme == "file":
        return LocalStorage(Path(unquote(parts.path)))
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        path = Path(source).expanduser()
        if not path.exists():
            raise InvalidSource(f"{source}: no such folder")
        if not path.is_dir():
            raise InvalidSource(f"{source}: not a folder")
        return LocalStorage(path.resolve())
    raise InvalidSource(f"{mask_url(source)}: unsupported scheme {scheme!r} (use a folder, file:// or http(s)://)")

