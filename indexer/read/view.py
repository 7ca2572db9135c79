"""The bytes of a file a header parser may see, and what it finds wrong with them.

Header parsers never raise on bad bytes: they return a `Finding` (the skip reason and a
one-sentence detail). What they read beyond the first bytes goes through a `RangeReader`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from indexer.models import SkipReason

Fetch = Callable[[int, int], bytes]
"""Returns bytes [start, end) of the file; may cost a ranged read on the storage."""

READ_AHEAD = 1 << 16
"""The least a read beyond the bytes known asks for: the values of a header sit close together."""
MAX_PIECES = 64
"""The most parts of a file a view keeps besides its prefix: past that, the oldest go."""


class RangeReader(Protocol):
    """What parsing a header may read beyond its first bytes: any `indexer.storages.Storage`."""

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a file."""
        ...


@dataclass(frozen=True, slots=True)
class Finding:
    """A structural problem found in a header."""

    reason: SkipReason
    detail: str


class ByteView:
    """The bytes of a file known so far: a prefix, completed on demand through `fetch`.

    A read past what is known asks for at least `READ_AHEAD` bytes from where it starts, and the
    view keeps what it fetched (`pieces`, at most `MAX_PIECES`), so a header spread over the file
    costs one more read per place it lies at, not one per value. `reads` and `fetched` count the
    reads and bytes asked of the storage, for the parsers' bounds.
    """

    def __init__(self, prefix: bytes, size: int, fetch: Fetch) -> None:
        self.data = prefix
        self.size = size
        self._fetch = fetch
        self.pieces: list[tuple[int, bytes]] = []
        """Parts of the file read beyond the prefix: (offset, bytes)."""
        self.reads = 0
        self.fetched = 0

    def get(self, start: int, length: int, keep: bool = True) -> bytes:
        """Bytes [start, start + length), fetched when not known yet. Short at end of file.

        `keep=False` reads exactly those bytes and forgets them (a long table read in pieces).
        """
        end = min(start + length, self.size)
        if start < 0 or start >= end:
            return b""
        if end <= len(self.data):
            return self.data[start:end]
        for offset, piece in self.pieces:
            if offset <= start and end <= offset + len(piece):
                return piece[start - offset:end - offset]
        fetch_end = min(self.size, max(end, start + READ_AHEAD)) if keep else end
        data = self._fetch(start, fetch_end)
        self.reads += 1
        self.fetched += len(data)
        if keep:
            if len(self.pieces) >= MAX_PIECES:
                del self.pieces[0]
            self.pieces.append((start, data))
        return data[:end - start]

    def regions(self) -> list[tuple[int, bytes]]:
        """Every part of the file known: the prefix and the pieces read since, by offset."""
        return sorted([(0, self.data), *self.pieces], key=lambda region: region[0])
