"""The life of a scan, one state machine: every transition written once, each in one transaction.

A scan of ``pcrs-indexer index`` runs in one process: `start_scan`, `update_scan`, then
`finish_scan` or `fail_scan`. A scan of the service is queued (`claim_scan`), listed
(`begin_listing`, `store_listing`), read in chunks any worker stores (`store_chunk`), aggregated
by the one worker that claims it (`claim_finalize`, `release_finalize`) and committed exactly once
(`commit_scan`); a scan whose heartbeat stopped is taken back (`take_stalled`). Each transition
re-reads the state it starts from under a lock and changes nothing when it is not there.
State changes of a storage take its row lock first (a write lock on SQLite), then the scan's.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, delete, func, insert, literal, select, update

from indexer.models import (
    ACTIVE_SCANS,
    Dalle,
    DalleProblem,
    FileEntry,
    FileRole,
    Record,
    ScanStatus,
    ScanStep,
    StorageStatus,
)
from indexer.store.engine import aware, inserted_id, now
from indexer.store.records import VALID, crs_ids, record_row, reused_by, upsert_results
from indexer.store.schema import (
    RECORD_COLUMNS,
    livrables,
    records,
    scan_chunks,
    scan_files,
    scan_jobs,
    scan_results,
    scans,
    storages,
)

INDEX_LEASE_S = 60.0
"""How long a scan of ``pcrs-indexer index`` lives without a heartbeat before it counts as abandoned."""


def _lock_storage(conn: Connection, storage: int) -> bool:
    """Serialise state changes of one storage until the transaction ends; False if it does not exist."""
    return bool(conn.execute(update(storages).where(storages.c.id == storage)
                             .values(status=storages.c.status)).rowcount)


def _lock_scan(conn: Connection, scan: int) -> Row[Any] | None:
    """Lock a scan's row until the transaction ends, and read it with its job."""
    if not conn.execute(update(scans).where(scans.c.id == scan).values(status=scans.c.status)).rowcount:
        return None
    return conn.execute(select(scans, scan_jobs.c.full, scan_jobs.c.trigger, scan_jobs.c.to_read,
                               scan_jobs.c.chunks)
                        .select_from(scans.outerjoin(scan_jobs, scan_jobs.c.scan_id == scans.c.id))
                        .where(scans.c.id == scan)).one()


def _drop_work(conn: Connection, scan: int) -> None:
    """Forget a scan's listing, chunks and chunk results once it has ended."""
    for table in (scan_files, scan_chunks, scan_results):
        conn.execute(delete(table).where(table.c.scan_id == scan))


def _end_abandoned(conn: Connection, storage: int, lease_s: float) -> None:
    """End as failed the storage's scan of ``pcrs-indexer index`` (no job row) whose process stopped
    renewing its heartbeat for `lease_s`: no worker can resume it, and it must not hold the storage."""
    before = datetime.fromtimestamp(now().timestamp() - lease_s, UTC)
    stale = conn.execute(select(scans.c.id, scans.c.heartbeat_at)
                         .select_from(scans.outerjoin(scan_jobs, scan_jobs.c.scan_id == scans.c.id))
                         .where(scans.c.storage_id == storage, scans.c.status.in_(ACTIVE_SCANS),
                                scan_jobs.c.scan_id.is_(None), scans.c.heartbeat_at < before)).all()
    for scan, heartbeat in stale:
        _end_failed(conn, storage, scan, f"abandoned: its process stopped (no heartbeat since {aware(heartbeat)})")


def _active(conn: Connection, storage: int) -> bool:
    return conn.execute(select(scans.c.id).where(scans.c.storage_id == storage, scans.c.status.in_(ACTIVE_SCANS))
                        .limit(1)).first() is not None


def start_scan(engine: Engine, storage: int, lease_s: float = INDEX_LEASE_S) -> int | None:
    """Record a scan of ``pcrs-indexer index`` as running; returns its id.

    None when the storage has a scan not ended (queued for the fleet, or another ``index``): one
    scan of a storage at a time, whoever runs it. A scan whose heartbeat stopped for `lease_s`
    (its process was killed) is ended as failed first. The caller renews the heartbeat
    (`touch_scan`) more often than `lease_s`.
    """
    with engine.begin() as conn:
        if not _lock_storage(conn, storage):
            return None
        _end_abandoned(conn, storage, lease_s)
        if _active(conn, storage):
            return None
        conn.execute(update(storages).where(storages.c.id == storage).values(status=StorageStatus.RUNNING))
        return inserted_id(conn.execute(insert(scans).values(
            storage_id=storage, status=ScanStatus.RUNNING, step=ScanStep.LISTING, started_at=now(),
            heartbeat_at=now())))


def end_abandoned(engine: Engine, storage: int, lease_s: float = INDEX_LEASE_S) -> None:
    """End as failed a scan of ``pcrs-indexer index`` whose process is gone (see `start_scan`)."""
    with engine.begin() as conn:
        if _lock_storage(conn, storage):
            _end_abandoned(conn, storage, lease_s)


def unclaim_scan(engine: Engine, scan: int) -> bool:
    """Forget a queued scan whose message could not be sent, as if it had never been asked for.

    Only while it is still queued; the storage's status goes back to its last ended scan's.
    """
    with engine.begin() as conn:
        storage = conn.execute(select(scans.c.storage_id).where(scans.c.id == scan)).scalar()
        if storage is None or not _lock_storage(conn, storage):
            return False
        row = _lock_scan(conn, scan)
        if row is None or row.status != ScanStatus.QUEUED:
            return False
        conn.execute(delete(scan_jobs).where(scan_jobs.c.scan_id == scan))
        conn.execute(delete(scans).where(scans.c.id == scan))
        last = conn.execute(select(scans.c.status).where(scans.c.storage_id == storage)
                            .order_by(scans.c.id.desc()).limit(1)).scalar()
        if last == ScanStatus.FAILED:
            previous = StorageStatus.FAILED
        else:
            previous = StorageStatus.OK if _succeeded_once(conn, storage) else StorageStatus.NEW
        conn.execute(update(storages).where(storages.c.id == storage).values(status=previous))
        return True


def _succeeded_once(conn: Connection, storage: int) -> bool:
    return conn.execute(select(storages.c.last_success_at).where(storages.c.id == storage)).scalar() is not None


def last_good_dalles(engine: Engine, storage: int) -> int:
    """Valid dalles of the storage's last good result (0 for a storage never scanned)."""
    with engine.connect() as conn:
        return int(conn.execute(select(storages.c.dalles).where(storages.c.id == storage)).scalar() or 0)


def update_scan(engine: Engine, scan: int, **values: Any) -> None:
    """Update a running scan's step and counters, and its heartbeat."""
    with engine.begin() as conn:
        conn.execute(update(scans).where(scans.c.id == scan).values(heartbeat_at=now(), **values))


def finish_scan(engine: Engine, storage: int, scan: int, dalles: list[Dalle], problems: list[DalleProblem],
                counts: dict[str, Any], unchanged: Set[str] = frozenset()) -> None:
    """Replace the storage's records by this scan's, and end the scan as succeeded, in one transaction.

    The records of the `unchanged` paths (dalles reused as they were) stay as they are, with the
    scan that read them; the others are deleted and written again.
    """
    with engine.begin() as conn:
        ids = crs_ids(conn, (d.crs_wkt for d in dalles if d.path not in unchanged))
        if unchanged:
            stale = [p for p in conn.scalars(select(records.c.path).where(records.c.storage_id == storage))
                     if p not in unchanged]
            for start in range(0, len(stale), 500):
                conn.execute(delete(records).where(records.c.storage_id == storage,
                                                   records.c.path.in_(stale[start:start + 500])))
        else:
            conn.execute(delete(records).where(records.c.storage_id == storage))
        everything: Iterator[Record] = itertools.chain(dalles, problems)
        results = (r for r in everything if r.path not in unchanged)
        while batch := [{"storage_id": storage, **record_row(r, ids), "scan_id": scan}
                        for r in itertools.islice(results, 5000)]:
            conn.execute(insert(records), batch)
        conn.execute(update(scans).where(scans.c.id == scan).values(
            status=ScanStatus.SUCCEEDED, step=ScanStep.DONE, finished_at=now(), heartbeat_at=now(), **counts))
        conn.execute(update(storages).where(storages.c.id == storage).values(
            status=StorageStatus.OK, last_success_at=now(), last_error=None, dalles=len(dalles), skipped=len(problems)))


def claim_scan(engine: Engine, storage: int, trigger: str, full: bool, lease_s: float = INDEX_LEASE_S) -> int | None:
    """Queue a scan of a storage, unless one is already queued or running (then None).

    A scan of ``pcrs-indexer index`` whose process is gone (no heartbeat for `lease_s`) is ended
    as failed first, so that it does not hold the storage forever.
    """
    with engine.begin() as conn:
        if not _lock_storage(conn, storage):
            return None
        _end_abandoned(conn, storage, lease_s)
        if _active(conn, storage):
            return None
        at = now()
        scan = inserted_id(conn.execute(insert(scans).values(
            storage_id=storage, status=ScanStatus.QUEUED, step=ScanStep.LISTING, started_at=at, heartbeat_at=at)))
        conn.execute(insert(scan_jobs).values(scan_id=scan, trigger=trigger, full=full, queued_at=at))
        conn.execute(update(storages).where(storages.c.id == storage).values(status=StorageStatus.QUEUED))
        return scan


def begin_listing(engine: Engine, scan: int) -> bool:
    """Mark a queued scan as running its listing; False when it is past that step or ended."""
    with engine.begin() as conn:
        storage = conn.execute(select(scans.c.storage_id).where(scans.c.id == scan)).scalar()
        if storage is None or not _lock_storage(conn, storage):
            return False
        row = _lock_scan(conn, scan)
        if row is None or row.status not in (ScanStatus.QUEUED, ScanStatus.RUNNING) or row.step != ScanStep.LISTING:
            return False
        values: dict[str, Any] = {"status": ScanStatus.RUNNING, "heartbeat_at": now()}
        if row.status == ScanStatus.QUEUED:
            values["started_at"] = now()
        conn.execute(update(scans).where(scans.c.id == scan).values(**values))
        conn.execute(update(storages).where(storages.c.id == storage).values(status=StorageStatus.RUNNING))
        return True


@dataclass(frozen=True, slots=True)
class ListedFile:
    """A listed file a scan keeps: a dalle to read or to reuse, or a sidecar."""

    entry: FileEntry
    role: str
    """``read``, ``reused`` or ``sidecar``."""
    stem: str
    chunk: int | None = None


def store_listing(engine: Engine, scan: int, files: Sequence[ListedFile], chunk_sizes: Sequence[int],
                  listed: int) -> bool:
    """Record a scan's listing and its chunks, and move it to reading; False if another worker did."""
    with engine.begin() as conn:
        row = _lock_scan(conn, scan)
        if row is None or row.status != ScanStatus.RUNNING or row.step != ScanStep.LISTING:
            return False
        _drop_work(conn, scan)
        rows = [{"scan_id": scan, "path": f.entry.path, "size": f.entry.size, "mtime": f.entry.mtime,
                 "etag": f.entry.etag, "role": f.role, "stem": f.stem, "chunk": f.chunk} for f in files]
        for start in range(0, len(rows), 5000):
            conn.execute(insert(scan_files), rows[start:start + 5000])
        if chunk_sizes:
            conn.execute(insert(scan_chunks), [{"scan_id": scan, "chunk": n, "entries": size, "status": "pending"}
                                               for n, size in enumerate(chunk_sizes)])
        reused = sum(1 for f in files if f.role == FileRole.REUSED)
        conn.execute(update(scans).where(scans.c.id == scan).values(
            step=ScanStep.READING, listed=listed, reused=reused, read=0, skipped=0, heartbeat_at=now()))
        conn.execute(update(scan_jobs).where(scan_jobs.c.scan_id == scan).values(
            to_read=sum(chunk_sizes), chunks=len(chunk_sizes)))
        return True


@dataclass(frozen=True, slots=True)
class ChunkStored:
    """What storing a chunk's results did."""

    stored: bool
    """False when the scan had ended or moved on: nothing was written."""
    first: bool
    """True when this call completed the chunk (a repeated call only rewrites the same rows)."""
    pending: int
    """Chunks of the scan still without results."""


def store_chunk(engine: Engine, storage: int, scan: int, chunk: int, results: Sequence[Record],
                worker: str) -> ChunkStored:
    """Store a chunk's results, and count it done, in one transaction; only while the scan is reading."""
    with engine.begin() as conn:
        row = _lock_scan(conn, scan)
        if row is None or row.status != ScanStatus.RUNNING or row.step != ScanStep.READING:
            return ChunkStored(False, False, -1)
        upsert_results(conn, storage, scan, results)
        first = bool(conn.execute(update(scan_chunks).where(
            scan_chunks.c.scan_id == scan, scan_chunks.c.chunk == chunk, scan_chunks.c.status == "pending")
            .values(status="done", done_at=now(), done_by=worker)).rowcount)
        if first:
            problems = sum(1 for r in results if isinstance(r, DalleProblem))
            conn.execute(update(scans).where(scans.c.id == scan).values(
                read=scans.c.read + len(results), skipped=scans.c.skipped + problems, heartbeat_at=now()))
        pending = conn.execute(select(func.count()).select_from(scan_chunks).where(
            scan_chunks.c.scan_id == scan, scan_chunks.c.status == "pending")).scalar_one()
        return ChunkStored(True, first, int(pending))


def touch_scan(engine: Engine, scan: int) -> None:
    """Record that a scan not yet ended is making progress."""
    with engine.begin() as conn:
        conn.execute(update(scans).where(scans.c.id == scan, scans.c.status.in_(ACTIVE_SCANS))
                     .values(heartbeat_at=now()))


def claim_finalize(engine: Engine, scan: int) -> bool:
    """Move a scan whose chunks are all stored from reading to aggregating: True for the one caller that does."""
    with engine.begin() as conn:
        row = _lock_scan(conn, scan)
        if row is None or row.status != ScanStatus.RUNNING or row.step != ScanStep.READING:
            return False
        pending = conn.execute(select(func.count()).select_from(scan_chunks).where(
            scan_chunks.c.scan_id == scan, scan_chunks.c.status == "pending")).scalar_one()
        if pending:
            return False
        conn.execute(update(scans).where(scans.c.id == scan).values(
            status=ScanStatus.AGGREGATING, step=ScanStep.AGGREGATING, heartbeat_at=now()))
        return True


def release_finalize(engine: Engine, scan: int) -> bool:
    """Give back an aggregation that failed halfway, so that a retry can claim it again."""
    with engine.begin() as conn:
        row = _lock_scan(conn, scan)
        if row is None or row.status != ScanStatus.AGGREGATING:
            return False
        conn.execute(update(scans).where(scans.c.id == scan).values(status=ScanStatus.RUNNING, step=ScanStep.READING))
        return True


def replace_results(engine: Engine, storage: int, scan: int, results: Sequence[Record]) -> bool:
    """Replace some results of a scan being aggregated; False when it is no longer aggregating."""
    with engine.begin() as conn:
        row = _lock_scan(conn, scan)
        if row is None or row.status != ScanStatus.AGGREGATING:
            return False
        upsert_results(conn, storage, scan, results)
        return True


def commit_scan(engine: Engine, storage: int, scan: int, features: Mapping[int, dict[str, Any]],
                counts: dict[str, Any]) -> bool:
    """End an aggregated scan as succeeded, exactly once: its records replace the storage's.

    One transaction drops the records the scan did not reuse, inserts those it read, keeps the
    livrables' features and counts, and forgets the scan's work tables. Returns False, changing
    nothing, when the scan is no longer aggregating (another worker committed it).
    """
    with engine.begin() as conn:
        _lock_storage(conn, storage)
        won = conn.execute(update(scans).where(scans.c.id == scan, scans.c.status == ScanStatus.AGGREGATING).values(
            status=ScanStatus.SUCCEEDED, step=ScanStep.DONE, finished_at=now(), heartbeat_at=now(), error=None,
            **counts)).rowcount
        if not won:
            return False
        conn.execute(delete(records).where(records.c.storage_id == storage, ~reused_by(scan)))
        columns = ["storage_id", "path", *RECORD_COLUMNS]
        conn.execute(insert(records).from_select(
            [*columns, "scan_id"],
            select(*(scan_results.c[c] for c in columns), literal(scan)).where(
                scan_results.c.storage_id == storage, scan_results.c.scan_id == scan)))
        for livrable, feature in features.items():  # by livrable id: those published on the storage
            conn.execute(update(livrables).where(livrables.c.id == livrable, livrables.c.storage_id == storage)
                         .values(feature=feature))
        totals = conn.execute(select(
            func.count().filter(records.c.status == VALID), func.count().filter(records.c.status != VALID))
            .where(records.c.storage_id == storage)).one()
        conn.execute(update(storages).where(storages.c.id == storage).values(
            status=StorageStatus.OK, last_success_at=now(), last_error=None, dalles=totals[0], skipped=totals[1]))
        _drop_work(conn, scan)
        return True


def _end_failed(conn: Connection, storage: int, scan: int, error: str) -> bool:
    """The transition to failed: a scan not yet ended keeps its error, its storage its last good records."""
    if not conn.execute(update(scans).where(scans.c.id == scan, scans.c.status.in_(ACTIVE_SCANS)).values(
            status=ScanStatus.FAILED, finished_at=now(), error=error)).rowcount:
        return False
    conn.execute(update(storages).where(storages.c.id == storage).values(status=StorageStatus.FAILED,
                                                                         last_error=error))
    _drop_work(conn, scan)
    return True


def fail_scan(engine: Engine, scan: int, error: str) -> bool:
    """End a scan not yet ended as failed, keeping the error; False when it had ended already."""
    with engine.begin() as conn:
        storage = conn.execute(select(scans.c.storage_id).where(scans.c.id == scan)).scalar()
        if storage is None:
            return False
        _lock_storage(conn, storage)
        return _end_failed(conn, storage, scan, error)


@dataclass(frozen=True, slots=True)
class Stalled:
    """A scan whose heartbeat stopped, and what it needs to go on."""

    scan: int
    storage: int
    action: str
    """``list`` (queue its listing again), ``read`` (its pending chunks), ``finalize``, or ``failed``
    (a scan no worker can resume, from ``pcrs-indexer index``, ended as failed)."""
    chunks: tuple[int, ...] = ()


def take_stalled(engine: Engine, before: datetime) -> list[Stalled]:
    """Scans not yet ended whose heartbeat is older than `before`, each claimed for requeueing.

    The heartbeat of each claimed scan is renewed, so a second watchdog running at the same time
    does not requeue it again; an aggregation that stopped goes back to reading.
    """
    with engine.connect() as conn:
        candidates = list(conn.execute(select(scans.c.id).where(
            scans.c.status.in_(ACTIVE_SCANS), scans.c.heartbeat_at < before).order_by(scans.c.id)).scalars())
    found = []
    for scan in candidates:
        with engine.begin() as conn:
            storage = conn.execute(select(scans.c.storage_id).where(scans.c.id == scan)).scalar_one()
            _lock_storage(conn, storage)
            if not conn.execute(update(scans).where(
                    scans.c.id == scan, scans.c.status.in_(ACTIVE_SCANS), scans.c.heartbeat_at < before)
                    .values(heartbeat_at=now())).rowcount:
                continue
            row = _lock_scan(conn, scan)
            if row is None:
                continue
            if row.trigger is None:
                _end_failed(conn, storage, scan, f"abandoned: no heartbeat since {aware(row.heartbeat_at)}")
                found.append(Stalled(scan, storage, "failed"))
                continue
            if row.status == ScanStatus.QUEUED or row.step == ScanStep.LISTING:
                found.append(Stalled(scan, storage, "list"))
                continue
            if row.status == ScanStatus.AGGREGATING:
                conn.execute(update(scans).where(scans.c.id == scan).values(status=ScanStatus.RUNNING,
                                                                            step=ScanStep.READING))
            pending = tuple(conn.execute(select(scan_chunks.c.chunk).where(
                scan_chunks.c.scan_id == scan, scan_chunks.c.status == "pending")
                .order_by(scan_chunks.c.chunk)).scalars())
            found.append(Stalled(scan, storage, "read" if pending else "finalize", pending))
    return found
