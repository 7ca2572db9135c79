"""How GDAL describes a dalle, and what it described already: one `Descriptions` object.

The dalles of a livrable share their CRS and their header structure (size, bands, compression,
coding parameters) and differ only by their georeferencing. GDAL builds each CRS and describes
each structure once; `Descriptions` keeps both, and the other dalles are placed from their own
tags (`indexer.read.tiff.model_transform`, `geojp2_georef`) without opening GDAL at all. A
description is kept only when GDAL's own geotransform equals the one derived from the tags, so
the fast path gives exactly what GDAL gives.
"""

from __future__ import annotations

import math
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, TypeVar
from xml.sax.saxutils import escape

import rasterio
from affine import Affine
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader, MemoryFile

from indexer.crs import identify_epsg
from indexer.errors import ReadError
from indexer.models import Dalle, DalleProblem, FileEntry, Point, Record, SkipReason
from indexer.read.formats import DRIVERS
from indexer.read.jp2 import Jp2Header
from indexer.read.sidecars import Georef, read_georef, read_pam
from indexer.read.tiff import TiffHeader, model_transform, read_tiff_header, without_geokeys
from indexer.read.view import ByteView, Finding, RangeReader

V = TypeVar("V")

# Nothing is probed: GDAL is never allowed to look for sidecars or list folders by itself.
GDAL_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_PAM_ENABLED": "NO",
    "GDAL_GEOREF_SOURCES": "INTERNAL",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.jp2",
}

# GDAL's names of colour interpretations (by GDALColorInterp value) and data types, as `gdalinfo` prints them.
_COLOUR_NAMES = (
    "Undefined", "Gray", "Palette", "Red", "Green", "Blue", "Alpha", "Hue", "Saturation", "Lightness", "Cyan",
    "Magenta", "Yellow", "Black", "YCbCr_Y", "YCbCr_Cb", "YCbCr_Cr", "Pan", "Coastal", "RedEdge", "NIR", "SWIR",
    "MWIR", "LWIR", "TIR", "OtherIR", "IR_Reserved_1", "IR_Reserved_2", "IR_Reserved_3", "IR_Reserved_4",
    "SAR_Ka", "SAR_K", "SAR_Ku", "SAR_X", "SAR_C", "SAR_S", "SAR_L", "SAR_P", "SAR_Reserved_1", "SAR_Reserved_2",
)
_TYPE_NAMES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "uint64": "UInt64", "int64": "Int64", "float32": "Float32",
               "float64": "Float64", "complex64": "CFloat32", "complex128": "CFloat64",
               "complex_int16": "CInt16"}

LARGE_HEADER_BYTES = 1 << 20
"""The least read again, from the start, when GDAL cannot open the parts of a header read so far."""
MAX_COORDINATE = 1e10
"""The largest coordinate a footprint corner may have in any CRS (metres or degrees): beyond is no place."""


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


def is_georeferenced(transform: Affine) -> bool:
    """Whether a geotransform places the raster: GDAL gives the identity (or, for some JPEG 2000
    codestreams, zeros) to one it cannot place."""
    return tuple(transform)[:6] != _IDENTITY and transform.a * transform.e - transform.b * transform.d != 0


def unusable_geotransform(transform: Affine, width: int, height: int) -> str | None:
    """Why a geotransform cannot place a raster (not finite, corners beyond any CRS), or None."""
    values = tuple(transform)[:6]
    if not all(math.isfinite(v) for v in values):
        return "the geotransform is not finite (" + ", ".join(f"{v:.12g}" for v in values) + ")"
    if any(not abs(v) <= MAX_COORDINATE for point in corners(transform, width, height) for v in point):
        return f"the geotransform places corners beyond {MAX_COORDINATE:g} (" + ", ".join(
            f"{v:.12g}" for v in values) + ")"
    return None


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
    else:  # rasterio's name when it knows the codec, else GDAL's (PIXARLOG, SGILOG, NEXT...)
        method: Any = src.compression
        compression = (method.value if isinstance(method, Enum) else str(method)).upper() if method else "NONE"
    bands = tuple(f"{_colour_name(ci)}({_TYPE_NAMES.get(dt, dt)})"
                  for ci, dt in zip(src.colorinterp, src.dtypes, strict=True))
    return RasterInfo(src.width, src.height, bands, compression)


def _pam_colours(bands: tuple[str, ...], colours: tuple[tuple[int, str], ...]) -> tuple[str, ...]:
    """Bands with the colour interpretations of an ``.aux.xml``, as GDAL takes them: names it knows
    (in any case) but Undefined."""
    named = list(bands)
    known = {name.lower(): name for name in _COLOUR_NAMES}
    for band, name in colours:
        colour = known.get(name.lower(), "Undefined")
        if 1 <= band <= len(named) and colour != "Undefined":
            named[band - 1] = colour + named[band - 1][named[band - 1].rfind("("):]
    return tuple(named)


def _colour_name(interpretation: ColorInterp) -> str:
    value = int(interpretation.value)
    return _COLOUR_NAMES[value] if 0 <= value < len(_COLOUR_NAMES) else "Undefined"


def problem(entry: FileEntry, size: int | None, reason: SkipReason, detail: str) -> DalleProblem:
    """The problem of a listed file whose size is `size`."""
    return DalleProblem(entry if entry.size == size else replace(entry, size=size), reason, detail)


def record_of(entry: FileEntry, size: int, mime: str, info: RasterInfo, transform: Affine, crs_wkt: str | None,
              pam: Georef | None = None) -> Record:
    """The record of a raster described by `info` and placed by `transform` in `crs_wkt`, or why it
    cannot be indexed. GDAL's ``.aux.xml`` (`pam`) takes precedence over the header, as in GDAL."""
    if pam is not None:
        transform, crs_wkt = pam.transform or transform, pam.crs_wkt or crs_wkt
        if pam.colours and mime == "image/tiff":  # GDAL's GeoTIFF driver takes them, its JPEG 2000 one does not
            info = replace(info, bands=_pam_colours(info.bands, pam.colours))
    if info.width == 0 or info.height == 0:
        return problem(entry, size, SkipReason.EMPTY, f"the raster has no pixels ({info.height}x{info.width})")
    if not info.bands:
        return problem(entry, size, SkipReason.CORRUPT, "GDAL finds no band in it")
    if not is_georeferenced(transform) or not crs_wkt:
        missing = "geotransform" if not is_georeferenced(transform) else "CRS"
        return problem(entry, size, SkipReason.NOT_GEOREFERENCED,
                       f"no {missing} in the header nor in a sidecar file")
    unusable = unusable_geotransform(transform, info.width, info.height)
    if unusable is not None:
        return problem(entry, size, SkipReason.NOT_GEOREFERENCED, unusable)
    crs_wkt = sys.intern(crs_wkt)  # one string per CRS, not one per dalle
    return Dalle(
        file=entry if entry.size == size else replace(entry, size=size),
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
    )


def dalle_from_dataset(entry: FileEntry, size: int, mime: str, src: DatasetReader,
                       georef: Georef | None = None, crs_wkt: str | None = None, pam: Georef | None = None
                       ) -> Record:
    """The record of a dataset opened from `entry`, or why it cannot be indexed.

    Args:
        entry: the listed file.
        size: its size in bytes.
        mime: ``image/tiff`` or ``image/jp2``.
        src: the open dataset (header only, no pixel is read).
        georef: georeferencing from sidecar files, used where the header has none.
        crs_wkt: the header's CRS when it was read from identical GeoKeys already (`src` then has none).
        pam: georeferencing of GDAL's ``.aux.xml``, which takes precedence over the header.
    """
    info = raster_info(src, mime)
    transform = src.transform
    crs_wkt = crs_wkt or (src.crs.to_wkt() if src.crs else None)
    if georef is not None:
        transform = transform if is_georeferenced(transform) else georef.transform or transform
        crs_wkt = crs_wkt or georef.crs_wkt
    return record_of(entry, size, mime, info, transform, crs_wkt, pam)


class Descriptions:
    """What GDAL said of headers already seen: each CRS by its raw GeoKeys, each raster description
    by its header structure. Bounded: past `limit` entries a cache starts again empty."""

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self.crs_by_geokeys: dict[bytes, str] = {}
        """CRS already built by GDAL, by the raw GeoKeys it came from (a livrable has one or two)."""
        self.info_by_structure: dict[bytes, RasterInfo] = {}
        """Descriptions already read by GDAL, by `TiffHeader.structure` or `Jp2Header.structure`."""

    def clear(self) -> None:
        """Forget everything: the next dalles are described by GDAL again."""
        self.crs_by_geokeys.clear()
        self.info_by_structure.clear()

    def known_crs(self, tiff: TiffHeader | None) -> str | None:
        """The CRS of GeoKeys already seen, when the fast path applies to this header."""
        if tiff is None or tiff.geokeys is None or tiff.geokey_entry is None or tiff.pixel_is_point:
            return None  # PixelIsPoint shifts GDAL's geotransform: let GDAL read those keys itself
        return self.crs_by_geokeys.get(tiff.geokeys)

    def remember_crs(self, geokeys: bytes, crs_wkt: str) -> None:
        """Keep the CRS GDAL built from these GeoKeys."""
        self._remember(self.crs_by_geokeys, geokeys, crs_wkt)

    def remember_info(self, structure: bytes, info: RasterInfo) -> None:
        """Keep GDAL's description of a header structure."""
        self._remember(self.info_by_structure, structure, info)

    def _remember(self, cache: dict[bytes, V], key: bytes, value: V) -> None:
        if len(cache) >= self.limit:
            cache.clear()
        cache[key] = value


DESCRIPTIONS = Descriptions()
"""The process's descriptions, shared by every scan (a livrable's dalles share their structure)."""


def geojp2_georef(header: Jp2Header, descriptions: Descriptions) -> Georef | None:
    """Georeferencing of the GeoJP2 boxes, chosen as GDAL does; None when GDAL had better read them itself.

    GDAL takes the first box with a CRS, or a later one when that CRS is a local one, or else the
    last with a geotransform. Only a choice giving both a geotransform and a CRS is returned: the
    JPEG 2000 itself is then opened without georeferencing.
    """
    found = [_geojp2_box(box, descriptions) for box in header.geojp2]
    best: Georef | None = None
    for georef in found:
        if georef is not None and georef.crs_wkt and (best is None or _is_local(best.crs_wkt)):
            best = georef
    if best is None:
        best = next((g for g in reversed(found) if g is not None and g.transform is not None), None)
    return best if best is not None and best.transform is not None and best.crs_wkt else None


def _is_local(crs_wkt: str | None) -> bool:
    return bool(crs_wkt) and str(crs_wkt).lstrip().upper().startswith(("LOCAL_CS", "ENGCRS", "ENGINEERINGCRS"))


def _geojp2_box(geotiff: bytes, descriptions: Descriptions) -> Georef | None:
    """The geotransform and CRS of one GeoJP2 box, read as the small GeoTIFF it is, with the CRS
    cache of dalles (GeoKeys seen before and a plain tiepoint with a pixel scale need no GDAL)."""
    box = ByteView(geotiff, len(geotiff), lambda start, end: b"")
    tiff = read_tiff_header(box)
    if isinstance(tiff, Finding) and tiff.reason == SkipReason.CORRUPT:
        return None
    known = descriptions.known_crs(tiff) if isinstance(tiff, TiffHeader) else None
    transform = model_transform(tiff) if isinstance(tiff, TiffHeader) else None
    if known is not None and transform is not None:
        return Georef(transform, known)
    data = without_geokeys((0, geotiff), tiff) if known and isinstance(tiff, TiffHeader) else geotiff
    try:
        with gdal_env(), MemoryFile(data) as mem, mem.open(driver="GTiff") as src:
            crs_wkt = known or (src.crs.to_wkt() if src.crs else None)
            if known is None and isinstance(tiff, TiffHeader) and tiff.geokeys is not None and crs_wkt:
                descriptions.remember_crs(tiff.geokeys, crs_wkt)
            return Georef(src.transform if is_georeferenced(src.transform) else None, crs_wkt)
    except RasterioError:
        return None


@dataclass(frozen=True, slots=True)
class Header:
    """A dalle's parsed header and what is known of it before GDAL is asked."""

    entry: FileEntry
    size: int
    mime: str
    view: ByteView
    tiff: TiffHeader | None
    structure: bytes | None
    """The header's structure when the tags place it (else it cannot be kept for the fast path)."""
    transform: Affine | None
    """The geotransform derived from the tags, when they place the image simply."""
    known_crs: str | None
    """The CRS of GeoKeys GDAL built before (GeoTIFF)."""
    geojp2: Georef | None
    """The georeferencing of the GeoJP2 box (JPEG 2000)."""
    pam: Georef | None = None
    """The georeferencing of GDAL's ``.aux.xml``, which takes precedence over the header's."""


def describe_header(storage: RangeReader, entry: FileEntry, size: int, mime: str, view: ByteView,
                    parsed: TiffHeader | Jp2Header, sidecars: list[FileEntry] | None, descriptions: Descriptions
                    ) -> Record:
    """The record of a dalle whose header parsed: without GDAL when its structure was described
    before and its tags place it, else as GDAL reads it (`describe_with_gdal`)."""
    tiff = parsed if isinstance(parsed, TiffHeader) else None
    pam = read_pam(storage, sidecars) if sidecars else None
    known_crs = descriptions.known_crs(tiff)
    geojp2 = geojp2_georef(parsed, descriptions) if isinstance(parsed, Jp2Header) else None
    placed = geojp2 or (Georef(model_transform(tiff), known_crs) if tiff is not None and known_crs else None)
    transform = placed.transform if placed is not None else None
    structure = parsed.structure if transform is not None else None
    known_info = descriptions.info_by_structure.get(structure) if structure else None
    if placed is not None and transform is not None and known_info is not None:
        return record_of(entry, size, mime, known_info, transform, placed.crs_wkt, pam)
    header = Header(entry, size, mime, view, tiff, structure, transform, known_crs, geojp2, pam)
    return describe_with_gdal(storage, header, sidecars, descriptions)


def describe_with_gdal(storage: RangeReader, header: Header, sidecars: list[FileEntry] | None,
                       descriptions: Descriptions) -> Record:
    """The record of a dalle as GDAL opens the parts of its header read, teaching `descriptions` what it says.

    GDAL sees the file at its real size, the parts not read being zeros. When it cannot open
    that, one more read from the start of the file is tried, once.
    """
    regions = header.view.regions()
    try:
        return _open(storage, header, regions, sidecars, descriptions)
    except RasterioError as exc:
        if len(header.view.data) >= header.size:
            return _corrupt(header, exc)
    try:  # the header runs past the parts read: read a larger part of the file, once
        length = min(header.size, max(16 * len(header.view.data), LARGE_HEADER_BYTES))
        start = storage.read_range(header.entry.path, 0, length)
    except ReadError as read_exc:
        return problem(header.entry, header.size, SkipReason.UNREADABLE, str(read_exc))
    try:
        return _open(storage, header, [(0, start), *header.view.pieces], sidecars, descriptions)
    except RasterioError as exc:
        return _corrupt(header, exc)


def _corrupt(header: Header, exc: RasterioError) -> DalleProblem:
    return problem(header.entry, header.size, SkipReason.CORRUPT, f"GDAL cannot open it: {gdal_message(exc)}")


@contextmanager
def open_regions(regions: list[tuple[int, bytes]], size: int, name: str, driver: str, **options: str
                 ) -> Iterator[DatasetReader]:
    """Open with GDAL a file of which only `regions` (offset, bytes) are known.

    One region from the start is opened as it is; several are laid out at their offsets in a file
    of the real size whose other bytes are zeros (GDAL's ``/vsisparse/``).
    """
    if len(regions) == 1 and regions[0][0] == 0:
        with MemoryFile(regions[0][1], filename=name) as mem, mem.open(driver=driver, **options) as src:
            yield src
        return
    with ExitStack() as stack:
        parts = []
        for offset, data in sorted(regions, key=lambda region: region[0]):
            mem = stack.enter_context(MemoryFile(data))
            parts.append(f"<SubfileRegion><Filename relative=\"0\">{escape(mem.name)}</Filename>"
                         f"<DestinationOffset>{offset}</DestinationOffset><SourceOffset>0</SourceOffset>"
                         f"<RegionLength>{len(data)}</RegionLength></SubfileRegion>")
        sparse = stack.enter_context(MemoryFile(
            f"<VSISparseFile><Length>{size}</Length>{''.join(parts)}</VSISparseFile>".encode(), ext=".xml"))
        yield stack.enter_context(rasterio.open("/vsisparse/" + sparse.name, driver=driver, **options))


def _open(storage: RangeReader, header: Header, regions: list[tuple[int, bytes]], sidecars: list[FileEntry] | None,
          descriptions: Descriptions) -> Record:
    """Open the header's regions with GDAL and describe them; raises `RasterioError` when GDAL cannot."""
    entry, size, mime, tiff, known_crs = header.entry, header.size, header.mime, header.tiff, header.known_crs
    if known_crs and tiff:
        regions = [(offset, without_geokeys((offset, data), tiff)) for offset, data in regions]
    open_options = {"GEOREF_SOURCES": "NONE"} if header.geojp2 else {}
    with gdal_env(), open_regions(regions, size, entry.name, DRIVERS[mime], **open_options) as src:
        if header.geojp2 is not None:
            info = raster_info(src, mime)
            if header.structure:
                descriptions.remember_info(header.structure, info)
            return record_of(entry, size, mime, info, header.geojp2.transform or Affine.identity(),
                             header.geojp2.crs_wkt, header.pam)
        if known_crs is None and tiff is not None and tiff.geokeys is not None and src.crs:
            descriptions.remember_crs(tiff.geokeys, src.crs.to_wkt())
        if header.structure and header.transform == src.transform:
            descriptions.remember_info(header.structure, raster_info(src, mime))
        georef = None
        if (not is_georeferenced(src.transform) or (src.crs is None and not known_crs)) and sidecars:
            georef = read_georef(storage, sidecars)
        return dalle_from_dataset(entry, size, mime, src, georef, known_crs, header.pam)


def gdal_message(exc: Exception) -> str:
    """GDAL's error without the temporary in-memory path it mentions."""
    text = str(exc).replace("\n", " ")
    text = re.sub(r"/vsimem/[^\s:']*", "file", text)
    return text[:200]


_thread = threading.local()


def gdal_env() -> AbstractContextManager[object]:
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
