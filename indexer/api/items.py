"""A storage's files as pcrs-scanner's tree items: ``GET /storages/{id}/data`` and ``/geojson``.

The items are the records of the storage's last successful scan (one per raster file, valid or
skipped), streamed from the store a page at a time, never all built at once. Their shape is
pcrs-scanner's (``lib/models/tree-item.js``, ``lib/raster.js``): ``fullPath`` is the path below
the storage's root with a leading ``/``, ``computedMetadata`` what the header said (null for a
skipped file, whose reason is ``analyzeError``), and ``downloadUrl`` the file's URL on this
server's download proxy (``/storages/{id}/files/{path}``), to which the site adds ``?token=…``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import Engine, select

from indexer.api.deps import get_state
from indexer.api.docs import errors
from indexer.api.scanner import parse_id
from indexer.api.streaming import from_thread, json_pieces
from indexer.crs import crs_name
from indexer.emprise import corner_array, placement_problems
from indexer.errors import StorageNotFound
from indexer.geojson import dalle_rings, epsg_label
from indexer.models import Dalle, Record
from indexer.projet import Projet
from indexer.read.formats import raster_mime
from indexer.store import catalog
from indexer.store.records import records_after
from indexer.store.schema import storages

router = APIRouter(tags=["scanner"])

PAGE = 5000
"""Records turned into items at once (their footprints reprojected together)."""

DATA_FORMATS = {"image/tiff": "geotiff", "image/jp2": "jpeg2000", "image/ecw": "ecw", "image/x-mrsid": "mrsid"}
"""pcrs-scanner's ``dataFormat`` of each MIME type."""
GDAL_FORMATS = {"image/tiff": ("GeoTIFF", "tif"), "image/jp2": ("JPEG2000", "jp2"),
                "image/ecw": ("ECW", "ecw"), "image/x-mrsid": ("MrSID", "sid")}
"""pcrs-scanner's ``computedMetadata.format`` and ``extension`` (GDAL's driver long name and extension)."""


class NoSuccessfulScan(StorageNotFound):
    """The storage exists but no scan of it succeeded yet: nothing to show (404)."""


def scanned_storage(engine: Engine, ref: str) -> int:
    """The id of a storage that has a successful scan; `StorageNotFound` for an unknown or malformed
    id (as the storage routes say it), `NoSuccessfulScan` before its first successful scan."""
    storage = parse_id(ref)
    with engine.connect() as conn:
        row = conn.execute(select(storages.c.last_success_at).where(storages.c.id == storage)).first()
    if row is None:
        raise StorageNotFound("Storage not found")
    if row.last_success_at is None:
        raise NoSuccessfulScan("No successful scan found")
    return storage


def files_url(request: Request, storage: int) -> str:
    """The download proxy's URL of a storage's files, as this server is reached, ending with ``/``."""
    return f"{str(request.base_url).rstrip('/')}/storages/{storage}/files/"


def file_id(record: Record) -> str:
    """A file version's id: 16 hex digits of its path, size, date and ETag (pcrs-scanner's ``hash``)."""
    f = record.file
    return hashlib.sha256(f"{f.path}\0{f.size}\0{f.mtime}\0{f.etag}".encode()).hexdigest()[:16]


def envelopes(dalles: list[Dalle]) -> list[dict[str, Any] | None]:
    """Each dalle's footprint as a WGS84 GeoJSON polygon (7 decimals, as in ``dalles.geojson``),
    None for a dalle that cannot be placed."""
    if not dalles:
        return []
    corners = corner_array(dalles)
    placed = [i for i in range(len(dalles)) if i not in placement_problems(dalles, corners)]
    shapes: list[dict[str, Any] | None] = [None] * len(dalles)
    if placed:
        rings = dalle_rings([dalles[i] for i in placed], corners[placed])
        for i, ring in zip(placed, rings, strict=True):
            if np.isfinite(ring).all():
                shapes[i] = {"type": "Polygon", "coordinates": [ring.tolist()]}
    return shapes


def _bands(dalle: Dalle) -> list[dict[str, Any]]:
    """``Red(Byte)`` bands as pcrs-scanner's ``{id, colorInterpretation, dataType}``."""
    bands = []
    for number, band in enumerate(dalle.bands, start=1):
        cut = band.rfind("(")
        colour, kind = (band[:cut], band[cut + 1:].rstrip(")")) if cut >= 0 else (band, None)
        bands.append({"id": number, "colorInterpretation": colour, "dataType": kind})
    return bands


def _pixel_size(dalle: Dalle) -> dict[str, float]:
    """A pixel's width and height in the dalle's CRS units, from its corners (GDAL's |a| and |e|
    when it is not rotated)."""
    (x0, y0), (x1, y1), _, (x3, y3) = dalle.corners
    return {"width": round(float(np.hypot(x1 - x0, y1 - y0)) / dalle.width, 12),
            "height": round(float(np.hypot(x3 - x0, y3 - y0)) / dalle.height, 12)}


def computed_metadata(dalle: Dalle, envelope: dict[str, Any] | None) -> dict[str, Any]:
    """What the header said, in pcrs-scanner's ``computedMetadata`` shape."""
    name, extension = GDAL_FORMATS.get(dalle.mime, (dalle.mime, None))
    return {
        "fileName": dalle.name,
        "format": name,
        "extension": extension,
        "size": {"height": dalle.height, "width": dalle.width},
        "bands": _bands(dalle),
        "compression": dalle.compression,
        "projection": {"name": crs_name(dalle.crs_wkt), "code": epsg_label(dalle.epsg)},
        "pixelSize": _pixel_size(dalle),
        "envelope": envelope,
    }


def detail_mask(engine: Engine, storage: int) -> Callable[[str], str]:
    """What a skipped file's detail shows: as is, or for a private storage (a livrable on it has
    ``stockage_public: false``) with the storage's URL and host masked, as ``report.json`` does."""
    private = any(liv.nom == row.nom and liv.stockage_public is False
                  for row in catalog.livrables_of(engine, storage)
                  for liv in Projet.model_validate(row.projet).livrables)
    url = catalog.storage_url(engine, storage)
    host = urlsplit(url).hostname
    if not private or not host:
        return lambda detail: detail
    return lambda detail: detail.replace(url, "***").replace(host, "***")


def _shown(detail: str) -> str:
    return detail


def tree_item(record: Record, envelope: dict[str, Any] | None, files: str,
              mask: Callable[[str], str] = _shown) -> dict[str, Any]:
    """One record as pcrs-scanner's tree item; `files` is the download proxy's URL of the storage's
    files, `mask` what a skipped file's detail shows (`detail_mask`)."""
    path = record.file.path
    name = record.file.name
    dalle = record if isinstance(record, Dalle) else None
    error = None if isinstance(record, Dalle) else f"{record.reason}: {mask(record.detail)}"
    mime = dalle.mime if dalle else raster_mime(path)
    return {
        "name": name,
        "fullPath": f"/{path}",
        "parentDirectory": f"/{path[:len(path) - len(name)]}",
        "type": "file",
        "hash": file_id(record),
        "size": record.file.size,
        "dataFormat": DATA_FORMATS.get(mime or ""),
        "computedMetadata": computed_metadata(dalle, envelope) if dalle else None,
        "analyzeError": error,
        "downloadUrl": files + quote(path, safe="/"),
    }


def record_pages(engine: Engine, storage: int, page: int = PAGE) -> Iterator[list[Record]]:
    """A storage's records by path, `page` a query: no cursor stays open while a slow client reads."""
    after: str | None = None
    while True:
        batch = records_after(engine, storage, after, page)
        if batch:
            yield batch
        if len(batch) < page:
            return
        after = batch[-1].path


def tree_items(pages: Iterable[list[Record]], files: str, mask: Callable[[str], str] = _shown
               ) -> Iterator[dict[str, Any]]:
    """The tree items of pages of records, in their order (`mask`: see `tree_item`)."""
    for page in pages:
        dalles = [r for r in page if isinstance(r, Dalle)]
        shapes = dict(zip((d.path for d in dalles), envelopes(dalles), strict=True))
        for record in page:
            yield tree_item(record, shapes.get(record.path), files, mask)


def dalle_features(pages: Iterable[list[Record]], files: str) -> Iterator[dict[str, Any]]:
    """The features of pcrs-scanner's ``/geojson``: each valid dalle that can be placed, its
    footprint and ``{id, name, size, format, downloadUrl}``."""
    for page in pages:
        dalles = [r for r in page if isinstance(r, Dalle)]
        for dalle, shape in zip(dalles, envelopes(dalles), strict=True):
            if shape is not None:
                item = tree_item(dalle, shape, files)
                yield {"type": "Feature", "geometry": shape,
                       "properties": {"id": item["hash"], "name": item["name"], "size": item["size"],
                                      "format": item["dataFormat"], "downloadUrl": item["downloadUrl"]}}


@router.get("/storages/{storage_id}/data", summary="The files of the storage's last successful scan",
            responses=errors(404))
def storage_data(storage_id: str, request: Request) -> StreamingResponse:
    """Every raster file of the last successful scan as pcrs-scanner's tree items (a JSON array, streamed).

    404 for an unknown storage, and before its first successful scan.
    """
    engine = get_state(request).engine
    storage = scanned_storage(engine, storage_id)
    files = files_url(request, storage)
    mask = detail_mask(engine, storage)
    body = from_thread(lambda: json_pieces(tree_items(record_pages(engine, storage), files, mask), "[", "]\n"))
    return StreamingResponse(body, media_type="application/json")


@router.get("/storages/{storage_id}/geojson", summary="The analysed dalles of the storage, as GeoJSON",
            responses=errors(404))
def storage_geojson(storage_id: str, request: Request) -> StreamingResponse:
    """A FeatureCollection of the valid dalles of the last successful scan, properties
    ``{id, name, size, format, downloadUrl}`` (streamed). 404 as ``/data``."""
    engine = get_state(request).engine
    storage = scanned_storage(engine, storage_id)
    files = files_url(request, storage)
    body = from_thread(lambda: json_pieces(dalle_features(record_pages(engine, storage), files),
                                           '{"type":"FeatureCollection","features":[', "]}\n"))
    return StreamingResponse(body, media_type="application/geo+json")

