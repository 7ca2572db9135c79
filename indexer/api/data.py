"""The PCRS data API: ``GET /data/stockages/livrables.geojson`` and ``/data/stockages/dalles.geojson``.

The same bytes as ``pcrs-indexer export`` writes, streamed from the store's pages
(`indexer.export`): the first byte leaves before the first query of features, and memory stays
flat whatever the number of dalles. gzip when the client accepts it, compressed as the body
goes. ``ETag`` (the store's `indexer.export.fingerprint`, the filters and the encoding) and
``Last-Modified`` let a client ask again with ``If-None-Match`` (or ``If-Modified-Since``) and get
304 while nothing changed. ``?initiative=<projet id>`` and ``?bbox=minlon,minlat,maxlon,maxlat``
filter (400 for a malformed bbox).
"""

from __future__ import annotations

import email.utils
import hashlib
import math
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import Engine
from starlette.exceptions import HTTPException

from indexer import export
from indexer.api.deps import get_state
from indexer.api.streaming import accepts_gzip, from_thread, gzipped, json_pieces
from indexer.geojson import BBox

router = APIRouter(tags=["data"])

HEAD = '{"type":"FeatureCollection","features":['
TAIL = "]}\n"
MAX_ETAGS = 32
"""Entity tags of an ``If-None-Match`` header looked at."""

Features = Callable[[Engine, str | None, BBox | None], Iterator[dict[str, Any]]]


def parse_bbox(text: str | None) -> BBox | None:
    """``minlon,minlat,maxlon,maxlat`` as a box; a 400 `HTTPException` saying why it is not one."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        if len(parts) != 4:
            raise ValueError("a bbox is four numbers: minlon,minlat,maxlon,maxlat")
        box = export.check_bbox(tuple(float(p) for p in parts))
    except ValueError as exc:
        message = str(exc) if "bbox" in str(exc) else "a bbox is four numbers: minlon,minlat,maxlon,maxlat"
        raise HTTPException(400, f"bbox {text[:80]!r} not valid: {message}") from None
    west, south, east, north = box
    if not (-180 <= west and east <= 180 and -90 <= south and north <= 90):
        raise HTTPException(400, f"bbox {text[:80]!r} not valid: longitudes lie within ±180, latitudes ±90")
    return box


def entity_tag(fingerprint: str, name: str, initiative: str | None, bbox: BBox | None, gzip: bool) -> str:
    """The ``ETag`` of one representation: the store's state, the file, its filters and its encoding."""
    digest = hashlib.sha256(f"{fingerprint}\0{name}\0{initiative}\0{bbox}".encode()).hexdigest()[:32]
    return f'"{digest}{"-gzip" if gzip else ""}"'


def _matches(if_none_match: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names `etag` (weak comparison, as RFC 9110 says for it) or is ``*``."""
    if if_none_match.strip() == "*":
        return True
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")[:MAX_ETAGS]]
    return etag in tags


def _not_modified_since(if_modified_since: str | None, modified: datetime | None) -> bool:
    if not if_modified_since or modified is None:
        return False
    try:
        since = email.utils.parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError):
        return False
    if since.tzinfo is None:
        return False
    return math.floor(modified.timestamp()) <= since.timestamp()


def _serve(request: Request, name: str, features: Features, initiative: str | None, bbox_text: str | None,
           if_none_match: str | None, if_modified_since: str | None, accept_encoding: str | None) -> Response:
    engine = get_state(request).engine
    bbox = parse_bbox(bbox_text)
    gzip = accepts_gzip(accept_encoding)
    etag = entity_tag(export.fingerprint(engine), name, initiative, bbox, gzip)
    modified = export.last_modified(engine)
    headers = {"ETag": etag, "Vary": "Accept-Encoding", "Cache-Control": "no-cache",
               "Content-Disposition": f'attachment; filename="{name}"'}
    if modified is not None:
        headers["Last-Modified"] = email.utils.format_datetime(modified, usegmt=True)
    if (_matches(if_none_match, etag) if if_none_match is not None
            else _not_modified_since(if_modified_since, modified)):
        return Response(status_code=304, headers=headers)
    if gzip:
        headers["Content-Encoding"] = "gzip"

    def body() -> Iterator[bytes]:
        pieces = json_pieces(features(engine, initiative, bbox), HEAD, TAIL)
        return gzipped(pieces) if gzip else pieces

    return StreamingResponse(from_thread(body), media_type="application/geo+json", headers=headers)


Initiative = Annotated[str | None, Query(max_length=64, description="only the livrables of this projet (its _id)")]
BBoxText = Annotated[str | None, Query(alias="bbox", max_length=200,
                                       description="minlon,minlat,maxlon,maxlat (WGS84): only what meets this box")]
IfNoneMatch = Annotated[str | None, Header(max_length=4096)]
IfModifiedSince = Annotated[str | None, Header(max_length=100)]
AcceptEncoding = Annotated[str | None, Header(max_length=1024)]


@router.get("/data/stockages/livrables.geojson", summary="Every published livrable and its emprise")
def livrables_geojson(request: Request, initiative: Initiative = None, bbox: BBoxText = None,
                      if_none_match: IfNoneMatch = None, if_modified_since: IfModifiedSince = None,
                      accept_encoding: AcceptEncoding = None) -> Response:
    """``livrables.geojson`` of every published livrable, as ``pcrs-indexer export`` writes it (streamed)."""
    return _serve(request, "livrables.geojson", export.livrable_features, initiative, bbox, if_none_match,
                  if_modified_since, accept_encoding)


@router.get("/data/stockages/dalles.geojson", summary="Every valid dalle of every published livrable")
def dalles_geojson(request: Request, initiative: Initiative = None, bbox: BBoxText = None,
                   if_none_match: IfNoneMatch = None, if_modified_since: IfModifiedSince = None,
                   accept_encoding: AcceptEncoding = None) -> Response:
    """``dalles.geojson`` of every published livrable, as ``pcrs-indexer export`` writes it (streamed)."""
    return _serve(request, "dalles.geojson", export.dalle_features, initiative, bbox, if_none_match,
                  if_modified_since, accept_encoding)
