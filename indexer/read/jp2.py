"""A JPEG 2000's box structure and main codestream header, read without GDAL and checked against the file.

`read_jp2_header` walks every top-level box, checking each ends within the file, and keeps the
GeoJP2 box (a small GeoTIFF that places the image) apart from what describes the raster
(`Jp2Header.structure`), so that dalles shaped like one GDAL described need no GDAL. Boxes after
the codestream are read too, as GDAL reads them (one more read, only for files that have some).

Bounds: at most `MAX_BOXES` boxes, box contents of at most `MAX_VALUE_BYTES` read, and at most
`MAX_READS` reads beyond the first bytes (reads ask for 64 KiB ahead: a file of tiny boxes costs
a few reads, then is `corrupt`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from indexer.models import SkipReason
from indexer.read.view import ByteView, Finding

_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
GEOJP2_UUID = bytes.fromhex("b14bf8bd083d4b43a5ae8cd7d5a6ce03")

MAX_BOXES = 1024
"""The most top-level boxes walked: real files have a dozen."""
MAX_VALUE_BYTES = 1 << 20
"""The largest box content or codestream main header read."""
MAX_READS = 32
"""The most reads beyond the first bytes one header may cost."""
MAX_GEOJP2 = 2
"""GeoJP2 boxes GDAL looks at (some producers write two, one of them wrong); it ignores the others."""


def is_jpeg2000(head: bytes) -> bool:
    """Whether a file's first bytes are a JP2 signature or a JPEG 2000 codestream."""
    return head[:12] == _JP2_SIGNATURE or head[:4] == _J2K_SOC_SIZ


@dataclass(frozen=True, slots=True)
class Jp2Header:
    """What the box structure of a JPEG 2000 file says that GDAL is not asked for."""

    geojp2: tuple[bytes, ...]
    """The degenerate GeoTIFFs of the first `MAX_GEOJP2` GeoJP2 boxes, the ones GDAL chooses from."""
    structure: bytes | None = None
    """The header boxes and the codestream's main header, without what places the image (GeoJP2
    and GMLJP2 boxes), indexes its tiles (TLM and PLM markers) or only annotates it (XML and
    other UUID boxes): what GDAL reads to describe the raster. Equal bytes, equal description.
    None when a part could not be read."""


_UNDESCRIBING_BOXES = frozenset({b"asoc", b"xml ", b"uuid", b"free", b"jp2i"})
"""Boxes left out of `Jp2Header.structure`: GMLJP2 lives in ``asoc``, XMP and GeoJP2 in ``uuid``."""
_SKIPPED_BOXES = frozenset({b"xml ", b"free", b"jp2i"})
"""Boxes whose content is not read: nothing GDAL describes the raster or places it by."""
_SOT, _TLM, _PLM = 0xFF90, 0xFF55, 0xFF57


def _corrupt(detail: str) -> Finding:
    return Finding(SkipReason.CORRUPT, detail)


def read_jp2_header(view: ByteView) -> Jp2Header | Finding:
    """Walk the boxes of a JPEG 2000 file, checking each ends within the file, and its codestream."""
    head = view.get(0, 12)
    if head[:4] == _J2K_SOC_SIZ:
        main = _main_header(view, 0, view.size)
        return _check_codestream(view, 0) or Jp2Header((), main)
    if head != _JP2_SIGNATURE:
        return _corrupt("not a JPEG 2000 file: bad signature")
    geojp2: list[bytes] = []
    parts: list[bytes] | None = []
    codestream: tuple[int, int] | None = None
    pos = 0
    for _ in range(MAX_BOXES):
        if pos >= view.size:
            break
        box = _box(view, pos)
        if isinstance(box, Finding):
            return box
        name, start, end = box
        if name == b"jp2c" and codestream is None:
            codestream = (start, end)
            main = _main_header(view, start, end) if parts is not None else None
            parts = [*parts, main] if parts is not None and main is not None else None
        elif name not in _SKIPPED_BOXES and name != b"jp2c":
            content = view.get(start, end - start) if end - start <= MAX_VALUE_BYTES else None
            if name == b"uuid" and content is not None and content[:16] == GEOJP2_UUID:
                geojp2 += [content[16:]] if len(geojp2) < MAX_GEOJP2 else []
            elif name not in _UNDESCRIBING_BOXES and parts is not None:
                parts = [*parts, name, content] if content is not None else None
        if view.reads > MAX_READS:
            return _corrupt(f"the JPEG 2000 boxes are spread over more than {MAX_READS} parts of the file")
        pos = end
    else:
        if pos < view.size:
            return _corrupt(f"more than {MAX_BOXES} boxes in the JPEG 2000 file")
    if codestream is None:
        return _corrupt("no codestream box in the JPEG 2000 file")
    return _check_codestream(view, codestream[0]) or Jp2Header(tuple(geojp2), b"".join(parts) if parts else None)


def _box(view: ByteView, pos: int) -> tuple[bytes, int, int] | Finding:
    """The type, content start and end of the box at `pos`, checked against the file size."""
    header = view.get(pos, 16)
    if len(header) < 8:
        return _corrupt(f"box header cut short at byte {pos}")
    length, box = struct.unpack(">I4s", header[:8])
    start = pos + 8
    if length == 1:
        if len(header) < 16:
            return _corrupt(f"box header cut short at byte {pos}")
        (length,) = struct.unpack(">Q", header[8:16])
        start = pos + 16
    elif length == 0:
        length = view.size - pos
    name = box.decode("latin-1")
    if pos + length < start:
        return _corrupt(f"box '{name}' at byte {pos} has an invalid length {length}")
    if pos + length > view.size:
        return _corrupt(f"codestream cut short: box '{name}' ends at byte {pos + length}, "
                        f"the file has {view.size} bytes")
    return box, start, pos + length


def _main_header(view: ByteView, start: int, end: int) -> bytes | None:
    """The codestream's main header markers, from SOC to the first tile part, without TLM and PLM;
    None when it does not end within the box or `MAX_VALUE_BYTES`."""
    parts = [view.get(start, 2)]
    pos = start + 2
    limit = min(end, start + MAX_VALUE_BYTES)
    while pos + 4 <= limit:
        marker, length = struct.unpack(">HH", view.get(pos, 4).ljust(4, b"\0"))
        if marker == _SOT:
            return b"".join(parts)
        if marker >> 8 != 0xFF or length < 2:
            return None
        if marker not in (_TLM, _PLM):
            parts.append(view.get(pos, 2 + length))
        pos += 2 + length
        if view.reads > MAX_READS:
            return None
    return None


def _check_codestream(view: ByteView, start: int) -> Finding | None:
    """Check the main header's SIZ: an image area and at least one component."""
    head = view.get(start, 42)
    if head[:4] != _J2K_SOC_SIZ or len(head) < 42:
        return _corrupt("the JPEG 2000 codestream has no valid main header")
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", head[8:24])
    (components,) = struct.unpack(">H", head[40:42])
    if xsiz <= xosiz or ysiz <= yosiz or components == 0:
        return _corrupt(f"the JPEG 2000 codestream cannot be decoded: image area {ysiz - yosiz}x{xsiz - xosiz}, "
                        f"{components} components")
    return None
