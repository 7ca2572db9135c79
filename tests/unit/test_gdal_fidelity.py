"""Files GDAL reads that other producers write: each field as GDAL (rasterio) reports it, by the header fast
path as by GDAL itself."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from indexer.models import Dalle, DalleProblem
from indexer.read import describe, read_dalle
from indexer.read.formats import Listing
from indexer.storages.local import LocalStorage
from tests.unit.rasters import (
    GEOJP2_UUID,
    boxes,
    geokeys_as_long,
    geotiff,
    ifd_entries,
    jp2,
    jp2_of,
    set_entry,
    tag_values,
)


class Counting(LocalStorage):
    """A local storage counting the ranged reads beyond the first bytes."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.ranges: list[tuple[str, int, int]] = []

    def read_range(self, path: str, start: int, end: int) -> bytes:
        self.ranges.append((path, start, end))
        return super().read_range(path, start, end)


def read(path: Path, storage: LocalStorage | None = None) -> Dalle | DalleProblem:
    storage = storage or LocalStorage(path.parent)
    listing = Listing.of(storage.list_files())
    entry = next(e for e in listing.files if e.path == path.name)
    return read_dalle(storage, entry, listing.sidecars_of(entry))


def dalle(path: Path, storage: LocalStorage | None = None) -> Dalle:
    record = read(path, storage)
    assert isinstance(record, Dalle), record
    return record


def gdal_corner(path: Path) -> tuple[float, float]:
    with rasterio.open(path) as src:
        return src.transform.c, src.transform.f


@pytest.fixture(autouse=True)
def fresh_descriptions() -> None:
    describe.DESCRIPTIONS.clear()


@pytest.mark.parametrize(("code", "name"), [(32909, "PIXARLOG"), (34676, "SGILOG"), (32809, "THUNDERSCAN"),
                                            (32766, "NEXT"), (32771, "CCITTRLEW"), (2, "CCITTRLE")])
def test_compression_gdal_names_without_rasterio_enum(tmp_path: Path, code: int, name: str) -> None:
    data = bytearray(geotiff(tmp_path / "c.tif").read_bytes())
    set_entry(data, 259, value=code)
    (tmp_path / "c.tif").write_bytes(data)
    with rasterio.open(tmp_path / "c.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == name
    assert dalle(tmp_path / "c.tif").compression == name


def pixel_is_point(path: Path) -> Path:
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(AREA_OR_POINT="Point")
    return path


def test_pixel_is_point_in_long_geokeys_is_seen(tmp_path: Path) -> None:
    for name, origin in (("a.tif", (700000.0, 6600200.0)), ("b.tif", (700016.0, 6600200.0))):
        path = pixel_is_point(geotiff(tmp_path / name, transform=from_origin(*origin, 1, 1)))
        path.write_bytes(geokeys_as_long(path.read_bytes()))
        assert tag_values(path.read_bytes(), 34735)[8:12] == (1025, 0, 1, 2)
    for name in ("a.tif", "b.tif", "a.tif"):  # b is read knowing a's GeoKeys
        assert dalle(tmp_path / name).corners[0] == gdal_corner(tmp_path / name)
    assert gdal_corner(tmp_path / "b.tif") == (700016.0, 6600200.0)


def test_pixel_is_point_in_long_geokeys_of_a_geojp2_box_is_seen(tmp_path: Path) -> None:
    for name, x in (("a.jp2", 700000.0), ("b.jp2", 700016.0)):
        with rasterio.open(tmp_path / name, "w", driver="JP2OpenJPEG", GMLJP2="NO", width=16, height=16, count=1,
                           dtype="uint8", crs="EPSG:2154", transform=from_origin(x, 6600200, 1, 1)) as dst:
            dst.update_tags(AREA_OR_POINT="Point")
            dst.write(np.ones((1, 16, 16), "uint8"))
        parts = boxes((tmp_path / name).read_bytes())  # the GeoJP2 box is a 1x1 GeoTIFF: its GeoKeys as LONG
        assert tag_values(next(c for b, c in parts if b == b"uuid")[16:], 34735)[8:12] == (1025, 0, 1, 2)
        parts = [(b, GEOJP2_UUID + geokeys_as_long(c[16:]) if b == b"uuid" else c) for b, c in parts]
        (tmp_path / name).write_bytes(jp2_of(parts))
    for name in ("a.jp2", "b.jp2"):
        assert dalle(tmp_path / name).corners[0] == gdal_corner(tmp_path / name)


def test_tags_past_the_first_bytes_cost_one_more_read_at_their_offset(tmp_path: Path) -> None:
    path = geotiff(tmp_path / "x.tif", width=4096, height=4096, tiled=True, blockxsize=16, blockysize=16,
                   compress="deflate", data=np.zeros((1, 4096, 4096), "uint8"))  # 65,536 tiles: 512 KB of tables
    data = path.read_bytes()
    order, ifd, entries = ifd_entries(data)
    geokeys = next(e for e in entries if e[1] == 34735)
    assert geokeys[4] > 16384  # GDAL put the GeoKeys after the tile tables
    storage = Counting(tmp_path)
    record = dalle(path, storage)
    assert (record.epsg, record.corners[0], record.width) == (2154, (700000.0, 6600200.0), 4096)
    assert len(storage.ranges) <= 3  # the tables in pieces, the values GDAL needs past the prefix


def test_first_image_directory_past_a_megabyte(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = geotiff(tmp_path / "edited.tif", width=1024, height=1024, count=3,
                   data=rng.integers(0, 255, (3, 1024, 1024), dtype="uint8"))
    with rasterio.open(path, "r+") as dst:  # what gdal_edit.py -a_srs does: the directory rewritten at the end
        dst.crs = CRS.from_epsg(3946)
    data = path.read_bytes()
    assert ifd_entries(data)[1] > 3 << 20
    storage = Counting(tmp_path)
    record = dalle(path, storage)
    assert (record.epsg, record.bands, record.corners[0]) == (3946, ("Red(Byte)", "Green(Byte)", "Blue(Byte)"),
                                                              (700000.0, 6600200.0))
    assert sum(end - start for _, start, end in storage.ranges) < 256 * 1024


def test_jp2_with_a_large_xml_box_before_the_codestream(tmp_path: Path) -> None:
    path = jp2(tmp_path / "xml.jp2")
    parts = boxes(path.read_bytes())
    at = next(i for i, (b, _) in enumerate(parts) if b == b"jp2c")
    parts.insert(at, (b"xml ", b"<metadata>" + b"x" * 1_300_000 + b"</metadata>"))
    path.write_bytes(jp2_of(parts))
    storage = Counting(tmp_path)
    record = dalle(path, storage)
    assert (record.epsg, record.corners[0], record.compression) == (2154, gdal_corner(path), "LOSSY")
    assert sum(end - start for _, start, end in storage.ranges) < 256 * 1024


def test_geojp2_and_gml_boxes_after_the_codestream(tmp_path: Path) -> None:
    for name, options in (("geojp2.jp2", {}), ("gml.jp2", {"GMLJP2": "YES", "GeoJP2": "NO"})):
        noise = np.random.default_rng(2).integers(0, 255, (1, 256, 256), dtype="uint8")
        path = jp2(tmp_path / name, transform=from_origin(700123, 6600456, 1, 1), width=256, height=256,
                   data=noise, QUALITY=100, REVERSIBLE=True, **options)
        assert path.stat().st_size > 32768  # the boxes after the codestream lie past the first bytes read
        parts = boxes(path.read_bytes())
        placing = [p for p in parts if p[0] in (b"uuid", b"asoc")]
        assert placing
        path.write_bytes(jp2_of([p for p in parts if p not in placing] + placing))
        with rasterio.open(path) as src:
            assert src.crs == CRS.from_epsg(2154)
        record = dalle(path)
        assert (record.epsg, record.corners[0]) == (2154, (700123.0, 6600456.0))


def test_two_geojp2_boxes_are_chosen_from_as_gdal_does(tmp_path: Path) -> None:
    local = boxes(jp2(tmp_path / "local.jp2", crs='LOCAL_CS["arbitrary",UNIT["metre",1]]',
                      transform=from_origin(10, 20, 1, 1)).read_bytes())
    l93 = boxes(jp2(tmp_path / "l93.jp2").read_bytes())
    local_box = next(c for b, c in local if b == b"uuid")
    l93_box = next(c for b, c in l93 if b == b"uuid")
    rest = [p for p in l93 if p[0] != b"uuid"]
    for name, pair in (("first_local.jp2", [local_box, l93_box]), ("second_local.jp2", [l93_box, local_box])):
        (tmp_path / name).write_bytes(jp2_of([*rest[:3], *((b"uuid", c) for c in pair), *rest[3:]]))
        with rasterio.open(tmp_path / name) as src:
            assert (src.crs, src.transform.c) == (CRS.from_epsg(2154), 700000.0)
        record = dalle(tmp_path / name)
        assert (record.epsg, record.corners[0]) == (2154, (700000.0, 6600200.0))


def test_colour_names_as_gdal_spells_them(tmp_path: Path) -> None:
    path = geotiff(tmp_path / "nir.tif", count=5, dtype="uint16")
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [ColorInterp.nir, ColorInterp.rededge, ColorInterp.swir, ColorInterp.other_ir,
                           ColorInterp.Y]
    assert dalle(path).bands == ("NIR(UInt16)", "RedEdge(UInt16)", "SWIR(UInt16)", "OtherIR(UInt16)",
                                 "YCbCr_Y(UInt16)")


def test_a_single_strip_without_byte_counts_is_read_as_gdal_reads_it(tmp_path: Path) -> None:
    path = geotiff(tmp_path / "nocounts.tif")
    data = bytearray(path.read_bytes())
    set_entry(data, 279, new_tag=65000)  # StripByteCounts renamed away: libtiff estimates it
    path.write_bytes(data)
    with rasterio.open(path) as src:
        assert src.width == 16
    assert dalle(path).corners[0] == (700000.0, 6600200.0)
    tiled = geotiff(tmp_path / "tiled.tif", width=32, height=32, tiled=True, blockxsize=16, blockysize=16)
    data = bytearray(tiled.read_bytes())
    set_entry(data, 325, new_tag=65000)
    tiled.write_bytes(data)
    with pytest.raises(rasterio.errors.RasterioIOError):
        rasterio.open(tiled)
    assert (read(tiled).reason, read(tiled).detail) == (  # type: ignore[union-attr]
        "corrupt", "the TIFF block table has no byte counts")


def test_a_jpeg2000_named_tif_and_a_tiff_named_jp2(tmp_path: Path) -> None:
    shutil.copyfile(jp2(tmp_path / "a.jp2"), tmp_path / "really_jp2.tif")
    shutil.copyfile(geotiff(tmp_path / "b.tif"), tmp_path / "really_tiff.jp2")
    as_tif, as_jp2 = dalle(tmp_path / "really_jp2.tif"), dalle(tmp_path / "really_tiff.jp2")
    assert (as_tif.mime, as_tif.compression, as_tif.corners[0]) == ("image/jp2", "LOSSY", (700000.0, 6600200.0))
    assert (as_jp2.mime, as_jp2.compression, as_jp2.corners[0]) == ("image/tiff", "NONE", (700000.0, 6600200.0))


def test_an_undecodable_jpeg2000_is_corrupt(tmp_path: Path) -> None:
    path = jp2(tmp_path / "a.jp2")
    data = bytearray(path.read_bytes())
    siz = data.index(b"\xff\x4f\xff\x51") + 4
    struct.pack_into(">I", data, siz + 4, 0)  # Xsiz 0
    path.write_bytes(data)
    with pytest.raises(rasterio.errors.RasterioIOError):
        rasterio.open(path)
    assert (read(path).reason, read(path).detail) == (  # type: ignore[union-attr]
        "corrupt", "the JPEG 2000 codestream cannot be decoded: image area 16x0, 1 components")


def test_aux_xml_georeferencing_takes_precedence_over_the_header(tmp_path: Path) -> None:
    for name in ("a.tif", "b.tif"):
        geotiff(tmp_path / name)
    (tmp_path / "b.tif.aux.xml").write_text(
        f"<PAMDataset><SRS>{CRS.from_epsg(3946).to_wkt()}</SRS>"
        "<GeoTransform>1700000, 2, 0, 5200000, 0, -2</GeoTransform></PAMDataset>")
    with rasterio.open(tmp_path / "b.tif") as src:  # GDAL's default configuration reads the .aux.xml
        assert (src.crs, src.transform.c, src.transform.a) == (CRS.from_epsg(3946), 1700000.0, 2.0)
    assert dalle(tmp_path / "a.tif").epsg == 2154
    record = dalle(tmp_path / "b.tif")  # structure and GeoKeys known: the fast path applies the .aux.xml too
    assert (record.epsg, record.corners[0], record.resolution_cm) == (3946, (1700000.0, 5200000.0), 200.0)


def test_a_j2k_codestream_with_world_file_and_prj_is_a_dalle(tmp_path: Path) -> None:
    path = jp2(tmp_path / "cs.j2k", CODEC="J2K", crs=None, transform=None)
    (tmp_path / "cs.j2k.aux.xml").unlink(missing_ok=True)
    assert path.read_bytes()[:4] == b"\xff\x4f\xff\x51"
    (tmp_path / "cs.wld").write_text("0.5\n0\n0\n-0.5\n700000.25\n6600199.75\n")
    (tmp_path / "cs.prj").write_text(CRS.from_epsg(2154).to_wkt())
    with rasterio.open(path) as src:
        assert (src.transform.c, src.transform.f, src.transform.a) == (700000.0, 6600200.0, 0.5)
    record = dalle(path)
    assert (record.mime, record.epsg, record.corners[0], record.resolution_cm) == (
        "image/jp2", 2154, (700000.0, 6600200.0), 50.0)


def patch_doubles(path: Path, tag: int, values: tuple[float, ...]) -> None:
    data = bytearray(path.read_bytes())
    order, _, entries = ifd_entries(bytes(data))
    _, _, _, n, offset = next(e for e in entries if e[1] == tag)
    struct.pack_into(order + f"{n}d", data, offset, *values)
    path.write_bytes(data)


@pytest.mark.parametrize(("tag", "values"), [(33550, (float("nan"), 1.0, 0.0)), (33550, (float("inf"), 1.0, 0.0)),
                                             (33550, (1e300, 1e300, 0.0)),
                                             (33922, (0.0, 0.0, 0.0, float("nan"), 6600200.0, 0.0))])
def test_non_finite_or_insane_georeferencing_is_not_georeferenced(tmp_path: Path, tag: int,
                                                                  values: tuple[float, ...]) -> None:
    for name in ("a.tif", "b.tif"):  # b.tif by the fast path, a.tif by GDAL
        patch_doubles(geotiff(tmp_path / name), tag, values)
        record = read(tmp_path / name)
        assert isinstance(record, DalleProblem)
        assert record.reason == "not_georeferenced"
        assert record.detail.startswith("the geotransform ")


def test_a_bogus_epsg_geokey(tmp_path: Path) -> None:
    path = geotiff(tmp_path / "e.tif")
    data = bytearray(path.read_bytes())
    keys = list(tag_values(bytes(data), 34735))
    keys[keys.index(3072) + 3] = 65000
    order, _, entries = ifd_entries(bytes(data))
    struct.pack_into(order + f"{len(keys)}H", data, next(e for e in entries if e[1] == 34735)[4], *keys)
    path.write_bytes(data)
    with rasterio.open(path) as src:
        gdal_wkt = src.crs.to_wkt()
    record = dalle(path)
    assert (record.crs_wkt, record.epsg) == (gdal_wkt, None)


@pytest.mark.parametrize("world", ["nan\n0\n0\n-1\n700000\n6600200\n", "1\n0\n0\n-1\ninf\n6600200\n",
                                   "1e308\n0\n0\n-1e308\n700000\n6600200\n"])
def test_a_world_file_of_non_finite_numbers(tmp_path: Path, world: str) -> None:
    path = geotiff(tmp_path / "w.tif", crs=None, transform=None)
    (tmp_path / "w.tfw").write_text(world)
    (tmp_path / "w.prj").write_text(CRS.from_epsg(2154).to_wkt())
    record = read(path)
    assert isinstance(record, DalleProblem) and record.reason == "not_georeferenced"
    assert record.detail.startswith("the geotransform ")


def test_a_nan_geotransform_in_aux_xml(tmp_path: Path) -> None:
    path = geotiff(tmp_path / "n.tif")
    (tmp_path / "n.tif.aux.xml").write_text("<PAMDataset><GeoTransform>nan, 1, 0, 6600200, 0, -1</GeoTransform>"
                                            "</PAMDataset>")
    record = read(path)
    assert isinstance(record, DalleProblem) and record.reason == "not_georeferenced"
    assert record.detail == "the geotransform is not finite (1, 0, nan, 0, -1, 6600200)"
