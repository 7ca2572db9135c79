"""A scan split into stages that workers anywhere run, each safe to run twice: the service's core.

A scan is queued (`queue_scan`, `publish`, `queue_due`), its storage listed into the store
(`list_scan`), its dalles read in chunks any worker takes (`read_chunk`), then aggregated and
published once every chunk is in (`finalize_scan`). A stage re-reads the scan's state, does its
work, and records the result in one transaction conditional on that state, so a repeated or
concurrent run changes nothing twice:

- chunk results are written keyed by (storage, scan, path) and only while the scan is reading;
- the scan moves from reading to aggregating, and from aggregating to succeeded, by conditional
  updates that only one worker wins, the latter in the transaction that replaces the storage's
  records: a scan is finalised exactly once;
- a scan that stops making progress is found by its heartbeat (`take_stalled`) and requeued.

Nothing here knows about Celery: `tasks/` wraps these functions and sends the messages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine

from indexer import state
from indexer.emprise import compute_emprise
from indexer.errors import IndexerError, LivrableNotFound, StorageUnreachable
from indexer.export import livrable_feature, write_outputs
from indexer.headers import PROPRIETARY_FORMATS, suffix
from indexer.models import Dalle, DalleProblem, FileEntry, ScanResult
from indexer.projet import Livrable, Projet, livrable_source
from indexer.scan import Listing, ScanOptions, place_proprietary, read_all, split_reusable
from indexer.storage import Storage

log = logging.getLogger(__name__)

T = TypeVar("T")

UNREADABLE_CHUNK = 3
"""A chunk of at least this many dalles, all unreadable, means the storage itself is failing."""


class ScanRunning(IndexerError):
    """A scan of the storage is already queued or running."""


class StorageNotFound(IndexerError):
    """No storage in the store matches the id or URL given."""


@dataclass(frozen=True, slots=True)
class Queued:
    """A scan asked for: the storage and the scan queued, or why none was."""

    storage: int | None
    url: str | None
    scan: int | None
    livrable: str | None = None
    reason: str | None = None

    @property
    def refused(self) -> str | None:
        """Why no scan was queued, for the user."""
        if self.scan is not None:
            return None
        if self.reason is not None:
            return self.reason
        return (f"livrable {self.livrable!r}: " if self.livrable else "") + \
            f"storage {self.storage} ({self.url}) is already being scanned"


def queue_scan(engine: Engine, storage: int, trigger: str, full: bool = False) -> int:
    """Queue a scan of a storage; raises `ScanRunning` when one is queued or running already."""
    scan = state.claim_scan(engine, storage, trigger, full)
    if scan is None:
        running = state.active_scan(engine, storage)
        raise ScanRunning(f"storage {storage} is already being scanned (scan {running}): "
                          "wait for it to end, see `pcrs-indexer status`")
    return scan


def publish(engine: Engine, projet: Projet, livrable_name: str | None, storage_url: Callable[[str], str],
            full: bool = False) -> list[Queued]:
    """Record the livrables of a projet that have a stockage, and queue a scan of each.

    Args:
        engine: the state store.
        projet: the projet document.
        livrable_name: only this livrable (by ``nom``); raises `LivrableNotFound` if it has none.
        storage_url: the identity (masked root URL) of the storage at a source URL, as
            `indexer.storage.open_storage(source).url` gives it.
        full: read every dalle again instead of reusing unchanged ones.

    A storage being scanned already is not queued twice; its livrable's document is updated all
    the same, and the running scan publishes with it. A livrable without stockage is left out; one
    whose stockage does not make a storage URL is refused, with the reason.
    """
    chosen = [liv for liv in projet.livrables if livrable_name is None or liv.nom == livrable_name]
    if livrable_name is not None and not chosen:
        raise LivrableNotFound(f"livrable {livrable_name!r} not found in projet {projet.nom or projet.id!r}")
    document = projet.model_dump(mode="json")
    queued = []
    for livrable in chosen:
        if not livrable.stockage:
            log.info("livrable without stockage", extra={"projet": projet.id, "livrable": livrable.nom})
            continue
        try:
            source = livrable_source(livrable)
            url = storage_url(source)
        except IndexerError as exc:
            prefix = f"livrable {livrable.nom!r}: "
            reason = str(exc) if str(exc).startswith(prefix) else prefix + str(exc)
            queued.append(Queued(None, None, None, livrable.nom, reason))
            continue
        storage = state.storage_id(engine, url)
        state.save_livrable(engine, storage, source, livrable.nom, projet.id, document)
        scan = state.claim_scan(engine, storage, "publish", full)
        queued.append(Queued(storage, url, scan, livrable.nom))
        log.info("livrable published", extra={"storage": url, "livrable": livrable.nom, "scan": scan})
    return queued


def queue_due(engine: Engine, every_s: float, limit: int, at: datetime | None = None) -> list[Queued]:
    """Queue a scan of each published storage whose last scan started more than `every_s` ago.

    At most `limit` storages, the longest-waiting first.
    """
    before = (at or state.now()).timestamp() - every_s
    due = state.due_storages(engine, datetime.fromtimestamp(before, UTC), limit)
    queued = []
    for storage in due:
        scan = state.claim_scan(engine, storage, "schedule", False)
        if scan is not None:
            queued.append(Queued(storage, state.storage_url(engine, storage), scan))
    return queued


@dataclass(frozen=True, slots=True)
class ScanPlan:
    """A listed scan: how its dalles were split."""

    scan: int
    listed: int
    reused: int
    to_read: int
    chunks: int


def _stem(entry: FileEntry) -> str:
    """The key joining a dalle to its sidecars, as `Listing.sidecars_of` computes it."""
    return entry.path[: -len(suffix(entry.path))].lower() if suffix(entry.path) else entry.path.lower()


def list_scan(engine: Engine, storage: Storage, target: state.ScanTarget, chunk_size: int,
              concurrency: int = 16) -> ScanPlan | None:
    """List a queued scan's storage and split the dalles to read into chunks of `chunk_size`.

    Unchanged dalles are reused from the storage's records unless the scan is `full`, by the rule
    of `pcrs-indexer index` (`split_reusable`). Returns None when the scan is past its listing (a
    repeated message). Raises `StorageUnreachable` when the storage cannot be listed; the caller
    retries or ends the scan as failed.
    """
    if not state.begin_listing(engine, target.scan):
        return None
    listing = Listing.of(storage.list_files())
    previous = {} if target.full else {r.path: r for r in state.load_records(engine, target.storage)}
    kept, to_read = split_reusable(storage, listing.candidates, previous, concurrency)
    files = [state.ListedFile(entry, "reused", _stem(entry))
             for entry in (FileEntry(r.path, r.size, r.mtime, r.etag) for r in kept)]
    sizes = [len(to_read[i:i + chunk_size]) for i in range(0, len(to_read), chunk_size)]
    files += [state.ListedFile(entry, "read", _stem(entry), n // chunk_size) for n, entry in enumerate(to_read)]
    files += [state.ListedFile(side, "sidecar", stem)
              for stem, sides in listing.sidecars.items() for side in sides]
    if not state.store_listing(engine, target.scan, files, sizes, len(listing.files)):
        return None
    plan = ScanPlan(target.scan, len(listing.files), len(listing.candidates) - len(to_read), len(to_read), len(sizes))
    log.info("storage listed", extra={"storage": storage.url, "scan": target.scan, "listed": plan.listed,
                                      "reused": plan.reused, "to_read": plan.to_read, "chunks": plan.chunks})
    return plan


def _heartbeat(engine: Engine, scan: int, every_s: float) -> Callable[[Iterator[T], int], Iterator[T]]:
    """A `read_all` wrapper recording the scan's heartbeat every `every_s` seconds while it reads."""

    def wrap(items: Iterator[T], _total: int) -> Iterator[T]:
        last = time.monotonic()
        for item in items:
            yield item
            if time.monotonic() - last >= every_s:
                state.touch_scan(engine, scan)
                last = time.monotonic()

    return wrap


@dataclass(frozen=True, slots=True)
class ChunkOutcome:
    """What reading a chunk did."""

    read: int
    skipped: int
    stored: bool
    """False when there was nothing to do: the chunk was done or the scan had ended."""
    pending: int
    """Chunks of the scan still to store; 0 means the scan can be finalised."""


def read_chunk(engine: Engine, storage: Storage, target: state.ScanTarget, chunk: int, options: ScanOptions,
               worker: str = "", heartbeat_every_s: float = 30.0) -> ChunkOutcome:
    """Read the headers of a chunk's dalles and store the results, keyed by (storage, scan, path).

    A dalle that cannot be read is a `DalleProblem` like in `scan_storage`, but a chunk whose
    every dalle (at least `UNREADABLE_CHUNK`) is unreadable raises `StorageUnreachable`: the
    storage is failing, and the chunk is retried rather than recorded.
    """
    files = state.chunk_files(engine, target.scan, chunk)
    if files is None:
        return ChunkOutcome(0, 0, False, -1)
    listing = Listing.of(files)
    results = read_all(storage, listing, listing.candidates, options,
                       _heartbeat(engine, target.scan, heartbeat_every_s))
    unreadable = [r for r in results if isinstance(r, DalleProblem) and r.reason == "unreadable"]
    if len(results) >= UNREADABLE_CHUNK and len(unreadable) == len(results):
        raise StorageUnreachable(f"cannot read {storage.url}: {unreadable[0].detail}")
    stored = state.store_chunk(engine, target.storage, target.scan, chunk, results, worker)
    skipped = sum(1 for r in results if isinstance(r, DalleProblem))
    log.info("chunk read", extra={"storage": storage.url, "scan": target.scan, "chunk": chunk,
                                  "read": len(results), "skipped": skipped, "pending": stored.pending})
    return ChunkOutcome(len(results), skipped, stored.stored, stored.pending)


@dataclass(frozen=True, slots=True)
class Published:
    """A finalised scan: what the storage's outputs now hold."""

    scan: int
    storage: int
    dalles: int
    skipped: int
    reused: int
    out: Path


def _place(engine: Engine, storage: Storage, target: state.ScanTarget,
           fresh: list[Dalle | DalleProblem]) -> None:
    """Place the proprietary dalles the scan read, as `scan_storage` does, with the scan's sidecars."""
    proprietary = [r for r in fresh if isinstance(r, DalleProblem) and r.reason == "unsupported"
                   and suffix(r.path) in PROPRIETARY_FORMATS]
    if not proprietary:
        return
    stems = {_stem(FileEntry(r.path)) for r in proprietary}
    sidecars = state.sidecar_files(engine, target.scan, stems)
    placed = place_proprietary(storage, Listing.of(sidecars), fresh)
    changed = [new for new, old in zip(placed, fresh, strict=True) if new != old]
    if changed:
        state.replace_results(engine, target.storage, target.scan, changed)


def finalize_scan(engine: Engine, storage: Storage, target: state.ScanTarget, output_dir: Path,
                  today: date) -> Published | None:
    """Aggregate a scan whose chunks are all in, write its storage's files, and end it as succeeded.

    Only one caller gets past the claim; it writes ``output_dir/<storage id>/`` (each file
    atomically) and then commits the records, exactly once. Returns None when the scan was not
    ready, or was finalised by another worker.
    """
    if not state.claim_finalize(engine, target.scan):
        return None
    row = state.scan_row(engine, target.scan)
    assert row is not None
    _place(engine, storage, target, state.scan_results_of(engine, target.storage, target.scan))
    state.touch_scan(engine, target.scan)
    records = list(state.new_records(engine, target.storage, target.scan))
    started = state.aware(row.started_at) or state.now()
    result = ScanResult(
        source=storage.url,
        listed_files=row.listed,
        dalles=[r for r in records if isinstance(r, Dalle)],
        problems=[r for r in records if isinstance(r, DalleProblem)],
        reused=row.reused,
        duration_s=(state.now() - started).total_seconds(),
    )
    projet, livrable = _livrable(engine, target.storage)
    emprise = compute_emprise(result.dalles)
    out = output_dir / str(target.storage)
    write_outputs(out, result, emprise, projet, livrable, today)
    feature = livrable_feature(result.dalles, emprise, projet, livrable, today)
    counts = {"read": row.to_read or 0, "reused": result.reused, "skipped": len(result.problems),
              "duration_s": round(result.duration_s, 3)}
    if not state.commit_scan(engine, target.storage, target.scan, feature, counts):
        return None
    log.info("scan published", extra={"storage": storage.url, "scan": target.scan, "dalles": len(result.dalles),
                                      "skipped": len(result.problems), "reused": result.reused})
    return Published(target.scan, target.storage, len(result.dalles), len(result.problems), result.reused, out)


def _livrable(engine: Engine, storage: int) -> tuple[Projet | None, Livrable | None]:
    """The projet and livrable published for a storage, (None, None) for one never published."""
    row = state.livrable_of(engine, storage)
    if row is None:
        return None, None
    projet = Projet.model_validate(row.projet)
    livrable = next((liv for liv in projet.livrables if liv.nom == row.nom), None)
    return projet, livrable


def fail_scan(engine: Engine, scan: int, error: str) -> bool:
    """End a scan as failed with its error; the storage's last good result stays published."""
    ended = state.end_scan_failed(engine, scan, error)
    if ended:
        log.warning("scan failed", extra={"scan": scan, "error": error})
    return ended


def take_stalled(engine: Engine, stale_after_s: float) -> list[state.Stalled]:
    """The scans whose heartbeat is older than `stale_after_s`, each claimed for requeueing once."""
    before = datetime.fromtimestamp(state.now().timestamp() - stale_after_s, UTC)
    stalled = state.take_stalled(engine, before)
    for scan in stalled:
        log.warning("scan stalled", extra={"scan": scan.scan, "storage": scan.storage, "action": scan.action,
                                           "chunks": len(scan.chunks)})
    return stalled
