"""The one job: list a livrable's storage, reuse unchanged dalles, read the others, keep the records.

`scan_storage` is the whole scan on one machine; `index_livrable` adds the projet and the
outputs, as ``pcrs-indexer index`` runs it. The distributed service (`indexer.service`) runs the
same stages apart: `split_reusable` decides what a scan reuses, `read_all` reads the rest.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from indexer.emprise import check_footprints
from indexer.errors import ReadError, ScanRunning, ScanUnreliable, StorageUnreachable
from indexer.models import Dalle, DalleProblem, FileEntry, Record, ScanResult, Signature, SkipReason
from indexer.preview import write_index_preview
from indexer.projet import Livrable, Projet, choose_livrable, load_projet
from indexer.publish import Publication, publish_outputs
from indexer.read import failed, parse_dalle, place_proprietary, read_dalle, skip_unread, unreadable
from indexer.read.describe import parsing_thread
from indexer.read.formats import Listing
from indexer.settings import Settings
from indexer.storages import AccessOptions, AsyncReads, Storage, open_storage
from indexer.storages.access import scrub
from indexer.store import catalog, records, scans
from indexer.store.engine import create_store

log = logging.getLogger(__name__)

T = TypeVar("T")
Wrap = Callable[[Iterator[T], int], Iterator[T]]
"""Wraps the stream of results as they come (a progress bar, a heartbeat); gets the total."""


def no_progress(items: Iterator[T], _total: int) -> Iterator[T]:
    """The `Wrap` that does nothing."""
    return items


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """How a scan reads its storage."""

    concurrency: int = 32
    header_bytes: int = 16384
    full: bool = False
    """Ignore change detection and read every dalle again."""
    max_unreadable_share: float = 0.02
    """Share of unreadable dalles above which the scan fails (see `check_result`)."""
    lease_s: float = scans.INDEX_LEASE_S
    """A scan whose heartbeat is older than this counts as abandoned; renewed four times as often."""
    max_failures_in_a_row: int = 32
    """Unreadable dalles in a row after which reading stops (see `Breaker`)."""


MIN_UNREADABLE = 3
"""Fewest unreadable dalles that can fail a scan: one or two are the dalles' own problem."""


def check_result(result: ScanResult, last_good_dalles: int, max_unreadable_share: float) -> None:
    """Raise `ScanUnreliable` when a scan's result must not replace the last good one.

    That is when more than `max_unreadable_share` of its raster files (and at least
    `MIN_UNREADABLE`) could not be read, the storage failing rather than its dalles, or when it
    found no valid dalle where the last good scan had `last_good_dalles`.
    """
    unreadable = [p for p in result.problems if p.reason == SkipReason.UNREADABLE]
    if len(unreadable) >= MIN_UNREADABLE and len(unreadable) > max_unreadable_share * result.raster_files:
        first = min(unreadable, key=lambda p: p.path)
        raise ScanUnreliable(
            f"cannot read {result.source}: {len(unreadable)} of {result.raster_files} dalles unreadable (more than "
            f"{max_unreadable_share:.0%}, the max_unreadable_share setting), {first.detail}; "
            "the last good result is kept")
    if not result.dalles and last_good_dalles:
        raise ScanUnreliable(
            f"cannot read {result.source}: no valid dalle of {result.raster_files} where the last good scan had "
            f"{last_good_dalles}; the last good result is kept")


PARSE_BATCH = 64
"""Most dalles handed to the parsing thread at once."""
PARSE_AHEAD = 256
"""Most dalles read and waiting for the parsing thread: their first bytes stay in memory."""


def reusable(entry: FileEntry, previous: Record | None) -> bool:
    """Whether a previous record still describes this file: same size, modification time and ETag."""
    if previous is None:
        return False
    if isinstance(previous, DalleProblem) and previous.reason == SkipReason.UNREADABLE:
        return False  # a transient failure is always retried
    old = previous.file  # `Signature` of each, compared field by field: this runs once per listed file
    return (entry.size is not None and (entry.mtime is not None or entry.etag is not None)
            and entry.size == old.size and entry.mtime == old.mtime and entry.etag == old.etag)


def split_reusable(storage: Storage, candidates: list[FileEntry], previous: dict[str, Record],
                   concurrency: int) -> tuple[list[Record], list[FileEntry]]:
    """The previous records still valid, and the entries to read.

    A listing that shows no exact size or no date (Apache's rounded sizes, plain pages) gives no
    signature: for those files only, and only when a previous record exists, `Storage.stat`
    completes the entry (a HEAD over HTTP) as the first read did.
    """
    unsure = [e for e in candidates if e.path in previous and not Signature.of(e).usable]
    completed: dict[str, FileEntry] = {}
    if unsure:
        def stat(entry: FileEntry) -> FileEntry:
            try:
                return storage.stat(entry)
            except ReadError:
                return entry  # read it again: the read says why if it fails

        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="stat") as pool:
            completed = {e.path: e for e in pool.map(stat, unsure)}
    kept: list[Record] = []
    to_read: list[FileEntry] = []
    for entry in candidates:
        entry = completed.get(entry.path, entry)
        old = previous.get(entry.path)
        if old is not None and reusable(entry, old):
            kept.append(old)
        else:
            to_read.append(entry)
    return kept, to_read


class Breaker:
    """Counts the reads that failed in a row; past `limit` the storage is taken for down.

    A storage that stops answering mid-scan would otherwise cost every remaining dalle its whole
    deadline (and hold a worker that long). Once tripped, no new read starts; the reads in flight
    end within their deadline, then `check` raises `StorageUnreachable` (transient: the fleet
    retries the chunk later, `index` fails and keeps the last good result).
    """

    def __init__(self, source: str, limit: int) -> None:
        self.source = source
        self.limit = limit
        self.in_a_row = 0
        self.tripped: DalleProblem | None = None
        self.failure: StorageUnreachable | None = None
        """A failure of the whole storage a read raised (no dalle's own): reading stops at once."""
        self._lock = threading.Lock()

    @property
    def stopped(self) -> bool:
        """No new read may start."""
        return self.tripped is not None or self.failure is not None

    def stop(self, failure: StorageUnreachable) -> None:
        """Stop reading for `failure` (the first one kept)."""
        with self._lock:
            self.failure = self.failure or failure

    def record(self, result: Record) -> Record:
        """Count `result` (an unreadable dalle adds one, any other record resets) and return it."""
        with self._lock:
            if isinstance(result, DalleProblem) and result.reason == SkipReason.UNREADABLE:
                self.in_a_row += 1
                if self.in_a_row >= self.limit and self.tripped is None:
                    self.tripped = result
            else:
                self.in_a_row = 0
        return result

    def check(self) -> None:
        """Raise the storage's failure, or `StorageUnreachable` when tripped."""
        if self.failure is not None:
            raise self.failure
        if self.tripped is not None:
            raise StorageUnreachable(
                f"cannot read {self.source}: {self.limit} dalles in a row unreadable (the max_failures_in_a_row "
                f"setting), reading stopped; the last: {self.tripped.detail}")


def read_all(storage: Storage, listing: Listing, entries: list[FileEntry], options: ScanOptions,
             wrap: Wrap[Record] = no_progress) -> list[Record]:
    """Read the headers of `entries`, `options.concurrency` at a time; results in the order given.

    Raises `StorageUnreachable` when `options.max_failures_in_a_row` reads in a row failed, or
    when a read found the storage itself failing (a `StorageUnreachable` of its own, such as the
    fleet's connection slots out of reach): no new read starts then.
    """
    if not entries:
        return []
    breaker = Breaker(storage.url, options.max_failures_in_a_row)
    reads = storage.async_reads()
    if reads is not None:
        results = _CoroutineReader(storage, reads, listing, options, breaker).run(entries, wrap)
    else:
        def read_one(entry: FileEntry) -> Record | None:
            if breaker.stopped:
                return None
            try:
                return breaker.record(read_dalle(storage, entry, listing.sidecars_of(entry), options.header_bytes))
            except StorageUnreachable as exc:
                breaker.stop(exc)
                return None

        with ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="read",
                                initializer=parsing_thread) as pool:
            read = (r for r in pool.map(read_one, entries) if r is not None)
            results = list(wrap(read, len(entries)))
    breaker.check()
    return results


_Fetched = tuple[int, FileEntry, bytes]


class _CoroutineReader:
    """Reads in flight on the storage's event loop, headers parsed in batches beside it.

    No thread waits on the network: `options.concurrency` coroutines fetch dalles' first bytes and
    queue them (at most `PARSE_AHEAD`); a dispatcher hands them by batches to a parsing thread,
    which reads more through the storage's usual thread-safe methods when a header needs it (a
    long header, sidecar files). Parsing is cheap for the dalles of a livrable, which share their
    structure (see `indexer.read.describe`): one thread keeps up with the reads.
    """

    def __init__(self, storage: Storage, reads: AsyncReads, listing: Listing, options: ScanOptions,
                 breaker: Breaker) -> None:
        self.storage = storage
        self.reads = reads
        self.listing = listing
        self.options = options
        self.breaker = breaker
        self.results: list[Record | None] = []
        self.done: queue.SimpleQueue[int | BaseException] = queue.SimpleQueue()

    def run(self, entries: list[FileEntry], wrap: Wrap[Record]) -> list[Record]:
        """Read every entry; `wrap` sees each result as it comes, in the order they end."""
        self.results = [None] * len(entries)
        future = asyncio.run_coroutine_threadsafe(self._run_all(entries), self.reads.loop)
        future.add_done_callback(lambda f: self.done.put(f.exception() or StopIteration()))
        for _ in wrap(self._progress(), len(entries)):
            pass
        future.result()
        return [r for r in self.results if r is not None]

    def _progress(self) -> Iterator[Record]:
        while True:
            item = self.done.get()
            if isinstance(item, StopIteration):
                return
            if isinstance(item, BaseException):
                raise item
            result = self.results[item]
            if result is not None:
                yield result

    def _set(self, index: int, result: Record) -> None:
        self.results[index] = self.breaker.record(result)
        self.done.put(index)

    def _parse(self, batch: list[_Fetched]) -> None:
        for index, entry, prefix in batch:
            try:
                result = parse_dalle(self.storage, entry, prefix, self.listing.sidecars_of(entry))
            except StorageUnreachable as exc:  # a further read found the storage failing, not this dalle
                self.breaker.stop(exc)
                continue
            except Exception as exc:  # one dalle never stops the others
                result = failed(entry, exc)
            self._set(index, result)

    async def _fetch(self, pending: Iterator[tuple[int, FileEntry]], fetched: asyncio.Queue[_Fetched | None]) -> None:
        for index, entry in pending:
            if self.breaker.stopped:
                return
            skipped = skip_unread(entry)
            if skipped is not None:
                self._set(index, skipped)
                continue
            try:
                prefix, entry = await self.reads.read_start(entry, self.options.header_bytes)
            except ReadError as exc:
                self._set(index, unreadable(entry, exc))
            except StorageUnreachable as exc:  # the storage (or the fleet's connection slots), not this dalle
                self.breaker.stop(exc)
                return
            except Exception as exc:  # one dalle never stops the others
                self._set(index, failed(entry, exc))
            else:
                await fetched.put((index, entry, prefix))

    async def _dispatch(self, fetched: asyncio.Queue[_Fetched | None], parsing: ThreadPoolExecutor) -> None:
        running = asyncio.get_running_loop()
        last = False
        while not last:
            item = await fetched.get()
            batch: list[_Fetched] = []
            while item is not None:
                batch.append(item)
                if len(batch) == PARSE_BATCH or fetched.empty():
                    break
                item = fetched.get_nowait()
            last = item is None
            if batch:
                await running.run_in_executor(parsing, self._parse, batch)

    async def _run_all(self, entries: list[FileEntry]) -> None:
        fetched: asyncio.Queue[_Fetched | None] = asyncio.Queue(maxsize=PARSE_AHEAD)
        pending = iter(enumerate(entries))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="parse", initializer=parsing_thread) as parsing:
            dispatcher = asyncio.ensure_future(self._dispatch(fetched, parsing))
            try:
                await asyncio.gather(*(self._fetch(pending, fetched)
                                       for _ in range(min(self.options.concurrency, len(entries)))))
            finally:
                await fetched.put(None)
                await dispatcher


def scan_storage(storage: Storage, engine: Engine, options: ScanOptions,
                 wrap: Wrap[Record] = no_progress) -> ScanResult:
    """List a storage, reuse unchanged dalles, read the others, and record the result.

    Raises `StorageUnreachable` when the storage cannot be listed, and `ScanUnreliable` when the
    result must not replace the last good one (`check_result`); the scan is then recorded as
    failed and its previous records, the last good result, are kept.
    """
    started = time.perf_counter()
    storage_key = catalog.storage_id(engine, storage.url)
    scan = scans.start_scan(engine, storage_key, options.lease_s)
    if scan is None:
        raise ScanRunning(f"{storage.url} is already being scanned (storage {storage_key}): wait for it to end, "
                          "see `pcrs-indexer status`")
    with _heartbeat(engine, scan, options.lease_s / 4):
        return _scan(storage, engine, options, wrap, storage_key, scan, started)


@contextmanager
def _heartbeat(engine: Engine, scan: int, every_s: float) -> Iterator[None]:
    """Renew the scan's heartbeat every `every_s` from a thread while the block runs: the lease
    that tells a scan whose process was killed (`indexer.store.scans.start_scan`)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            try:
                scans.touch_scan(engine, scan)
            except SQLAlchemyError as exc:  # the next beat tries again; the scan itself will fail or end
                log.warning("heartbeat not recorded", extra={"scan": scan, "error": str(exc)})

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _scan(storage: Storage, engine: Engine, options: ScanOptions, wrap: Wrap[Record], storage_key: int, scan: int,
          started: float) -> ScanResult:
    try:
        listing = Listing.of(storage.list_files())
        scans.update_scan(engine, scan, step="reading", listed=len(listing.files))
        previous = {} if options.full else {r.path: r for r in records.load_records(engine, storage_key)}
        kept, to_read = split_reusable(storage, listing.candidates, previous, options.concurrency)
        read = read_all(storage, listing, to_read, options, wrap)
    except StorageUnreachable as exc:
        scans.fail_scan(engine, scan, scrub(str(exc)))
        raise
    checked = check_footprints([*kept, *place_proprietary(storage, listing, read)])
    # A record of an earlier version that cannot be placed is no longer what the store holds.
    unchanged = frozenset(old.path for old, new in zip(kept, checked[:len(kept)], strict=True) if new is old)
    results = sorted(checked, key=lambda r: r.path)
    result = ScanResult(
        source=storage.url,
        listed_files=len(listing.files),
        dalles=[r for r in results if isinstance(r, Dalle)],
        problems=[r for r in results if isinstance(r, DalleProblem)],
        reused_paths=unchanged,
    )
    result.duration_s = time.perf_counter() - started
    try:
        check_result(result, scans.last_good_dalles(engine, storage_key), options.max_unreadable_share)
    except ScanUnreliable as exc:
        scans.fail_scan(engine, scan, str(exc))
        raise
    scans.finish_scan(engine, storage_key, scan, result.dalles, result.problems, {
        "listed": result.listed_files, "read": len(to_read), "reused": len(kept),
        "skipped": len(result.problems), "duration_s": round(result.duration_s, 3)},
        unchanged=unchanged)
    log.info("scan done", extra={"storage": storage.url, "dalles": len(result.dalles),
                                 "skipped": len(result.problems), "reused": result.reused})
    return result


@dataclass(frozen=True, slots=True)
class Indexed:
    """What ``pcrs-indexer index`` did: the scan and the files it wrote."""

    result: ScanResult
    publication: Publication
    livrable: str | None = None
    """The livrable of the projet the outputs describe, by ``nom``."""
    chosen: str | None = None
    """Why that livrable: ``named by --livrable``, ``the projet's only raster livrable``…"""
    preview: Path | None = None
    """The map of the outputs (``preview.html``), None when it could not be made."""

    def summary(self) -> dict[str, object]:
        """The one-line JSON summary of the command."""
        result = self.publication.result
        return {"source": result.source, "indexed": result.indexed, "reused": result.reused,
                "skipped": len(result.problems), "duration_s": round(result.duration_s, 3),
                "livrable": self.livrable, "livrable_chosen": self.chosen,
                "quality": self.publication.quality.verdict(),
                "outputs": {name: str(path) for name, path in
                            {**self.publication.paths, **({"preview": self.preview} if self.preview else {})}.items()}}


def index_livrable(settings: Settings, source: str, out: Path, projet_location: str | None = None,
                   livrable_name: str | None = None, db_url: str | None = None, concurrency: int | None = None,
                   full: bool = False, wrap: Wrap[Record] = no_progress) -> Indexed:
    """Scan a livrable's storage and write its PCRS files into `out`: the one-machine job."""
    projet: Projet | None = None
    livrable: Livrable | None = None
    chosen: str | None = None
    if projet_location:
        projet = load_projet(projet_location, AccessOptions.from_settings(settings),
                             settings.projet_token(projet_location))
        livrable, chosen = choose_livrable(projet, livrable_name, source)
    concurrency = concurrency or settings.concurrency
    storage = open_storage(source, replace(AccessOptions.from_settings(settings), connections=concurrency))
    engine = create_store(db_url or settings.database_url())
    try:
        options = ScanOptions(concurrency=concurrency, header_bytes=settings.header_bytes, full=full,
                              max_unreadable_share=settings.max_unreadable_share, lease_s=settings.scan_lease_s,
                              max_failures_in_a_row=settings.max_failures_in_a_row)
        with storage:
            result = scan_storage(storage, engine, options, wrap)
    finally:
        engine.dispose()
    today = date.today()
    publication = publish_outputs(out, result, projet, livrable, today)
    preview = write_index_preview(out, publication, projet, livrable, today)
    return Indexed(result, publication, livrable.nom if livrable else None, chosen, preview)
