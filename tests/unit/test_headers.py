"""Reading one dalle's header: every field, every skip reason, on real files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin

from indexer.models import Dalle, DalleProblem, FileEntry
from indexer.read import place_proprietary, read_dalle
from indexer.read.describe import resolution_cm
from indexer.read.formats import Listing
from indexer.read.sidecars import parse_world_file
from indexer.storages.local import LocalStorage


def read(path: Path, root: Path | None = None) -> Dalle | DalleProblem:
    root = root or path.parent
    storage = LocalStorage(root)
    listing = Listing.of(storage.list_files())
    entry = next(e for e in listing.files if e.path == path.relative_to(root).as_posix())
    return read_dalle(storage, entry, listing.sidecars_of(entry))


@pytest.mark.parametrize(("compress", "expected"), [("jpeg", "JPEG"), ("lzw", "LZW"), ("deflate", "DEFLATE"),
                                                     ("zstd", "ZSTD"), ("packbits", "PACKBITS"), ("none", "NONE")])
def test_geotiff_fields(make_dalle, compress: str, expected: str) -> None:
    path = make_dalle("PCRS_700000_6600200.tif", (700000.0, 6600200.0), pixels=400, resolution_m=0.05,
                      compress=compress)
    dalle = read(path)
    assert isinstance(dalle, Dalle)
    assert dalle.path == "PCRS_700000_6600200.tif"
    assert dalle.mime == "image/tiff"
    assert (dalle.width, dalle.height) == (400, 400)
    assert dalle.compression == expected
    assert dalle.epsg == 2154
    assert dalle.resolution_cm == 5.0
    assert dalle.bands == ("Red(Byte)", "Green(Byte)", "Blue(Byte)")
    assert dalle.size == path.stat().st_size
    assert dalle.open is True
    assert dalle.corners == ((700000.0, 6600200.0), (700020.0, 6600200.0), (700020.0, 6600180.0),
                             (700000.0, 6600180.0))


def test_jpeg2000_lossy_and_lossless_in_a_conic_zone(make_dalle) -> None:
    lossy = read(make_dalle("lossy.jp2", (1700000.0, 5200200.0), crs="EPSG:3946", driver="JP2OpenJPEG",
                            reversible=False))
    lossless = read(make_dalle("lossless.jp2", (1700000.0, 5200200.0), crs="EPSG:3946", driver="JP2OpenJPEG",
                               reversible=True))
    for dalle in (lossy, lossless):
        assert isinstance(dalle, Dalle)
        assert dalle.mime == "image/jp2"
        assert dalle.epsg == 3946
        assert (dalle.width, dalle.height) == (400, 400)
        assert dalle.resolution_cm == 50.0
    assert isinstance(lossy, Dalle) and lossy.compression == "LOSSY"
    assert isinstance(lossless, Dalle) and lossless.compression == "LOSSLESS"


def test_resolution_is_rounded_to_two_decimals() -> None:
    assert resolution_cm(Affine(0.05, 0, 0, 0, -0.05, 0)) == 5.0
    assert resolution_cm(Affine(0.0333333, 0, 0, 0, -0.0333333, 0)) == 3.33
    assert resolution_cm(Affine(0.2, 0, 0, 0, -0.2, 0)) == 20.0


def test_crs_without_authority_code_is_identified_by_pyproj(tmp_path: Path) -> None:
    lambert93_params = ("+proj=lcc +lat_1=49 +lat_2=44 +lat_0=46.5 +lon_0=3 +x_0=700000 +y_0=6600000 "
                        "+ellps=GRS80 +units=m +no_defs")
    other_params = lambert93_params.replace("+lat_1=49", "+lat_1=48")
    paths = {}
    for name, proj4 in (("l93.tif", lambert93_params), ("other.tif", other_params)):
        paths[name] = tmp_path / name
        with rasterio.open(paths[name], "w", driver="GTiff", width=20, height=20, count=1, dtype="uint8",
                           crs=CRS.from_proj4(proj4), transform=from_origin(700000, 6600200, 10, 10)) as dst:
            dst.write(np.zeros((1, 20, 20), "uint8"))
    with rasterio.open(paths["l93.tif"]) as src:
        assert 'AUTHORITY["EPSG","2154"]' not in src.crs.to_wkt()
    l93, other = read(paths["l93.tif"]), read(paths["other.tif"])
    assert isinstance(l93, Dalle) and l93.epsg == 2154
    assert isinstance(other, Dalle) and other.epsg is None
    assert other.corners[0] == (700000.0, 6600200.0)  # the footprint still uses the file's CRS
    assert l93.bands == ("Gray(Byte)",)


def test_rotated_geotransform_gives_a_rotated_footprint(tmp_path: Path) -> None:
    path = tmp_path / "rotated.tif"
    angle = math.radians(30)
    transform = Affine.translation(700000, 6600200) @ Affine.rotation(30) @ Affine.scale(1, -1)
    with rasterio.open(path, "w", driver="GTiff", width=100, height=50, count=1, dtype="uint16",
                       crs="EPSG:2154", transform=transform) as dst:
        dst.write(np.zeros((1, 50, 100), "uint16"))
    dalle = read(path)
    assert isinstance(dalle, Dalle)
    ul, ur, lr, ll = dalle.corners
    assert ul == pytest.approx((700000, 6600200))
    assert ur == pytest.approx((700000 + 100 * math.cos(angle), 6600200 + 100 * math.sin(angle)))
    assert ll == pytest.approx((700000 + 50 * math.sin(angle), 6600200 - 50 * math.cos(angle)))
    assert dalle.resolution_cm == 100.0
    assert dalle.bands == ("Gray(UInt16)",)


def test_each_skip_reason(sample_livrable: Path) -> None:
    storage = LocalStorage(sample_livrable)
    listing = Listing.of(storage.list_files())
    problems = {e.path: read_dalle(storage, e, listing.sidecars_of(e)) for e in listing.candidates
                if e.path.startswith("anomalies/")}
    assert {path: (p.reason, p.detail) for path, p in problems.items() if isinstance(p, DalleProblem)} == {
        "anomalies/vide.tif": ("empty", "0-byte file"),
        "anomalies/jamais_ecrite.tif": ("empty", "no image block was ever written (1 in the table)"),
        "anomalies/tronquee.tif": ("corrupt", problems["anomalies/tronquee.tif"].detail),
        "anomalies/tronquee.jp2": ("corrupt", problems["anomalies/tronquee.jp2"].detail),
        "anomalies/illisible.tif": ("corrupt", "the first image directory lies past the end of the file"),
        "anomalies/sans_georef.tif": ("not_georeferenced", "no geotransform in the header nor in a sidecar file"),
        "anomalies/proprietaire.ecw": ("unsupported", "ECW is a proprietary format no open driver reads"),
    }
    size = (sample_livrable / "anomalies/tronquee.tif").stat().st_size
    assert problems["anomalies/tronquee.tif"].detail.startswith("image data cut short: block 0 ends at byte ")
    assert problems["anomalies/tronquee.tif"].detail.endswith(f", the file has {size} bytes")
    jp2_size = (sample_livrable / "anomalies/tronquee.jp2").stat().st_size
    assert problems["anomalies/tronquee.jp2"].detail.startswith("codestream cut short: box 'jp2c' ends at byte ")
    assert problems["anomalies/tronquee.jp2"].detail.endswith(f", the file has {jp2_size} bytes")


def test_zero_size_raster_is_empty(tmp_path: Path) -> None:
    # A TIFF whose image directory says 0 columns: written by hand, GDAL refuses to create one.
    import struct

    entries = [(256, 3, 1, 0), (257, 3, 1, 10), (258, 3, 1, 8), (259, 3, 1, 1), (273, 4, 1, 8),
               (277, 3, 1, 1), (279, 4, 1, 0)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    (tmp_path / "zero.tif").write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd)
    problem = read(tmp_path / "zero.tif")
    assert isinstance(problem, DalleProblem)
    assert (problem.reason, problem.detail) == ("empty", "the raster has no pixels (0x10)")


def test_a_file_gone_between_listing_and_reading_is_unreadable(make_dalle) -> None:
    path = make_dalle("gone.tif")
    storage = LocalStorage(path.parent)
    entry = storage.list_files()[0]
    path.unlink()
    problem = read_dalle(storage, entry)
    assert isinstance(problem, DalleProblem)
    assert problem.reason == "unreadable"
    assert problem.detail == "gone.tif: No such file or directory"


def test_sidecars_georeference_a_bare_tiff(make_dalle) -> None:
    path = make_dalle("bare.tif", georeferenced=False, pixels=200, resolution_m=1.0)
    (path.parent / "bare.tfw").write_text("1.0\n0.0\n0.0\n-1.0\n700000.5\n6600199.5\n")
    (path.parent / "bare.prj").write_text(CRS.from_epsg(2154).to_wkt())
    dalle = read(path)
    assert isinstance(dalle, Dalle)
    assert dalle.epsg == 2154
    assert dalle.corners[0] == (700000.0, 6600200.0)
    assert dalle.corners[2] == (700200.0, 6600000.0)


def test_world_file_without_crs_is_not_enough(make_dalle) -> None:
    path = make_dalle("bare.tif", georeferenced=False)
    (path.parent / "bare.tfw").write_text("1.0\n0.0\n0.0\n-1.0\n700000.5\n6600199.5\n")
    problem = read(path)
    assert isinstance(problem, DalleProblem)
    assert (problem.reason, problem.detail) == ("not_georeferenced", "no CRS in the header nor in a sidecar file")


def test_world_file_parsing() -> None:
    assert parse_world_file("0.05\n0\n0\n-0.05\n700000.025\n6600199.975\n") == Affine(
        0.05, 0, 700000.0, 0, -0.05, 6600200.0)


def test_proprietary_dalle_placed_by_its_world_file(sample_livrable: Path, tmp_path: Path) -> None:
    import shutil

    root = Path(shutil.copytree(sample_livrable / "lot 1", tmp_path / "liv"))
    (root / "ortho.ecw").write_bytes(b"\x00ECW" * 50)
    (root / "ortho.eww").write_text("1.0\n0.0\n0.0\n-1.0\n500000.5\n6900199.5\n")
    storage = LocalStorage(root)
    listing = Listing.of(storage.list_files())
    read_all = [read_dalle(storage, e, listing.sidecars_of(e)) for e in listing.candidates]
    placed = {r.path: r for r in place_proprietary(storage, listing, read_all)}
    ecw = placed["ortho.ecw"]
    assert isinstance(ecw, Dalle)
    assert (ecw.open, ecw.mime, ecw.epsg, ecw.width, ecw.height) == (False, "image/ecw", 2154, 200, 200)
    assert ecw.corners == ((500000.0, 6900200.0), (500200.0, 6900200.0), (500200.0, 6900000.0),
                           (500000.0, 6900000.0))


def test_header_larger_than_the_prefix_costs_one_more_read(make_dalle) -> None:
    class Counting(LocalStorage):
        calls: list[tuple[int, int]] = []

        def read_range(self, path: str, start: int, end: int) -> bytes:
            self.calls.append((start, end))
            return super().read_range(path, start, end)

    path = make_dalle("big_header.tif", pixels=400, resolution_m=0.05)
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(NOTE="x" * 200_000)  # pushes the header past the 64 KB prefix
    storage = Counting(path.parent)
    dalle = read_dalle(storage, storage.list_files()[0])
    assert isinstance(dalle, Dalle)
    assert dalle.compression == "DEFLATE"
    assert len(Counting.calls) >= 1


def test_a_non_raster_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    storage = LocalStorage(tmp_path)
    with pytest.raises(ValueError, match="not a raster candidate"):
        read_dalle(storage, FileEntry("notes.txt", 5))


def test_identical_geokeys_are_read_once_and_give_the_same_record(make_dalle, monkeypatch) -> None:
    from indexer.read.describe import DESCRIPTIONS

    DESCRIPTIONS.clear()
    first = make_dalle("a.tif", (700000.0, 6600200.0), pixels=200, resolution_m=1.0)
    make_dalle("b.tif", (700200.0, 6600200.0), pixels=200, resolution_m=1.0)
    storage = LocalStorage(first.parent)
    entries = {e.path: e for e in storage.list_files()}
    slow = read_dalle(storage, entries["a.tif"])
    assert len(DESCRIPTIONS.crs_by_geokeys) == 1
    fast = read_dalle(storage, entries["b.tif"])
    again = read_dalle(storage, entries["a.tif"])
    assert again == slow
    assert isinstance(fast, Dalle) and isinstance(slow, Dalle)
    assert (fast.crs_wkt, fast.epsg) == (slow.crs_wkt, 2154)
    assert fast.corners[0] == (700200.0, 6600200.0)


def test_pixel_is_point_geotiff_keeps_gdal_geotransform(tmp_path: Path) -> None:
    path = tmp_path / "point.tif"
    with rasterio.open(path, "w", driver="GTiff", width=10, height=10, count=1, dtype="uint8", crs="EPSG:2154",
                       transform=from_origin(700000, 6600200, 1, 1)) as dst:
        dst.update_tags(AREA_OR_POINT="Point")
        dst.write(np.zeros((1, 10, 10), "uint8"))
    with rasterio.open(path) as src:
        expected = src.transform
    for _ in range(2):
        dalle = read(path)
        assert isinstance(dalle, Dalle)
        assert dalle.corners[0] == (expected.c, expected.f)


def test_geojp2_box_read_apart_gives_what_gdal_reads(make_dalle) -> None:
    from indexer.read.describe import DESCRIPTIONS, geojp2_georef
    from indexer.read.jp2 import Jp2Header, read_jp2_header
    from indexer.read.view import ByteView

    path = make_dalle("geo.jp2", (1700000.0, 5200200.0), crs="EPSG:3946", driver="JP2OpenJPEG", pixels=300,
                      resolution_m=0.2)
    data = path.read_bytes()
    header = read_jp2_header(ByteView(data[:65536], len(data), lambda s, e: data[s:e]))
    assert isinstance(header, Jp2Header) and len(header.geojp2) == 1
    georef = geojp2_georef(header, DESCRIPTIONS)
    with rasterio.open(path) as src:
        assert georef is not None
        assert georef.transform == src.transform
        assert georef.crs_wkt == src.crs.to_wkt()
        expected = (src.transform.c, src.transform.f)
    for _ in range(2):  # the second read takes the CRS from the cache
        dalle = read(path)
        assert isinstance(dalle, Dalle)
        assert (dalle.epsg, dalle.corners[0], dalle.resolution_cm, dalle.compression) == (3946, expected, 20.0,
                                                                                           "LOSSY")


def test_jpeg2000_like_one_seen_before_is_read_without_gdal(make_dalle, monkeypatch) -> None:
    from indexer.read import describe

    describe.DESCRIPTIONS.clear()
    first = make_dalle("a.jp2", (1700000.0, 5200200.0), crs="EPSG:3946", driver="JP2OpenJPEG", pixels=300,
                       resolution_m=0.15)
    second = make_dalle("b.jp2", (1700045.25, 5200200.75), crs="EPSG:3946", driver="JP2OpenJPEG", pixels=300,
                        resolution_m=0.15)
    lossless = make_dalle("c.jp2", (1700090.0, 5200200.0), crs="EPSG:3946", driver="JP2OpenJPEG", pixels=300,
                          resolution_m=0.15, reversible=True)
    opened: list[str] = []
    real_open = describe.MemoryFile.open
    monkeypatch.setattr(describe.MemoryFile, "open", lambda self, **kw: opened.append(kw["driver"]) or real_open(
        self, **kw))

    assert isinstance(read(first), Dalle)
    assert opened == ["GTiff", "JP2OpenJPEG"]  # the GeoJP2 box's CRS, then the raster's description
    fast = read(second)
    assert opened == ["GTiff", "JP2OpenJPEG"]  # same header boxes and coding: no GDAL at all
    other = read(lossless)
    assert opened == ["GTiff", "JP2OpenJPEG", "JP2OpenJPEG"]  # other coding parameters: GDAL describes it

    describe.DESCRIPTIONS.clear()
    assert fast == read(second)  # exactly what GDAL gives
    assert isinstance(fast, Dalle) and isinstance(other, Dalle)
    assert (fast.corners[0], fast.epsg, fast.width, fast.compression) == ((1700045.25, 5200200.75), 3946, 300,
                                                                           "LOSSY")
    assert other.compression == "LOSSLESS"


def test_geotiff_like_one_seen_before_is_read_without_gdal(make_dalle, monkeypatch) -> None:
    from indexer.read import describe

    describe.DESCRIPTIONS.clear()
    paths = [make_dalle(f"{n}.tif", (700000.0 + 20 * n, 6600200.0), pixels=200, resolution_m=0.1, compress="jpeg")
             for n in range(4)]
    for n, path in enumerate(paths):  # producers date each file: that is no difference to GDAL's description
        with rasterio.open(path, "r+") as dst:
            dst.update_tags(TIFFTAG_DATETIME=f"2024:01:0{n + 1} 10:00:00")
    other = make_dalle("lzw.tif", (700100.0, 6600200.0), pixels=200, resolution_m=0.1, compress="lzw")
    opened: list[str] = []
    real_open = describe.MemoryFile.open
    monkeypatch.setattr(describe.MemoryFile, "open", lambda self, **kw: opened.append(kw["driver"]) or real_open(
        self, **kw))

    records = [read(path) for path in paths]
    assert opened == ["GTiff", "GTiff"]  # the first builds the CRS, the second describes the raster
    assert isinstance(read(other), Dalle) and opened == ["GTiff"] * 3  # another compression: GDAL again

    def read_by_gdal(path: Path) -> Dalle | DalleProblem:
        describe.DESCRIPTIONS.clear()
        return read(path)

    assert records == [read_by_gdal(path) for path in paths]  # exactly what GDAL gives
    last = records[-1]
    assert isinstance(last, Dalle)
    assert (last.corners[0], last.epsg, last.width, last.compression, last.bands) == (
        (700060.0, 6600200.0), 2154, 200, "JPEG", ("Red(Byte)", "Green(Byte)", "Blue(Byte)"))


def test_only_a_plain_tiepoint_and_scale_is_derived_without_gdal(tmp_path: Path) -> None:
    from indexer.read.tiff import TiffHeader, model_transform, read_tiff_header
    from indexer.read.view import ByteView

    def header(transform: Affine, **tags: str) -> TiffHeader:
        path = tmp_path / "t.tif"
        with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8", crs="EPSG:2154",
                           transform=transform) as dst:
            dst.update_tags(**tags)
            dst.write(np.zeros((1, 4, 4), "uint8"))
        data = path.read_bytes()
        parsed = read_tiff_header(ByteView(data, len(data), lambda s, e: data[s:e]))
        assert isinstance(parsed, TiffHeader)
        return parsed

    assert model_transform(header(from_origin(700000.5, 6600200.25, 0.05, 0.05))) == from_origin(
        700000.5, 6600200.25, 0.05, 0.05)
    assert model_transform(header(Affine(0.05, 0.01, 700000, 0.01, -0.05, 6600200))) is None  # rotated
    assert model_transform(header(from_origin(700000, 6600200, 1, 1), AREA_OR_POINT="Point")) is None
