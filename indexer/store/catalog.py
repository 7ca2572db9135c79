"""The storages of the store and the livrables published on them: identities, documents, sealed credentials."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Row, case, delete, select, update

from indexer.models import StorageStatus
from indexer.store.engine import now, upsert
from indexer.store.schema import livrables, storages


def storage_id(engine: Engine, url: str) -> int:
    """The id of a storage by its masked URL, created on first sight."""
    with engine.begin() as conn:
        found = conn.execute(select(storages.c.id).where(storages.c.url == url)).scalar()
        if found is not None:
            return int(found)
        # Two publications of one storage at once: the second insert does nothing, both read the id.
        conn.execute(upsert(conn, storages).values(url=url, status=StorageStatus.NEW, dalles=0, skipped=0)
                     .on_conflict_do_nothing(index_elements=["url"]))
        return int(conn.execute(select(storages.c.id).where(storages.c.url == url)).scalar_one())


def register_storage(engine: Engine, url: str, source: str | None, sealed: str | None) -> tuple[int, bool]:
    """Record the storage at `url` (created on first sight) and the URL workers open; returns (id, created).

    The URL to open is `source` when it has no credential, else `sealed`, encrypted; the latest
    registration wins, as the latest publication does.
    """
    with engine.begin() as conn:
        found = conn.execute(select(storages.c.id).where(storages.c.url == url)).scalar()
        created = False
        if found is None:  # of two registrations at once, one inserts and the other reads its id
            created = bool(conn.execute(upsert(conn, storages).values(
                url=url, status=StorageStatus.NEW, dalles=0, skipped=0)
                .on_conflict_do_nothing(index_elements=["url"])).rowcount)
            found = conn.execute(select(storages.c.id).where(storages.c.url == url)).scalar_one()
        conn.execute(update(storages).where(storages.c.id == found).values(source=source, secret=sealed))
    return int(found), created


def storage_url(engine: Engine, storage: int) -> str:
    """A storage's masked URL."""
    with engine.connect() as conn:
        return str(conn.execute(select(storages.c.url).where(storages.c.id == storage)).scalar_one())


def publish_livrable(engine: Engine, url: str, source: str | None, sealed: str | None, projet_id: str, nom: str,
                     document: dict[str, Any]) -> int:
    """Record a livrable of a projet on the storage at `url` (created on first sight); returns the storage's id.

    The URL workers open is `source` when it has no credential, else `sealed`, encrypted. The
    latest publication wins: of the storage's source, and of the livrable's storage and
    document. Several livrables may share a storage; a livrable published at a new storage
    leaves the old one, and its feature is dropped until its new storage's next successful scan.
    """
    storage = storage_id(engine, url)
    values = {"storage_id": storage, "projet": document, "published_at": now()}
    with engine.begin() as conn:
        conn.execute(update(storages).where(storages.c.id == storage).values(source=source, secret=sealed))
        conn.execute(upsert(conn, livrables).values(projet_id=projet_id, nom=nom, **values).on_conflict_do_update(
            index_elements=["projet_id", "nom"],
            set_={**values, "feature": case((livrables.c.storage_id == storage, livrables.c.feature), else_=None)}))
    return storage


def unpublish(engine: Engine, projet_id: str, nom: str) -> int | None:
    """Remove a livrable from the store's publications; returns its storage's id, None when it was not published.

    The storage, its records and its scans stay: another livrable may share it, and publishing
    the livrable again reuses them.
    """
    with engine.begin() as conn:
        storage = conn.execute(select(livrables.c.storage_id).where(
            livrables.c.projet_id == projet_id, livrables.c.nom == nom)).scalar()
        if storage is not None:
            conn.execute(delete(livrables).where(livrables.c.projet_id == projet_id, livrables.c.nom == nom))
            conn.execute(update(storages).where(storages.c.id == storage).values(unpublished_at=now()))
    return None if storage is None else int(storage)


def livrables_of(engine: Engine, storage: int) -> list[Row[Any]]:
    """The livrables published on a storage (id, nom, projet document), the latest published first."""
    with engine.connect() as conn:
        return list(conn.execute(select(livrables.c.id, livrables.c.nom, livrables.c.projet)
                                 .where(livrables.c.storage_id == storage)
                                 .order_by(livrables.c.published_at.desc(), livrables.c.id.desc())))
