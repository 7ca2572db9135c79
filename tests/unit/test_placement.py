"""Footprints that cannot be placed in WGS84 are classified, never an error, and the outputs stay JSON."""

from __future__ import annotations

import json
import logging
import struct
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from pyproj import CRS, Transformer
from rasterio.transform import from_origin
from shapely.geometry import shape

from indexer.cli import main
from indexer.emprise import MAX_EDGE_POINTS, reproject
from indexer.models import Dalle, DalleProblem, FileEntry, ScanResult, SkipReason
from indexer.publish import publish_outputs
from indexer.sample import write_dalle
from tests.unit.test_cli import PROJET

L93 = CRS.from_epsg(2154).to_wkt()
L93_AREA = '"RGF93 v1 / Lambert-93" (EPSG:2154): -9.86° to 10.38° E, 41.15° to 51.56° N'
LOCAL_CS = ('LOCAL_CS["Chantier Quai Nord",UNIT["metre",1,AUTHORITY["EPSG","9001"]],'
            'AXIS["Easting",EAST],AXIS["Northing",NORTH]]')


def strict_json(path: Path) -> Any:
    """The file parsed as JSON, which has no NaN nor Infinity."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{path.name} is not JSON: {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def native_area(geometry: dict[str, Any]) -> float:
    back = Transformer.from_crs(CRS.from_epsg(4326), CRS.from_epsg(2154), always_xy=True)
    return float(shapely.transform(shape(geometry), lambda c: np.column_stack(back.transform(c[:, 0], c[:, 1]))).area)


def claimed_tiff(path: Path, width: int, height: int, origin: tuple[float, float] = (700000.0, 6600200.0)) -> Path:
    """A 4 KB Lambert-93 GeoTIFF of one DEFLATE strip, 1 m pixels, whose header claims `width` × `height` pixels
    (uncompressed, the reader finds the file too small for them: `corrupt`)."""
    entries: list[tuple[int, int, int, bytes]] = []

    def tag(number: int, kind: int, values: list[float]) -> None:
        code = {3: "H", 4: "I", 12: "d"}[kind]
        entries.append((number, kind, len(values), struct.pack("<" + code * len(values), *values)))

    for number, kind, values in ((256, 4, [width]), (257, 4, [height]), (258, 3, [8]), (259, 3, [8]),
                                 (262, 3, [1]), (273, 4, [3000]), (277, 3, [1]), (278, 4, [height]),
                                 (279, 4, [1000]), (33550, 12, [1.0, 1.0, 0.0]),
                                 (33922, 12, [0.0, 0.0, 0.0, *origin, 0.0]),
                                 (34735, 3, [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 2154])):
        tag(number, kind, values)
    extra_at = 8 + 2 + 12 * len(entries) + 4
    directory, extra = b"", b""
    for number, kind, count, value in entries:
        if len(value) <= 4:
            directory += struct.pack("<HHI", number, kind, count) + value.ljust(4, b"\0")
        else:
            directory += struct.pack("<HHII", number, kind, count, extra_at + len(extra))
            extra += value
    header = b"II*\0" + struct.pack("<IH", 8, len(entries)) + directory + b"\0\0\0\0" + extra
    path.write_bytes(header.ljust(4096, b"\0"))
    return path


@pytest.fixture
def unplaceable(tmp_path: Path) -> Path:
    """Three good 64 m dalles, and four that GDAL opens but that cannot be placed in WGS84."""
    root = tmp_path / "livrable"
    for i in range(3):
        write_dalle(root / f"bonne-{i}.tif", (700000.0 + 64 * i, 6600200.0), pixels=64, resolution_m=1.0)
    with rasterio.open(root / "chantier.tif", "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8",
                       crs=rasterio.crs.CRS.from_wkt(LOCAL_CS), transform=from_origin(1000, 2000, 1, 1)) as dst:
        dst.write(np.zeros((1, 64, 64), "uint8"))
    claimed_tiff(root / "geante.tif", 10**9, 10**9)
    write_dalle(root / "echelle.tif", (700000.0, 6600200.0), pixels=64, resolution_m=1e6)
    write_dalle(root / "monde.tif", (0.0, 0.0), pixels=64, georeferenced=False)
    (root / "monde.tfw").write_text("1.0\n0.0\n0.0\n-1.0\ninf\n6600200.0\n")
    (root / "monde.prj").write_text(CRS.from_epsg(2154).to_wkt("WKT1_ESRI"))
    return root


def test_dalles_that_cannot_be_placed_are_not_georeferenced(unplaceable: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["index", str(unplaceable), "--out", str(out), "--db",
                                       f"sqlite:///{tmp_path / 'state.sqlite'}", "--quiet"])
    assert result.exit_code == 0, result.output
    report = strict_json(out / "report.json")
    outside = f"its footprint lies more than 1° outside the area of use of its CRS {L93_AREA}"
    assert [(s["path"], s["reason"], s["detail"]) for s in report["skipped"]] == [
        ("chantier.tif", "not_georeferenced",
         'its CRS "Chantier Quai Nord" (Engineering CRS) has no transformation to WGS84'),
        ("echelle.tif", "not_georeferenced", outside),
        ("geante.tif", "not_georeferenced", outside),
        ("monde.tif", "not_georeferenced", "the geotransform is not finite (1, 0, inf, 0, -1, 6600200.5)"),
    ]
    assert (report["raster_files"], report["indexed"], report["reused"]) == (7, 3, 0)
    features = strict_json(out / "dalles.geojson")["features"]
    assert [f["properties"]["chemin"] for f in features] == ["bonne-0.tif", "bonne-1.tif", "bonne-2.tif"]
    (livrable,) = strict_json(out / "livrables.geojson")["features"]
    assert native_area(livrable["geometry"]) == pytest.approx(3 * 64 * 64, rel=1e-4)  # corners snapped to 1e-7°


def dalle(path: str, corners: Any, crs_wkt: str = L93, resolution_cm: float = 100.0) -> Dalle:
    return Dalle(file=FileEntry(path, 10), mime="image/tiff", width=64, height=64, bands=("Gray(Byte)",),
                 compression="NONE", epsg=2154, crs_wkt=crs_wkt, corners=corners, resolution_cm=resolution_cm,
                 open=True)


def square(x: float, y: float, side: float = 64.0) -> Any:
    return ((x, y), (x + side, y), (x + side, y - side), (x, y - side))


def test_no_number_of_a_record_breaks_the_outputs(tmp_path: Path) -> None:
    nan, inf = float("nan"), float("inf")
    records = [
        dalle("bonne.tif", square(700000.0, 6600200.0)),
        dalle("nan.tif", square(nan, 6600200.0)),
        dalle("inf.tif", ((700000.0, 6600200.0), (inf, 6600200.0), (inf, -inf), (700000.0, -inf))),
        dalle("1e308.tif", square(1e308, 1e308)),
        dalle("resolution.tif", square(700064.0, 6600200.0), resolution_cm=nan),
        dalle("plate.tif", ((700000.0, 6600200.0),) * 4),
        dalle("croisee.tif", ((700000.0, 6600200.0), (700064.0, 6600136.0), (700064.0, 6600200.0),
                              (700000.0, 6600136.0))),
        dalle("wkt.tif", square(700000.0, 6600200.0), crs_wkt='PROJCS["broken"'),
        dalle("local.tif", square(1000.0, 2000.0), crs_wkt=LOCAL_CS),
    ]
    scan = ScanResult(source="file:///livrable", listed_files=10, dalles=records,
                      problems=[DalleProblem(FileEntry("vide.tif", 0), SkipReason.EMPTY, "0-byte file")])
    publication = publish_outputs(tmp_path, scan, None, None, date(2026, 1, 1))
    report = strict_json(tmp_path / "report.json")
    not_finite = "its georeferencing is not finite (NaN or infinite numbers)"
    assert {s["path"]: s["detail"] for s in report["skipped"]} == {
        "1e308.tif": f"its footprint lies more than 1° outside the area of use of its CRS {L93_AREA}",
        "croisee.tif": "its four corners enclose no area",
        "inf.tif": not_finite,
        "local.tif": 'its CRS "Chantier Quai Nord" (Engineering CRS) has no transformation to WGS84',
        "nan.tif": not_finite,
        "plate.tif": "its four corners enclose no area",
        "resolution.tif": not_finite,
        "vide.tif": "0-byte file",
        "wkt.tif": 'its CRS cannot be read by PROJ (PROJCS["broken"…)',
    }
    assert {s["reason"] for s in report["skipped"] if s["path"] != "vide.tif"} == {"not_georeferenced"}
    assert (report["raster_files"], report["indexed"], len(report["skipped"])) == (10, 1, 9)
    assert [f["properties"]["chemin"] for f in strict_json(tmp_path / "dalles.geojson")["features"]] == ["bonne.tif"]
    (livrable,) = strict_json(tmp_path / "livrables.geojson")["features"]
    assert native_area(livrable["geometry"]) == pytest.approx(64 * 64, rel=1e-4)
    assert [d.path for d in publication.result.dalles] == ["bonne.tif"]


def test_a_long_edge_is_densified_into_a_bounded_number_of_points() -> None:
    world = shapely.box(-2e7, -2e7, 2e7, 2e7)  # 40,000 km edges: 200,000 points each at 200 m
    projected = reproject(world, CRS.from_epsg(3857).to_wkt())
    assert shapely.get_num_coordinates(projected) == 4 * MAX_EDGE_POINTS + 1


def test_a_projet_number_that_is_not_finite_is_written_as_null(sample_livrable: Path, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    document = json.dumps({**PROJET, "livrables": [{**PROJET["livrables"][0], "focale": "FOCALE",  # type: ignore[dict-item]
                                                    "recouvr_lat": "LAT"}]})
    projet = tmp_path / "projet.json"
    projet.write_text(document.replace('"FOCALE"', "1e999").replace('"LAT"', "NaN"), encoding="utf-8")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="indexer"):
        result = CliRunner().invoke(main, ["index", str(sample_livrable), "--out", str(out), "--projet", str(projet),
                                           "--db", f"sqlite:///{tmp_path / 'state.sqlite'}", "--quiet"])
    assert result.exit_code == 0, result.output
    (livrable,) = strict_json(out / "livrables.geojson")["features"]
    assert (livrable["properties"]["focale"], livrable["properties"]["recouvrLat"],
            livrable["properties"]["recouvrLon"]) == (None, None, 60)
    assert {f["properties"]["focale"] for f in strict_json(out / "dalles.geojson")["features"]} == {None}
    assert [r.getMessage() for r in caplog.records if r.name == "indexer.geojson"] == [
        "the livrable's recouvr_lat is not a finite number (nan): written as null",
        "the livrable's focale is not a finite number (inf): written as null",
    ]
