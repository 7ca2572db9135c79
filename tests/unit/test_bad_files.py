"""Files no producer meant to write: each is a record (a `DalleProblem` with its reason), never an exception."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from indexer.models import Dalle, DalleProblem, FileEntry
from indexer.read import parse_dalle, read_dalle
from indexer.read.formats import Listing
from indexer.storages.local import LocalStorage


def read(path: Path) -> Dalle | DalleProblem:
    storage = LocalStorage(path.parent)
    listing = Listing.of(storage.list_files())
    entry = next(e for e in listing.files if e.path == path.name)
    return read_dalle(storage, entry, listing.sidecars_of(entry))


def reason(path: Path) -> tuple[str, str]:
    record = read(path)
    assert isinstance(record, DalleProblem), record
    return record.reason, record.detail


def geotiff(path: Path, **profile: object) -> Path:
    options: dict[str, object] = {"driver": "GTiff", "width": 16, "height": 16, "count": 1, "dtype": "uint8",
                                  "crs": "EPSG:2154", "transform": from_origin(700000, 6600200, 1, 1)}
    options.update(profile)
    with rasterio.open(path, "w", **options) as dst:
        dst.write(np.ones((int(options["count"]), 16, 16), str(options["dtype"])))  # type: ignore[call-overload]
    return path


def test_a_three_byte_tif_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "tiny.tif").write_bytes(b"II*")
    assert reason(tmp_path / "tiny.tif") == ("corrupt", "not a TIFF file: 3 bytes")


def test_a_tiff_whose_image_directory_is_cut_short_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "count.tif").write_bytes(b"II*\x00\x08\x00\x00\x00\x05")  # one byte of the entry count
    (tmp_path / "entries.tif").write_bytes(b"II*\x00\x08\x00\x00\x00\x05\x00" + b"\x00" * 20)
    assert reason(tmp_path / "count.tif") == ("corrupt", "the image directory at byte 8 is cut short")
    assert reason(tmp_path / "entries.tif") == ("corrupt", "the image directory at byte 8 is cut short")


def test_a_bigtiff_whose_header_is_cut_short_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "big.tif").write_bytes(b"II+\x00\x08\x00\x00\x00\x10\x00")
    (tmp_path / "bigifd.tif").write_bytes(b"II+\x00\x08\x00\x00\x00" + struct.pack("<Q", 16) + b"\x01\x00\x00")
    assert reason(tmp_path / "big.tif") == ("corrupt", "the BigTIFF header is cut short")
    assert reason(tmp_path / "bigifd.tif") == ("corrupt", "the image directory at byte 16 is cut short")


def test_a_jp2_whose_extended_box_length_is_cut_is_corrupt(tmp_path: Path) -> None:
    signature = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
    (tmp_path / "cut.jp2").write_bytes(signature + struct.pack(">I4s", 1, b"jp2c") + b"\x00\x00")
    assert reason(tmp_path / "cut.jp2") == ("corrupt", "box header cut short at byte 12")


def test_an_error_nobody_foresaw_is_the_dalles_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from indexer.read import describe

    path = geotiff(tmp_path / "a.tif")
    describe.DESCRIPTIONS.clear()
    monkeypatch.setattr(describe, "raster_info", lambda src, mime: 1 / 0)
    data = path.read_bytes()
    record = parse_dalle(LocalStorage(tmp_path), FileEntry("a.tif", len(data)), data[:16384])
    assert isinstance(record, DalleProblem)
    assert (record.reason, record.detail) == ("corrupt", "the header cannot be read: ZeroDivisionError: "
                                                         "division by zero")
