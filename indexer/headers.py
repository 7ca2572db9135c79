"""Read one dalle's header and turn it into a `Dalle` record, or a `DalleProblem` saying why not.

`read_dalle` does the I/O (one prefix read, seldom more); `parse_dalle` checks the header's
structure against the file size, then has GDAL describe the raster (`raster_info`) and turns the
description and the georeferencing into a record (`describe`). The dalles of a livrable share
their CRS and their header structure: GDAL builds each CRS and describes each structure once,
and the other dalles are placed from their own tags (`model_transform`, `_geojp2_georef`).
"""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
import xml.etree.ElementTree as ET
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol, TypeVar

import rasterio
from affine import Affine
from pyproj import CRS
from pyproj.exceptions import CRSError
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader, MemoryFile

from indexer.errors import ReadError
from indexer.models import Dalle, DalleProblem, FileEntry, Point

if TYPE_CHECKING:
    from indexer.storage import Storage
from indexer.structure import (
    MODEL_PIXEL_SCALE,
    MODEL_TIEPOINT,
    MODEL_TRANSFORMATION,
    ByteView,
    Finding,
    Jp2Header,
    TiffHeader,
    read_jp2_header,
    read_tiff_header,
    without_geokeys,
)

log = logging.getLogger(__name__)
V = TypeVar("V")

OPEN_FORMATS = {".tif": "image/tiff", ".tiff": "image/tiff", ".geotif": "image/tiff",
                ".geotiff": "image/tiff", ".jp2": "image/jp2"}
PROPRIETARY_FORMATS = {".ecw": "image/ecw", ".sid": "image/x-mrsid"}
_DRIVERS = {"image/tiff": "GTiff", "image/jp2": "JP2OpenJPEG"}
WORLD_FILE_SUFFIXES = (".tfw", ".tifw", ".j2w", ".wld", ".eww", ".sdw")
SIDECAR_SUFFIXES = (*WORLD_FILE_SUFFIXES, ".prj", ".aux.xml")

# Nothing is probed: GDAL is never allowed to look for sidecars or list folders by itself.
GDAL_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_PAM_ENABLED": "NO",
    "GDAL_GEOREF_SOURCES": "INTERNAL",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.jp2",
}

# GDAL's names of colour interpretations and data types, as `gdalinfo` prints them.
_COLOUR_NAMES = {
    ColorInterp.undefined: "Undefined", ColorInterp.gray: "Gray", ColorInterp.palette: "Palette",
    ColorInterp.red: "Red", ColorInterp.green: "Green", ColorInterp.blue: "Blue",
    ColorInterp.alpha: "Alpha", ColorInterp.hue: "Hue", ColorInterp.saturation: "Saturation",
    ColorInterp.lightness: "Lightness", ColorInterp.cyan: "Cyan", ColorInterp.magenta: "Magenta",
    ColorInterp.yellow: "Yellow", ColorInterp.black: "Black", ColorInterp.Y: "YCbCr_Y",
    ColorInterp.Cb: "YCbCr_Cb", ColorInterp.Cr: "YCbCr_Cr",
}
_TYPE_NAMES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "uint64": "UInt64", "int64": "Int64", "float32": "Float32",
               "float64": "Float64", "complex64": "CFloat32", "complex128": "CFloat64",
               "complex_int16": "CInt16"}


def suffix(path: str) -> str:
    """The lower-case extension of a path, ``.aux.xml`` counted as one."""
    lower = path.lower()
    if lower.endswith(".aux.xml"):
        return ".aux.xml"
    dot = lower.rfind(".")
    return lower[dot:] if dot > lower.rfind("/") else ""


def raster_mime(path: str) -> str | None:
    """The MIME type of a raster candidate by its extension, None when it is not a raster."""
    ext = suffix(path)
    return OPEN_FORMATS.get(ext) or PROPRIETARY_FORMATS.get(ext)


def sidecar_stem(path: str) -> str | None:
    """For a sidecar file, the lower-case path of the raster it describes without extension."""
    ext = suffix(path)
    if ext not in SIDECAR_SUFFIXES:
        return None
    stem = path[: -len(ext)].lower()
    if ext == ".aux.xml":  # a.tif.aux.xml describes a.tif
        stem = stem.rsplit(".", 1)[0] if suffix(stem) else stem
    return stem


class RangeReader(Protocol):
    """What parsing a header may read beyond its first bytes: any `indexer.storage.Storage`."""

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a file."""
        ...


@dataclass(frozen=True, slots=True)
class Georef:
    """Georeferencing found outside the header: a world file and a CRS from .prj or .aux.xml."""

    transform: Affine | None = None
    crs_wkt: str | None = None


@lru_cache(maxsize=256)
def identify_epsg(wkt: str) -> int | None:
    """The EPSG code of a CRS, looked up by pyproj when the file carries no authority code."""
    try:
        return CRS.from_wkt(wkt).to_epsg(min_confidence=70)
    except CRSError:
        return None


def resolution_cm(transform: Affine) -> float:
    """Pixel size in centimetres, an integer when whole, else rounded to 2 decimals."""
    size = math.hypot(transform.a, transform.d) * 100
    whole = round(size)
    return float(whole) if abs(size - whole) < 1e-6 else round(size, 2)


def corners(transform: Affine, width: int, height: int) -> tuple[Point, Point, Point, Point]:
    """Upper-left, upper-right, lower-right and lower-left corners in the dalle's CRS."""
    ul, ur, lr, ll = (transform @ (0, 0), transform @ (width, 0), transform @ (width, height),
                      transform @ (0, height))
    return ul, ur, lr, ll


_IDENTITY = tuple(Affine.identity())[:6]


def _is_georeferenced(transform: Affine) -> bool:
    return tuple(transform)[:6] != _IDENTITY  # GDAL's transform of a raster it cannot place


@dataclass(frozen=True, slots=True)
class RasterInfo:
    """How GDAL describes a raster, its georeferencing aside."""

    width: int
    height: int
    bands: tuple[str, ...]
    """Each band as ``Colour(Type)``, as `gdalinfo` names them."""
    compression: str | None


def raster_info(src: DatasetReader, mime: str) -> RasterInfo:
    """What an open dataset says of its size, bands and compression."""
    if mime == "image/jp2":
        reversibility = src.tags(ns="IMAGE_STRUCTURE").get("COMPRESSION_REVERSIBILITY", "")
        compression: str | None = "LOSSLESS" if reversibility.startswith("LOSSLESS") else "LOSSY"
    else:
        compression = src.compression.name.upper() if src.compression else "NONE"
    bands = tuple(f"{_COLOUR_NAMES.get(ci, ci.name.capitalize())}({_TYPE_NAMES.get(dt, dt)})"
                  for ci, dt in zip(src.colorinterp, src.dtypes, strict=True))
    return RasterInfo(src.width, src.height, bands, compression)


def describe(entry: FileEntry, size: int, mime: str, info: RasterInfo, transform: Affine, crs_wkt: str | None
             ) -> Dalle | DalleProblem:
    """The record of a raster described by `info` and placed by `transform` in `crs_wkt`, or why it
    cannot be indexed."""
    if info.width == 0 or info.height == 0 or not info.bands:
        return DalleProblem(entry.path, "empty", f"the raster has no pixels ({info.height}x{info.width})",
                            size, entry.mtime, entry.etag)
    if not _is_georeferenced(transform) or not crs_wkt:
        missing = "geotransform" if not _is_georeferenced(transform) else "CRS"
        return DalleProblem(entry.path, "not_georeferenced",
                            f"no {missing} in the header nor in a sidecar file", size, entry.mtime, entry.etag)
    crs_wkt = sys.intern(crs_wkt)  # one string per CRS, not one per dalle
    return Dalle(
        path=entry.path,
        size=size,
        mime=mime,
        width=info.width,
        height=info.height,
        bands=info.bands,
        compression=info.compression,
        epsg=identify_epsg(crs_wkt),
        crs_wkt=crs_wkt,
        corners=corners(transform, info.width, info.height),
        resolution_cm=resolution_cm(transform),
        open=True,
        mtime=entry.mtime,
        etag=entry.etag,
    )


def dalle_from_dataset(entry: FileEntry, size: int, mime: str, src: DatasetReader,
                       georef: Georef | None = None, crs_wkt: str | None = None) -> Dalle | DalleProblem:
    """The record of a dataset opened from `entry`, or why it cannot be indexed.

    Args:
        entry: the listed file.
        size: its size in bytes.
        mime: ``image/tiff`` or ``image/jp2``.
        src: the open dataset (header only, no pixel is read).
        georef: georeferencing from sidecar files, used where the header has none.
        crs_wkt: the header's CRS when it was read from identical GeoKeys already (`src` then has none).
    """
    info = raster_info(src, mime)
    transform = src.transform
    crs_wkt = crs_wkt or (src.crs.to_wkt() if src.crs else None)
    if georef is not None:
        transform = transform if _is_georeferenced(transform) else georef.transform or transform
        crs_wkt = crs_wkt or georef.crs_wkt
    return describe(entry, size, mime, info, transform, crs_wkt)


def parse_world_file(text: str) -> Affine:
    """The geotransform of a world file (six numbers, pixel-centre based)."""
    values = [float(v) for v in text.split()[:6]]
    if len(values) != 6:
        raise ValueError("a world file has six numbers")
    a, d, b, e, c, f = values
    return Affine(a, b, c - a / 2 - b / 2, d, e, f - d / 2 - e / 2)


def parse_aux_xml(text: str) -> Georef:
    """The CRS and geotransform a GDAL ``.aux.xml`` file carries."""
    root = ET.fromstring(text)
    srs = root.findtext("SRS")
    gt = root.findtext("GeoTransform")
    transform = None
    if gt:
        c, a, b, f, d, e = (float(v) for v in re.split(r"[,\s]+", gt.strip()))
        transform = Affine(a, b, c, d, e, f)
    return Georef(transform, CRS.from_user_input(srs).to_wkt() if srs else None)


def read_georef(storage: RangeReader, sidecars: list[FileEntry]) -> Georef | None:
    """Georeferencing from the sidecar files the listing showed for a dalle, if any is usable."""
    transform = None
    crs_wkt = None
    for side in sorted(sidecars, key=lambda s: s.path):
        ext = suffix(side.path)
        try:
            text = storage.read_range(side.path, 0, min(side.size or 1 << 20, 1 << 20)).decode("utf-8", "replace")
            if ext in WORLD_FILE_SUFFIXES:
                transform = transform or parse_world_file(text)
            elif ext == ".prj":
                crs_wkt = crs_wkt or CRS.from_user_input(text.strip()).to_wkt()
            elif ext == ".aux.xml":
                aux = parse_aux_xml(text)
                transform = transform or aux.transform
                crs_wkt = crs_wkt or aux.crs_wkt
        except (ReadError, ValueError, CRSError, ET.ParseError) as exc:
            log.info("sidecar not usable", extra={"path": side.path, "error": str(exc)})
    if transform is None and crs_wkt is None:
        return None
    return Georef(transform, crs_wkt)


def _problem(entry: FileEntry, finding: Finding, size: int | None) -> DalleProblem:
    return DalleProblem(entry.path, finding.reason, finding.detail, size, entry.mtime, entry.etag)


def read_dalle(storage: Storage, entry: FileEntry, sidecars: list[FileEntry] | None = None,
               header_bytes: int = 16384) -> Dalle | DalleProblem:
    """Read one dalle's header from its storage. Never raises for a bad file."""
    skipped = skip_unread(entry)
    if skipped is not None:
        return skipped
    try:
        prefix, entry = storage.read_start(entry, header_bytes)
    except ReadError as exc:
        return unreadable(entry, exc)
    return parse_dalle(storage, entry, prefix, sidecars)


def skip_unread(entry: FileEntry) -> DalleProblem | None:
    """The problem of a listed dalle known without reading it (a 0-byte file), else None.

    Raises ValueError for a file that is not a raster candidate: callers pass candidates only.
    """
    if raster_mime(entry.path) is None:
        raise ValueError(f"{entry.path} is not a raster candidate")
    if entry.size == 0:
        return DalleProblem(entry.path, "empty", "0-byte file", 0, entry.mtime, entry.etag)
    return None


def unreadable(entry: FileEntry, exc: ReadError) -> DalleProblem:
    """The problem of a dalle whose first read failed after retries."""
    return DalleProblem(entry.path, "unreadable", str(exc), entry.size, entry.mtime, entry.etag)


def parse_dalle(storage: RangeReader, entry: FileEntry, prefix: bytes, sidecars: list[FileEntry] | None = None
                ) -> Dalle | DalleProblem:
    """The record of a dalle from the first bytes `Storage.read_start` gave, with the entry it completed.

    Reads more of the storage only for a header longer than `prefix` or for sidecar files. A
    header whose structure and GeoKeys (or GeoJP2 box) were seen before needs no GDAL at all.
    """
    mime = raster_mime(entry.path)
    if mime is None:
        raise ValueError(f"{entry.path} is not a raster candidate")
    size = entry.size or 0
    if size == 0:
        return DalleProblem(entry.path, "empty", "0-byte file", 0, entry.mtime, entry.etag)
    if mime not in _DRIVERS:
        name = "ECW" if mime == "image/ecw" else "MrSID"
        return DalleProblem(entry.path, "unsupported", f"{name} is a proprietary format no open driver reads",
                            size, entry.mtime, entry.etag)

    view = ByteView(prefix, size, lambda start, end: storage.read_range(entry.path, start, end))
    try:
        parsed = read_tiff_header(view) if mime == "image/tiff" else read_jp2_header(view)
    except ReadError as exc:
        return DalleProblem(entry.path, "unreadable", str(exc), size, entry.mtime, entry.etag)
    if isinstance(parsed, Finding):
        return _problem(entry, parsed, size)

    tiff = parsed if isinstance(parsed, TiffHeader) else None
    known_crs = _known_crs(tiff)
    geojp2 = _geojp2_georef(parsed) if isinstance(parsed, Jp2Header) else None
    # A header shaped like one GDAL described, and placed without GDAL: no GDAL at all.
    placed = geojp2 or (Georef(model_transform(tiff), known_crs) if tiff is not None and known_crs else None)
    transform = placed.transform if placed is not None else None
    structure = parsed.structure if transform is not None else None
    known_info = _INFO_BY_STRUCTURE.get(structure) if structure else None
    if placed is not None and transform is not None and known_info is not None:
        return describe(entry, size, mime, known_info, transform, placed.crs_wkt)
    open_options = {"GEOREF_SOURCES": "NONE"} if geojp2 else {}
    data = view.data
    for attempt in range(2):
        try:
            opened = without_geokeys(data, tiff) if known_crs and tiff else data
            with _gdal_env(), MemoryFile(opened, filename=entry.name) as mem, \
                    mem.open(driver=_DRIVERS[mime], **open_options) as src:
                if geojp2 is not None:
                    info = raster_info(src, mime)
                    if structure:
                        _remember(_INFO_BY_STRUCTURE, structure, info)
                    return describe(entry, size, mime, info, geojp2.transform or Affine.identity(), geojp2.crs_wkt)
                if known_crs is None and tiff is not None and tiff.geokeys is not None and src.crs:
                    _remember(_CRS_BY_GEOKEYS, tiff.geokeys, src.crs.to_wkt())
                if structure and transform == src.transform:
                    _remember(_INFO_BY_STRUCTURE, structure, raster_info(src, mime))
                georef = None
                if (not _is_georeferenced(src.transform) or (src.crs is None and not known_crs)) and sidecars:
                    georef = read_georef(storage, sidecars)
                return dalle_from_dataset(entry, size, mime, src, georef, known_crs)
        except RasterioError as exc:
            if attempt == 0 and len(data) < size:
                # The header runs past the prefix: read a larger part of the file, once.
                try:
                    data = storage.read_range(entry.path, 0, min(size, max(16 * len(data), 1 << 20)))
                except ReadError as read_exc:
                    return DalleProblem(entry.path, "unreadable", str(read_exc), size, entry.mtime, entry.etag)
                continue
            detail = f"GDAL cannot open it: {_gdal_message(exc)}"
            return DalleProblem(entry.path, "corrupt", detail, size, entry.mtime, entry.etag)
    raise AssertionError("unreachable")


_CRS_BY_GEOKEYS: dict[bytes, str] = {}
"""CRS already built by GDAL, by the raw GeoKeys it came from (a livrable has one or two)."""
_INFO_BY_STRUCTURE: dict[bytes, RasterInfo] = {}
"""Descriptions already read by GDAL, by `TiffHeader.structure` or `Jp2Header.structure`: the
dalles of a livrable share their structure (size, bands, compression, coding parameters) and
differ only by what places them."""


def _known_crs(tiff: TiffHeader | None) -> str | None:
    """The CRS of GeoKeys already seen, when the fast path applies to this header."""
    if tiff is None or tiff.geokeys is None or tiff.geokey_entry is None or tiff.pixel_is_point:
        return None  # PixelIsPoint shifts GDAL's geotransform: let GDAL read those keys itself
    return _CRS_BY_GEOKEYS.get(tiff.geokeys)


def _geojp2_georef(header: Jp2Header) -> Georef | None:
    """Georeferencing of a GeoJP2 box, read as the small GeoTIFF it is, with the CRS cache of dalles.

    GDAL would read the same box, building the CRS from its GeoKeys for every file; when the box
    gives a geotransform and a CRS, the JPEG 2000 itself is opened without georeferencing. GeoKeys
    seen before and a plain tiepoint with a pixel scale need no GDAL at all.
    """
    if header.geojp2 is None:
        return None
    box = ByteView(header.geojp2, len(header.geojp2), lambda start, end: b"")
    tiff = read_tiff_header(box)
    if isinstance(tiff, Finding) and tiff.reason == "corrupt":
        return None
    known = _known_crs(tiff) if isinstance(tiff, TiffHeader) else None
    transform = model_transform(tiff) if isinstance(tiff, TiffHeader) else None
    if known is not None and transform is not None:
        return Georef(transform, known)
    data = without_geokeys(header.geojp2, tiff) if known and isinstance(tiff, TiffHeader) else header.geojp2
    try:
        with _gdal_env(), MemoryFile(data) as mem, mem.open(driver="GTiff") as src:
            crs_wkt = known or (src.crs.to_wkt() if src.crs else None)
            if not _is_georeferenced(src.transform) or crs_wkt is None:
                return None
            if known is None and isinstance(tiff, TiffHeader) and tiff.geokeys is not None:
                _remember(_CRS_BY_GEOKEYS, tiff.geokeys, crs_wkt)
            return Georef(src.transform, crs_wkt)
    except RasterioError:
        return None


def model_transform(tiff: TiffHeader) -> Affine | None:
    """The geotransform of one tiepoint and a positive pixel scale, as GDAL derives it; None for
    anything else (a ModelTransformation, several tiepoints, PixelIsPoint), left to GDAL."""
    scale = tiff.model.get(MODEL_PIXEL_SCALE)
    tiepoint = tiff.model.get(MODEL_TIEPOINT)
    if MODEL_TRANSFORMATION in tiff.model or tiff.pixel_is_point or scale is None or tiepoint is None \
            or len(scale) < 2 or len(tiepoint) != 6 or not (scale[0] > 0 and scale[1] > 0):
        return None
    i, j, _, x, y, _ = tiepoint
    return Affine(scale[0], 0.0, x - i * scale[0], 0.0, -scale[1], y + j * scale[1])


def _remember(cache: dict[bytes, V], key: bytes, value: V) -> None:
    if len(cache) >= 1024:
        cache.clear()
    cache[key] = value


def _gdal_message(exc: Exception) -> str:
    """GDAL's error without the temporary in-memory path it mentions."""
    text = str(exc).replace("\n", " ")
    text = re.sub(r"/vsimem/[^\s:']*", "file", text)
    return text[:200]


_thread = threading.local()


def _gdal_env() -> AbstractContextManager[object]:
    """GDAL's configuration for reading headers: the thread's own after `parsing_thread`, else set
    for this one call."""
    if getattr(_thread, "configured", False) and rasterio.env.hasenv():
        return nullcontext()
    env: AbstractContextManager[object] = rasterio.Env(**GDAL_ENV)
    return env


def parsing_thread() -> None:
    """Set GDAL's configuration once for the life of a thread that parses many headers.

    Setting it for each dalle costs about a tenth of a millisecond, as much as parsing a header
    whose structure was seen before. Only for threads the scan owns: the configuration is never unset.
    """
    rasterio.Env(**GDAL_ENV).__enter__()
    _thread.configured = True
