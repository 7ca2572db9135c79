"""The state store: storages, their scans and one record per file, with SQLAlchemy.

A SQLite file by default; PostgreSQL when many workers share it. The per-file records let a
re-scan reuse every dalle whose size, modification time and ETag did not change, and keep the last
good result of a storage that cannot be reached.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Sequence, Set
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.engine import CursorResult, Row, make_url
from sqlalchemy.sql.elements import ColumnElement

from indexer.errors import ConfigError
from indexer.models import Dalle, DalleProblem, FileEntry

metadata = MetaData()

storages = Table(
    "storages", metadata,
    Column("id", Integer, primary_key=True),
    Column("url", Text, nullable=False, unique=True, comment="root URL, credentials masked"),
    Column("status", String(16), nullable=False, default="new"),
    Column("last_success_at", DateTime(timezone=True)),
    Column("last_error", Text),
    Column("dalles", Integer, nullable=False, default=0),
    Column("skipped", Integer, nullable=False, default=0),
)

scans = Table(
    "scans", metadata,
    Column("id", Integer, primary_key=True),
    Column("storage_id", ForeignKey("storages.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("status", String(16), nullable=False, default="running"),
    Column("step", String(16), nullable=False, default="listing"),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("heartbeat_at", DateTime(timezone=True)),
    Column("listed", Integer, nullable=False, default=0),
    Column("read", Integer, nullable=False, default=0),
    Column("reused", Integer, nullable=False, default=0),
    Column("skipped", Integer, nullable=False, default=0),
    Column("duration_s", Float),
    Column("error", Text),
)

crs_table = Table(
    "crs", metadata,
    Column("id", Integer, primary_key=True),
    Column("wkt", Text, nullable=False, unique=True),
)

records = Table(
    "records", metadata,
    Column("storage_id", ForeignKey("storages.id", ondelete="CASCADE"), primary_key=True),
    Column("path", Text, primary_key=True),
    Column("size", BigInteger),
    Column("mtime", String(64)),
    Column("etag", String(256)),
    Column("status", String(16), nullable=False, comment="valid or skipped"),
    Column("reason", String(32)),
    Column("detail", Text),
    Column("crs_id", ForeignKey("crs.id")),
    Column("meta", JSON, comment="the dalle's header metadata"),
    Column("scan_id", Integer, nullable=False),
    UniqueConstraint("storage_id", "path", name="uq_records_storage_path"),
)

# The distributed service's tables: what was published, and each scan's work in progress.

livrables = Table(
    "livrables", metadata,
    Column("storage_id", ForeignKey("storages.id", ondelete="CASCADE"), primary_key=True),
    Column("source", Text, nullable=False, comment="the URL workers open, credentials included"),
    Column("nom", Text, nullable=False),
    Column("projet_id", Text),
    Column("projet", JSON, nullable=False, comment="the projet document the livrable belongs to"),
    Column("published_at", DateTime(timezone=True), nullable=False),
    Column("feature", JSON, comment="its livrables.geojson feature, as of its last successful scan"),
)

scan_jobs = Table(
    "scan_jobs", metadata,
    Column("scan_id", ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True),
    Column("trigger", String(16), nullable=False, comment="publish, requeue or schedule"),
    Column("full", Boolean, nullable=False, comment="read every dalle, ignoring change detection"),
    Column("queued_at", DateTime(timezone=True), nullable=False),
    Column("to_read", Integer),
    Column("chunks", Integer),
)

scan_files = Table(
    "scan_files", metadata,
    Column("scan_id", ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True),
    Column("path", Text, primary_key=True),
    Column("size", BigInteger),
    Column("mtime", String(64)),
    Column("etag", String(256)),
    Column("role", String(8), nullable=False, comment="read, reused or sidecar"),
    Column("stem", Text, nullable=False, comment="lower-case path without extension: joins dalles and sidecars"),
    Column("chunk", Integer, comment="the chunk reading it, for role read"),
    Index("ix_scan_files_chunk", "scan_id", "chunk"),
    Index("ix_scan_files_stem", "scan_id", "stem"),
)

scan_chunks = Table(
    "scan_chunks", metadata,
    Column("scan_id", ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True),
    Column("chunk", Integer, primary_key=True),
    Column("entries", Integer, nullable=False),
    Column("status", String(8), nullable=False, comment="pending or done"),
    Column("done_at", DateTime(timezone=True)),
    Column("done_by", Text, comment="the worker that stored its results"),
)

scan_results = Table(
    "scan_results", metadata,
    Column("storage_id", ForeignKey("storages.id", ondelete="CASCADE"), primary_key=True),
    Column("scan_id", ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True),
    Column("path", Text, primary_key=True),
    Column("size", BigInteger),
    Column("mtime", String(64)),
    Column("etag", String(256)),
    Column("status", String(16), nullable=False, comment="valid or skipped"),
    Column("reason", String(32)),
    Column("detail", Text),
    Column("crs_id", ForeignKey("crs.id")),
    Column("meta", JSON, comment="the dalle's header metadata"),
)

ACTIVE = ("queued", "running", "aggregating")
"""Statuses of a scan not yet ended; a storage has at most one such scan."""


def now() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Signature:
    """What identifies a file's version without reading it."""

    size: int | None
    mtime: str | None
    etag: str | None

    @classmethod
    def of(cls, item: FileEntry | Dalle | DalleProblem) -> Signature:
        """The signature of a listed file or of a record made from one."""
        return cls(item.size, item.mtime, item.etag)

    @property
    def usable(self) -> bool:
        """A signature with neither a modification time nor an ETag proves nothing."""
        return self.size is not None and (self.mtime is not None or self.etag is not None)


def create_store(url: str) -> Engine:
    """An engine on the store, its tables created if missing (SQLite folder included)."""
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, future=True, pool_pre_ping=not parsed.drivername.startswith("sqlite"))
    if parsed.drivername.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
        metadata.create_all(engine)
    else:
        migrate(engine)
    return engine


def migrate(engine: Engine) -> None:
    """Bring the store's schema to the latest Alembic revision (``indexer/migrations``).

    Safe to run from many processes at once on PostgreSQL (an advisory lock serialises them). A
    store whose tables were created without Alembic (``metadata.create_all``, as `create_store`
    does for SQLite) is first stamped with the latest revision whose tables it has.
    """
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    config = Config()
    config.set_main_option("script_location", "indexer:migrations")
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK)))
        config.attributes["connection"] = conn
        tables = set(inspect(conn).get_table_names())
        if "alembic_version" not in tables:
            adopted = next((revision for revision, table in ADOPTABLE if table in tables), None)
            if adopted is not None:
                command.stamp(config, adopted)
        command.upgrade(config, "head")


MIGRATION_LOCK = 0x50435253  # "PCRS"
ADOPTABLE = (("0002", "livrables"), ("0001", "storages"))
"""Revisions a store created without Alembic is at, newest first, by a table the revision created."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _inserted_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def storage_id(engine: Engine, url: str) -> int:
    """The id of a storage by its masked URL, created on first sight."""
    with engine.begin() as conn:
        found = conn.execute(select(storages.c.id).where(storages.c.url == url)).scalar()
        if found is not None:
            return int(found)
        # Two publications of one storage at once: the second insert does nothing, both read the id.
        conn.execute(_insert(conn, storages).values(url=url, status="new", dalles=0, skipped=0)
                     .on_conflict_do_nothing(index_elements=["url"]))
        return int(conn.execute(select(storages.c.id).where(storages.c.url == url)).scalar_one())


def _insert(conn: Connection, table: Table) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_nothing`` and ``on_conflict_do_update``."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise ConfigError(f"unsupported state store {conn.dialect.name!r}: use SQLite or PostgreSQL")


def start_scan(engine: Engine, storage: int) -> int:
    """Record a scan as running; returns its id."""
    with engine.begin() as conn:
        conn.execute(update(storages).where(storages.c.id == storage).values(status="running"))
        return _inserted_id(conn.execute(insert(scans).values(
            storage_id=storage, status="running", step="listing", started_at=now(), heartbeat_at=now())))


def update_scan(engine: Engine, scan: int, **values: Any) -> None:
    """Update a running scan's step and counters, and its heartbeat."""
    with engine.begin() as conn:
        conn.execute(update(scans).where(scans.c.id == scan).values(heartbeat_at=now(), **values))


def fail_scan(engine: Engine, storage: int, scan: int, error: str) -> None:
    """End a scan as failed; the storage keeps its records, that is its last good result."""
    with engine.begin() as conn:
        conn.execute(update(scans).where(scans.c.id == scan).values(
            status="failed", finished_at=now(), error=error))
        conn.execute(update(storages).where(storages.c.id == storage).values(status="failed", last_error=error))


def _dalle_meta(dalle: Dalle) -> dict[str, Any]:
    return {"mime": dalle.mime, "width": dalle.width, "height": dalle.height, "bands": list(dalle.bands),
            "compression": dalle.compression, "epsg": dalle.epsg,
            "corners": [list(c) for c in dalle.corners], "resolution_cm": dalle.resolution_cm,
            "open": dalle.open}


def _crs_ids(conn: Any, wkts: Iterable[str]) -> dict[str, int]:
    wanted = set(wkts)
    if not wanted:
        return {}
    known = {row.wkt: row.id for row in conn.execute(select(crs_table).where(crs_table.c.wkt.in_(wanted)))}
    missing = sorted(wanted - known.keys())
    if missing:
        # Workers storing chunks at once may meet the same new CRS: the later insert does nothing.
        conn.execute(_insert(conn, crs_table).on_conflict_do_nothing(index_elements=["wkt"]),
                     [{"wkt": wkt} for wkt in missing])
        known.update({row.wkt: row.id for row in conn.execute(
            select(crs_table).where(crs_table.c.wkt.in_(missing)))})
    return known


def _record_row(result: Dalle | DalleProblem, crs_ids: dict[str, int]) -> dict[str, Any]:
    """The columns a dalle or a problem is stored in (records and scan_results)."""
    if isinstance(result, Dalle):
        return {"path": result.path, "size": result.size, "mtime": result.mtime, "etag": result.etag,
                "status": "valid", "reason": None, "detail": None, "crs_id": crs_ids[result.crs_wkt],
                "meta": _dalle_meta(result)}
    return {"path": result.path, "size": result.size, "mtime": result.mtime, "etag": result.etag,
            "status": "skipped", "reason": result.reason, "detail": result.detail, "crs_id": None, "meta": None}


def finish_scan(engine: Engine, storage: int, scan: int, dalles: list[Dalle], problems: list[DalleProblem],
                counts: dict[str, Any], unchanged: Set[str] = frozenset()) -> None:
    """Replace the storage's records by this scan's, and end the scan as succeeded, in one transaction.

    The records of the `unchanged` paths (dalles reused as they were) stay as they are, with the
    scan that read them; the others are deleted and written again.
    """
    with engine.begin() as conn:
        crs_ids = _crs_ids(conn, (d.crs_wkt for d in dalles if d.path not in unchanged))
        if unchanged:
            stale = [p for p in conn.scalars(select(records.c.path).where(records.c.storage_id == storage))
                     if p not in unchanged]
            for start in range(0, len(stale), 500):
                conn.execute(delete(records).where(records.c.storage_id == storage,
                                                   records.c.path.in_(stale[start:start + 500])))
        else:
            conn.execute(delete(records).where(records.c.storage_id == storage))
        everything: Iterator[Dalle | DalleProblem] = itertools.chain(dalles, problems)
        results = (r for r in everything if r.path not in unchanged)
        while batch := [{"storage_id": storage, **_record_row(r, crs_ids), "scan_id": scan}
                        for r in itertools.islice(results, 5000)]:
            conn.execute(insert(records), batch)
        conn.execute(update(scans).where(scans.c.id == scan).values(
            status="succeeded", step="done", finished_at=now(), heartbeat_at=now(), **counts))
        conn.execute(update(storages).where(storages.c.id == storage).values(
            status="ok", last_success_at=now(), last_error=None, dalles=len(dalles), skipped=len(problems)))


def load_records(engine: Engine, storage: int) -> Iterator[Dalle | DalleProblem]:
    """The records of a storage's last successful scan, streamed."""
    with engine.connect() as conn:
        yield from _stream(conn, select(records).where(records.c.storage_id == storage)
                           .order_by(by_path(conn, records.c.path)))


def by_path(conn: Connection, column: ColumnElement[str]) -> ColumnElement[str]:
    """A path column ordered by code point, as Python sorts, whatever the database's locale."""
    return column.collate("C") if conn.dialect.name == "postgresql" else column


def _stream(conn: Connection, query: Select[Any]) -> Iterator[Dalle | DalleProblem]:
    """The dalles and problems a query on records or scan_results returns, streamed in its order."""
    wkts = {row.id: row.wkt for row in conn.execute(select(crs_table))}
    for row in conn.execution_options(yield_per=5000).execute(query):
        yield _result_of(row, wkts)


def _result_of(row: Row[Any], wkts: dict[int, str]) -> Dalle | DalleProblem:
    if row.status == "valid":
        meta = row.meta if isinstance(row.meta, dict) else json.loads(row.meta)
        c = meta["corners"]
        return Dalle(
            path=row.path, size=row.size, mime=meta["mime"], width=meta["width"],
            height=meta["height"], bands=tuple(meta["bands"]), compression=meta["compression"],
            epsg=meta["epsg"], crs_wkt=wkts[row.crs_id],
            corners=((c[0][0], c[0][1]), (c[1][0], c[1][1]), (c[2][0], c[2][1]), (c[3][0], c[3][1])),
            resolution_cm=meta["resolution_cm"], open=meta["open"], mtime=row.mtime, etag=row.etag)
    return DalleProblem(row.path, row.reason, row.detail or "", row.size, row.mtime, row.etag)


# The distributed service: one scan split into stages that any worker may run, each idempotent.
# State changes of a storage take its row lock first (a write lock on SQLite), then the scan's.


def aware(value: datetime | None) -> datetime | None:
    """A timestamp read back from the store, in UTC (SQLite returns naive ones)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


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


def storage_url(engine: Engine, storage: int) -> str:
    """A storage's masked URL."""
    with engine.connect() as conn:
        return str(conn.execute(select(storages.c.url).where(storages.c.id == storage)).scalar_one())


def save_livrable(engine: Engine, storage: int, source: str, nom: str, projet_id: str | None,
                  projet: dict[str, Any]) -> None:
    """Record which livrable, of which projet, a storage holds; the latest publication wins."""
    values = {"source": source, "nom": nom, "projet_id": projet_id, "projet": projet, "published_at": now()}
    with engine.begin() as conn:
        conn.execute(_insert(conn, livrables).values(storage_id=storage, **values)
                     .on_conflict_do_update(index_elements=["storage_id"], set_=values))


def livrable_of(engine: Engine, storage: int) -> Row[Any] | None:
    """The livrable published for a storage (source, nom, projet document), if any."""
    with engine.connect() as conn:
        return conn.execute(select(livrables).where(livrables.c.storage_id == storage)).first()


def active_scan(engine: Engine, storage: int) -> int | None:
    """The id of the storage's scan not yet ended, if any."""
    with engine.connect() as conn:
        return conn.execute(select(scans.c.id).where(scans.c.storage_id == storage, scans.c.status.in_(ACTIVE))
                            .order_by(scans.c.id.desc()).limit(1)).scalar()


def claim_scan(engine: Engine, storage: int, trigger: str, full: bool) -> int | None:
    """Queue a scan of a storage, unless one is already queued or running (then None)."""
    with engine.begin() as conn:
        if not _lock_storage(conn, storage):
            return None
        if conn.execute(select(scans.c.id).where(scans.c.storage_id == storage, scans.c.status.in_(ACTIVE))
                        .limit(1)).first() is not None:
            return None
        at = now()
        scan = _inserted_id(conn.execute(insert(scans).values(
            storage_id=storage, status="queued", step="listing", started_at=at, heartbeat_at=at)))
        conn.execute(insert(scan_jobs).values(scan_id=scan, trigger=trigger, full=full, queued_at=at))
        conn.execute(update(storages).where(storages.c.id == storage).values(status="queued"))
        return scan


@dataclass(frozen=True, slots=True)
class ScanTarget:
    """What a worker needs to open a scan's storage."""

    scan: int
    storage: int
    url: str
    """The storage's masked URL, its identity."""
    source: str | None
    """The URL to open, credentials included: the published one, else the storage's URL."""
    full: bool


def scan_target(engine: Engine, scan: int) -> ScanTarget | None:
    """The storage a scan reads, None for an unknown scan."""
    with engine.connect() as conn:
        row = conn.execute(
            select(scans.c.storage_id, storages.c.url, livrables.c.source, scan_jobs.c.full)
            .select_from(scans.join(storages, storages.c.id == scans.c.storage_id)
                         .outerjoin(livrables, livrables.c.storage_id == scans.c.storage_id)
                         .outerjoin(scan_jobs, scan_jobs.c.scan_id == scans.c.id))
            .where(scans.c.id == scan)).first()
    if row is None:
        return None
    source = row.source or (row.url if "***" not in row.url else None)
    return ScanTarget(scan, row.storage_id, row.url, source, bool(row.full))


def begin_listing(engine: Engine, scan: int) -> bool:
    """Mark a queued scan as running its listing; False when it is past that step or ended."""
    with engine.begin() as conn:
        storage = conn.execute(select(scans.c.storage_id).where(scans.c.id == scan)).scalar()
        if storage is None or not _lock_storage(conn, storage):
            return False
        row = _lock_scan(conn, scan)
        if row is None or row.status not in ("queued", "running") or row.step != "listing":
            return False
        values: dict[str, Any] = {"status": "running", "heartbeat_at": now()}
        if row.status == "queued":
            values["started_at"] = now()
        conn.execute(update(scans).where(scans.c.id == scan).values(**values))
        conn.execute(update(storages).where(storages.c.id == storage).values(status="running"))
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
        if row is None or row.status != "running" or row.step != "listing":
            return False
        _drop_work(conn, scan)
        rows = [{"scan_id": scan, "path": f.entry.path, "size": f.entry.size, "mtime": f.entry.mtime,
                 "etag": f.entry.etag, "role": f.role, "stem": f.stem, "chunk": f.chunk} for f in files]
        for start in range(0, len(rows), 5000):
            conn.execute(insert(scan_files), rows[start:start + 5000])
        if chunk_sizes:
            conn.execute(insert(scan_chunks), [{"scan_id": scan, "chunk": n, "entries": size, "status": "pending"}
                                               for n, size in enumerate(chunk_sizes)])
        reused = sum(1 for f in files if f.role == "reused")
        conn.execute(update(scans).where(scans.c.id == scan).values(
            step="reading", listed=listed, reused=reused, read=0, skipped=0, heartbeat_at=now()))
        conn.execute(update(scan_jobs).where(scan_jobs.c.scan_id == scan).values(
            to_read=sum(chunk_sizes), chunks=len(chunk_sizes)))
        return True


def pending_chunks(engine: Engine, scan: int) -> list[int]:
    """The chunks of a scan whose results are not stored yet."""
    with engine.connect() as conn:
        return list(conn.execute(select(scan_chunks.c.chunk).where(
            scan_chunks.c.scan_id == scan, scan_chunks.c.status == "pending").order_by(scan_chunks.c.chunk)).scalars())


def _files(rows: Iterable[Row[Any]]) -> list[FileEntry]:
    return [FileEntry(row.path, row.size, row.mtime, row.etag) for row in rows]


def chunk_files(engine: Engine, scan: int, chunk: int) -> list[FileEntry] | None:
    """A chunk's dalles and their sidecars; None when the scan is not reading or the chunk is done."""
    with engine.connect() as conn:
        state = conn.execute(
            select(scans.c.status, scans.c.step, scan_chunks.c.status.label("chunk_status"))
            .select_from(scans.join(scan_chunks, scan_chunks.c.scan_id == scans.c.id))
            .where(scans.c.id == scan, scan_chunks.c.chunk == chunk)).first()
        if state is None or state.status != "running" or state.step != "reading" or state.chunk_status == "done":
            return None
        stems = select(scan_files.c.stem).where(scan_files.c.scan_id == scan, scan_files.c.chunk == chunk)
        return _files(conn.execute(select(scan_files).where(
            scan_files.c.scan_id == scan,
            or_(scan_files.c.chunk == chunk, and_(scan_files.c.role == "sidecar", scan_files.c.stem.in_(stems))))
            .order_by(scan_files.c.path)))


def sidecar_files(engine: Engine, scan: int, stems: Iterable[str]) -> list[FileEntry]:
    """The sidecars a scan listed for these dalle stems."""
    wanted = sorted(set(stems))
    if not wanted:
        return []
    with engine.connect() as conn:
        return _files(conn.execute(select(scan_files).where(
            scan_files.c.scan_id == scan, scan_files.c.role == "sidecar", scan_files.c.stem.in_(wanted))))


def _upsert_results(conn: Connection, storage: int, scan: int, results: Sequence[Dalle | DalleProblem]) -> None:
    """Write results keyed by (storage, scan, path): a repeated write replaces, never duplicates."""
    if not results:
        return
    crs_ids = _crs_ids(conn, (r.crs_wkt for r in results if isinstance(r, Dalle)))
    rows = [{"storage_id": storage, "scan_id": scan, **_record_row(r, crs_ids)} for r in results]
    stmt = _insert(conn, scan_results)
    columns = ("size", "mtime", "etag", "status", "reason", "detail", "crs_id", "meta")
    stmt = stmt.on_conflict_do_update(index_elements=["storage_id", "scan_id", "path"],
                                      set_={c: stmt.excluded[c] for c in columns})
    for start in range(0, len(rows), 5000):
        conn.execute(stmt, rows[start:start + 5000])


@dataclass(frozen=True, slots=True)
class ChunkStored:
    """What storing a chunk's results did."""

    stored: bool
    """False when the scan had ended or moved on: nothing was written."""
    first: bool
    """True when this call completed the chunk (a repeated call only rewrites the same rows)."""
    pending: int
    """Chunks of the scan still without results."""


def store_chunk(engine: Engine, storage: int, scan: int, chunk: int, results: Sequence[Dalle | DalleProblem],
                worker: str) -> ChunkStored:
    """Store a chunk's results, and count it done, in one transaction; only while the scan is reading."""
    with engine.begin() as conn:
        row = _lock_scan(conn, scan)
        if row is None or row.status != "running" or row.step != "reading":
            return ChunkStored(False, False, -1)
        _upsert_results(conn, storage, scan, results)
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
        conn.execute(update(scans).where(scans.c.id == scan, scans.c.status.in_(ACTIVE)).values(heartbeat_at=now()))


def claim_finalize(engine: Engine, scan: int) -> bool:
    """Move a scan whose chunks are all stored from reading to aggregating: True for the one caller that does."""
    with engine.begin() as conn:
        row = _lock_scan(conn, scan)
        if row is None or row.status != "running" or row.step != "reading":
            return False
        pending = conn.execute(select(func.count()).select_from(scan_chunks).where(
            scan_chunks.c.scan_id == scan, scan_chunks.c.status == "pending")).scalar_one()
        if pending:
            return False
        conn.execute(update(scans).where(scans.c.id == scan).values(
            status="aggregating", step="aggregating", heartbeat_at=now()))
        return True


def release_finalize(engine: Engine, scan: int) -> bool:
    """Give back an aggregation that failed halfway, so that a retry can claim it again."""
    with engine.begin() as conn:
        row = _lock_scan(conn, scan)
        if row is None or row.status != "aggregating":
            return False
        conn.execute(update(scans).where(scans.c.id == scan).values(status="running", step="reading"))
        return True


def scan_row(engine: Engine, scan: int) -> Row[Any] | None:
    """A scan's row with its job's columns."""
    with engine.connect() as conn:
        return conn.execute(select(scans, scan_jobs.c.full, scan_jobs.c.trigger, scan_jobs.c.to_read,
                                   scan_jobs.c.chunks, scan_jobs.c.queued_at)
                            .select_from(scans.outerjoin(scan_jobs, scan_jobs.c.scan_id == scans.c.id))
                            .where(scans.c.id == scan)).first()


def scan_results_of(engine: Engine, storage: int, scan: int) -> list[Dalle | DalleProblem]:
    """The results the chunks of a scan stored, by path."""
    with engine.connect() as conn:
        return list(_stream(conn, select(scan_results).where(
            scan_results.c.storage_id == storage, scan_results.c.scan_id == scan)
            .order_by(by_path(conn, scan_results.c.path))))


def replace_results(engine: Engine, storage: int, scan: int, results: Sequence[Dalle | DalleProblem]) -> bool:
    """Replace some results of a scan being aggregated; False when it is no longer aggregating."""
    with engine.begin() as conn:
        row = _lock_scan(conn, scan)
        if row is None or row.status != "aggregating":
            return False
        _upsert_results(conn, storage, scan, results)
        return True


def _reused(scan: int) -> ColumnElement[bool]:
    """The records a scan reuses: those it listed unchanged."""
    return exists().where(scan_files.c.scan_id == scan, scan_files.c.path == records.c.path,
                          scan_files.c.role == "reused")


def new_records(engine: Engine, storage: int, scan: int) -> Iterator[Dalle | DalleProblem]:
    """The records a scan being aggregated will leave: those it reuses and those it read, by path."""
    columns = ("path", "size", "mtime", "etag", "status", "reason", "detail", "crs_id", "meta")
    kept = select(*(records.c[c] for c in columns)).where(records.c.storage_id == storage, _reused(scan))
    read = select(*(scan_results.c[c] for c in columns)).where(
        scan_results.c.storage_id == storage, scan_results.c.scan_id == scan)
    both = union_all(kept, read).subquery()
    with engine.connect() as conn:
        yield from _stream(conn, select(both).order_by(by_path(conn, both.c.path)))


def commit_scan(engine: Engine, storage: int, scan: int, feature: dict[str, Any] | None,
                counts: dict[str, Any]) -> bool:
    """End an aggregated scan as succeeded, exactly once: its records replace the storage's.

    One transaction drops the records the scan did not reuse, inserts those it read, keeps the
    livrable's feature and counts, and forgets the scan's work tables. Returns False, changing
    nothing, when the scan is no longer aggregating (another worker committed it).
    """
    with engine.begin() as conn:
        _lock_storage(conn, storage)
        won = conn.execute(update(scans).where(scans.c.id == scan, scans.c.status == "aggregating").values(
            status="succeeded", step="done", finished_at=now(), heartbeat_at=now(), error=None, **counts)).rowcount
        if not won:
            return False
        conn.execute(delete(records).where(records.c.storage_id == storage, ~_reused(scan)))
        columns = ["storage_id", "path", "size", "mtime", "etag", "status", "reason", "detail", "crs_id", "meta"]
        conn.execute(insert(records).from_select(
            [*columns, "scan_id"],
            select(*(scan_results.c[c] for c in columns), literal(scan)).where(
                scan_results.c.storage_id == storage, scan_results.c.scan_id == scan)))
        if feature is not None:
            conn.execute(update(livrables).where(livrables.c.storage_id == storage).values(feature=feature))
        totals = conn.execute(select(
            func.count().filter(records.c.status == "valid"), func.count().filter(records.c.status != "valid"))
            .where(records.c.storage_id == storage)).one()
        conn.execute(update(storages).where(storages.c.id == storage).values(
            status="ok", last_success_at=now(), last_error=None, dalles=totals[0], skipped=totals[1]))
        _drop_work(conn, scan)
        return True


def end_scan_failed(engine: Engine, scan: int, error: str) -> bool:
    """End a scan not yet ended as failed, keeping the error; the storage keeps its last good records."""
    with engine.begin() as conn:
        storage = conn.execute(select(scans.c.storage_id).where(scans.c.id == scan)).scalar()
        if storage is None:
            return False
        _lock_storage(conn, storage)
        if not conn.execute(update(scans).where(scans.c.id == scan, scans.c.status.in_(ACTIVE)).values(
                status="failed", finished_at=now(), error=error)).rowcount:
            return False
        conn.execute(update(storages).where(storages.c.id == storage).values(status="failed", last_error=error))
        _drop_work(conn, scan)
        return True


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
            scans.c.status.in_(ACTIVE), scans.c.heartbeat_at < before).order_by(scans.c.id)).scalars())
    found = []
    for scan in candidates:
        with engine.begin() as conn:
            storage = conn.execute(select(scans.c.storage_id).where(scans.c.id == scan)).scalar_one()
            _lock_storage(conn, storage)
            if not conn.execute(update(scans).where(
                    scans.c.id == scan, scans.c.status.in_(ACTIVE), scans.c.heartbeat_at < before)
                    .values(heartbeat_at=now())).rowcount:
                continue
            row = _lock_scan(conn, scan)
            assert row is not None
            if row.trigger is None:
                error = f"abandoned: no heartbeat since {aware(row.heartbeat_at)}"
                conn.execute(update(scans).where(scans.c.id == scan).values(
                    status="failed", finished_at=now(), error=error))
                conn.execute(update(storages).where(storages.c.id == storage).values(status="failed",
                                                                                     last_error=error))
                found.append(Stalled(scan, storage, "failed"))
                continue
            if row.status == "queued" or row.step == "listing":
                found.append(Stalled(scan, storage, "list"))
                continue
            if row.status == "aggregating":
                conn.execute(update(scans).where(scans.c.id == scan).values(status="running", step="reading"))
            pending = tuple(conn.execute(select(scan_chunks.c.chunk).where(
                scan_chunks.c.scan_id == scan, scan_chunks.c.status == "pending")
                .order_by(scan_chunks.c.chunk)).scalars())
            found.append(Stalled(scan, storage, "read" if pending else "finalize", pending))
    return found


def due_storages(engine: Engine, before: datetime, limit: int) -> list[int]:
    """Published storages without a scan started since `before`, longest-waiting first."""
    last = (select(scans.c.storage_id, func.max(scans.c.started_at).label("last"))
            .group_by(scans.c.storage_id).subquery())
    busy = exists().where(scans.c.storage_id == storages.c.id, scans.c.status.in_(ACTIVE))
    with engine.connect() as conn:
        return list(conn.execute(
            select(storages.c.id)
            .join(livrables, livrables.c.storage_id == storages.c.id)
            .outerjoin(last, last.c.storage_id == storages.c.id)
            .where(or_(last.c.last.is_(None), last.c.last < before), ~busy)
            .order_by(last.c.last.asc().nulls_first(), storages.c.id).limit(limit)).scalars())
