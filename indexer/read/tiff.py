"""A TIFF's first image directory, read from its bytes without GDAL, and checked against the file.

GDAL opens a GeoTIFF whose tiles were never written, or a file cut short in transfer, without a
word: it only fails when pixels are read. `read_tiff_header` walks the block table and compares
it with the real file size; it also keeps what places the image (GeoKeys, tiepoint and pixel
scale) apart from what describes it (`TiffHeader.structure`), so that dalles shaped like one GDAL
described need no GDAL at all (`indexer.read.describe`).

Bounds: at most `MAX_ENTRIES` directory entries (libtiff's own limit), tag values of at most
`MAX_VALUE_BYTES` each, the block tables read `TABLE_PIECE` bytes at a time and never kept, and
at most `MAX_READS` reads beyond the first bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
from affine import Affine

from indexer.models import SkipReason
from indexer.read.view import ByteView, Finding

_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
                    16: 8, 17: 8, 18: 8}
_TIFF_INT_FORMATS = {1: "B", 3: "H", 4: "I", 16: "Q", 6: "b", 8: "h", 9: "i", 17: "q", 13: "I", 18: "Q"}
_WIDTH, _HEIGHT, _BITS, _COMPRESSION, _SAMPLES, _PLANAR = 256, 257, 258, 259, 277, 284
_STRIP_OFFSETS, _STRIP_COUNTS, _TILE_OFFSETS, _TILE_COUNTS = 273, 279, 324, 325
_TABLES = frozenset({_STRIP_OFFSETS, _STRIP_COUNTS, _TILE_OFFSETS, _TILE_COUNTS})
_WANTED = frozenset({_WIDTH, _HEIGHT, _BITS, _COMPRESSION, _SAMPLES, _PLANAR})
_SINGLE_VALUED = frozenset({_WIDTH, _HEIGHT, _SAMPLES, _PLANAR})
"""Tags libtiff refuses the directory for unless they hold exactly one value (the others, at least one)."""
GEO_KEY_DIRECTORY, GEO_DOUBLE_PARAMS, GEO_ASCII_PARAMS = 34735, 34736, 34737
_GEO_TAGS = (GEO_KEY_DIRECTORY, GEO_DOUBLE_PARAMS, GEO_ASCII_PARAMS)
MODEL_PIXEL_SCALE, MODEL_TIEPOINT, MODEL_TRANSFORMATION = 33550, 33922, 34264
_MODEL_TAGS = (MODEL_PIXEL_SCALE, MODEL_TIEPOINT, MODEL_TRANSFORMATION)
_INFORMATION_TAGS = frozenset({269, 270, 285, 305, 306, 315, 316, 700, 33432})
"""DocumentName, ImageDescription, PageName, Software, DateTime, Artist, HostComputer, XMP and
Copyright: what a producer writes about each file, nothing GDAL describes the raster by."""
_PLACING_TAGS = frozenset({*_MODEL_TAGS, *_GEO_TAGS, *_TABLES, *_INFORMATION_TAGS})
"""Tags left out of `TiffHeader.structure`."""
_DOUBLE = 12
_RASTER_TYPE_KEY, _PIXEL_IS_POINT = 1025, 2

MAX_ENTRIES = 0xFFFF
"""The most entries of an image directory (libtiff refuses more)."""
MAX_VALUE_BYTES = 1 << 20
"""The largest tag value read (block tables aside): larger ones are not looked at."""
TABLE_PIECE = 1 << 20
"""Bytes of a block table read at a time."""
MAX_READS = 32
"""The most reads beyond the first bytes one header may cost."""


@dataclass(frozen=True, slots=True)
class _Table:
    """A block table's entry: its type, count and where its values are (in the entry or at an offset)."""

    typ: int
    count: int
    inline: bytes | None
    offset: int


@dataclass(frozen=True, slots=True)
class TiffHeader:
    """What the first image directory of a TIFF says that GDAL is not asked for."""

    tags: dict[int, tuple[int, ...]]
    geokeys: bytes | None
    """The raw GeoKey directory, double and ASCII parameters: equal bytes, equal CRS."""
    geokey_entry: int | None
    """Offset of the GeoKeyDirectory entry in the file."""
    pixel_is_point: bool
    model: dict[int, tuple[float, ...]] = field(default_factory=dict)
    """The georeferencing tags: ModelPixelScale, ModelTiepoint, ModelTransformation (doubles)."""
    structure: bytes | None = None
    """The image directory without what places the image (georeferencing tags, GeoKeys) or
    locates its blocks (offsets and byte counts), out-of-line values included: what GDAL reads
    to describe the raster. Equal bytes, equal description. None when a value could not be read."""
    order: str = "<"


def _corrupt(detail: str) -> Finding:
    return Finding(SkipReason.CORRUPT, detail)


def _tiff_start(view: ByteView) -> tuple[bytes, str, bool, int] | Finding:
    """The file's first 16 bytes, byte order, BigTIFF flag and first image directory offset."""
    head = view.get(0, 16)
    if len(head) < 8:
        return _corrupt(f"not a TIFF file: {len(head)} bytes")
    if head[:2] == b"II":
        order = "<"
    elif head[:2] == b"MM":
        order = ">"
    else:
        return _corrupt("not a TIFF file: bad byte-order mark")
    (version,) = struct.unpack(order + "H", head[2:4])
    if version == 42:
        big, (ifd,) = False, struct.unpack(order + "I", head[4:8])
    elif version == 43:
        if len(head) < 16:
            return _corrupt("the BigTIFF header is cut short")
        bytesize, zero, ifd = struct.unpack(order + "HHQ", head[4:16])
        if bytesize != 8 or zero != 0:
            return _corrupt(f"not a BigTIFF file: offset size {bytesize}")
        big = True
    else:
        return _corrupt(f"not a TIFF file: version {version}")
    if ifd < 8 or ifd >= view.size:
        return _corrupt("the first image directory lies past the end of the file")
    return head, order, big, ifd


def _pixel_is_point(directory: tuple[int, ...]) -> bool:
    """Whether a GeoKey directory's GTRasterTypeGeoKey says PixelIsPoint (its values SHORT or LONG)."""
    pixel_is_point = False
    keys = min(directory[3], (len(directory) - 4) // 4) if len(directory) >= 4 else 0
    for k in range(4, 4 + 4 * keys, 4):
        if directory[k] == _RASTER_TYPE_KEY and directory[k + 1] == 0:
            pixel_is_point = directory[k + 3] == _PIXEL_IS_POINT
    return pixel_is_point


@dataclass(slots=True)
class _Directory:
    """What the walk of an image directory collects."""

    tags: dict[int, tuple[int, ...]] = field(default_factory=dict)
    tables: dict[int, _Table] = field(default_factory=dict)
    geo: dict[int, bytes] = field(default_factory=dict)
    geokey_directory: tuple[int, ...] = ()
    model: dict[int, tuple[float, ...]] = field(default_factory=dict)
    geokey_entry: int | None = None
    structure: list[bytes] | None = None


def _entry(view: ByteView, order: str, big: bool, at: int, entry: bytes, found: _Directory) -> Finding | None:
    """Collect one directory entry at file offset `at`; a Finding when a value GDAL needs is unreadable."""
    inline = 8 if big else 4
    tag, typ, n, value = struct.unpack(order + ("HHQ8s" if big else "HHI4s"), entry)
    nbytes = n * _TIFF_TYPE_SIZES.get(typ, 1)
    offset = struct.unpack(order + ("Q" if big else "I"), value)[0] if nbytes > inline else 0
    if tag in _TABLES:
        if typ in _TIFF_INT_FORMATS:
            found.tables[tag] = _Table(typ, n, value[:nbytes] if nbytes <= inline else None, offset)
        return None
    needed = tag in _WANTED or tag in _MODEL_TAGS or tag in _GEO_TAGS
    if tag in _WANTED and typ in _TIFF_INT_FORMATS and (n == 0 or n != 1 and tag in _SINGLE_VALUED):
        return _corrupt(f"TIFF tag {tag} holds {n} values")
    if not needed and (tag in _INFORMATION_TAGS or found.structure is None):
        return None
    raw: bytes | None = value[:nbytes]
    if nbytes > inline:
        raw = view.get(offset, nbytes) if nbytes <= MAX_VALUE_BYTES and offset + nbytes <= view.size else None
        if raw is not None and len(raw) < nbytes:
            raw = None
    if found.structure is not None and tag not in _PLACING_TAGS:
        if raw is None:
            found.structure = None
        else:
            found.structure += [entry[:-inline] if nbytes > inline else entry, raw if nbytes > inline else b""]
    if not needed:
        return None
    if raw is None:
        return _corrupt(f"TIFF tag {tag} lies past the end of the file or is larger than {MAX_VALUE_BYTES} bytes")
    _collect(order, tag, typ, n, raw, at, found)
    return None


def _collect(order: str, tag: int, typ: int, n: int, raw: bytes, at: int, found: _Directory) -> None:
    """Keep the value of a tag this module reads (size, GeoKeys, georeferencing); libtiff ignores a
    tag of an unexpected type, so does this."""
    if tag in _WANTED or tag == GEO_KEY_DIRECTORY:
        if typ not in _TIFF_INT_FORMATS:
            return
        values = struct.unpack(f"{order}{n}{_TIFF_INT_FORMATS[typ]}", raw)
        if tag == GEO_KEY_DIRECTORY:
            found.geo[tag], found.geokey_directory, found.geokey_entry = raw, values, at
        else:
            found.tags[tag] = values
    elif tag in _MODEL_TAGS:
        if typ == _DOUBLE:
            found.model[tag] = struct.unpack(f"{order}{n}d", raw)
    else:
        found.geo[tag] = raw


def _tiff_ifd(view: ByteView) -> tuple[TiffHeader, dict[int, _Table]] | Finding:
    start = _tiff_start(view)
    if isinstance(start, Finding):
        return start
    head, order, big, ifd = start
    count_fmt, entry_size = ("Q", 20) if big else ("H", 12)
    raw_count = view.get(ifd, 8 if big else 2)
    if len(raw_count) < (8 if big else 2):
        return _corrupt(f"the image directory at byte {ifd} is cut short")
    (count,) = struct.unpack(order + count_fmt, raw_count)
    if count > MAX_ENTRIES:
        return _corrupt(f"the image directory claims {count} entries")
    first_entry = ifd + len(raw_count)
    entries = view.get(first_entry, count * entry_size)
    if len(entries) < count * entry_size:
        return _corrupt(f"the image directory at byte {ifd} is cut short")
    found = _Directory(structure=[head[:4]])
    for i in range(count):
        finding = _entry(view, order, big, first_entry + i * entry_size,
                         entries[i * entry_size:(i + 1) * entry_size], found)
        if finding is not None:
            return finding
        if view.reads > MAX_READS:
            return _corrupt(f"the image directory's values are spread over more than {MAX_READS} parts of the file")
    geokeys = order.encode() + b"|".join(found.geo.get(t, b"") for t in _GEO_TAGS) \
        if GEO_KEY_DIRECTORY in found.geo else None
    header = TiffHeader(found.tags, geokeys, found.geokey_entry, _pixel_is_point(found.geokey_directory),
                        found.model, b"".join(found.structure) if found.structure is not None else None, order)
    return header, found.tables


def read_tiff_header(view: ByteView) -> TiffHeader | Finding:
    """Parse a TIFF's first image directory and check the first image: it has pixels, and its blocks
    were written and end within the file."""
    parsed = _tiff_ifd(view)
    if isinstance(parsed, Finding):
        return parsed
    header, tables = parsed
    problem = _check_blocks(view, header, tables)
    return problem if problem is not None else header


def without_geokeys(region: tuple[int, bytes], header: TiffHeader) -> bytes:
    """The bytes of a part of a TIFF starting at file offset `region[0]`, with the GeoKey directory
    hidden from GDAL (its tag renumbered) when its entry lies there.

    Building a CRS from GeoKeys costs GDAL about a millisecond of PROJ database lookups per file;
    dalles of a livrable share their GeoKeys, so the CRS is built once and the rest of the
    header (size, bands, geotransform, compression) is read without it.
    """
    offset, data = region
    if header.geokey_entry is None or not offset <= header.geokey_entry <= offset + len(data) - 2:
        return data
    patched = bytearray(data)
    struct.pack_into(header.order + "H", patched, header.geokey_entry - offset, GEO_KEY_DIRECTORY - 1)
    return bytes(patched)


def _table_values(view: ByteView, order: str, table: _Table, first: int, count: int) -> np.ndarray:
    """Entries [first, first + count) of a block table, as unsigned 64-bit integers."""
    size = _TIFF_TYPE_SIZES[table.typ]
    if table.inline is not None:
        raw = table.inline[first * size:(first + count) * size]
    else:
        raw = view.get(table.offset + first * size, count * size, keep=False)
    dtype = np.dtype(order + _TIFF_INT_FORMATS[table.typ])
    return np.frombuffer(raw[:len(raw) // size * size], dtype=dtype).astype(np.uint64)


def _check_blocks(view: ByteView, header: TiffHeader, tables: dict[int, _Table]) -> Finding | None:
    """Check the first image's size and block table against the file, the table read in pieces."""
    tags = header.tags
    if _WIDTH not in tags or _HEIGHT not in tags:
        return _corrupt("the TIFF image directory has no image width or length")
    width, height = tags[_WIDTH][0], tags[_HEIGHT][0]
    if width == 0 or height == 0:
        return Finding(SkipReason.EMPTY, f"the raster has no pixels ({width}x{height})")
    tiled = _TILE_OFFSETS in tables
    offsets = tables.get(_TILE_OFFSETS if tiled else _STRIP_OFFSETS)
    counts = tables.get(_TILE_COUNTS if tiled else _STRIP_COUNTS)
    if offsets is None:
        return _corrupt("the TIFF block table is missing")
    if counts is None:
        samples = tags.get(_SAMPLES, (1,))[0] if tags.get(_PLANAR, (1,))[0] == 2 else 1
        if tiled or offsets.count != samples:  # libtiff estimates the byte count of a single strip only
            return _corrupt("the TIFF block table has no byte counts")
    elif counts.count != offsets.count:
        return _corrupt("the TIFF block table is inconsistent")
    if offsets.inline is None and offsets.offset + offsets.count * _TIFF_TYPE_SIZES[offsets.typ] > view.size \
            or counts is not None and counts.inline is None \
            and counts.offset + counts.count * _TIFF_TYPE_SIZES[counts.typ] > view.size:
        return _corrupt("the TIFF block table lies past the end of the file")
    written = _check_table(view, header.order, offsets, counts)
    if isinstance(written, Finding):
        return written
    if written == offsets.count and tags.get(_COMPRESSION, (1,))[0] == 1:  # uncompressed: the pixels need room
        samples = max(tags.get(_SAMPLES, (1,))[0], 1)
        needed = width * height * samples * sum(tags.get(_BITS, (1,))[:samples]) // samples // 8
        if needed > view.size:
            return _corrupt(f"image data cut short: {width}x{height} uncompressed pixels need {needed} bytes, "
                            f"the file has {view.size} bytes")
    return None


def _check_table(view: ByteView, order: str, offsets: _Table, counts: _Table | None) -> Finding | int:
    """The number of blocks written, after checking there is one and the furthest block ends within the file."""
    step = TABLE_PIECE // 8
    written, furthest, furthest_block = 0, 0, 0
    for first in range(0, offsets.count, step):
        n = min(step, offsets.count - first)
        starts = _table_values(view, order, offsets, first, n)
        lengths = _table_values(view, order, counts, first, n) if counts is not None else np.ones_like(starts)
        if len(starts) < n or len(lengths) < n:
            return _corrupt("the TIFF block table is cut short")
        used = lengths > 0 if counts is not None else starts > 0
        if not used.any():
            continue
        written += int(used.sum())
        ends = np.where(used, starts + lengths, 0)
        block = int(ends.argmax())
        if int(ends[block]) > furthest:
            furthest, furthest_block = int(ends[block]), first + block
    if not written:
        return Finding(SkipReason.EMPTY, f"no image block was ever written ({offsets.count} in the table)")
    if furthest > view.size:
        return _corrupt(f"image data cut short: block {furthest_block} ends at byte {furthest}, "
                        f"the file has {view.size} bytes")
    return written


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
