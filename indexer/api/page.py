"""The map page of a storage (``GET /storages/{id}/preview``) and the files it loads (``/static/``).

The page is `indexer.preview`'s, the one ``pcrs-indexer index`` writes as ``preview.html``, with
its data from the store and Leaflet linked from this application (installed from npm: nothing
comes from another site, no basemap). Given ``?token=`` (a download token of the storage), it
links each file to the download route ``/storages/{id}/files/{path}?token=…``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse, HTMLResponse
from starlette.concurrency import run_in_threadpool

from indexer.api.deps import ApiState, get_state
from indexer.api.docs import SWAGGER_UI, errors
from indexer.api.scanner import parse_id
from indexer.errors import MapAssetsMissing, StorageNotFound
from indexer.preview import LEAFLET, STATIC, check_assets, render_page, storage_map

router = APIRouter(tags=["map"])

STATIC_FILES: dict[str, tuple[Path, str]] = {
    "leaflet/leaflet.js": (LEAFLET / "leaflet.js", "text/javascript; charset=utf-8"),
    "leaflet/leaflet.css": (LEAFLET / "leaflet.css", "text/css; charset=utf-8"),
    "map.js": (STATIC / "map.js", "text/javascript; charset=utf-8"),
    "map.css": (STATIC / "map.css", "text/css; charset=utf-8"),
    "swagger-ui/swagger-ui-bundle.js": (SWAGGER_UI / "swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "swagger-ui/swagger-ui.css": (SWAGGER_UI / "swagger-ui.css", "text/css; charset=utf-8"),
    "swagger-ui/favicon-32x32.png": (SWAGGER_UI / "favicon-32x32.png", "image/png"),
}
"""The only files served below ``/static/``: Leaflet, the page's script and style, Swagger UI (``/docs``)."""
STATIC_MAX_AGE_S = 3600


@router.get("/storages/{storage_id}/preview", response_class=HTMLResponse,
            summary="The map of the storage's last successful scan: emprises, dalles by outcome, legend, properties",
            responses=errors(404))
async def preview(storage_id: str, state: Annotated[ApiState, Depends(get_state)]) -> HTMLResponse:
    """The map page; 404 for an unknown storage or one never scanned successfully, 503 without Leaflet."""
    key = parse_id(storage_id)
    check_assets()
    data = await run_in_threadpool(storage_map, state.engine, key, "files/")
    if data is None:
        raise StorageNotFound(f"storage {key} has no successful scan yet")
    page = await run_in_threadpool(render_page, data, "../../static/")
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


@router.get("/static/{name:path}", include_in_schema=False)
async def static(name: str) -> FileResponse:
    """Leaflet, Swagger UI and the page's files; 404 for any other name, 503 when npm did not install it."""
    if name not in STATIC_FILES:
        raise HTTPException(404, f"no file {name!r} in /static/")
    check_assets()
    path, media_type = STATIC_FILES[name]
    if not path.is_file():
        raise MapAssetsMissing(f"{path} is missing: install it with `npm ci --prefix {STATIC}` (`make venv` does)")
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": f"public, max-age={STATIC_MAX_AGE_S}"})
