"""Quality checks on livrables with known answers: records made in memory, each check's counts and cells."""

from __future__ import annotations

import json
import math
from functools import cache

import pytest
from pyproj import CRS, Transformer

from indexer import quality as quality_module
from indexer.models import Dalle, DalleProblem, FileEntry, Record, ScanResult, SkipReason
from indexer.preview import CHECKS, map_data, quality_layer
from indexer.quality import NameConvention, assess

X0, Y0, TILE = 651000, 6861000, 200
"""Lower-left corner of cell (0, 0) of the Lambert-93 grid, and the side of a dalle."""

SHAPE = """
..######..
.########.
##########
###.######
####..####
##########
.#######..
..#####...
"""
"""The delivered cells, top row first: an irregular outline, three enclosed holes (one, then two cells)."""


@cache
def wkt(epsg: int) -> str:
    return CRS.from_epsg(epsg).to_wkt()


def dalle(path: str, x: float, y: float, *, tile: float = TILE, pixels: int = 4000, resolution: float = 5.0,
          epsg: int = 2154, size: int = 48_000_000, compression: str = "JPEG", angle: float = 0.0) -> Dalle:
    """A dalle whose lower-left corner is (x, y), turned by `angle` degrees about its upper-left corner."""
    ulx, uly = x, y + tile
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    right, down = (tile * cos, tile * sin), (tile * sin, -tile * cos)
    corners = ((ulx, uly), (ulx + right[0], uly + right[1]), (ulx + right[0] + down[0], uly + right[1] + down[1]),
               (ulx + down[0], uly + down[1]))
    return Dalle(FileEntry(path, size, "2026-01-01T00:00:00"), "image/tiff", pixels, pixels,
                 ("Red(Byte)", "Green(Byte)", "Blue(Byte)"), compression, epsg, wkt(epsg), corners, resolution, True)


def cell(col: int, row: int) -> tuple[float, float]:
    return X0 + col * TILE, Y0 + row * TILE


def name(x: float, y: float) -> str:
    """The livrable's convention: metres, a separator, the upper-left corner."""
    return f"PCRS_{int(x)}_{int(y) + TILE}_L93.tif"


def cells() -> list[tuple[int, int]]:
    rows = SHAPE.strip().splitlines()
    return [(col, len(rows) - 1 - r) for r, line in enumerate(rows) for col, c in enumerate(line) if c == "#"]


def livrable() -> list[Record]:
    """The shape above with one of each defect the checks look for."""
    records: dict[tuple[int, int], Record] = {}
    for col, row in cells():
        x, y = cell(col, row)
        records[col, row] = dalle(f"lot1/{name(x, y)}", x, y)
    x, y = cell(1, 5)
    records[1, 5] = dalle(f"lot1/{name(x, y)}", x + 0.5, y)  # shifted by 0.5 m
    x, y = cell(4, 2)
    records[4, 2] = dalle(f"lot1/{name(x, y)}", x + TILE / 2, y)  # shifted by half a tile
    x, y = cell(2, 2)
    records[2, 2] = dalle(f"lot1/{name(x, y)}", x, y, angle=0.5)  # rotated
    for col in (1, 2, 3):  # a batch at 10 cm
        x, y = cell(col, 1)
        records[col, 1] = dalle(f"lot1/{name(x, y)}", x, y, pixels=2000, resolution=10.0)
    x, y = cell(7, 6)
    records[7, 6] = dalle("lot1/PCRS_651000_6862600_L93.tif", x, y)  # named after an empty cell
    x, y = cell(8, 4)
    records[8, 4] = dalle("lot1/dalle sans coordonnées.tif", x, y)
    extra: list[Record] = []
    for col, size in ((5, 48_000_000), (6, 47_000_000)):  # delivered twice: identical, then different
        x, y = cell(col, 5)
        extra.append(dalle(f"lot2/{name(x, y)}", x, y, size=size))
    extra.append(dalle("cc48/PCRS_1651000_7200200_CC48.tif", 1651000, 7200000, epsg=3948))
    extra += [DalleProblem(FileEntry("lot3/vide.tif", 0), SkipReason.EMPTY, "the file is empty"),
              DalleProblem(FileEntry("lot3/a.tif", 10), SkipReason.CORRUPT, "truncated"),
              DalleProblem(FileEntry("lot3/b.tif", 10), SkipReason.CORRUPT, "truncated")]
    return [*records.values(), *extra]


def bounds(col: int, row: int) -> tuple[float, float, float, float]:
    x, y = cell(col, row)
    return x, y, x + TILE, y + TILE


def test_every_check_of_a_livrable_with_known_defects() -> None:
    quality = assess(livrable())
    lambert, cc48 = quality.grids
    assert (lambert.crs, lambert.size, lambert.origin) == ("EPSG:2154", (200.0, 200.0), (0.0, 0.0))
    assert (lambert.dalles, lambert.on_grid) == (len(cells()) + 2, len(cells()) + 2 - 3)
    # The enclosed cells only: the notches and corners of the outline are outside.
    assert (lambert.holes, lambert.hole_area) == (3, 120_000.0)
    assert lambert.hole_cells == (bounds(3, 4), bounds(4, 3), bounds(5, 3))
    assert (cc48.crs, cc48.dalles, cc48.on_grid, cc48.holes) == ("EPSG:3948", 1, 1, 0)

    assert [(d.chemins, d.identical, d.differences) for d in quality.duplicates] == [
        ((f"lot1/{name(*cell(5, 5))}", f"lot2/{name(*cell(5, 5))}"), True, ()),
        ((f"lot1/{name(*cell(6, 5))}", f"lot2/{name(*cell(6, 5))}"), False, ("size",)),
    ]
    assert quality.duplicates[0].cell == bounds(5, 5)

    assert [(o.chemin, o.offset, o.dx, o.dy) for o in quality.off_grid] == [
        (f"lot1/{name(*cell(1, 5))}", pytest.approx(0.5), pytest.approx(0.5), 0.0),
        (f"lot1/{name(*cell(4, 2))}", 100.0, 100.0, 0.0),
    ]
    assert [r.chemin for r in quality.rotated] == [f"lot1/{name(*cell(2, 2))}"]
    assert quality.rotated[0].angle == pytest.approx(0.5)
    overlaps = {o.chemins: o.area for o in quality.overlaps}
    paths = {c: f"lot1/{name(*cell(*c))}" for c in [(1, 5), (2, 5), (4, 2), (5, 2), (2, 2), (2, 3), (3, 2)]}
    assert overlaps == {
        (paths[1, 5], paths[2, 5]): pytest.approx(100.0),  # 0.5 m by 200 m
        (paths[4, 2], paths[5, 2]): pytest.approx(20_000.0),  # half a dalle
        (paths[2, 2], paths[2, 3]): pytest.approx(0.5 * 200 * 200 * math.sin(math.radians(0.5)), rel=1e-3),
        (paths[2, 2], paths[3, 2]): pytest.approx(0.5 * 200 * 200 * math.sin(math.radians(0.5)), rel=2e-2),
    }

    assert dict(quality.majority) == {"crs": "EPSG:2154", "resolution": "5 cm", "pixels": "4000x4000",
                                      "bands": "Red(Byte)/Green(Byte)/Blue(Byte)", "compression": "JPEG",
                                      "format": "GeoTIFF"}
    batch = [f"lot1/{name(*cell(col, 1))}" for col in (1, 2, 3)]
    assert [(o.chemin, o.parameter, o.value, o.majority) for o in quality.outliers] == [
        ("cc48/PCRS_1651000_7200200_CC48.tif", "crs", "EPSG:3948", "EPSG:2154"),
        *(item for path in batch for item in [(path, "resolution", "10 cm", "5 cm"),
                                              (path, "pixels", "2000x2000", "4000x4000")]),
    ]

    assert quality.convention == NameConvention("m", "upper-left", True, quality.convention.example)  # type: ignore[union-attr]
    assert [(m.chemin, m.named, m.corner) for m in quality.names_disagreeing] == [
        ("lot1/PCRS_651000_6862600_L93.tif", (651000.0, 6862600.0), (652400.0, 6862400.0)),
        (f"lot1/{name(*cell(4, 2))}", (651800.0, 6861600.0), (651900.0, 6861600.0)),
        ("lot1/dalle sans coordonnées.tif", None, (652600.0, 6862000.0)),
    ]
    assert quality.names_agreeing == quality.dalles - 3
    assert quality.skipped == (("corrupt", ("lot3/a.tif", "lot3/b.tif")), ("empty", ("lot3/vide.tif",)))
    assert quality.verdict() == ("3 holes, 2 duplicates, 2 off-grid, 4 outliers (resolution 10 cm, pixels 2000x2000, "
                                 "crs EPSG:3948), 4 overlapping, 1 rotated, 3 misnamed, 3 skipped")


def test_the_document_is_json_with_the_counts_and_the_cells() -> None:
    document = assess(livrable()).to_dict()
    assert json.loads(json.dumps(document, allow_nan=False)) == document
    assert document["counts"] == {"holes": 3, "duplicates": 2, "off_grid": 2, "overlaps": 4, "rotated": 1,
                                  "outliers": 4, "names": 3, "skipped": 3}
    assert document["grids"][0]["hole_cells"] == [list(bounds(3, 4)), list(bounds(4, 3)), list(bounds(5, 3))]
    assert document["skipped"] == {"corrupt": ["lot3/a.tif", "lot3/b.tif"], "empty": ["lot3/vide.tif"]}
    assert document["names"]["convention"]["unit"] == "m"


def test_a_clean_livrable_has_a_clean_verdict() -> None:
    quality = assess([dalle(name(*cell(c, r)), *cell(c, r)) for c in range(6) for r in range(4)])
    assert quality.verdict() == "0 holes, 0 duplicates, 0 off-grid, 0 outliers"
    assert quality.grids[0].holes == 0 and quality.grids[0].on_grid == 24
    assert (quality.duplicates, quality.overlaps, quality.outliers, quality.names_disagreeing) == ((), (), (), ())


def test_nothing_to_check() -> None:
    quality = assess([DalleProblem(FileEntry("a.tif", 0), SkipReason.EMPTY, "empty")])
    assert quality.verdict() == "0 holes, 0 duplicates, 0 off-grid, 0 outliers, 1 skipped"
    assert quality.to_dict()["grids"] == [] and quality.convention is None


def test_a_grid_too_large_to_search_is_counted_as_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    far = 20
    monkeypatch.setattr(quality_module, "MAX_GRID_CELLS", far * far - 1)
    quality = assess([dalle("a.tif", X0, Y0), dalle("b.tif", X0 + (far - 1) * TILE, Y0 + (far - 1) * TILE)])
    assert quality.grids[0].holes is None and quality.grids[0].on_grid == 2


def test_a_dalle_of_another_size_covers_its_cells_and_overlaps_its_neighbours() -> None:
    records: list[Record] = [dalle(f"{c}_{r}.tif", *cell(c, r)) for c in range(4) for r in range(4)
                             if (c, r) not in ((1, 1), (2, 1), (1, 2), (2, 2))]
    records.append(dalle("big.tif", *cell(1, 1), tile=2 * TILE))  # fills the four middle cells
    records.append(dalle("bigger.tif", *cell(2, 2), tile=2 * TILE))  # over (2,2), (3,2), (2,3), (3,3)
    quality = assess(records)
    grid = quality.grids[0]
    assert (grid.size, grid.holes, grid.on_grid) == ((200.0, 200.0), 0, 14)
    assert quality.off_grid == ()  # their corners are grid nodes
    assert {o.chemins for o in quality.overlaps} == {("3_2.tif", "bigger.tif"), ("2_3.tif", "bigger.tif"),
                                                    ("3_3.tif", "bigger.tif"), ("big.tif", "bigger.tif")}
    assert quality.duplicates == ()  # their centres are in cells (1, 1) and (2, 2), no other's


CONVENTIONS = [
    # (name of the dalle with lower-left corner x, y; unit, corner, separator)
    (lambda x, y: f"PCRS_{x:06d}_{y + TILE:07d}_L93.tif", "m", "upper-left", True),
    (lambda x, y: f"{x // 1000:04d}_{y // 1000:04d}_5cm.jp2", "km", "lower-left", True),
    (lambda x, y: f"ORTHO_{x // 1000:04d}{y // 1000:04d}.tif", "km", "lower-left", False),
    (lambda x, y: f"PCRS_{x / 1000:07.3f}_{(y + TILE) / 1000:08.3f}_L93_5cm.tif", "km", "upper-left", True),
    (lambda x, y: f"dalle-{x}{y}.tif", "m", "lower-left", False),
]


@pytest.mark.parametrize(("named", "unit", "corner", "separator"), CONVENTIONS)
def test_each_naming_convention_is_found_and_its_wrong_names_listed(named: object, unit: str, corner: str,
                                                                    separator: bool) -> None:
    spell = named  # type: ignore[assignment]
    records: list[Record] = []
    wrong = {(3, 1): (1, 7), (5, 6): (9, 1)}  # named after a cell 1 km and more away
    for col in range(10):
        for row in range(10):
            x, y = cell(col, row)
            other = cell(*wrong[col, row]) if (col, row) in wrong else (x, y)
            records.append(dalle(f"{col}-{row}/{spell(*other)}", x, y))  # type: ignore[operator]
    quality = assess(records)
    assert quality.convention is not None
    assert (quality.convention.unit, quality.convention.corner, quality.convention.separator) == (unit, corner,
                                                                                                  separator)
    assert sorted(m.chemin for m in quality.names_disagreeing) == sorted(
        f"{c}-{r}/{spell(*cell(*w))}" for (c, r), w in wrong.items())  # type: ignore[operator]
    assert quality.names_agreeing == 98


def test_names_without_coordinates_give_no_convention() -> None:
    quality = assess([dalle(f"dalle_{n}.tif", *cell(n % 5, n // 5)) for n in range(10)])
    assert quality.convention is None and quality.names_disagreeing == ()


def test_the_map_draws_holes_duplicates_and_off_grid_dalles() -> None:
    records = livrable()
    dalles = [r for r in records if isinstance(r, Dalle)]
    result = ScanResult(source="file:///livrable", listed_files=len(records), dalles=dalles,
                        problems=[r for r in records if isinstance(r, DalleProblem)])
    data = map_data(result, [], "livrable", "", more=[quality_layer(assess(records), dalles)])
    emprise, drawn, checks = data["layers"]
    assert checks["id"] == "quality" and checks["key"] == "check"
    assert {c["id"]: (c["count"], c["color"]) for c in checks["classes"]} == {
        check: (count, CHECKS[check][1]) for check, count in (("hole", 3), ("duplicate", 2), ("off_grid", 2))}
    hole = next(f for f in checks["features"] if f["properties"]["check"] == "hole")
    xs, ys = Transformer.from_crs(2154, 4326, always_xy=True).transform([651600.0, 651800.0], [6861800.0, 6862000.0])
    assert hole["geometry"]["coordinates"][0][0] == [round(xs[0], 7), round(ys[0], 7)]  # lower-left corner
    assert hole["geometry"]["coordinates"][0][2] == [round(xs[1], 7), round(ys[1], 7)]  # upper-right
    assert hole["properties"]["bounds"] == "651600.000 6861800.000 651800.000 6862000.000"
    shifted = f"lot1/{name(*cell(1, 5))}"
    off = next(f for f in checks["features"] if f["properties"].get("chemin") == shifted)
    assert off["properties"]["check"] == "off_grid" and off["properties"]["offset"] == 0.5
    assert off["geometry"] == next(f["geometry"] for f in drawn["features"] if f["properties"]["chemin"] == shifted)
    assert [f["properties"]["copies"] for f in checks["features"] if f["properties"]["check"] == "duplicate"] == [
        "identiques", "différentes: size"]


def test_dalles_narrower_than_the_tolerance_are_checked_on_a_grid_of_the_tolerance() -> None:
    quality = assess([dalle(f"{n}.tif", X0 + n * 1e-4, Y0, tile=1e-4) for n in range(3)])
    assert quality.grids[0].size == (0.001, 0.001) and quality.grids[0].dalles == 3
    assert quality.verdict().startswith("0 holes, 1 duplicate, ")
