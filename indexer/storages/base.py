"""The contract every storage fulfils, whatever the transport.

Paths are relative to the storage's root, '/'-separated. The rest of the indexer never knows
where the files are: the same files give the same listing, and the same reads, whichever way
they are served.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from indexer.errors import ReadError
from indexer.models import FileEntry

STREAM_CHUNK = 1024 * 1024
"""Bytes of one piece of a streamed read (`Storage.stream_range`): the most it holds at once."""


class AsyncReads(Protocol):
    """Header reads as coroutines on one event loop, for storages read without a thread per read."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the coroutines must run on."""
        ...

    async def read_start(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        """`Storage.read_start` as a coroutine, on `loop`."""
        ...


@dataclass(frozen=True)
class CoroutineReads:
    """The `AsyncReads` of a storage: its event loop and its coroutine reading a file's first bytes."""

    loop: asyncio.AbstractEventLoop
    read: Callable[[FileEntry, int], Awaitable[tuple[bytes, FileEntry]]]

    async def read_start(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        """`Storage.read_start` as a coroutine, on `loop`."""
        return await self.read(entry, length)


class Storage(ABC):
    """A livrable's storage: list its files, read their first bytes and byte ranges.

    Safe to call from several threads at once. `close` releases its connections; a storage is
    also a context manager doing so.
    """

    url: str
    """The root URL, credentials masked: the only form that appears in outputs and logs."""

    @abstractmethod
    def list_files(self) -> list[FileEntry]:
        """Every file below the root, sorted by path. Raises `StorageUnreachable` when the root
        cannot be listed."""

    @abstractmethod
    def read_start(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        """The first `length` bytes of a file (fewer if it is shorter), and its entry completed by
        that read as `stat` would complete it: the exact size, and the date and ETag the read told
        where the listing had none. Raises `ReadError`."""

    @abstractmethod
    def read_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a file. Raises `ReadError`."""

    def stream_range(self, path: str, start: int, end: int, deadline_s: float,
                     chunk: int = STREAM_CHUNK) -> Iterator[bytes]:
        """Bytes [start, end) of a file in pieces of at most `chunk` bytes, for a download.

        Bounds: one piece is held at a time, each read with the storage's own timeouts and retries
        (`read_range`); no piece starts after `deadline_s` seconds in all. Raises `ReadError` when
        the deadline is past or the file ends before `end` (it changed since it was listed).
        """
        started = time.monotonic()
        offset = start
        while offset < end:
            if time.monotonic() - started > deadline_s:
                raise ReadError(path, f"the download took more than {deadline_s:g} s")
            data = self.read_range(path, offset, min(end, offset + chunk))
            if not data:
                raise ReadError(path, f"the file ends at byte {offset}, before byte {end}")
            offset += len(data)
            yield data

    def stat(self, entry: FileEntry) -> FileEntry:
        """The entry completed with what the listing did not show (size, date, ETag), when it costs
        a request, for change detection. Storages whose listing shows it all return it unchanged."""
        return entry

    def async_reads(self) -> AsyncReads | None:
        """The coroutine reader of a storage read on an event loop, else None (reads in threads)."""
        return None

    def close(self) -> None:  # noqa: B027 - most storages hold nothing to release
        """Release the storage's connections. Listing or reading again opens new ones."""

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
