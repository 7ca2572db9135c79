"""What the operator's commands read from the state store: storages, scan progress, the export.

Queries only; the commands in `cli.py` format what these return. The export streams: features
are written one at a time as rows come from the database, so its memory does not grow with the
number of dalles.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, desc, func, select

from indexer import state
from indexer.export import atomic_writer, dalle_features, write_feature_collection
from indexer.jobs import StorageNotFound
from indexer.models import Dalle
from indexer.projet import Livrable, Projet

log = logging.getLogger(__name__)


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
    livrable: str | None

    def as_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {"id": self.id, "url": self.url, "status": self.status,
                "last_success_at": self.last_success_at.isoformat() if self.last_success_at else None,
                "dalles": self.dalles, "skipped": self.skipped, "last_error": self.last_error,
                "livrable": self.livrable}


def storage_rows(engine: Engine, failed_only: bool = False) -> list[StorageRow]:
    """Every storage of the store, by id (only the failed ones with `failed_only`)."""
    s = state.storages
    query = (select(s, state.livrables.c.nom).select_from(
        s.outerjoin(state.livrables, state.livrables.c.storage_id == s.c.id)).order_by(s.c.id))
    if failed_only:
        query = query.where(s.c.status == "failed")
    with engine.connect() as conn:
        return [StorageRow(r.id, r.url, r.status, state.aware(r.last_success_at), r.dalles, r.skipped,
                           r.last_error, r.nom) for r in conn.execute(query)]


def resolve_storage(engine: Engine, ref: str) -> int:
    """A storage's id from its id or its URL (as `storages` shows it, trailing slash optional)."""
    s = state.storages
    with engine.connect() as conn:
        if ref.isdigit():
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
        return self.status in state.ACTIVE

    def as_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        values: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            values[name] = value.isoformat() if isinstance(value, datetime) else value
        return values


def progress(engine: Engine, storage: int) -> Progress:
    """The progress of a storage's latest scan (its counts are live while it runs)."""
    s, sc, jobs_table, chunks = state.storages, state.scans, state.scan_jobs, state.scan_chunks
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
    chunks_done = int(done) if row.status in state.ACTIVE else (row.chunks or 0)
    return Progress(storage, st.url, row.id, row.status, row.step, row.trigger, row.listed, row.to_read, row.read,
                    row.reused, row.skipped, row.chunks, chunks_done, state.aware(row.started_at),
                    state.aware(row.heartbeat_at), state.aware(row.finished_at), row.error)


def _published(engine: Engine) -> list[tuple[int, dict[str, Any], str, dict[str, Any]]]:
    """(storage id, projet document, livrable nom, feature) of each livrable published, by storage id."""
    lv = state.livrables
    with engine.connect() as conn:
        return [(r.storage_id, r.projet, r.nom, r.feature) for r in conn.execute(
            select(lv.c.storage_id, lv.c.projet, lv.c.nom, lv.c.feature)
            .where(lv.c.feature.is_not(None)).order_by(lv.c.storage_id))]


def _valid_dalles(engine: Engine, storage: int) -> Iterator[Dalle]:
    for record in state.load_records(engine, storage):
        if isinstance(record, Dalle):
            yield record


def export_all(engine: Engine, out: Path) -> dict[str, Any]:
    """Write ``dalles.geojson`` and ``livrables.geojson`` of every published livrable into `out`.

    Livrables are taken by storage id, dalles by path within each: the two files hold what each
    storage's own published files hold, in one FeatureCollection each. Streamed: only one row is
    held at a time, whatever the number of dalles.
    """
    published = _published(engine)

    def features() -> Iterator[dict[str, Any]]:
        for storage, document, nom, _feature in published:
            projet = Projet.model_validate(document)
            livrable: Livrable | None = next((liv for liv in projet.livrables if liv.nom == nom), None)
            yield from dalle_features(_valid_dalles(engine, storage), projet, livrable)

    paths = {"dalles": out / "dalles.geojson", "livrables": out / "livrables.geojson"}
    with atomic_writer(paths["dalles"]) as f:
        dalles = write_feature_collection(f, features())
    with atomic_writer(paths["livrables"]) as f:
        livrables = write_feature_collection(f, (feature for *_, feature in published))
    log.info("exported", extra={"livrables": livrables, "dalles": dalles})
    return {"livrables": livrables, "dalles": dalles, "outputs": {k: str(v) for k, v in paths.items()}}
