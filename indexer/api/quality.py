"""``GET /storages/{id}/quality``: the quality checks of a storage's livrable, as ``quality.json`` holds them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from indexer.api.deps import ApiState, get_state
from indexer.api.docs import errors
from indexer.api.scanner import parse_id
from indexer.errors import StorageNotFound
from indexer.quality import assess
from indexer.store import queries, records

router = APIRouter(tags=["quality"])


def storage_quality(engine: Engine, storage: int) -> dict[str, Any] | None:
    """The checks of a storage's last successful scan, from its records; None when it has none.

    Raises `StorageNotFound` for an unknown storage.
    """
    if queries.last_scan(engine, storage) is None:
        return None
    return assess(records.load_records(engine, storage)).to_dict()


@router.get("/storages/{storage_id}/quality",
            summary="The quality checks of the storage's last successful scan (the document of quality.json)",
            responses=errors(404))
async def quality(storage_id: str, state: Annotated[ApiState, Depends(get_state)]) -> dict[str, Any]:
    """Grid, holes, duplicates, off-grid, overlapping and rotated dalles, outliers, names, skipped files;
    404 for an unknown storage or one never scanned successfully."""
    key = parse_id(storage_id)
    found = await run_in_threadpool(storage_quality, state.engine, key)
    if found is None:
        raise StorageNotFound(f"storage {key} has no successful scan yet")
    return found
