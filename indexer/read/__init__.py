"""What a dalle's header says: `read_dalle` reads it from its storage, `parse_dalle` turns its bytes
into a `Dalle` record or a `DalleProblem` saying why not. Never raises for a bad file.

`read_dalle` does the I/O (one prefix read, seldom more); `parse_dalle` checks the header's
structure against the file size (`tiff`, `jp2`), then describes the raster as GDAL does
(`describe`), with sidecar files where the header lacks georeferencing (`sidecars`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from indexer.crs import identify_epsg
from indexer.errors import ReadError, StorageUnreachable
from indexer.models import Dalle, DalleProblem, FileEntry, Record, SkipReason
from indexer.read import describe
from indexer.read.describe import Descriptions, corners, problem, resolution_cm
from indexer.read.formats import DRIVERS, PROPRIETARY_FORMATS, Listing, raster_mime, suffix
from indexer.read.jp2 import is_jpeg2000, read_jp2_header
from indexer.read.sidecars import has_world_file, read_georef
from indexer.read.tiff import read_tiff_header
from indexer.read.view import ByteView, Finding, RangeReader

__all__ = ["failed", "parse_dalle", "place_proprietary", "read_dalle", "skip_unread", "unreadable"]

log = logging.getLogger(__name__)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class HeaderSource(RangeReader, Protocol):
    """What `read_dalle` reads from: any `indexer.storages.Storage`."""

    def read_start(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        """The first `length` bytes of a file and its completed entry."""
        ...


def read_dalle(storage: HeaderSource, entry: FileEntry, sidecars: list[FileEntry] | None = None,
               header_bytes: int = 16384) -> Record:
    """Read one dalle's header from its storage. Never raises for a bad file; raises
    `StorageUnreachable` when the storage itself (or the fleet's connection slots) fails."""
    skipped = skip_unread(entry)
    if skipped is not None:
        return skipped
    try:
        prefix, entry = storage.read_start(entry, header_bytes)
    except ReadError as exc:
        return unreadable(entry, exc)
    except StorageUnreachable:  # the storage (or the fleet's connection slots), not this dalle
        raise
    except Exception as exc:  # one dalle never stops the others
        return failed(entry, exc)
    return parse_dalle(storage, entry, prefix, sidecars)


def skip_unread(entry: FileEntry) -> DalleProblem | None:
    """The problem of a listed dalle known without reading it (a 0-byte file), else None.

    Raises ValueError for a file that is not a raster candidate: callers pass candidates only.
    """
    if raster_mime(entry.path) is None:
        raise ValueError(f"{entry.path} is not a raster candidate")
    if entry.size == 0:
        return DalleProblem(entry, SkipReason.EMPTY, "0-byte file")
    return None


def unreadable(entry: FileEntry, exc: ReadError) -> DalleProblem:
    """The problem of a dalle whose first read failed after retries."""
    return DalleProblem(entry, SkipReason.UNREADABLE, str(exc))


def failed(entry: FileEntry, exc: Exception) -> DalleProblem:
    """The problem of a dalle whose reading failed in a way nobody foresaw: logged, named, and only its own."""
    log.warning("dalle not read", extra={"path": entry.path, "error": repr(exc)}, exc_info=exc)
    return DalleProblem(entry, SkipReason.UNREADABLE if isinstance(exc, OSError) else SkipReason.CORRUPT,
                        f"the header cannot be read: {type(exc).__name__}: {exc}".replace("\n", " ")[:200])


def sniff(prefix: bytes, mime: str) -> str:
    """The format of a file by its first bytes, as GDAL chooses its driver; by its name when they say nothing."""
    if prefix[:4] in _TIFF_MAGIC:
        return "image/tiff"
    if is_jpeg2000(prefix):
        return "image/jp2"
    return mime


def parse_dalle(storage: RangeReader, entry: FileEntry, prefix: bytes, sidecars: list[FileEntry] | None = None,
                descriptions: Descriptions | None = None) -> Record:
    """The record of a dalle from the first bytes `Storage.read_start` gave, with the entry it completed.

    Reads more of the storage only for a header longer than `prefix` or for sidecar files. A
    header whose structure and GeoKeys (or GeoJP2 box) were seen before needs no GDAL at all.
    `descriptions` defaults to the process's (`indexer.read.describe.DESCRIPTIONS`). Whatever
    the file holds, the answer is a record: a failure nobody foresaw is this dalle's problem
    (`corrupt`, the error named), never the scan's; only a `StorageUnreachable` of a further
    read (the storage itself failing) goes through.
    """
    mime = raster_mime(entry.path)
    if mime is None:
        raise ValueError(f"{entry.path} is not a raster candidate")
    try:
        return _parse(storage, entry, sniff(prefix, mime), prefix, sidecars, descriptions or describe.DESCRIPTIONS)
    except ReadError as exc:
        return problem(entry, entry.size, SkipReason.UNREADABLE, str(exc))
    except StorageUnreachable:  # a further read found the storage failing, not this file
        raise
    except Exception as exc:  # one file's bytes must never stop a livrable
        return failed(entry, exc)


def _parse(storage: RangeReader, entry: FileEntry, mime: str, prefix: bytes, sidecars: list[FileEntry] | None,
           descriptions: Descriptions) -> Record:
    size = entry.size or 0
    if size == 0:
        return problem(entry, 0, SkipReason.EMPTY, "0-byte file")
    if mime not in DRIVERS:
        name = "ECW" if mime == "image/ecw" else "MrSID"
        return problem(entry, size, SkipReason.UNSUPPORTED, f"{name} is a proprietary format no open driver reads")
    view = ByteView(prefix, size, lambda start, end: storage.read_range(entry.path, start, end))
    parsed = read_tiff_header(view) if mime == "image/tiff" else read_jp2_header(view)
    if isinstance(parsed, Finding):
        return problem(entry, size, parsed.reason, parsed.detail)
    return describe.describe_header(storage, entry, size, mime, view, parsed, sidecars, descriptions)


def place_proprietary(storage: RangeReader, listing: Listing, results: Sequence[Record]) -> list[Record]:
    """Give ECW/MrSID dalles a footprint when a world file places them.

    No open driver reads their header, so their extent is the livrable's common dalle extent
    (every other dalle of the livrable has it) from the world file's origin, and their CRS is the
    livrable's, or their ``.prj``. Without a world file or a common extent they stay `unsupported`.
    """
    dalles = [r for r in results if isinstance(r, Dalle)]
    extents = Counter((round(abs(d.corners[1][0] - d.corners[0][0]), 3),
                       round(abs(d.corners[0][1] - d.corners[3][1]), 3)) for d in dalles)
    crs = Counter(d.crs_wkt for d in dalles)
    placed: list[Record] = []
    for result in results:
        if not (isinstance(result, DalleProblem) and result.reason == SkipReason.UNSUPPORTED
                and suffix(result.path) in PROPRIETARY_FORMATS):
            placed.append(result)
            continue
        sidecars = listing.sidecars_of(result.file)
        georef = read_georef(storage, sidecars) if has_world_file(sidecars) else None
        crs_wkt = (georef.crs_wkt if georef else None) or (crs.most_common(1)[0][0] if len(crs) == 1 else None)
        if georef is None or georef.transform is None or crs_wkt is None or len(extents) != 1:
            placed.append(result)
            continue
        (width_m, height_m), = extents
        t = georef.transform
        width, height = round(width_m / abs(t.a)), round(height_m / abs(t.e))
        placed.append(Dalle(
            file=result.file if result.file.size is not None else replace(result.file, size=0),
            mime=PROPRIETARY_FORMATS[suffix(result.path)],
            width=width, height=height, bands=(), compression=None, epsg=identify_epsg(crs_wkt),
            crs_wkt=crs_wkt, corners=corners(t, width, height), resolution_cm=resolution_cm(t), open=False))
    return placed
