"""Bodies streamed from blocking iterators (the store, a storage), in bounded memory, gzip when asked.

A body is produced by one thread of its own (`from_thread`), so a store cursor or a storage
read stays on the thread that opened it, and handed to the event loop through a queue of a few
pieces: a slow client makes the producer wait instead of the server buffering. A client that
goes away stops the producer at its next piece. `json_pieces` joins small JSON values into
pieces of about `PIECE` bytes; `gzipped` compresses a stream as it goes, never the whole body.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import weakref
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import anyio
import anyio.to_thread

PIECE = 64 * 1024
"""About how many bytes one piece of a body holds."""
QUEUED = 8
"""Pieces a producer may have ready before it waits for the client."""
MAX_BODIES = 64
"""Bodies produced at once, each by a thread of its own; more wait for one to end."""
_END = object()
_bodies: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = weakref.WeakKeyDictionary()

ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False, allow_nan=False)
"""One compact encoder for every value streamed; NaN and infinities raise rather than write what is not JSON."""


class _Failed:
    """The exception that ended a producer, passed to the loop to be raised there."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def from_thread(produce: Callable[[], Iterable[bytes]]) -> AsyncIterator[bytes]:
    """The pieces `produce()` yields, iterated on a thread of their own, at most `QUEUED` ahead;
    at most `MAX_BODIES` such threads at once, the others waiting their turn.

    An exception of the producer is raised here, after the pieces before it; when the consumer
    stops early (the client went away), the producer stops before its next piece and its
    iterator is closed on its own thread (a cursor or a connection is released there).
    """
    loop = asyncio.get_running_loop()
    bodies = _bodies.get(loop)
    if bodies is None:  # one limiter per event loop (a server has one)
        bodies = _bodies[loop] = anyio.CapacityLimiter(MAX_BODIES)
    async with bodies:
        produced = _produced(produce)
        try:
            async for piece in produced:
                yield piece
        finally:
            await produced.aclose()


async def _produced(produce: Callable[[], Iterable[bytes]]) -> AsyncGenerator[bytes, None]:
    pieces: queue.Queue[Any] = queue.Queue(maxsize=QUEUED)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                pieces.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        last: Any = _END
        try:
            iterator = iter(produce())
            try:
                for piece in iterator:
                    if not put(piece):
                        break
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            last = _Failed(exc)
        if not put(last):
            try:  # a consumer waiting for a piece must wake up
                pieces.put_nowait(_END)
            except queue.Full:
                pass

    producer = threading.Thread(target=run, name="pcrs-api-body", daemon=True)
    producer.start()
    try:
        while True:
            item = await anyio.to_thread.run_sync(pieces.get)
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()


def json_pieces(values: Iterable[Any], head: str, tail: str) -> Iterator[bytes]:
    """`head`, each value as compact JSON on a line of its own (``,`` ending all lines but the
    last), then `tail` on a line of its own, in pieces of about `PIECE` bytes: the layout of
    `indexer.geojson.write_feature_collection`, byte for byte.

    The head is a piece of its own, yielded before the first value is asked for: a client sees
    the first byte at once, however long the first value takes to come.
    """
    yield head.encode()
    parts: list[str] = []
    size = 0
    count = 0
    for value in values:
        text = ENCODER.encode(value)
        parts.append(",\n" if count else "\n")
        parts.append(text)
        count += 1
        size += len(text) + 2
        if size >= PIECE:
            yield "".join(parts).encode()
            parts, size = [], 0
    parts.append("\n" + tail)
    yield "".join(parts).encode()


def gzipped(pieces: Iterable[bytes], level: int = 6) -> Iterator[bytes]:
    """The pieces compressed as one gzip stream as they come; the first flushed at once, so a
    client sees it without waiting for the compressor's buffer to fill."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    first = True
    for piece in pieces:
        data = compressor.compress(piece)
        if first:
            data += compressor.flush(zlib.Z_SYNC_FLUSH)
            first = False
        if data:
            yield data
    yield compressor.flush()


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header accepts gzip (``gzip`` or ``*`` without ``q=0``)."""
    if not accept_encoding:
        return False
    for item in accept_encoding.lower().split(",")[:32]:
        name, _, params = item.strip().partition(";")
        if name.strip() in ("gzip", "x-gzip", "*"):
            q = params.strip().removeprefix("q=").strip() if params.strip().startswith("q=") else "1"
            try:
                if float(q) > 0:
                    return True
            except ValueError:
                continue
    return False
