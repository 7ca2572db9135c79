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
    """The bytes of a file known so far: a prefix, completed on demand through `fetch`."""

    def __init__(self, prefix: bytes, size: int, fetch: Fetch) -> None:
        self.data = prefix
        self.size = size
        self._fetch = fetch

    def get(self, start: int, length: int) -> bytes:
        """Bytes [start, start + length), fetched when beyond the prefix. Short at end of file."""
        end = min(start + length, self.size)
        if end <= len(self.data):
            return self.data[start:end]
        if start >= self.size:
            return b""
        return self._fetch(start, end)
