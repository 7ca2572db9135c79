"""The store's tables: storages, their scans, one record per file, and the service's work tables.

Migrated with Alembic (`indexer/store/migrations`); SQLite stores of ``pcrs-indexer index`` are
created from these definitions directly.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()


def _record_columns() -> list[Column[Any]]:
    """The columns of one file's record, fresh for each table keeping records (a column has one table)."""
    return [
        Column("size", BigInteger),
        Column("mtime", String(64)),
        Column("etag", String(256)),
        Column("status", String(16), nullable=False, comment="valid or skipped"),
        Column("reason", String(32)),
        Column("detail", Text),
        Column("crs_id", ForeignKey("crs.id")),
        Column("meta", JSON, comment="the dalle's header metadata"),
    ]


RECORD_COLUMNS = tuple(column.name for column in _record_columns())
"""The names of a record's columns besides its keys, in ``records`` and ``scan_results`` alike."""

storages = Table(
    "storages", metadata,
    Column("id", Integer, primary_key=True),
    Column("url", Text, nullable=False, unique=True, comment="root URL, credentials masked"),
    Column("status", String(16), nullable=False, default="new"),
    Column("last_success_at", DateTime(timezone=True)),
    Column("last_error", Text),
    Column("dalles", Integer, nullable=False, default=0),
    Column("skipped", Integer, nullable=False, default=0),
    Column("source", Text, comment="the URL workers open, when it has no credential"),
    Column("secret", Text, comment="the URL workers open, when it has credentials: encrypted (Fernet)"),
    Column("unpublished_at", DateTime(timezone=True), comment="when a livrable stored here was last unpublished"),
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
    *_record_columns(),
    Column("scan_id", Integer, nullable=False),
    UniqueConstraint("storage_id", "path", name="uq_records_storage_path"),
)
Index("ix_records_storage_path_c", records.c.storage_id, records.c.path.collate("C")).ddl_if(dialect="postgresql")
"""The export's keyset walk through a storage's records, by path in code point order: PostgreSQL's
primary key follows the database's collation (SQLite's is binary already)."""

# The distributed service's tables: what was published, and each scan's work in progress.

livrables = Table(
    "livrables", metadata,
    Column("id", Integer, primary_key=True),
    Column("storage_id", ForeignKey("storages.id", ondelete="CASCADE"), nullable=False, index=True,
           comment="where it is stored; several livrables may share a storage"),
    Column("projet_id", Text, nullable=False, comment="its projet's _id (its nom when it has none)"),
    Column("nom", Text, nullable=False),
    Column("projet", JSON, nullable=False,
           comment="the projet document with this livrable only, without stockage_params: what outputs show"),
    Column("published_at", DateTime(timezone=True), nullable=False),
    Column("feature", JSON, comment="its livrables.geojson feature, as of its storage's last successful scan"),
    UniqueConstraint("projet_id", "nom", name="uq_livrables_projet_nom"),
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
    *_record_columns(),
)
