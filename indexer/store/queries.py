"""What the operator's commands and the service's stages ask of the store: reads only.

Storages with their status, the progress of a storage's latest scan, what a scan reads, the
storages due for a re-index.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Row, desc, exists, func, or_, select

from indexer.errors import StorageNotFound
from indexer.models import ACTIVE_SCANS, FileEntry, ScanStatus, StorageStatus
from indexer.secrets import SecretBox
from indexer.store.engine import aware
from indexer.store.schema import livrables, records, scan_chunks, scan_jobs, scans, storages


def active_scan(engine: Engine, storage: int) -> int | None:
    """The id of the storage's scan not yet ended, if any."""
    with engine.connect() as conn:
        return conn.execute(select(scans.c.id).where(scans.c.storage_id == storage, scans.c.status.in_(ACTIVE_SCANS))
                            .order_by(scans.c.id.desc()).limit(1)).scalar()


@dataclass(frozen=True, slots=True)
class ScanTarget:
    """What a worker needs to open a scan's storage."""

    scan: int
    storage: int
    url: str
    """The storage's masked URL, its identity."""
    clear: str | None
    """The URL to open when it has no credential."""
    sealed: str | None
    """The URL to open when it has credentials, encrypted."""
    full: bool

    def source(self, box: SecretBox) -> str | None:
        """The URL to open, credentials included (opened with `box`): the published one, else the storage's
        URL when it masks nothing; None when it is not known."""
        if self.sealed is not None:
            return box.open(self.sealed)
        return self.clear or (self.url if "***" not in self.url else None)


def scan_target(engine: Engine, scan: int) -> ScanTarget | None:
    """The storage a scan reads, None for an unknown scan."""
    with engine.connect() as conn:
        row = conn.execute(
            select(scans.c.storage_id, storages.c.url, storages.c.source, storages.c.secret, scan_jobs.c.full)
            .select_from(scans.join(storages, storages.c.id == scans.c.storage_id)
                         .outerjoin(scan_jobs, scan_jobs.c.scan_id == scans.c.id))
            .where(scans.c.id == scan)).first()
    if row is None:
        return None
    return ScanTarget(scan, row.storage_id, row.url, row.source, row.secret, bool(row.full))


def storage_source(engine: Engine, storage: int, box: SecretBox) -> str | None:
    """The URL to open a storage with, credentials included (opened with `box`); None when it is not known."""
    with engine.connect() as conn:
        row = conn.execute(select(storages.c.url, storages.c.source, storages.c.secret)
                           .where(storages.c.id == storage)).first()
    return None if row is None else ScanTarget(0, storage, row.url, row.source, row.secret, False).source(box)


def storage_exists(engine: Engine, storage: int) -> bool:
    """Whether the store has a storage of this id."""
    with engine.connect() as conn:
        return conn.execute(select(storages.c.id).where(storages.c.id == storage)).first() is not None


def recorded_file(engine: Engine, storage: int, path: str) -> FileEntry | None:
    """The file at `path` as the storage's last successful scan recorded it (a raster file, valid or
    skipped); None when that scan has no such file."""
    with engine.connect() as conn:
        row = conn.execute(select(records.c.path, records.c.size, records.c.mtime, records.c.etag)
                           .where(records.c.storage_id == storage, records.c.path == path)).first()
    return None if row is None else FileEntry(row.path, row.size, row.mtime, row.etag)


def pending_chunks(engine: Engine, scan: int) -> list[int]:
    """The chunks of a scan whose results are not stored yet."""
    with engine.connect() as conn:
        return list(conn.execute(select(scan_chunks.c.chunk).where(
            scan_chunks.c.scan_id == scan, scan_chunks.c.status == "pending").order_by(scan_chunks.c.chunk)).scalars())


def scan_row(engine: Engine, scan: int) -> Row[Any] | None:
    """A scan's row with its job's columns."""
    with engine.connect() as conn:
        return conn.execute(select(scans, scan_jobs.c.full, scan_jobs.c.trigger, scan_jobs.c.to_read,
                                   scan_jobs.c.chunks, scan_jobs.c.queued_at)
                            .select_from(scans.outerjoin(scan_jobs, scan_jobs.c.scan_id == scans.c.id))
                            .where(scans.c.id == scan)).first()


def due_storages(engine: Engine, before: datetime, limit: int) -> list[int]:
    """Published storages without a scan started since `before`, longest-waiting first."""
    last = (select(scans.c.storage_id, func.max(scans.c.started_at).label("last"))
            .group_by(scans.c.storage_id).subquery())
    busy = exists().where(scans.c.storage_id == storages.c.id, scans.c.status.in_(ACTIVE_SCANS))
    with engine.connect() as conn:
        return list(conn.execute(
            select(storages.c.id)
            .outerjoin(last, last.c.storage_id == storages.c.id)
            .where(or_(last.c.last.is_(None), last.c.last < before), ~busy,
                   exists().where(livrables.c.storage_id == storages.c.id))
            .order_by(last.c.last.asc().nulls_first(), storages.c.id).limit(limit)).scalars())


@dataclass(frozen=True, slots=True)
class StorageRow:
    """A storage as `pcrs-indexer storages` lists it."""

    id: int
    url: str
    status: str
    last_success_at: datetime | None
    dalles: int
    skipped: int
    last_error: str | None
    livrables: tuple[str, ...]
    """The noms of the livrables published on it, by nom."""
    sealed: bool = False
    """Whether its credentials are stored (encrypted): a scan needs the secret key."""

    @property
    def livrable(self) -> str | None:
        """Its livrables' noms in one string, None when none is published on it."""
        return ", ".join(self.livrables) or None

    def as_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {"id": self.id, "url": self.url, "status": self.status,
                "last_success_at": self.last_success_at.isoformat() if self.last_success_at else None,
                "dalles": self.dalles, "skipped": self.skipped, "last_error": self.last_error,
                "livrable": self.livrable, "livrables": list(self.livrables), "credentials": self.sealed}


def storage_rows(engine: Engine, failed_only: bool = False) -> list[StorageRow]:
    """Every storage of the store, by id (only the failed ones with `failed_only`). Needs no secret key."""
    s = storages
    query = select(s.c.id, s.c.url, s.c.status, s.c.last_success_at, s.c.dalles, s.c.skipped,
                   s.c.last_error, s.c.secret.is_not(None).label("sealed")).order_by(s.c.id)
    if failed_only:
        query = query.where(s.c.status == StorageStatus.FAILED)
    with engine.connect() as conn:
        rows = list(conn.execute(query))
        noms: dict[int, list[str]] = {}
        for storage, nom in conn.execute(select(livrables.c.storage_id, livrables.c.nom)
                                         .order_by(livrables.c.nom, livrables.c.id)):
            noms.setdefault(storage, []).append(nom)
    return [StorageRow(r.id, r.url, r.status, aware(r.last_success_at), r.dalles, r.skipped, r.last_error,
                       tuple(noms.get(r.id, ())), bool(r.sealed)) for r in rows]


def resolve_storage(engine: Engine, ref: str) -> int:
    """A storage's id from its id or its URL (as `storages` shows it, trailing slash optional)."""
    s = storages
    with engine.connect() as conn:
        if ref.isascii() and ref.isdigit() and int(ref) < 2**63:
            found = conn.execute(select(s.c.id).where(s.c.id == int(ref))).scalar()
        else:
            found = conn.execute(select(s.c.id).where(
                s.c.url.in_({ref, ref.rstrip("/"), ref.rstrip("/") + "/"})).order_by(s.c.id)).scalar()
    if found is None:
        raise StorageNotFound(f"no storage {ref!r} in the state store: see `pcrs-indexer storages`")
    return int(found)


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a storage's latest scan is."""

    storage: int
    url: str
    scan: int | None
    status: str
    """The scan's: queued, running, aggregating, succeeded or failed (the storage's when never scanned)."""
    step: str | None
    """listing, reading, aggregating or done."""
    trigger: str | None
    listed: int
    to_read: int | None
    read: int
    reused: int
    skipped: int
    chunks: int | None
    chunks_done: int
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    error: str | None

    @property
    def active(self) -> bool:
        """Whether the scan has not ended yet."""
        return self.status in ACTIVE_SCANS

    def as_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        values: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            values[name] = value.isoformat() if isinstance(value, datetime) else value
        return values


def progress(engine: Engine, storage: int) -> Progress:
    """The progress of a storage's latest scan (its counts are live while it runs)."""
    s, sc, jobs_table, chunks = storages, scans, scan_jobs, scan_chunks
    with engine.connect() as conn:
        st = conn.execute(select(s).where(s.c.id == storage)).first()
        if st is None:
            raise StorageNotFound(f"no storage {storage} in the state store: see `pcrs-indexer storages`")
        row = conn.execute(
            select(sc, jobs_table.c.trigger, jobs_table.c.to_read, jobs_table.c.chunks)
            .select_from(sc.outerjoin(jobs_table, jobs_table.c.scan_id == sc.c.id))
            .where(sc.c.storage_id == storage).order_by(desc(sc.c.id)).limit(1)).first()
        if row is None:
            return Progress(storage, st.url, None, st.status, None, None, 0, None, 0, 0, 0, None, 0, None, None, None,
                            st.last_error)
        done = conn.execute(select(func.count()).select_from(chunks).where(
            chunks.c.scan_id == row.id, chunks.c.status == "done")).scalar_one()
    chunks_done = int(done) if row.status in ACTIVE_SCANS else (row.chunks or 0)
    return Progress(storage, st.url, row.id, row.status, row.step, row.trigger, row.listed, row.to_read, row.read,
                    row.reused, row.skipped, row.chunks, chunks_done, aware(row.started_at),
                    aware(row.heartbeat_at), aware(row.finished_at), row.error)


@dataclass(frozen=True, slots=True)
class LastScan:
    """A storage's last successful scan, as its map shows it (`indexer.preview.storage_map`)."""

    storage: int
    url: str
    """Its URL, credentials masked."""
    scan: int
    finished_at: datetime | None
    listed: int
    duration_s: float
    reused: frozenset[str]
    """The paths of its records taken from an earlier scan (reused, not read by it)."""
    livrables: list[tuple[dict[str, Any], str, dict[str, Any] | None]]
    """(projet document, nom, feature) of each livrable published on it, in the order first published."""


def last_scan(engine: Engine, storage: int) -> LastScan | None:
    """The storage's last successful scan; None when it has none. Raises `StorageNotFound`."""
    with engine.connect() as conn:
        url = conn.execute(select(storages.c.url).where(storages.c.id == storage)).scalar()
        if url is None:
            raise StorageNotFound(f"no storage {storage} in the state store")
        row = conn.execute(select(scans.c.id, scans.c.finished_at, scans.c.listed, scans.c.duration_s)
                           .where(scans.c.storage_id == storage, scans.c.status == ScanStatus.SUCCEEDED)
                           .order_by(scans.c.id.desc()).limit(1)).first()
        if row is None:
            return None
        reused = frozenset(conn.scalars(select(records.c.path).where(
            records.c.storage_id == storage, records.c.scan_id != row.id)))
        published = [(r.projet, r.nom, r.feature) for r in conn.execute(
            select(livrables.c.projet, livrables.c.nom, livrables.c.feature)
            .where(livrables.c.storage_id == storage).order_by(livrables.c.id))]
    return LastScan(storage, url, row.id, aware(row.finished_at), row.listed or 0, row.duration_s or 0.0, reused,
                    published)
