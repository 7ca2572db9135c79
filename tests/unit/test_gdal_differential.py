"""Differential suite: every field of a dalle, as read by the indexer, equals what GDAL (rasterio) reports
opening the same whole file with its default configuration.

Each variant is a folder of several files of one structure (differing by their georeferencing, and for one
variant by their CRS), read in order with fresh descriptions: the first by GDAL, the next ones by the header
fast path wherever it applies. Deliberate differences (README, "Differences from GDAL") are not exercised here
except where the variant says so.
"""

from __future__ import annotations

import ctypes
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rasterio.dtypes
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import Affine, from_origin

from indexer.models import Dalle, DalleProblem
from indexer.read import describe, read_dalle
from indexer.read.formats import Listing
from indexer.storages.local import LocalStorage
from tests.unit.rasters import GEOJP2_UUID, boxes, geokeys_as_long, jp2_of

_GDAL = ctypes.CDLL(next((Path(rasterio.__file__).parent.parent / "rasterio.libs").glob("libgdal*")).as_posix())
_GDAL.GDALGetColorInterpretationName.restype = ctypes.c_char_p
_GDAL.GDALGetColorInterpretationName.argtypes = [ctypes.c_int]
MIME = {"GTiff": "image/tiff", "JP2OpenJPEG": "image/jp2"}
SIZE = 32


def gdal_colour(interpretation: ColorInterp) -> str:
    """GDAL's own name of a colour interpretation (GDALGetColorInterpretationName)."""
    return str(_GDAL.GDALGetColorInterpretationName(int(interpretation.value)).decode())


def gdal_type(dtype: str) -> str:
    return str(rasterio.dtypes.typename_fwd[rasterio.dtypes.dtype_rev[dtype]])


def gdal_record(path: Path) -> dict[str, Any] | str:
    """What GDAL says of the whole file, in the indexer's fields; the skip reason when it cannot place it."""
    with rasterio.open(path) as src:
        t = src.transform
        if tuple(t)[:6] == tuple(Affine.identity())[:6] or src.crs is None:
            return "not_georeferenced"
        structure = src.tags(ns="IMAGE_STRUCTURE")
        if src.driver == "JP2OpenJPEG":
            compression = "LOSSLESS" if structure.get("COMPRESSION_REVERSIBILITY", "").startswith(
                "LOSSLESS") else "LOSSY"
        else:  # GDAL says "YCbCr JPEG" for JPEG in YCbCr: the indexer says JPEG (README)
            compression = structure.get("COMPRESSION", "NONE").replace("YCbCr JPEG", "JPEG")
        size = math.hypot(t.a, t.d) * 100
        return {
            "corners": (t * (0, 0), t * (src.width, 0), t * (src.width, src.height), t * (0, src.height)),
            "epsg": src.crs.to_epsg(),
            "crs": CRS.from_wkt(src.crs.to_wkt()),
            "tailleImage": f"{src.height}x{src.width}",
            "bandes": tuple(f"{gdal_colour(ci)}({gdal_type(dt)})" for ci, dt in zip(src.colorinterp, src.dtypes,
                                                                                    strict=True)),
            "compression": compression,
            "resolution": float(round(size)) if abs(size - round(size)) < 1e-6 else round(size, 2),
            "typeImage": MIME[src.driver],
            "open": True,
        }


def our_record(record: Dalle | DalleProblem) -> dict[str, Any] | str:
    if isinstance(record, DalleProblem):
        return str(record.reason)
    return {"corners": record.corners, "epsg": record.epsg, "crs": CRS.from_wkt(record.crs_wkt),
            "tailleImage": f"{record.height}x{record.width}", "bandes": record.bands,
            "compression": record.compression, "resolution": record.resolution_cm, "typeImage": record.mime,
            "open": record.open}


@dataclass(frozen=True)
class Variant:
    """One kind of file: rasterio's profile, what is done to each file after writing, how many files."""

    name: str
    profile: dict[str, Any] = field(default_factory=dict)
    ext: str = ".tif"
    count: int = 1
    dtype: str = "uint8"
    colours: tuple[ColorInterp, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    edit: Callable[[Path, int], None] | None = None
    transform: Callable[[int], Affine] = lambda n: from_origin(700000 + 32 * n, 6600200, 1, 1)
    crs: Callable[[int], str | None] = lambda n: "EPSG:2154"
    files: int = 3
    mask: bool = False
    overviews: bool = False
    fast: bool = True
    """Whether the header fast path applies (PixelIsPoint, rotations, GCPs and GMLJP2 are left to GDAL)."""


def write(variant: Variant, path: Path, n: int) -> None:
    profile: dict[str, Any] = {"driver": "JP2OpenJPEG" if variant.ext == ".jp2" else "GTiff", "width": SIZE,
                               "height": SIZE, "count": variant.count, "dtype": variant.dtype,
                               "crs": variant.crs(n), "transform": variant.transform(n)}
    if profile["driver"] == "JP2OpenJPEG":
        profile["GMLJP2"] = "NO"
    profile.update(variant.profile)
    if profile["crs"] is None:
        profile.pop("transform")
    rng = np.random.default_rng(n)
    info = np.iinfo(variant.dtype) if np.issubdtype(variant.dtype, np.integer) else None
    data = (rng.integers(0, min(info.max, 255) + 1, (variant.count, SIZE, SIZE)) if info else
            rng.random((variant.count, SIZE, SIZE))).astype(variant.dtype)
    with rasterio.open(path, "w", **profile) as dst:
        if variant.tags:
            dst.update_tags(**variant.tags)
        if variant.colours:
            dst.colorinterp = variant.colours
        dst.write(data)
        if variant.mask:
            dst.write_mask(np.full((SIZE, SIZE), 255, "uint8"))
    if variant.overviews:
        with rasterio.open(path, "r+") as dst:
            dst.build_overviews([2, 4])
    if variant.edit is not None:
        variant.edit(path, n)


def gcps(path: Path, n: int) -> None:
    with rasterio.open(path, "r+") as dst:
        dst.gcps = ([GroundControlPoint(0, 0, 700000 + n, 6600200), GroundControlPoint(SIZE, SIZE, 700032 + n,
                                                                                        6600168)],
                    CRS.from_epsg(2154))


def long_geokeys(path: Path, n: int) -> None:
    path.write_bytes(geokeys_as_long(path.read_bytes()))


def geojp2_long(path: Path, n: int) -> None:
    parts = boxes(path.read_bytes())
    path.write_bytes(jp2_of([(b, GEOJP2_UUID + geokeys_as_long(c[16:]) if b == b"uuid" else c) for b, c in parts]))


def move_boxes_after_codestream(path: Path, n: int) -> None:
    parts = boxes(path.read_bytes())
    placing = [p for p in parts if p[0] in (b"uuid", b"asoc")]
    path.write_bytes(jp2_of([p for p in parts if p not in placing] + placing))


def xml_box_before_codestream(path: Path, n: int) -> None:
    parts = boxes(path.read_bytes())
    at = next(i for i, (b, _) in enumerate(parts) if b == b"jp2c")
    parts.insert(at, (b"xml ", b"<m>" + b"x" * 40_000 + b"</m>"))
    path.write_bytes(jp2_of(parts))


def two_geojp2_boxes(path: Path, n: int) -> None:
    local = path.with_name("local.tmp.jp2")
    with rasterio.open(local, "w", driver="JP2OpenJPEG", GMLJP2="NO", width=SIZE, height=SIZE, count=1,
                       dtype="uint8", crs='LOCAL_CS["arbitrary",UNIT["metre",1]]',
                       transform=from_origin(10, 20, 1, 1)) as dst:
        dst.write(np.zeros((1, SIZE, SIZE), "uint8"))
    local_box = next(c for b, c in boxes(local.read_bytes()) if b == b"uuid")
    local.unlink()
    parts = boxes(path.read_bytes())
    at = next(i for i, (b, _) in enumerate(parts) if b == b"uuid")
    parts.insert(at, (b"uuid", local_box))
    path.write_bytes(jp2_of(parts))


def directory_at_the_end(path: Path, n: int) -> None:
    with rasterio.open(path, "r+") as dst:  # what gdal_edit.py does: the directory rewritten at the end
        dst.crs = CRS.from_epsg(3946)


def aux_xml(path: Path, n: int) -> None:
    Path(str(path) + ".aux.xml").write_text(
        f"<PAMDataset><SRS>{CRS.from_epsg(3946).to_wkt()}</SRS>"
        f"<GeoTransform>{1700000 + 64 * n}, 2, 0, 5200000, 0, -2</GeoTransform></PAMDataset>")


def aux_xml_colours(path: Path, n: int) -> None:
    Path(str(path) + ".aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><ColorInterp>nir</ColorInterp></PAMRasterBand>'
        '<PAMRasterBand band="2"><ColorInterp>Undefined</ColorInterp></PAMRasterBand>'
        '<PAMRasterBand band="3"><ColorInterp>bogus</ColorInterp></PAMRasterBand></PAMDataset>')


def renamed(target: str) -> Callable[[Path, int], None]:
    def rename(path: Path, n: int) -> None:
        shutil.move(path, path.with_suffix(target))
    return rename


def no_strip_byte_counts(path: Path, n: int) -> None:
    from tests.unit.rasters import set_entry

    data = bytearray(path.read_bytes())
    set_entry(data, 279, new_tag=65000)
    path.write_bytes(data)


L93 = "EPSG:2154"
TILED = {"tiled": True, "blockxsize": 16, "blockysize": 16}
RGB = {"photometric": "RGB"}
USER_LCC = ("+proj=lcc +lat_1=48.5 +lat_2=45.5 +lat_0=47 +lon_0=2.5 +x_0=600000 +y_0=2200000 +ellps=GRS80 "
            "+units=m +no_defs")
VARIANTS = [
    Variant("striped-none-gray"),
    Variant("tiled-deflate-rgb", {**TILED, "compress": "deflate", **RGB}, count=3),
    Variant("lzw-predictor2-uint16", {"compress": "lzw", "predictor": 2}, dtype="uint16"),
    Variant("deflate-predictor3-float32", {"compress": "deflate", "predictor": 3}, dtype="float32"),
    Variant("zstd-int16", {"compress": "zstd"}, dtype="int16"),
    Variant("packbits-int8", {"compress": "packbits"}, dtype="int8"),
    Variant("lzma-uint32", {"compress": "lzma"}, dtype="uint32"),
    Variant("lerc-float64", {"compress": "lerc"}, dtype="float64"),
    Variant("webp-rgb", {**TILED, "compress": "webp", **RGB}, count=3),
    Variant("jpeg-rgb", {**TILED, "compress": "jpeg", **RGB}, count=3),
    Variant("jpeg-ycbcr", {**TILED, "compress": "jpeg", "photometric": "YCbCr"}, count=3),
    Variant("int32-none", dtype="int32"),
    Variant("rgba-alpha", {**RGB, "alpha": "YES"}, count=4),
    Variant("rgb-nir", {**RGB}, count=4, dtype="uint16",
            colours=(ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.nir)),
    Variant("multispectral-names", count=4, dtype="uint16",
            colours=(ColorInterp.rededge, ColorInterp.swir, ColorInterp.other_ir, ColorInterp.pan)),
    Variant("band-interleaved", {**RGB, "interleave": "band", "compress": "deflate"}, count=3),
    Variant("cmyk", {"photometric": "CMYK"}, count=4),
    Variant("bigtiff", {"BIGTIFF": "YES", **TILED}, count=3),
    Variant("big-endian", {"ENDIANNESS": "BIG", "compress": "deflate"}, dtype="uint16"),
    Variant("big-endian-bigtiff", {"ENDIANNESS": "BIG", "BIGTIFF": "YES"}, count=3),
    Variant("overviews", {**TILED, "compress": "deflate"}, count=3, overviews=True),
    Variant("internal-mask", {**TILED, **RGB}, count=3, mask=True),
    Variant("tiles-32-1bit", {"tiled": True, "blockxsize": 32, "blockysize": 32, "nbits": 1}),
    Variant("pixel-is-point-short", tags={"AREA_OR_POINT": "Point"}, fast=False),
    Variant("pixel-is-point-long", tags={"AREA_OR_POINT": "Point"}, edit=long_geokeys, fast=False),
    Variant("model-transformation", transform=lambda n: Affine(0.5, 0.1, 700000 + 32 * n, 0.1, -0.5, 6600200),
            fast=False),
    Variant("non-square-pixels", transform=lambda n: Affine(0.25, 0, 700000 + 8 * n, 0, -0.5, 6600200)),
    Variant("gcps", crs=lambda n: None, edit=gcps, fast=False),
    Variant("crs-changes", crs=lambda n: ("EPSG:2154", "EPSG:3946", "EPSG:2154", "EPSG:3946", "EPSG:3947")[n],
            files=5),
    Variant("user-defined-crs", crs=lambda n: USER_LCC),
    Variant("geographic", crs=lambda n: "EPSG:4326",
            transform=lambda n: from_origin(2.0 + 0.001 * n, 48.0, 1e-5, 1e-5)),
    Variant("nodata-long-header", {"nodata": 0}, tags={"NOTE": "x" * 40_000}),
    Variant("directory-at-the-end", {"compress": "deflate"}, count=3, edit=directory_at_the_end),
    Variant("aux-xml-precedence", edit=aux_xml),
    Variant("aux-xml-colours", {**RGB}, count=3, edit=aux_xml_colours),
    Variant("jp2-aux-xml-colours", ext=".jp2", count=3, edit=aux_xml_colours),
    Variant("no-strip-byte-counts", edit=no_strip_byte_counts),
    Variant("tiff-named-jp2", edit=renamed(".jp2")),
    Variant("jp2-lossy", ext=".jp2", count=3),
    Variant("jp2-lossless", {"REVERSIBLE": "YES", "QUALITY": 100}, ext=".jp2", count=3),
    Variant("jp2-rgba", {"REVERSIBLE": "YES", "QUALITY": 100}, ext=".jp2", count=4,
            colours=(ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha)),
    Variant("jp2-uint16", ext=".jp2", dtype="uint16"),
    Variant("jp2-gmljp2-only", {"GMLJP2": "YES", "GeoJP2": "NO"}, ext=".jp2", fast=False),
    Variant("jp2-geojp2-and-gmljp2", {"GMLJP2": "YES"}, ext=".jp2", count=3),
    Variant("jp2-coding-parameters", {"RESOLUTIONS": 2, "PROGRESSION": "RPCL",
                                      "CODEBLOCK_WIDTH": 16, "CODEBLOCK_HEIGHT": 16, "YCC": "NO"},
            ext=".jp2", count=3),
    Variant("jp2-boxes-after-codestream", {"GMLJP2": "YES"}, ext=".jp2", edit=move_boxes_after_codestream),
    Variant("jp2-xml-box-before-codestream", ext=".jp2", edit=xml_box_before_codestream),
    Variant("jp2-two-geojp2-boxes", ext=".jp2", edit=two_geojp2_boxes),
    Variant("jp2-pixel-is-point-long", ext=".jp2", tags={"AREA_OR_POINT": "Point"}, edit=geojp2_long),
    Variant("jp2-crs-changes", ext=".jp2", crs=lambda n: ("EPSG:2154", "EPSG:3946", "EPSG:2154")[n]),
    Variant("jp2-named-tif", ext=".jp2", edit=renamed(".tif")),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_every_field_equals_gdal(variant: Variant, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(variant.files):
        write(variant, tmp_path / f"d{n}{variant.ext}", n)
    for aux in [] if variant.edit in (aux_xml, aux_xml_colours) else tmp_path.glob("*.aux.xml"):
        aux.unlink()  # rasterio's own PAM files: not part of the variant
    described: list[str] = []
    by_gdal = describe.describe_with_gdal
    monkeypatch.setattr(describe, "describe_with_gdal", lambda storage, header, *args: described.append(
        header.entry.path) or by_gdal(storage, header, *args))
    describe.DESCRIPTIONS.clear()
    storage = LocalStorage(tmp_path)
    listing = Listing.of(storage.list_files())
    assert len(listing.candidates) == variant.files
    for entry in listing.candidates:
        ours = our_record(read_dalle(storage, entry, listing.sidecars_of(entry)))
        assert ours == gdal_record(tmp_path / entry.path), entry.path
    assert (len(described) < variant.files) == variant.fast, described  # the fast path ran where it applies


def test_the_suite_covers_forty_variants_with_gdal_s_own_names() -> None:
    assert len({v.name for v in VARIANTS}) == len(VARIANTS) >= 40
    assert [gdal_colour(ColorInterp(v)) for v in (19, 20, 21, 25)] == ["RedEdge", "NIR", "SWIR", "OtherIR"]
