"""The download proxy: ``GET|HEAD /storages/{id}/files/{path}?token=…`` streams a file from its storage.

Only a file of the storage's last successful scan can be asked for: the path, as the scan
recorded it below the storage's root, must be one of the store's records of that storage, so no
path (``..``, ``%2e%2e``, an absolute path, another storage's file) reaches anything else. The
token must be a download token of that storage, not expired (`indexer.api.auth`).

The file is read from its storage in pieces (`Storage.stream_range`: one piece of `STREAM_CHUNK`
bytes held at a time, whatever its size) with ``Content-Length``; one ``Range`` is answered 206
with ``Content-Range: bytes first-last/size`` (pcrs-scanner writes the range's length in place
of the size), a range that cannot be satisfied or is malformed 416, several ranges 416. Each
storage is opened once and kept (`OpenStorages`): every download of it shares its connections,
within its own cap (HTTP ``CONCURRENCY`` connections per server, FTP ``FTP_MAX_CONNECTIONS``
logins). A download has `DOWNLOAD_DEADLINE_S` in all.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException

from indexer.api.auth import check_download_token, download_secret
from indexer.api.deps import ApiState, get_state
from indexer.api.docs import errors
from indexer.api.scanner import parse_id
from indexer.api.streaming import from_thread
from indexer.errors import ConfigError, IndexerError, InvalidSource, ReadError, StorageNotFound
from indexer.models import FileEntry
from indexer.read.formats import raster_mime
from indexer.storages import AccessOptions, Storage, open_storage
from indexer.storages.access import scrub
from indexer.storages.base import STREAM_CHUNK
from indexer.store import queries

router = APIRouter(tags=["scanner"])

DOWNLOAD_DEADLINE_S = 4 * 3600.0
"""Longest a download may take in all (a 5 GB file at 350 KB/s); each piece has the storage's own timeouts."""
KEPT_STORAGES = 32
"""Storages kept open at once; the least recently used is forgotten (its downloads keep it until they end)."""
MAX_RANGE_CHARS = 200
"""Longest ``Range`` header read."""
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


class OpenStorages:
    """The storages downloads are read from, opened once each and shared by every download of them."""

    def __init__(self, limit: int = KEPT_STORAGES) -> None:
        self._open: OrderedDict[tuple[int, str], Storage] = OrderedDict()
        self._lock = threading.Lock()
        self.limit = limit

    def get(self, state: ApiState, storage: int) -> Storage:
        """The open storage of a storage id (opened with its recorded URL, credentials unsealed)."""
        try:
            source = queries.storage_source(state.engine, storage, state.settings.secret_box())
            if source is None:
                raise StorageNotFound("Storage not found")
            key = (storage, source)
            with self._lock:
                found = self._open.get(key)
                if found is not None:
                    self._open.move_to_end(key)
                    return found
            opened = open_storage(source, AccessOptions.from_settings(state.settings))
        except (ConfigError, InvalidSource) as exc:  # the server's key, or a URL it cannot open: not the client's
            raise HTTPException(503, scrub(f"the storage cannot be opened: {exc}")) from None
        with self._lock:
            found = self._open.setdefault(key, opened)
            self._open.move_to_end(key)
            while len(self._open) > self.limit:
                self._open.popitem(last=False)  # closed when its last download lets it go
        return found


_MAKING = threading.Lock()


def _storages(request: Request) -> OpenStorages:
    """The application's open storages, made at its first download."""
    with _MAKING:
        kept: OpenStorages | None = getattr(request.app.state, "open_storages", None)
        if kept is None:
            kept = request.app.state.open_storages = OpenStorages()
    return kept


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The bytes [first, last] one ``Range`` header asks of a `size`-byte file, None without one.

    Raises a 416 `HTTPException` (``Content-Range: bytes */size``) for a malformed header, several
    ranges, or a range starting past the end; a last byte past the end is the last byte.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip().replace(" ", "")[:MAX_RANGE_CHARS])
    if match is None or not (match.group(1) or match.group(2)):
        raise _unsatisfiable(size, "Range header not valid (one range of bytes only: bytes=first-last)")
    first, last = match.group(1), match.group(2)
    if not first:  # bytes=-n: the last n bytes
        start, end = max(0, size - int(last)), size - 1
        if int(last) == 0:
            raise _unsatisfiable(size, "Range header asks for no byte")
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            raise _unsatisfiable(size, "Range header not valid: its last byte is before its first")
    if start >= size:
        raise _unsatisfiable(size, f"Range not satisfiable: the file has {size} bytes")
    return start, end


def _unsatisfiable(size: int, message: str) -> HTTPException:
    return HTTPException(416, message, headers={"Content-Range": f"bytes */{size}"})


def _checked_path(path: str) -> str:
    """The path asked for, refused (404) when it could not be a recorded path below the root."""
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") for p in parts) or "\\" in path or "\0" in path:
        raise HTTPException(404, "File not found")
    return path


def _headers(entry: FileEntry, size: int) -> dict[str, str]:
    name = entry.name
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return {"Accept-Ranges": "bytes", "Content-Type": raster_mime(entry.path) or "application/octet-stream",
            "Content-Disposition": f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}",
            "Content-Length": str(size)}


@router.head("/storages/{storage_id}/files/{path:path}", responses=errors(403, 404, 416, 502),
             summary="The headers of a file's download (size, type, name), without its bytes")
@router.get("/storages/{storage_id}/files/{path:path}", responses=errors(403, 404, 416, 502),
            summary="Download a file of the storage's last successful scan")
def download(storage_id: str, path: str, request: Request,
             token: Annotated[str | None, Query(max_length=256)] = None,
             range_header: Annotated[str | None, Header(alias="Range")] = None) -> Response:
    """Stream a file from its storage: 403 without a valid download token of this storage, 404 for
    a path the last successful scan did not record, 206 for one ``Range``, 416 for a bad one."""
    state = get_state(request)
    storage = parse_id(storage_id)
    if not queries.storage_exists(state.engine, storage):
        raise StorageNotFound("Storage not found")
    check_download_token(token, storage, download_secret(state), time.time())
    entry = queries.recorded_file(state.engine, storage, _checked_path(path))
    if entry is None:
        raise HTTPException(404, "File not found")
    size = entry.size or 0
    wanted = parse_range(range_header, size)
    start, end = wanted if wanted is not None else (0, size - 1)
    headers = _headers(entry, end - start + 1)
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if request.method == "HEAD" or end < start:
        return Response(status_code=status, headers=headers)
    pieces = _open_stream(_storages(request).get(state, storage), entry.path, start, end + 1)
    return StreamingResponse(from_thread(lambda: pieces), status_code=status, headers=headers)


def _open_stream(storage: Storage, path: str, start: int, end: int) -> Iterator[bytes]:
    """The pieces of bytes [start, end), the first read already: a storage that cannot be read
    answers 502 before any header is sent."""
    pieces = storage.stream_range(path, start, end, DOWNLOAD_DEADLINE_S, STREAM_CHUNK)
    try:
        first = next(pieces)
    except (ReadError, IndexerError) as exc:
        raise HTTPException(502, scrub(f"the storage did not give the file: {exc}")) from None
    except StopIteration:
        return iter(())
    return _chained(first, pieces)


def _chained(first: bytes, pieces: Iterator[bytes]) -> Iterator[bytes]:
    """`first`, then the other pieces; closing it closes them (a connection is let go at once)."""
    try:
        yield first
        yield from pieces
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
