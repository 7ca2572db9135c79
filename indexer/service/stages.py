"""A scan split into stages that workers anywhere run, each safe to run twice: the service's core.

A queued scan (`indexer.service.queueing`) has its storage listed into the store (`list_scan`),
its dalles read in chunks any worker takes (`read_chunk`), then aggregated and published once
every chunk is in (`finalize_scan`). A stage re-reads the scan's state, does its work, and records
the result in one transaction conditional on that state (`indexer.store.scans`), so a repeated or
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

from indexer.emprise import check_footprints
from indexer.errors import StorageUnreachable
from indexer.models import Dalle, DalleProblem, FileRole, Record, ScanResult, SkipReason
from indexer.pipeline import ScanOptions, check_result, read_all, split_reusable
from indexer.projet import Livrable, Projet
from indexer.publish import publish_outputs
from indexer.read import place_proprietary
from indexer.read.formats import PROPRIETARY_FORMATS, Listing, stem, suffix
from indexer.storages import Storage
from indexer.store import catalog, queries, records, scans
from indexer.store.engine import aware, now
from indexer.store.queries import ScanTarget

log = logging.getLogger(__name__)

T = TypeVar("T")

UNREADABLE_CHUNK = 3
"""A chunk of at least this many dalles, all unreadable, means the storage itself is failing."""


@dataclass(frozen=True, slots=True)
class ScanPlan:
    """A listed scan: how its dalles were split."""

    scan: int
    listed: int
    reused: int
    to_read: int
    chunks: int


def list_scan(engine: Engine, storage: Storage, target: ScanTarget, chunk_size: int,
              concurrency: int = 16) -> ScanPlan | None:
    """List a queued scan's storage and split the dalles to read into chunks of `chunk_size`.

    Unchanged dalles are reused from the storage's records unless the scan is `full`, by the rule
    of `pcrs-indexer index` (`split_reusable`). Returns None when the scan is past its listing (a
    repeated message). Raises `StorageUnreachable` when the storage cannot be listed; the caller
    retries or ends the scan as failed.
    """
    if not scans.begin_listing(engine, target.scan):
        return None
    listing = Listing.of(storage.list_files())
    previous = {} if target.full else {r.path: r for r in records.load_records(engine, target.storage)}
    kept, to_read = split_reusable(storage, listing.candidates, previous, concurrency)
    files = [scans.ListedFile(r.file, FileRole.REUSED, stem(r.path)) for r in kept]
    sizes = [len(to_read[i:i + chunk_size]) for i in range(0, len(to_read), chunk_size)]
    files += [scans.ListedFile(entry, FileRole.READ, stem(entry.path), n // chunk_size)
              for n, entry in enumerate(to_read)]
    files += [scans.ListedFile(side, FileRole.SIDECAR, described)
              for described, sides in listing.sidecars.items() for side in sides]
    if not scans.store_listing(engine, target.scan, files, sizes, len(listing.files)):
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
                scans.touch_scan(engine, scan)
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


def read_chunk(engine: Engine, storage: Storage, target: ScanTarget, chunk: int, options: ScanOptions,
               worker: str = "", heartbeat_every_s: float = 30.0) -> ChunkOutcome:
    """Read the headers of a chunk's dalles and store the results, keyed by (storage, scan, path).

    A dalle that cannot be read is a `DalleProblem` like in `scan_storage`, but a chunk whose
    every dalle (at least `UNREADABLE_CHUNK`) is unreadable raises `StorageUnreachable`: the
    storage is failing, and the chunk is retried rather than recorded; so does a chunk in which
    `options.max_failures_in_a_row` reads in a row failed, without waiting for the rest.
    """
    files = records.chunk_files(engine, target.scan, chunk)
    if files is None:
        return ChunkOutcome(0, 0, False, -1)
    listing = Listing.of(files)
    results = read_all(storage, listing, listing.candidates, options,
                       _heartbeat(engine, target.scan, heartbeat_every_s))
    unreadable = [r for r in results if isinstance(r, DalleProblem) and r.reason == SkipReason.UNREADABLE]
    if len(results) >= UNREADABLE_CHUNK and len(unreadable) == len(results):
        raise StorageUnreachable(f"cannot read {storage.url}: {unreadable[0].detail}")
    stored = scans.store_chunk(engine, target.storage, target.scan, chunk, results, worker)
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


def _place(engine: Engine, storage: Storage, target: ScanTarget,
           fresh: list[Record]) -> None:
    """Place the proprietary dalles the scan read, as `scan_storage` does, with the scan's sidecars,
    and check every footprint it read (`check_footprints`)."""
    placed = fresh
    proprietary = [r for r in fresh if isinstance(r, DalleProblem) and r.reason == SkipReason.UNSUPPORTED
                   and suffix(r.path) in PROPRIETARY_FORMATS]
    if proprietary:
        stems = {stem(r.path) for r in proprietary}
        sidecars = records.sidecar_files(engine, target.scan, stems)
        placed = place_proprietary(storage, Listing.of(sidecars), fresh)
    changed = [new for new, old in zip(check_footprints(placed), fresh, strict=True) if new != old]
    if changed:
        scans.replace_results(engine, target.storage, target.scan, changed)


def finalize_scan(engine: Engine, storage: Storage, target: ScanTarget, output_dir: Path,
                  today: date, max_unreadable_share: float = 0.02) -> Published | None:
    """Aggregate a scan whose chunks are all in, write its storage's files, and end it as succeeded.

    Only one caller gets past the claim; it writes ``output_dir/<storage id>/`` (each file
    atomically) and then commits the records, exactly once. Returns None when the scan was not
    ready, or was finalised by another worker. Raises `ScanUnreliable` (by `check_result`), having
    written nothing, when the result must not replace the last good one.
    """
    if not scans.claim_finalize(engine, target.scan):
        return None
    row = queries.scan_row(engine, target.scan)
    if row is None:  # the scan was deleted in between
        return None
    fresh = records.scan_results_of(engine, target.storage, target.scan)
    _place(engine, storage, target, fresh)
    scans.touch_scan(engine, target.scan)
    kept = list(records.new_records(engine, target.storage, target.scan))
    read = {r.path for r in fresh}
    started = aware(row.started_at) or now()
    result = ScanResult(
        source=storage.url,
        listed_files=row.listed,
        dalles=[r for r in kept if isinstance(r, Dalle)],
        problems=[r for r in kept if isinstance(r, DalleProblem)],
        reused_paths=frozenset(r.path for r in kept if r.path not in read),
        duration_s=(now() - started).total_seconds(),
    )
    check_result(result, scans.last_good_dalles(engine, target.storage), max_unreadable_share)
    published = _livrables(engine, target.storage)
    primary = next((p for p in published if p[2] is not None and p[2].stockage_public is False),
                   published[0] if published else (None, None, None))
    out = output_dir / str(target.storage)
    others = [p for p in published if p[0] != primary[0]]
    publication = publish_outputs(out, result, primary[1], primary[2], today,
                                  others=[(projet, livrable) for _, projet, livrable in others])
    result = publication.result
    features = dict(zip([key for key, *_ in others], publication.others, strict=True))
    if primary[0] is not None:
        features[primary[0]] = publication.feature
    counts = {"read": row.to_read or 0, "reused": row.reused, "skipped": len(result.problems),
              "duration_s": round(result.duration_s, 3)}
    if not scans.commit_scan(engine, target.storage, target.scan, features, counts):
        return None
    log.info("scan published", extra={"storage": storage.url, "scan": target.scan, "dalles": len(result.dalles),
                                      "skipped": len(result.problems), "reused": result.reused,
                                      "quality": publication.quality.verdict()})
    return Published(target.scan, target.storage, len(result.dalles), len(result.problems), result.reused, out)


def _livrables(engine: Engine, storage: int) -> list[tuple[int, Projet, Livrable | None]]:
    """(id, projet, livrable) of each livrable published on a storage, the latest published first."""
    found = []
    for row in catalog.livrables_of(engine, storage):
        projet = Projet.model_validate(row.projet)
        found.append((row.id, projet, next((liv for liv in projet.livrables if liv.nom == row.nom), None)))
    return found


def fail_scan(engine: Engine, scan: int, error: str) -> bool:
    """End a scan as failed with its error; the storage's last good result stays published."""
    ended = scans.fail_scan(engine, scan, error)
    if ended:
        log.warning("scan failed", extra={"scan": scan, "error": error})
    return ended


def take_stalled(engine: Engine, stale_after_s: float) -> list[scans.Stalled]:
    """The scans whose heartbeat is older than `stale_after_s`, each claimed for requeueing once."""
    before = datetime.fromtimestamp(now().timestamp() - stale_after_s, UTC)
    stalled = scans.take_stalled(engine, before)
    for scan in stalled:
        log.warning("scan stalled", extra={"scan": scan.scan, "storage": scan.storage, "action": scan.action,
                                           "chunks": len(scan.chunks)})
    return stalled
