"""The state store: storages, their scans and one record per file, with SQLAlchemy.

A SQLite file by default; PostgreSQL when many workers share it. The per-file records let a
re-scan reuse every dalle whose size, modification time and ETag did not change, and keep the last
good result of a storage that cannot be reached.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import CursorResult, make_url

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
    engine = create_engine(url, future=True)
    if parsed.drivername.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    metadata.create_all(engine)
    return engine


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
        return _inserted_id(conn.execute(insert(storages).values(url=url, status="new", dalles=0, skipped=0)))


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
    known = {row.wkt: row.id for row in conn.execute(select(crs_table).where(crs_table.c.wkt.in_(wanted)))}
    for wkt in sorted(wanted - known.keys()):
        known[wkt] = _inserted_id(conn.execute(insert(crs_table).values(wkt=wkt)))
    return known


def finish_scan(engine: Engine, storage: int, scan: int, dalles: list[Dalle], problems: list[DalleProblem],
                counts: dict[str, Any]) -> None:
    """Replace the storage's records by this scan's, and end the scan as succeeded, in one transaction."""
    with engine.begin() as conn:
        crs_ids = _crs_ids(conn, (d.crs_wkt for d in dalles))
        conn.execute(delete(records).where(records.c.storage_id == storage))
        rows = [{"storage_id": storage, "path": d.path, "size": d.size, "mtime": d.mtime, "etag": d.etag,
                 "status": "valid", "reason": None, "detail": None, "crs_id": crs_ids[d.crs_wkt],
                 "meta": _dalle_meta(d), "scan_id": scan} for d in dalles]
        rows += [{"storage_id": storage, "path": p.path, "size": p.size, "mtime": p.mtime, "etag": p.etag,
                  "status": "skipped", "reason": p.reason, "detail": p.detail, "crs_id": None, "meta": None,
                  "scan_id": scan} for p in problems]
        for start in range(0, len(rows), 5000):
            conn.execute(insert(records), rows[start:start + 5000])
        conn.execute(update(scans).where(scans.c.id == scan).values(
            status="succeeded", step="done", finished_at=now(), heartbeat_at=now(), **counts))
        conn.execute(update(storages).where(storages.c.id == storage).values(
            status="ok", last_success_at=now(), last_error=None, dalles=len(dalles), skipped=len(problems)))


def load_records(engine: Engine, storage: int) -> Iterator[Dalle | DalleProblem]:
    """The records of a storage's last successful scan, streamed."""
    with engine.connect() as conn:
        wkts = {row.id: row.wkt for row in conn.execute(select(crs_table))}
        result = conn.execution_options(yield_per=5000).execute(
            select(records).where(records.c.storage_id == storage).order_by(records.c.path))
        for row in result:
            if row.status == "valid":
                meta = row.meta if isinstance(row.meta, dict) else json.loads(row.meta)
                c = meta["corners"]
                yield Dalle(
                    path=row.path, size=row.size, mime=meta["mime"], width=meta["width"],
                    height=meta["height"], bands=tuple(meta["bands"]), compression=meta["compression"],
                    epsg=meta["epsg"], crs_wkt=wkts[row.crs_id],
                    corners=((c[0][0], c[0][1]), (c[1][0], c[1][1]), (c[2][0], c[2][1]), (c[3][0], c[3][1])),
                    resolution_cm=meta["resolution_cm"], open=meta["open"], mtime=row.mtime, etag=row.etag)
            else:
                yield DalleProblem(row.path, row.reason, row.detail or "", row.size, row.mtime, row.etag)
