"""Files written with rasterio, then edited byte by byte the way other producers write them."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

GEOJP2_UUID = bytes.fromhex("b14bf8bd083d4b43a5ae8cd7d5a6ce03")
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def geotiff(path: Path, data: np.ndarray | None = None, **profile: object) -> Path:
    """A small GeoTIFF (16x16 grey byte, Lambert-93, 1 m) with `profile` overriding rasterio's options."""
    options: dict[str, object] = {"driver": "GTiff", "width": 16, "height": 16, "count": 1, "dtype": "uint8",
                                  "crs": "EPSG:2154", "transform": from_origin(700000, 6600200, 1, 1)}
    options.update(profile)
    count, height, width = int(options["count"]), int(options["height"]), int(options["width"])  # type: ignore[call-overload]
    with rasterio.open(path, "w", **options) as dst:
        dst.write(data if data is not None else np.ones((count, height, width), str(options["dtype"])))
    return path


def ifd_entries(data: bytes) -> tuple[str, int, list[tuple[int, int, int, int, int]]]:
    """Byte order, first IFD offset and its entries (offset of the entry, tag, type, count, value) of a classic TIFF."""
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, ifd)
    entries = []
    for i in range(count):
        at = ifd + 2 + 12 * i
        tag, typ, n, value = struct.unpack_from(order + "HHII", data, at)
        entries.append((at, tag, typ, n, value))
    return order, ifd, entries


def set_entry(data: bytearray, tag: int, typ: int | None = None, count: int | None = None,
              value: int | None = None, new_tag: int | None = None) -> None:
    """Change one field of the entry of `tag` in the first IFD of a classic TIFF."""
    order, _, entries = ifd_entries(bytes(data))
    at, _, old_typ, old_n, old_value = next(e for e in entries if e[1] == tag)
    struct.pack_into(order + "HHII", data, at, new_tag if new_tag is not None else tag,
                     old_typ if typ is None else typ, old_n if count is None else count,
                     old_value if value is None else value)


def tag_values(data: bytes, tag: int) -> tuple[int, ...]:
    """The integer values of a SHORT or LONG tag (out of line) of the first IFD."""
    order, _, entries = ifd_entries(data)
    _, _, typ, n, value = next(e for e in entries if e[1] == tag)
    fmt, size = {3: ("H", 2), 4: ("I", 4)}[typ]
    if n * size <= 4:
        return struct.unpack(order + f"{n}{fmt}", struct.pack(order + "I", value)[:n * size])
    return struct.unpack_from(order + f"{n}{fmt}", data, value)


def geokeys_as_long(data: bytes) -> bytes:
    """The TIFF with its GeoKeyDirectory stored as LONG values (appended at the end), as some writers do."""
    order, _, _ = ifd_entries(data)
    keys = tag_values(data, 34735)
    out = bytearray(data)
    out += b"\0" * (len(out) % 2)
    offset = len(out)
    out += struct.pack(order + f"{len(keys)}I", *keys)
    set_entry(out, 34735, typ=4, value=offset)
    return bytes(out)


def boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    """The top-level boxes (type, content) of a JP2 file."""
    found, pos = [], 0
    while pos < len(data):
        length, box = struct.unpack_from(">I4s", data, pos)
        start = pos + 8
        if length == 1:
            (length,) = struct.unpack_from(">Q", data, pos + 8)
            start = pos + 16
        elif length == 0:
            length = len(data) - pos
        found.append((box, data[start:pos + length]))
        pos += length
    return found


def jp2_of(parts: list[tuple[bytes, bytes]]) -> bytes:
    """A JP2 file made of these boxes, in this order."""
    return b"".join(struct.pack(">I4s", 8 + len(content), box) + content for box, content in parts)


def jp2(path: Path, **profile: object) -> Path:
    """A small JPEG 2000 (16x16 grey byte, Lambert-93, 1 m), GeoJP2 only unless `profile` says otherwise."""
    options: dict[str, object] = {"driver": "JP2OpenJPEG", "GMLJP2": "NO"}
    options.update(profile)
    return geotiff(path, **options)
