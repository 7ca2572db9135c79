"""The store's engine: SQLite by default, PostgreSQL for a fleet; its schema created or migrated.

Also the few helpers every store module shares: the time, timestamps read back in UTC, the
dialect's upsert, paths ordered as Python orders them.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, func, select
from sqlalchemy.engine import CursorResult, make_url
from sqlalchemy.sql.elements import ColumnElement

from indexer.errors import ConfigError
from indexer.store.schema import metadata

MIGRATION_LOCK = 0x50435253  # "PCRS"
ADOPTABLE: tuple[tuple[str, tuple[tuple[str, str | None], ...]], ...] = (
    ("0005", (("livrables", "id"), ("storages", "secret"), ("storages", "unpublished_at"))),
    ("0004", (("livrables", "id"), ("storages", "secret"))),  # 0004 adds a PostgreSQL index only
    ("0003", (("livrables", "id"), ("storages", "secret"))),
    ("0002", (("livrables", None),)),
    ("0001", (("storages", None),)),
)
"""Revisions a store created without Alembic is at, newest first, by the tables (and columns) the revision made."""
HEAD = ADOPTABLE[0][0]


def now() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    """A timestamp read back from the store, in UTC (SQLite returns naive ones)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def create_store(url: str) -> Engine:
    """An engine on the store, its tables created if missing (SQLite folder included).

    Raises `ConfigError` for a store that is neither SQLite nor PostgreSQL, or a SQLite folder
    that cannot be created.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"unsupported state store {parsed.get_backend_name()!r}: use SQLite or PostgreSQL")
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            blocking = next(p for p in (folder, *folder.parents) if p.exists())
            raise ConfigError(f"cannot create the state store's folder {folder}: {blocking} is not a folder") from exc
        except OSError as exc:
            raise ConfigError(f"cannot create the state store's folder {folder}: "
                              f"{(exc.strerror or str(exc)).lower()}") from exc
    engine = create_engine(url, future=True, pool_pre_ping=not parsed.drivername.startswith("sqlite"))
    try:
        if parsed.drivername.startswith("sqlite"):
            event.listen(engine, "connect", _sqlite_pragmas)
            with _creation_lock(parsed.database):
                metadata.create_all(engine)
                if _revision(engine) != HEAD:  # a store of an earlier version: bring its tables up to date
                    migrate(engine)
        else:
            migrate(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


@contextmanager
def _creation_lock(database: str | None) -> Iterator[None]:
    """Serialise the creation of a SQLite store's tables between processes (a lock file beside it):
    two commands starting at once on a store that does not exist yet must not both create them."""
    if database in (None, "", ":memory:"):
        yield
        return
    lock = Path(database).expanduser().with_name(Path(database).name + ".lock")
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)


def migrate(engine: Engine) -> None:
    """Bring the store's schema to the latest Alembic revision (``indexer/store/migrations``).

    Safe to run from many processes at once on PostgreSQL (an advisory lock serialises them). A
    store whose tables were created without Alembic (``metadata.create_all``, as `create_store`
    does for SQLite) is first stamped with the latest revision whose tables it has.
    """
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    config = Config()
    config.set_main_option("script_location", "indexer.store:migrations")
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK)))
        config.attributes["connection"] = conn
        if "alembic_version" not in inspect(conn).get_table_names():
            adopted = _adoptable(conn)
            if adopted is not None:
                command.stamp(config, adopted)
        command.upgrade(config, "head")


def _adoptable(conn: Connection) -> str | None:
    """The latest revision whose tables (and columns) a store made without Alembic has."""
    from sqlalchemy import inspect

    found = inspect(conn)
    tables = set(found.get_table_names())

    def has(table: str, column: str | None) -> bool:
        return table in tables and (column is None or column in {c["name"] for c in found.get_columns(table)})

    return next((revision for revision, marks in ADOPTABLE if all(has(*mark) for mark in marks)), None)


def _revision(engine: Engine) -> str | None:
    """The revision a store is at: Alembic's, else the one its tables show."""
    from sqlalchemy import inspect

    with engine.connect() as conn:
        if "alembic_version" in inspect(conn).get_table_names():
            revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
            return None if revision is None else str(revision)
        return _adoptable(conn)


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the store is at."""
    with engine.connect() as conn:
        revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    return None if revision is None else str(revision)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")  # first: switching to WAL waits for other connections too
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def inserted_id(result: CursorResult[Any]) -> int:
    """The primary key of the row an INSERT of one row created."""
    key = result.inserted_primary_key
    if key is None:
        raise RuntimeError("the insert returned no primary key")
    return int(key[0])


def upsert(conn: Connection, table: Table) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_nothing`` and ``on_conflict_do_update``."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise ConfigError(f"unsupported state store {conn.dialect.name!r}: use SQLite or PostgreSQL")


def by_path(conn: Connection, column: ColumnElement[str]) -> ColumnElement[str]:
    """A path column ordered by code point, as Python sorts, whatever the database's locale."""
    return column.collate("C") if conn.dialect.name == "postgresql" else column
