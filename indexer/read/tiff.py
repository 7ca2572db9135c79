"""A TIFF's first image directory, read from its bytes without GDAL, and checked against the file.

GDAL opens a GeoTIFF whose tiles were never written, or a file cut short in transfer, without a
word: it only fails when pixels are read. `read_tiff_header` walks the block table and compares
it with the real file size; it also keeps what places the image (GeoKeys, tiepoint and pixel
scale) apart from what describes it (`TiffHeader.structure`), so that dalles shaped like one GDAL
described need no GDAL at all (`indexer.read.describe`).
"""

from __future__ import annotations

import operator
import struct
from dataclasses import dataclass, field

from affine import Affine

from indexer.models import SkipReason
from indexer.read.view import ByteView, Finding

_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
                    16: 8, 17: 8, 18: 8}
_TIFF_INT_FORMATS = {1: "B", 3: "H", 4: "I", 16: "Q", 6: "b", 8: "h", 9: "i", 17: "q", 13: "I", 18: "Q"}
_WIDTH, _HEIGHT, _STRIP_OFFSETS, _STRIP_COUNTS, _TILE_OFFSETS, _TILE_COUNTS = 256, 257, 273, 279, 324, 325
_WANTED = {_WIDTH, _HEIGHT, _STRIP_OFFSETS, _STRIP_COUNTS, _TILE_OFFSETS, _TILE_COUNTS}
GEO_KEY_DIRECTORY, GEO_DOUBLE_PARAMS, GEO_ASCII_PARAMS = 34735, 34736, 34737
_GEO_TAGS = (GEO_KEY_DIRECTORY, GEO_DOUBLE_PARAMS, GEO_ASCII_PARAMS)
MODEL_PIXEL_SCALE, MODEL_TIEPOINT, MODEL_TRANSFORMATION = 33550, 33922, 34264
_MODEL_TAGS = (MODEL_PIXEL_SCALE, MODEL_TIEPOINT, MODEL_TRANSFORMATION)
_INFORMATION_TAGS = frozenset({269, 270, 285, 305, 306, 315, 316, 700, 33432})
"""DocumentName, ImageDescription, PageName, Software, DateTime, Artist, HostComputer, XMP and
Copyright: what a producer writes about each file, nothing GDAL describes the raster by."""
_PLACING_TAGS = frozenset({*_MODEL_TAGS, *_GEO_TAGS, _STRIP_OFFSETS, _STRIP_COUNTS, _TILE_OFFSETS, _TILE_COUNTS,
                           *_INFORMATION_TAGS})
"""Tags left out of `TiffHeader.structure`."""
_DOUBLE = 12
_RASTER_TYPE_KEY, _PIXEL_IS_POINT = 1025, 2


@dataclass(frozen=True, slots=True)
class TiffHeader:
    """What the first image directory of a TIFF says that GDAL is not asked for."""

    tags: dict[int, tuple[int, ...]]
    geokeys: bytes | None
    """The raw GeoKey directory, double and ASCII parameters: equal bytes, equal CRS."""
    geokey_entry: int | None
    """Offset of the GeoKeyDirectory entry in the file, when it lies in the prefix."""
    pixel_is_point: bool
    model: dict[int, tuple[float, ...]] = field(default_factory=dict)
    """The georeferencing tags: ModelPixelScale, ModelTiepoint, ModelTransformation (doubles)."""
    structure: bytes | None = None
    """The image directory without what places the image (georeferencing tags, GeoKeys) or
    locates its blocks (offsets and byte counts), out-of-line values included: what GDAL reads
    to describe the raster. Equal bytes, equal description. None when a value lies past the prefix."""


def _tiff_start(view: ByteView) -> tuple[bytes, str, bool, int] | Finding:
    """The file's first 16 bytes, byte order, BigTIFF flag and first image directory offset."""
    head = view.get(0, 16)
    if head[:2] == b"II":
        order = "<"
    elif head[:2] == b"MM":
        order = ">"
    else:
        return Finding(SkipReason.CORRUPT, "not a TIFF file: bad byte-order mark")
    (version,) = struct.unpack(order + "H", head[2:4])
    if version == 42:
        big, (ifd,) = False, struct.unpack(order + "I", head[4:8])
    elif version == 43:
        big, (ifd,) = True, struct.unpack(order + "Q", head[8:16])
    else:
        return Finding(SkipReason.CORRUPT, f"not a TIFF file: version {version}")
    if ifd == 0 or ifd >= view.size:
        return Finding(SkipReason.CORRUPT, "the first image directory lies past the end of the file")
    return head, order, big, ifd


def _pixel_is_point(order: str, directory: bytes) -> bool:
    """Whether a GeoKey directory's GTRasterTypeGeoKey says PixelIsPoint."""
    pixel_is_point = False
    shorts = struct.unpack(f"{order}{len(directory) // 2}H", directory[: len(directory) // 2 * 2])
    for k in range(4, len(shorts) - 3, 4):
        if shorts[k] == _RASTER_TYPE_KEY and shorts[k + 1] == 0:
            pixel_is_point = shorts[k + 3] == _PIXEL_IS_POINT
    return pixel_is_point


def _tiff_ifd(view: ByteView) -> TiffHeader | Finding:
    start = _tiff_start(view)
    if isinstance(start, Finding):
        return start
    head, order, big, ifd = start
    count_fmt, entry_size = ("Q", 20) if big else ("H", 12)
    raw_count = view.get(ifd, 8 if big else 2)
    (count,) = struct.unpack(order + count_fmt, raw_count)
    entries = view.get(ifd + len(raw_count), count * entry_size)
    if len(entries) < count * entry_size:
        return Finding(SkipReason.CORRUPT, "the image directory is cut short")
    tags: dict[int, tuple[int, ...]] = {}
    geo: dict[int, bytes] = {}
    model: dict[int, tuple[float, ...]] = {}
    geokey_entry = None
    inline = 8 if big else 4
    first_entry = ifd + len(raw_count)
    entry_format = order + ("HHQ8s" if big else "HHI4s")
    structure: list[bytes] | None = [head[:4]]
    for i, (tag, typ, n, value) in enumerate(struct.iter_unpack(entry_format, entries[:count * entry_size])):
        wanted = tag in _WANTED and typ in _TIFF_INT_FORMATS
        is_model = tag in _MODEL_TAGS and typ == _DOUBLE
        nbytes = n * _TIFF_TYPE_SIZES.get(typ, 1)
        offset = struct.unpack(order + ("Q" if big else "I"), value)[0] if nbytes > inline else 0
        if structure is not None and tag not in _PLACING_TAGS:
            if nbytes <= inline:
                structure.append(entries[i * entry_size:(i + 1) * entry_size])
            else:  # the entry without its offset, and the value it points to
                structure += [entries[i * entry_size:(i + 1) * entry_size - inline], view.data[offset:offset + nbytes]]
                if offset + nbytes > len(view.data):
                    structure = None
        if not wanted and not is_model and tag not in _GEO_TAGS:
            continue
        if nbytes <= inline:
            raw = value[:nbytes]
        else:
            if offset + nbytes > view.size:
                return Finding(SkipReason.CORRUPT, f"TIFF tag {tag} lies past the end of the file")
            raw = view.get(offset, nbytes)
        if wanted:
            tags[tag] = struct.unpack(f"{order}{n}{_TIFF_INT_FORMATS[typ]}", raw)
        elif is_model:
            model[tag] = struct.unpack(f"{order}{n}d", raw)
        else:
            geo[tag] = raw
            if tag == GEO_KEY_DIRECTORY and first_entry + (i + 1) * entry_size <= len(view.data):
                geokey_entry = first_entry + i * entry_size
    directory = geo.get(GEO_KEY_DIRECTORY, b"")
    pixel_is_point = _pixel_is_point(order, directory)
    geokeys = order.encode() + b"|".join(geo.get(t, b"") for t in _GEO_TAGS) if directory else None
    return TiffHeader(tags, geokeys, geokey_entry, pixel_is_point, model,
                      b"".join(structure) if structure is not None else None)


def read_tiff_header(view: ByteView) -> TiffHeader | Finding:
    """Parse a TIFF's first image directory and check the first image: it has pixels, and its blocks
    were written and end within the file."""
    parsed = _tiff_ifd(view)
    if isinstance(parsed, Finding):
        return parsed
    problem = _check_blocks(parsed.tags, view.size)
    return problem if problem is not None else parsed


def without_geokeys(data: bytes, header: TiffHeader) -> bytes:
    """The same TIFF bytes with the GeoKey directory hidden from GDAL (its tag renumbered).

    Building a CRS from GeoKeys costs GDAL about a millisecond of PROJ database lookups per file;
    dalles of a livrable share their GeoKeys, so the CRS is built once and the rest of the
    header (size, bands, geotransform, compression) is read without it.
    """
    if header.geokey_entry is None:
        raise ValueError("the GeoKey directory entry is not in the prefix")
    order = "<" if data[:2] == b"II" else ">"
    patched = bytearray(data)
    struct.pack_into(order + "H", patched, header.geokey_entry, GEO_KEY_DIRECTORY - 1)
    return bytes(patched)


def _check_blocks(tags: dict[int, tuple[int, ...]], file_size: int) -> Finding | None:
    width, height = tags.get(_WIDTH, (0,))[0], tags.get(_HEIGHT, (0,))[0]
    if width == 0 or height == 0:
        return Finding(SkipReason.EMPTY, f"the raster has no pixels ({width}x{height})")
    offsets = tags.get(_TILE_OFFSETS) or tags.get(_STRIP_OFFSETS)
    counts = tags.get(_TILE_COUNTS) or tags.get(_STRIP_COUNTS)
    if not offsets or not counts or len(offsets) != len(counts):
        return Finding(SkipReason.CORRUPT, "the TIFF block table is missing or inconsistent")
    if not any(counts):
        return Finding(SkipReason.EMPTY, f"no image block was ever written ({len(counts)} in the table)")
    ends = list(map(operator.add, offsets, counts))
    end = max(ends)
    block = ends.index(end)
    if end > file_size:
        return Finding(
            SkipReason.CORRUPT,
            f"image data cut short: block {block} ends at byte {end}, the file has {file_size} bytes",
        )
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
