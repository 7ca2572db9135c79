"""The export of the whole store: every published livrable and its dalles, streamed in pages.

What `pcrs-indexer export` writes and the PCRS data API serves, read from the store a page at a
time (keyset pagination: livrables by storage id then id, dalles by path within each storage),
each page one short query, so memory stays flat whatever the count and no cursor or transaction
stays open while a slow reader consumes the features:

- ``livrable_features(engine, initiative=None, bbox=None, *, page=LIVRABLE_PAGE) -> Iterator[dict]``:
  the features of ``livrables.geojson``, by storage id, then in the order the livrables were first
  published.
- ``dalle_features(engine, initiative=None, bbox=None, *, page=DALLE_PAGE, livrable_page=LIVRABLE_PAGE)
  -> Iterator[dict]``:
  the features of ``dalles.geojson``: each livrable's valid dalles, by path, in the order of its
  livrable (a storage shared by several livrables gives its dalles once per livrable, each with
  its own projet fields).
- ``initiative``: a projet's ``_id`` (the ``initiative`` of the PCRS data API, ``idPCRS`` of its
  dalles): only that projet's livrables and their dalles.
- ``bbox``: ``(min lon, min lat, max lon, max lat)`` in WGS84: only the livrables whose emprise's
  box meets it, and the dalles whose footprint's box does (edges included). `check_bbox` says
  whether a box is one.
- ``fingerprint(engine) -> str``: a short hex string that changes whenever a livrable is
  published, moved or unpublished, or a scan succeeds (records and features replaced): an ETag.
  Three aggregate queries (livrables, scans, storages), whatever the number of dalles.
- ``last_modified(engine) -> datetime | None``: the latest publication, unpublication or
  successful scan, None when the store has had none.
- ``dalle_pages(...)``: the dalles of ``dalle_features`` a page at a time (rings and properties), for
  the columnar formats.
- ``export_all(engine, out, fmt="geojson") -> dict``: both files written into `out`
  (`indexer.publish.OutputSet`), as GeoJSON, FlatGeobuf or GeoParquet (`indexer.columnar`).

A page boundary may fall while a scan of the storage is committed: the dalles before it are then
the previous scan's and those after it the new one's, each path once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import shapely.geometry
from sqlalchemy import Engine, and_, func, or_, select

from indexer import geojson
from indexer.geojson import BBox
from indexer.models import Dalle, ScanStatus
from indexer.projet import Livrable, Projet
from indexer.publish import OutputSet
from indexer.store import records
from indexer.store.engine import aware
from indexer.store.schema import livrables, scans, storages

log = logging.getLogger(__name__)

LIVRABLE_PAGE = 100
"""Livrables read per query (their features hold their emprise: up to a few MB each)."""
DALLE_PAGE = 5000
"""Dalle records read per query."""
MARGIN = 1e-6
"""Degrees the box of a livrable's emprise is widened by when picking the livrables whose dalles
may meet a bbox: the emprise is densified and rounded, a dalle's corners are not."""


def check_bbox(bbox: tuple[float, ...]) -> BBox:
    """`bbox` as a `BBox`: four finite numbers, min before max; ValueError otherwise."""
    if len(bbox) != 4 or not all(isinstance(v, int | float) and math.isfinite(v) for v in bbox):
        raise ValueError("a bbox is four finite numbers: min lon, min lat, max lon, max lat")
    west, south, east, north = (float(v) for v in bbox)
    if west > east or south > north:
        raise ValueError("a bbox's minimum comes before its maximum: min lon, min lat, max lon, max lat")
    return west, south, east, north


@dataclass(frozen=True, slots=True)
class _Published:
    """One published livrable as the export reads it."""

    storage: int
    id: int
    document: dict[str, Any]
    nom: str
    feature: dict[str, Any] | None
    """Its ``livrables.geojson`` feature; None when it was not asked for."""


def _published(engine: Engine, initiative: str | None, page: int, with_features: bool) -> Iterator[_Published]:
    """The livrables published and scanned, by storage id then id, `page` per query."""
    lv = livrables
    columns = [lv.c.storage_id, lv.c.id, lv.c.projet, lv.c.nom, *([lv.c.feature] if with_features else [])]
    query = select(*columns).where(lv.c.feature.is_not(None)).order_by(lv.c.storage_id, lv.c.id).limit(page)
    if initiative is not None:
        query = query.where(lv.c.projet_id == initiative)
    after: tuple[int, int] | None = None
    while True:
        keyset = query if after is None else query.where(
            or_(lv.c.storage_id > after[0], and_(lv.c.storage_id == after[0], lv.c.id > after[1])))
        with engine.connect() as conn:
            rows = list(conn.execute(keyset))
        for row in rows:
            yield _Published(row.storage_id, row.id, row.projet, row.nom, row.feature if with_features else None)
        if len(rows) < page:
            return
        after = (rows[-1].storage_id, rows[-1].id)


def _meets(geometry: dict[str, Any] | None, bbox: BBox, margin: float = 0.0) -> bool:
    """Whether a GeoJSON geometry's box meets `bbox` widened by `margin` (an empty one never does)."""
    if not geometry:
        return False
    west, south, east, north = (float(v) for v in shapely.geometry.shape(geometry).bounds)
    if math.isnan(west):
        return False
    return bool(west - margin <= bbox[2] and east + margin >= bbox[0]
            and south - margin <= bbox[3] and north + margin >= bbox[1])


def livrable_features(engine: Engine, initiative: str | None = None, bbox: BBox | None = None, *,
                      page: int = LIVRABLE_PAGE) -> Iterator[dict[str, Any]]:
    """The features of ``livrables.geojson``, filtered by projet `initiative` and `bbox`, `page` livrables a query."""
    for published in _published(engine, initiative, page, with_features=True):
        feature = published.feature
        assert feature is not None
        if initiative is not None and feature["properties"].get("initiative") != initiative:
            continue  # a projet without _id is known by its nom: it has no initiative
        if bbox is not None and not _meets(feature.get("geometry"), bbox):
            continue
        yield feature


def dalle_pages(engine: Engine, initiative: str | None = None, bbox: BBox | None = None, *,
                page: int = DALLE_PAGE, livrable_page: int = LIVRABLE_PAGE) -> Iterator[geojson.DallePage]:
    """The dalles of `dalle_features` a page at a time: their rings and properties, for the
    columnar formats (one page per query of at most `page` records, minus those filtered out)."""
    for published in _published(engine, initiative, livrable_page, with_features=bbox is not None):
        if bbox is not None and not _meets((published.feature or {}).get("geometry"), bbox, MARGIN):
            continue
        projet = Projet.model_validate(published.document)
        if initiative is not None and projet.id != initiative:
            continue  # a projet without _id is known by its nom: it has no initiative
        livrable: Livrable | None = next((liv for liv in projet.livrables if liv.nom == published.nom), None)
        for batch in _dalle_batches(engine, published.storage, page):
            yield from geojson.dalle_pages(batch, projet, livrable, bbox)


def dalle_features(engine: Engine, initiative: str | None = None, bbox: BBox | None = None, *,
                   page: int = DALLE_PAGE, livrable_page: int = LIVRABLE_PAGE) -> Iterator[dict[str, Any]]:
    """The features of ``dalles.geojson``, filtered by projet `initiative` and `bbox`, `page`
    records (and `livrable_page` livrables) a query."""
    for dalles in dalle_pages(engine, initiative, bbox, page=page, livrable_page=livrable_page):
        yield from geojson.page_features(dalles)


def _dalle_batches(engine: Engine, storage: int, page: int) -> Iterator[list[Dalle]]:
    """A storage's valid dalles by path, `page` a query."""
    after: str | None = None
    while True:
        batch = records.dalles_after(engine, storage, after, page)
        if batch:
            yield batch
        if len(batch) < page:
            return
        after = batch[-1].path


def _state(engine: Engine) -> tuple[Any, ...]:
    """What the export's content depends on, in two aggregate queries."""
    succeeded = scans.c.status == ScanStatus.SUCCEEDED
    with engine.connect() as conn:
        published = conn.execute(select(func.count(), func.max(livrables.c.id),
                                        func.max(livrables.c.published_at))).one()
        scanned = conn.execute(select(func.count(), func.max(scans.c.id), func.max(scans.c.finished_at))
                               .where(succeeded)).one()
        unpublished = conn.execute(select(func.max(storages.c.unpublished_at))).scalar()
    return (*published, *scanned, unpublished)


def fingerprint(engine: Engine) -> str:
    """A short hex string changing whenever the export's content may have: an ETag."""
    count, top, published_at, scans_ok, last_scan, finished_at, unpublished_at = _state(engine)
    values = (count, top, aware(published_at), scans_ok, last_scan, aware(finished_at), aware(unpublished_at))
    return hashlib.sha256(repr(values).encode()).hexdigest()[:32]


def last_modified(engine: Engine) -> datetime | None:
    """The latest publication, unpublication or successful scan (UTC), None when there was none."""
    _, _, published_at, _, _, finished_at, unpublished_at = _state(engine)
    times = [t for t in (aware(published_at), aware(finished_at), aware(unpublished_at)) if t is not None]
    return max(times) if times else None


FORMATS = ("geojson", "fgb", "parquet")
"""The formats of `export_all`: GeoJSON, FlatGeobuf, GeoParquet (the file names' extensions)."""


def export_all(engine: Engine, out: Path, fmt: str = "geojson", *, page: int = DALLE_PAGE) -> dict[str, Any]:
    """Write ``dalles.<fmt>`` and ``livrables.<fmt>`` of every published livrable into `out`.

    The two files hold what each storage's own published files hold (for ``geojson``, one
    FeatureCollection each; ``fgb`` and ``parquet``: `indexer.columnar`), streamed from the store
    in pages of `page` dalles.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: one of {', '.join(FORMATS)}")
    paths = {"dalles": out / f"dalles.{fmt}", "livrables": out / f"livrables.{fmt}"}
    started = time.perf_counter()
    with OutputSet(out) as files:
        if fmt == "geojson":
            with files.open("dalles.geojson") as f:
                pages = dalle_pages(engine, page=page)
                dalles = geojson.write_texts(f, (text for p in pages for text in geojson.page_texts(p)))
            with files.open("livrables.geojson") as f:
                count = geojson.write_feature_collection(f, livrable_features(engine))
        else:
            from indexer import columnar

            with files.place(paths["dalles"].name) as path:
                dalles = columnar.write_dalles(path, dalle_pages(engine, page=page), fmt == "parquet")
            with files.place(paths["livrables"].name) as path:
                count = columnar.write_livrables(path, livrable_features(engine), fmt == "parquet", LIVRABLE_PAGE)
    duration = round(time.perf_counter() - started, 3)
    log.info("exported", extra={"livrables": count, "dalles": dalles, "format": fmt, "duration_s": duration})
    return {"livrables": count, "dalles": dalles, "format": fmt, "duration_s": duration,
            "outputs": {k: str(v) for k, v in paths.items()}}
