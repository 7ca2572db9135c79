"""Each storage's records, one per raster file, and what a scan of the service read so far.

A record is the `Dalle` or `DalleProblem` of a file; its header metadata is kept as JSON, its
CRS in a table of its own (a livrable has one or two). Reads are streamed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Row, Select, Text, and_, cast, exists, or_, select, union_all
from sqlalchemy.sql.elements import ColumnElement

from indexer.models import Dalle, DalleProblem, FileEntry, FileRole, Record, ScanStatus, ScanStep, SkipReason
from indexer.store.engine import by_path, upsert
from indexer.store.schema import RECORD_COLUMNS, crs_table, records, scan_chunks, scan_files, scan_results, scans

VALID, SKIPPED = "valid", "skipped"
"""A record's status: a dalle indexed, or a raster file skipped with a reason."""


def _dalle_meta(dalle: Dalle) -> dict[str, Any]:
    return {"mime": dalle.mime, "width": dalle.width, "height": dalle.height, "bands": list(dalle.bands),
            "compression": dalle.compression, "epsg": dalle.epsg,
            "corners": [list(c) for c in dalle.corners], "resolution_cm": dalle.resolution_cm,
            "open": dalle.open}


def crs_ids(conn: Connection, wkts: Iterable[str]) -> dict[str, int]:
    """The id of each CRS, the new ones inserted (workers storing chunks at once may meet the same)."""
    wanted = set(wkts)
    if not wanted:
        return {}
    known = {row.wkt: row.id for row in conn.execute(select(crs_table).where(crs_table.c.wkt.in_(wanted)))}
    missing = sorted(wanted - known.keys())
    if missing:
        # Workers storing chunks at once may meet the same new CRS: the later insert does nothing.
        conn.execute(upsert(conn, crs_table).on_conflict_do_nothing(index_elements=["wkt"]),
                     [{"wkt": wkt} for wkt in missing])
        known.update({row.wkt: row.id for row in conn.execute(
            select(crs_table).where(crs_table.c.wkt.in_(missing)))})
    return known


def record_row(result: Record, crs: dict[str, int]) -> dict[str, Any]:
    """The columns a dalle or a problem is stored in (records and scan_results)."""
    file = result.file
    if isinstance(result, Dalle):
        return {"path": file.path, "size": result.size, "mtime": file.mtime, "etag": file.etag,
                "status": VALID, "reason": None, "detail": None, "crs_id": crs[result.crs_wkt],
                "meta": _dalle_meta(result)}
    return {"path": file.path, "size": file.size, "mtime": file.mtime, "etag": file.etag,
            "status": SKIPPED, "reason": result.reason, "detail": result.detail, "crs_id": None, "meta": None}


def load_records(engine: Engine, storage: int) -> Iterator[Record]:
    """The records of a storage's last successful scan, streamed."""
    r = records
    with engine.connect() as conn:
        wkts = {row.id: row.wkt for row in conn.execute(select(crs_table))}
        # Plain columns, the metadata as text decoded here: the JSON type costs a third of the load.
        query = select(r.c.path, r.c.size, r.c.mtime, r.c.etag, r.c.status, r.c.reason, r.c.detail, r.c.crs_id,
                       cast(r.c.meta, Text)).where(r.c.storage_id == storage).order_by(by_path(conn, r.c.path))
        for rows in conn.execution_options(yield_per=5000).execute(query).partitions():
            for path, size, mtime, etag, status, reason, detail, crs, meta in rows:
                file = FileEntry(path, size, mtime, etag)
                if status == VALID:
                    yield _dalle(file, _meta(meta), wkts[crs])
                else:
                    yield DalleProblem(file, SkipReason(reason), detail or "")


def dalles_after(engine: Engine, storage: int, after: str | None, limit: int) -> list[Dalle]:
    """One page of a keyset walk through a storage's valid dalles: the first `limit` whose path
    comes after `after` (code point order; None: from the first). Each page is one short query
    (an index range scan), so no cursor or transaction stays open between pages."""
    r = records
    with engine.connect() as conn:
        wkts = {row.id: row.wkt for row in conn.execute(select(crs_table))}
        path = by_path(conn, r.c.path)
        # Only the columns a dalle needs, its metadata as text, decoded here: a quarter less CPU
        # than full rows through the JSON type.
        query = select(r.c.path, r.c.size, r.c.mtime, r.c.etag, r.c.crs_id, cast(r.c.meta, Text)).where(
            r.c.storage_id == storage, r.c.status == VALID)
        if after is not None:
            query = query.where(path > after)
        rows = conn.execute(query.order_by(path).limit(limit)).all()
    return [_dalle(FileEntry(p, size, mtime, etag), _meta(meta), wkts[crs])
            for p, size, mtime, etag, crs, meta in rows]


def _meta(text: str) -> Any:
    """A record's metadata decoded as `json.loads` decodes it, through orjson (a quarter of the
    time) unless orjson refuses the text (``NaN``, ``1e400``, a lone surrogate) or may have read
    it otherwise: it reads an integer beyond 64 bits as a float, which it then writes with an
    exponent (``1.2345678901234568e+29``: every float of 1e16 or more)."""
    try:
        meta = orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
    if b"e+" in orjson.dumps(meta):
        return json.loads(text)
    return meta


def records_after(engine: Engine, storage: int, after: str | None, limit: int) -> list[Record]:
    """One page of a keyset walk through a storage's records, valid or skipped: the first `limit`
    whose path comes after `after` (code point order; None: from the first), in one short query."""
    with engine.connect() as conn:
        path = by_path(conn, records.c.path)
        query = select(records).where(records.c.storage_id == storage)
        if after is not None:
            query = query.where(path > after)
        return list(stream(conn, query.order_by(path).limit(limit)))


def stream(conn: Connection, query: Select[Any]) -> Iterator[Record]:
    """The dalles and problems a query on records or scan_results returns, streamed in its order."""
    wkts = {row.id: row.wkt for row in conn.execute(select(crs_table))}
    for row in conn.execution_options(yield_per=5000).execute(query):
        yield _result_of(row, wkts)


def _result_of(row: Row[Any], wkts: dict[int, str]) -> Record:
    if row.status == VALID:
        meta = row.meta if isinstance(row.meta, dict) else json.loads(row.meta)
        return _dalle(FileEntry(row.path, row.size, row.mtime, row.etag), meta, wkts[row.crs_id])
    return DalleProblem(FileEntry(row.path, row.size, row.mtime, row.etag), SkipReason(row.reason), row.detail or "")


def _dalle(file: FileEntry, meta: dict[str, Any], crs_wkt: str) -> Dalle:
    """A dalle from its file and its stored metadata (`_dalle_meta`)."""
    c = meta["corners"]
    return Dalle(file=file, mime=meta["mime"], width=meta["width"], height=meta["height"], bands=tuple(meta["bands"]),
                 compression=meta["compression"], epsg=meta["epsg"], crs_wkt=crs_wkt,
                 corners=((c[0][0], c[0][1]), (c[1][0], c[1][1]), (c[2][0], c[2][1]), (c[3][0], c[3][1])),
                 resolution_cm=meta["resolution_cm"], open=meta["open"])


def _files(rows: Iterable[Row[Any]]) -> list[FileEntry]:
    return [FileEntry(row.path, row.size, row.mtime, row.etag) for row in rows]


def chunk_files(engine: Engine, scan: int, chunk: int) -> list[FileEntry] | None:
    """A chunk's dalles and their sidecars; None when the scan is not reading or the chunk is done."""
    with engine.connect() as conn:
        state = conn.execute(
            select(scans.c.status, scans.c.step, scan_chunks.c.status.label("chunk_status"))
            .select_from(scans.join(scan_chunks, scan_chunks.c.scan_id == scans.c.id))
            .where(scans.c.id == scan, scan_chunks.c.chunk == chunk)).first()
        if state is None or state.status != ScanStatus.RUNNING or state.step != ScanStep.READING \
                or state.chunk_status == "done":
            return None
        stems = select(scan_files.c.stem).where(scan_files.c.scan_id == scan, scan_files.c.chunk == chunk)
        return _files(conn.execute(select(scan_files).where(
            scan_files.c.scan_id == scan,
            or_(scan_files.c.chunk == chunk, and_(scan_files.c.role == FileRole.SIDECAR, scan_files.c.stem.in_(stems))))
            .order_by(scan_files.c.path)))


def sidecar_files(engine: Engine, scan: int, stems: Iterable[str]) -> list[FileEntry]:
    """The sidecars a scan listed for these dalle stems."""
    wanted = sorted(set(stems))
    if not wanted:
        return []
    with engine.connect() as conn:
        return _files(conn.execute(select(scan_files).where(
            scan_files.c.scan_id == scan, scan_files.c.role == FileRole.SIDECAR, scan_files.c.stem.in_(wanted))))


def upsert_results(conn: Connection, storage: int, scan: int, results: Sequence[Record]) -> None:
    """Write results keyed by (storage, scan, path): a repeated write replaces, never duplicates."""
    if not results:
        return
    ids = crs_ids(conn, (r.crs_wkt for r in results if isinstance(r, Dalle)))
    rows = [{"storage_id": storage, "scan_id": scan, **record_row(r, ids)} for r in results]
    stmt = upsert(conn, scan_results)
    stmt = stmt.on_conflict_do_update(index_elements=["storage_id", "scan_id", "path"],
                                      set_={c: stmt.excluded[c] for c in RECORD_COLUMNS})
    for start in range(0, len(rows), 5000):
        conn.execute(stmt, rows[start:start + 5000])


def scan_results_of(engine: Engine, storage: int, scan: int) -> list[Record]:
    """The results the chunks of a scan stored, by path."""
    with engine.connect() as conn:
        return list(stream(conn, select(scan_results).where(
            scan_results.c.storage_id == storage, scan_results.c.scan_id == scan)
            .order_by(by_path(conn, scan_results.c.path))))


def reused_by(scan: int) -> ColumnElement[bool]:
    """The records a scan reuses: those it listed unchanged."""
    return exists().where(scan_files.c.scan_id == scan, scan_files.c.path == records.c.path,
                          scan_files.c.role == FileRole.REUSED)


def new_records(engine: Engine, storage: int, scan: int) -> Iterator[Record]:
    """The records a scan being aggregated will leave: those it reuses and those it read, by path."""
    columns = ("path", *RECORD_COLUMNS)
    kept = select(*(records.c[c] for c in columns)).where(records.c.storage_id == storage, reused_by(scan))
    read = select(*(scan_results.c[c] for c in columns)).where(
        scan_results.c.storage_id == storage, scan_results.c.scan_id == scan)
    both = union_all(kept, read).subquery()
    with engine.connect() as conn:
        yield from stream(conn, select(both).order_by(by_path(conn, both.c.path)))
