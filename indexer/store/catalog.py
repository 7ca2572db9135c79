"""The storages of the store and the livrables published on them: identities and documents."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Row, select

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


def storage_url(engine: Engine, storage: int) -> str:
    """A storage's masked URL."""
    with engine.connect() as conn:
        return str(conn.execute(select(storages.c.url).where(storages.c.id == storage)).scalar_one())


def save_livrable(engine: Engine, storage: int, source: str, nom: str, projet_id: str | None,
                  projet: dict[str, Any]) -> None:
    """Record which livrable, of which projet, a storage holds; the latest publication wins."""
    values = {"source": source, "nom": nom, "projet_id": projet_id, "projet": projet, "published_at": now()}
    with engine.begin() as conn:
        conn.execute(upsert(conn, livrables).values(storage_id=storage, **values)
                     .on_conflict_do_update(index_elements=["storage_id"], set_=values))


def livrable_of(engine: Engine, storage: int) -> Row[Any] | None:
    """The livrable published for a storage (source, nom, projet document), if any."""
    with engine.connect() as conn:
        return conn.execute(select(livrables).where(livrables.c.storage_id == storage)).first()
