"""A JPEG 2000's box structure and main codestream header, read without GDAL and checked against the file.

`read_jp2_header` walks the boxes up to the codestream, checking each ends within the file, and
keeps the GeoJP2 box (a small GeoTIFF that places the image) apart from what describes the
raster (`Jp2Header.structure`), so that dalles shaped like one GDAL described need no GDAL.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from indexer.models import SkipReason
from indexer.read.view import ByteView, Finding

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
        return Finding(SkipReason.CORRUPT, "not a JPEG 2000 file: bad signature")
    geojp2 = None
    parts: list[bytes] | None = []
    pos = 0
    while pos < view.size:
        header = view.get(pos, 16)
        if len(header) < 8:
            return Finding(SkipReason.CORRUPT, f"box header cut short at byte {pos}")
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
                SkipReason.CORRUPT,
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
    return Finding(SkipReason.CORRUPT, "no codestream box in the JPEG 2000 file")


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
        return Finding(SkipReason.CORRUPT, "the JPEG 2000 codestream has no valid main header")
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", head[8:24])
    if xsiz <= xosiz or ysiz <= yosiz:
        return Finding(SkipReason.EMPTY, f"the raster has no pixels ({ysiz - yosiz}x{xsiz - xosiz})")
    return None
