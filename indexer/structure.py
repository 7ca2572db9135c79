"""Integrity checks read from raster headers alone, without reading pixels.

GDAL opens a GeoTIFF whose tiles were never written, or a file cut short in transfer, without a
word: it only fails when pixels are read. These checks walk the TIFF block table and the JPEG 2000
box structure and compare them with the real file size.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from indexer.models import Reason

Fetch = Callable[[int, int], bytes]
"""Returns bytes [start, end) of the file; may cost a ranged read on the storage."""


@dataclass(frozen=True, slots=True)
class Finding:
    """A structural problem found in a header."""

    reason: Reason
    detail: str


class ByteView:
    """The bytes of a file known so far: a prefix, completed on demand through `fetch`."""

    def __init__(self, prefix: bytes, size: int, fetch: Fetch) -> None:
        self.data = prefix
        self.size = size
        self._fetch = fetch

    def get(self, start: int, length: int) -> bytes:
        """Bytes [start, start + length), fetched when beyond the prefix. Short at end of file."""
        end = min(start + length, self.size)
        if end <= len(self.data):
            return self.data[start:end]
        if start >= self.size:
            return b""
        return self._fetch(start, end)


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


def _tiff_ifd(view: ByteView) -> TiffHeader | Finding:
    head = view.get(0, 16)
    if head[:2] == b"II":
        order = "<"
    elif head[:2] == b"MM":
        order = ">"
    else:
        return Finding("corrupt", "not a TIFF file: bad byte-order mark")
    (version,) = struct.unpack(order + "H", head[2:4])
    if version == 42:
        big, (ifd,) = False, struct.unpack(order + "I", head[4:8])
    elif version == 43:
        big, (ifd,) = True, struct.unpack(order + "Q", head[8:16])
    else:
        return Finding("corrupt", f"not a TIFF file: version {version}")
    if ifd == 0 or ifd >= view.size:
        return Finding("corrupt", "the first image directory lies past the end of the file")
    count_fmt, entry_size = ("Q", 20) if big else ("H", 12)
    raw_count = view.get(ifd, 8 if big else 2)
    (count,) = struct.unpack(order + count_fmt, raw_count)
    entries = view.get(ifd + len(raw_count), count * entry_size)
    if len(entries) < count * entry_size:
        return Finding("corrupt", "the image directory is cut short")
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
                return Finding("corrupt", f"TIFF tag {tag} lies past the end of the file")
            raw = view.get(offset, nbytes)
        if wanted:
            tags[tag] = struct.unpack(f"{order}{n}{_TIFF_INT_FORMATS[typ]}", raw)
        elif is_model:
            model[tag] = struct.unpack(f"{order}{n}d", raw)
        else:
            geo[tag] = raw
            if tag == GEO_KEY_DIRECTORY and first_entry + (i + 1) * entry_size <= len(view.data):
                geokey_entry = first_entry + i * entry_size
    pixel_is_point = False
    directory = geo.get(GEO_KEY_DIRECTORY, b"")
    shorts = struct.unpack(f"{order}{len(directory) // 2}H", directory[: len(directory) // 2 * 2])
    for k in range(4, len(shorts) - 3, 4):
        if shorts[k] == _RASTER_TYPE_KEY and shorts[k + 1] == 0:
            pixel_is_point = shorts[k + 3] == _PIXEL_IS_POINT
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
        return Finding("empty", f"the raster has no pixels ({width}x{height})")
    offsets = tags.get(_TILE_OFFSETS) or tags.get(_STRIP_OFFSETS)
    counts = tags.get(_TILE_COUNTS) or tags.get(_STRIP_COUNTS)
    if not offsets or not counts or len(offsets) != len(counts):
        return Finding("corrupt", "the TIFF block table is missing or inconsistent")
    if not any(counts):
        return Finding("empty", f"no image block was ever written ({len(counts)} in the table)")
    ends = list(map(operator.add, offsets, counts))
    end = max(ends)
    block = ends.index(end)
    if end > file_size:
        return Finding(
            "corrupt",
            f"image data cut short: block {block} ends at byte {end}, the file has {file_size} bytes",
        )
    return None


_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"


GEOJP2_UUID = bytes.fromhex("b14bf8bd083d4b43a5ae8cd7d5a6ce03")


@dataclass(frozen=True, slots=True)
class Jp2Header:
    """What the box structure of a JPEG 2000 file says that GDAL is not asked for."""

    geojp2: bytes | None
    """The GeoJP2 box's degenerate GeoTIFF, when the box lies in the prefix."""
    structure: bytes | None = None
    """The header boxes and the codestream's main header, without what places the image (GeoJP2
    and GMLJP2 boxes) or indexes its tiles (TLM and PLM markers): what GDAL reads to describe the
    raster. Equal bytes, equal description. None when they do not all lie in the prefix."""


_PLACING_BOXES = frozenset({b"asoc"})
"""Boxes left out of `Jp2Header.structure`, besides the GeoJP2 box: GMLJP2 lives in ``asoc``."""
_SOT, _TLM, _PLM = 0xFF90, 0xFF55, 0xFF57


def read_jp2_header(view: ByteView) -> Jp2Header | Finding:
    """Walk the boxes of a JPEG 2000 file up to its codestream, checking each ends within the file."""
    head = view.get(0, 12)
    if head[:4] == _J2K_SOC_SIZ:
        return _check_codestream(view, 0, view.size) or Jp2Header(None)
    if head != _JP2_SIGNATURE:
        return Finding("corrupt", "not a JPEG 2000 file: bad signature")
    geojp2 = None
    parts: list[bytes] | None = []
    pos = 0
    while pos < view.size:
        header = view.get(pos, 16)
        if len(header) < 8:
            return Finding("corrupt", f"box header cut short at byte {pos}")
        length, box = struct.unpack(">I4s", header[:8])
        start = 8
        if length == 1:
            (length,) = struct.unpack(">Q", header[8:16])
            start = 16
        elif length == 0:
            length = view.size - pos
        name = box.decode("latin-1")
        if length < start or pos + length > view.size:
            return Finding(
                "corrupt",
                f"codestream cut short: box '{name}' ends at byte {pos + length}, "
                f"the file has {view.size} bytes",
            )
        if box == b"jp2c":
            main = _main_header(view.data, pos + start) if parts is not None else None
            structure = b"".join([*parts, main]) if parts is not None and main is not None else None
            return _check_codestream(view, pos + start, pos + length) or Jp2Header(geojp2, structure)
        in_prefix = pos + length <= len(view.data)
        content = view.data[pos + start:pos + length] if in_prefix else b""
        if box == b"uuid" and geojp2 is None and content[:16] == GEOJP2_UUID:
            geojp2 = content[16:]
        elif box not in _PLACING_BOXES and parts is not None:
            if in_prefix:
                parts += [box, content]
            else:
                parts = None
        pos += length
    return Finding("corrupt", "no codestream box in the JPEG 2000 file")


def _main_header(data: bytes, start: int) -> bytes | None:
    """The codestream's main header markers, from SOC to the first tile part, without TLM and PLM;
    None when it does not end within `data`."""
    parts = [data[start:start + 2]]
    pos = start + 2
    while pos + 4 <= len(data):
        marker, length = struct.unpack(">HH", data[pos:pos + 4])
        if marker == _SOT:
            return b"".join(parts)
        if marker >> 8 != 0xFF or length < 2:
            return None
        if marker not in (_TLM, _PLM):
            parts.append(data[pos:pos + 2 + length])
        pos += 2 + length
    return None


def _check_codestream(view: ByteView, start: int, end: int) -> Finding | None:
    """Check the main header's SIZ and the first tile-part length against the box end."""
    head = view.get(start, 42)
    if head[:4] != _J2K_SOC_SIZ or len(head) < 42:
        return Finding("corrupt", "the JPEG 2000 codestream has no valid main header")
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", head[8:24])
    if xsiz <= xosiz or ysiz <= yosiz:
        return Finding("empty", f"the raster has no pixels ({ysiz - yosiz}x{xsiz - xosiz})")
    return None
