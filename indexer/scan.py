"""One scan of a livrable's storage: list, reuse or read each dalle, aggregate, record.

`scan_storage` is the whole job, used alike by the command line and the workers; its stages are
plain functions so the distributed service can run them separately.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import Engine

from indexer import state
from indexer.errors import ReadError, StorageUnreachable
from indexer.headers import (
    PROPRIETARY_FORMATS,
    WORLD_FILE_SUFFIXES,
    corners,
    identify_epsg,
    parse_dalle,
    parsing_thread,
    raster_mime,
    read_dalle,
    read_georef,
    resolution_cm,
    sidecar_stem,
    skip_unread,
    suffix,
    unreadable,
)
from indexer.models import Dalle, DalleProblem, FileEntry, ScanResult
from indexer.storage import Storage

log = logging.getLogger(__name__)

T = TypeVar("T")
Wrap = Callable[[Iterator[T], int], Iterator[T]]


def _no_progress(items: Iterator[T], _total: int) -> Iterator[T]:
    return items


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """How a scan reads its storage."""

    concurrency: int = 32
    header_bytes: int = 16384
    full: bool = False
    """Ignore change detection and read every dalle again."""


PARSE_BATCH = 64
"""Most dalles handed to the parsing thread at once."""
PARSE_AHEAD = 256
"""Most dalles read and waiting for the parsing thread: their first bytes stay in memory."""


@dataclass(slots=True)
class Listing:
    """A storage listing sorted into raster candidates and the sidecar files describing them."""

    files: list[FileEntry]
    candidates: list[FileEntry] = field(default_factory=list)
    sidecars: dict[str, list[FileEntry]] = field(default_factory=dict)

    @classmethod
    def of(cls, files: list[FileEntry]) -> Listing:
        """Sort the listed files by role."""
        listing = cls(files)
        for entry in files:
            if raster_mime(entry.path):
                listing.candidates.append(entry)
            else:
                stem = sidecar_stem(entry.path)
                if stem is not None:
                    listing.sidecars.setdefault(stem, []).append(entry)
        listing.candidates.sort(key=lambda e: e.path)
        return listing

    def sidecars_of(self, entry: FileEntry) -> list[FileEntry]:
        """The sidecar files listed beside a dalle."""
        return self.sidecars.get(entry.path[: -len(suffix(entry.path))].lower(), [])


def reusable(entry: FileEntry, previous: Dalle | DalleProblem | None) -> bool:
    """Whether a previous record still describes this file: same size, modification time and ETag."""
    if previous is None:
        return False
    if isinstance(previous, DalleProblem) and previous.reason == "unreadable":
        return False  # a transient failure is always retried
    signature = state.Signature.of(entry)
    return signature.usable and signature == state.Signature.of(previous)


def split_reusable(storage: Storage, candidates: list[FileEntry], previous: dict[str, Dalle | DalleProblem],
                   concurrency: int) -> tuple[list[Dalle | DalleProblem], list[FileEntry]]:
    """The previous records still valid, and the entries to read.

    A listing that shows no exact size or no date (Apache's rounded sizes, plain pages) gives no
    signature: for those files only, and only when a previous record exists, `Storage.stat`
    completes the entry (a HEAD over HTTP) as the first read did.
    """
    unsure = [e for e in candidates if e.path in previous and not state.Signature.of(e).usable]
    completed: dict[str, FileEntry] = {}
    if unsure:
        def stat(entry: FileEntry) -> FileEntry:
            try:
                return storage.stat(entry)
            except ReadError:
                return entry  # read it again: the read says why if it fails

        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="stat") as pool:
            completed = {e.path: e for e in pool.map(stat, unsure)}
    kept: list[Dalle | DalleProblem] = []
    to_read: list[FileEntry] = []
    for entry in candidates:
        entry = completed.get(entry.path, entry)
        old = previous.get(entry.path)
        if old is not None and reusable(entry, old):
            kept.append(old)
        else:
            to_read.append(entry)
    return kept, to_read


def read_all(storage: Storage, listing: Listing, entries: list[FileEntry], options: ScanOptions,
             wrap: Wrap[Dalle | DalleProblem] = _no_progress) -> list[Dalle | DalleProblem]:
    """Read the headers of `entries`, `options.concurrency` at a time; results in the order given."""
    if not entries:
        return []
    if storage.loop is not None:
        return _read_with_coroutines(storage, storage.loop, listing, entries, options, wrap)
    with ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="read",
                            initializer=parsing_thread) as pool:
        results = pool.map(
            lambda e: read_dalle(storage, e, listing.sidecars_of(e), options.header_bytes), entries)
        return list(wrap(iter(results), len(entries)))


def _read_with_coroutines(storage: Storage, loop: asyncio.AbstractEventLoop, listing: Listing,
                          entries: list[FileEntry], options: ScanOptions,
                          wrap: Wrap[Dalle | DalleProblem]) -> list[Dalle | DalleProblem]:
    """Reads in flight on the storage's event loop, headers parsed in batches beside it.

    No thread waits on the network: `options.concurrency` coroutines fetch dalles' first bytes and
    queue them (at most `PARSE_AHEAD`); a dispatcher hands them by batches to a parsing thread,
    which reads more through the storage's usual thread-safe methods when a header needs it (a
    long header, sidecar files). Parsing is cheap for the dalles of a livrable, which share their
    structure (see `indexer.headers.parse_dalle`): one thread keeps up with the reads.
    """
    results: list[Dalle | DalleProblem | None] = [None] * len(entries)
    done: queue.SimpleQueue[int | BaseException] = queue.SimpleQueue()
    pending = iter(enumerate(entries))
    Fetched = tuple[int, FileEntry, bytes]

    def parse(batch: list[Fetched]) -> None:
        for index, entry, prefix in batch:
            results[index] = parse_dalle(storage, entry, prefix, listing.sidecars_of(entry))
            done.put(index)

    async def fetch(fetched: asyncio.Queue[Fetched | None]) -> None:
        for index, entry in pending:
            skipped = skip_unread(entry)
            if skipped is not None:
                results[index] = skipped
                done.put(index)
                continue
            try:
                prefix, entry = await storage.aread_start(entry, options.header_bytes)
            except ReadError as exc:
                results[index] = unreadable(entry, exc)
                done.put(index)
            else:
                await fetched.put((index, entry, prefix))

    async def dispatch(fetched: asyncio.Queue[Fetched | None], parsing: ThreadPoolExecutor) -> None:
        running = asyncio.get_running_loop()
        last = False
        while not last:
            item = await fetched.get()
            batch: list[Fetched] = []
            while item is not None:
                batch.append(item)
                if len(batch) == PARSE_BATCH or fetched.empty():
                    break
                item = fetched.get_nowait()
            last = item is None
            if batch:
                await running.run_in_executor(parsing, parse, batch)

    async def run_all() -> None:
        fetched: asyncio.Queue[Fetched | None] = asyncio.Queue(maxsize=PARSE_AHEAD)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="parse", initializer=parsing_thread) as parsing:
            dispatcher = asyncio.ensure_future(dispatch(fetched, parsing))
            try:
                await asyncio.gather(*(fetch(fetched) for _ in range(min(options.concurrency, len(entries)))))
            finally:
                await fetched.put(None)
                await dispatcher

    future = asyncio.run_coroutine_threadsafe(run_all(), loop)
    future.add_done_callback(lambda f: done.put(f.exception() or StopIteration()))

    def progress() -> Iterator[Dalle | DalleProblem]:
        while True:
            item = done.get()
            if isinstance(item, StopIteration):
                return
            if isinstance(item, BaseException):
                raise item
            result = results[item]
            if result is not None:
                yield result

    for _ in wrap(progress(), len(entries)):
        pass
    future.result()
    return [r for r in results if r is not None]


def place_proprietary(storage: Storage, listing: Listing, results: list[Dalle | DalleProblem]
                      ) -> list[Dalle | DalleProblem]:
    """Give ECW/MrSID dalles a footprint when a world file places them.

    No open driver reads their header, so their extent is the livrable's common dalle extent
    (every other dalle of the livrable has it) from the world file's origin, and their CRS is the
    livrable's, or their ``.prj``. Without a world file or a common extent they stay `unsupported`.
    """
    dalles = [r for r in results if isinstance(r, Dalle)]
    extents = Counter((round(abs(d.corners[1][0] - d.corners[0][0]), 3),
                       round(abs(d.corners[0][1] - d.corners[3][1]), 3)) for d in dalles)
    crs = Counter(d.crs_wkt for d in dalles)
    placed: list[Dalle | DalleProblem] = []
    for result in results:
        if not (isinstance(result, DalleProblem) and result.reason == "unsupported"
                and suffix(result.path) in PROPRIETARY_FORMATS):
            placed.append(result)
            continue
        entry = FileEntry(result.path, result.size, result.mtime, result.etag)
        sidecars = listing.sidecars_of(entry)
        georef = read_georef(storage, sidecars) if any(
            suffix(s.path) in WORLD_FILE_SUFFIXES for s in sidecars) else None
        crs_wkt = (georef.crs_wkt if georef else None) or (crs.most_common(1)[0][0] if len(crs) == 1 else None)
        if georef is None or georef.transform is None or crs_wkt is None or len(extents) != 1:
            placed.append(result)
            continue
        (width_m, height_m), = extents
        t = georef.transform
        width, height = round(width_m / abs(t.a)), round(height_m / abs(t.e))
        placed.append(Dalle(
            path=result.path, size=result.size or 0, mime=PROPRIETARY_FORMATS[suffix(result.path)],
            width=width, height=height, bands=(), compression=None, epsg=identify_epsg(crs_wkt),
            crs_wkt=crs_wkt, corners=corners(t, width, height), resolution_cm=resolution_cm(t),
            open=False, mtime=result.mtime, etag=result.etag))
    return placed


def scan_storage(storage: Storage, engine: Engine, options: ScanOptions,
                 wrap: Wrap[Dalle | DalleProblem] = _no_progress) -> ScanResult:
    """List a storage, reuse unchanged dalles, read the others, and record the result.

    Raises `StorageUnreachable` when the storage cannot be listed; its scan is then recorded as
    failed and its previous records, the last good result, are kept.
    """
    started = time.perf_counter()
    storage_key = state.storage_id(engine, storage.url)
    scan = state.start_scan(engine, storage_key)
    try:
        listing = Listing.of(storage.list_files())
    except StorageUnreachable as exc:
        state.fail_scan(engine, storage_key, scan, str(exc))
        raise
    state.update_scan(engine, scan, step="reading", listed=len(listing.files))
    previous = {} if options.full else {r.path: r for r in state.load_records(engine, storage_key)}
    kept, to_read = split_reusable(storage, listing.candidates, previous, options.concurrency)
    read = read_all(storage, listing, to_read, options, wrap)
    results = sorted([*kept, *place_proprietary(storage, listing, read)], key=lambda r: r.path)
    result = ScanResult(
        source=storage.url,
        listed_files=len(listing.files),
        dalles=[r for r in results if isinstance(r, Dalle)],
        problems=[r for r in results if isinstance(r, DalleProblem)],
        reused=len(kept),
    )
    result.duration_s = time.perf_counter() - started
    state.finish_scan(engine, storage_key, scan, result.dalles, result.problems, {
        "listed": result.listed_files, "read": len(to_read), "reused": result.reused,
        "skipped": len(result.problems), "duration_s": round(result.duration_s, 3)},
        unchanged={r.path for r in kept})
    log.info("scan done", extra={"storage": storage.url, "dalles": len(result.dalles),
                                 "skipped": len(result.problems), "reused": result.reused})
    return result
