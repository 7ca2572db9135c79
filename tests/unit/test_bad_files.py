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
from tests.unit.rasters import set_entry


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


def test_a_4_kb_tiff_claiming_a_billion_by_a_billion_pixels_is_corrupt(tmp_path: Path) -> None:
    from tests.unit.rasters import set_entry

    data = bytearray(geotiff(tmp_path / "huge.tif").read_bytes())
    set_entry(data, 256, typ=4, value=10**9)
    set_entry(data, 257, typ=4, value=10**9)
    (tmp_path / "huge.tif").write_bytes(data)
    assert len(data) < 4096
    assert reason(tmp_path / "huge.tif") == (
        "corrupt", f"image data cut short: 1000000000x1000000000 uncompressed pixels need {10**18} bytes, "
                   f"the file has {len(data)} bytes")


def bigtiff_with_empty_table(path: Path, tiles: int) -> Path:
    """A sparse BigTIFF whose tile table has `tiles` LONG entries, all zero: not one tile written."""
    across = 1 << 14
    entries = [(256, 4, 1, across * 256), (257, 4, 1, tiles // across * 256), (258, 3, 1, 8), (259, 3, 1, 8),
               (262, 3, 1, 1), (277, 3, 1, 1), (322, 3, 1, 256), (323, 3, 1, 256),
               (324, 4, tiles, 4096), (325, 4, tiles, 4096 + 4 * tiles)]
    ifd = struct.pack("<Q", len(entries)) + b"".join(struct.pack("<HHQQ", *e) for e in entries) + b"\0" * 8
    with path.open("wb") as out:
        out.write(b"II+\x00\x08\x00\x00\x00" + struct.pack("<Q", 16) + ifd)
        out.truncate(4096 + 8 * tiles)
    return path


def test_a_sparse_tiff_with_a_huge_block_table_is_empty_in_bounded_memory(tmp_path: Path) -> None:
    import tracemalloc

    path = bigtiff_with_empty_table(tmp_path / "sparse.tif", 1 << 27)
    assert path.stat().st_size > 1 << 30
    tracemalloc.start()
    try:
        assert reason(path) == ("empty", f"no image block was ever written ({1 << 27} in the table)")
        assert tracemalloc.get_traced_memory()[1] < 32 << 20
    finally:
        tracemalloc.stop()


def test_a_jpeg2000_of_tiny_boxes_is_corrupt_after_a_bounded_walk(tmp_path: Path) -> None:
    from tests.unit.test_gdal_fidelity import Counting

    signature = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
    (tmp_path / "boxes.jp2").write_bytes(signature + struct.pack(">I4s", 8, b"junk") * 200_000)
    storage = Counting(tmp_path)
    entry = storage.list_files()[0]
    record = read_dalle(storage, entry)
    assert isinstance(record, DalleProblem)
    assert (record.reason, record.detail) == ("corrupt", "more than 1024 boxes in the JPEG 2000 file")
    assert storage.ranges == []  # the first 16 KiB held the 1,024 boxes walked


@pytest.mark.parametrize(("tag", "count"), [(259, 0), (258, 0), (277, 0), (277, 2), (284, 0), (284, 2), (256, 0),
                                            (256, 2), (257, 0)])
def test_a_tag_with_a_count_libtiff_refuses_is_corrupt(tmp_path: Path, tag: int, count: int) -> None:
    # Found by fuzzing: a Compression tag of no value raised IndexError. GDAL refuses each of these files.
    data = bytearray(geotiff(tmp_path / "source.tif").read_bytes())
    set_entry(data, tag, count=count)
    (tmp_path / "dalle.tif").write_bytes(bytes(data))
    with pytest.raises(rasterio.errors.RasterioIOError):
        rasterio.open(tmp_path / "dalle.tif")
    assert reason(tmp_path / "dalle.tif") == ("corrupt", f"TIFF tag {tag} holds {count} values")
