"""The emprise: union per CRS in native coordinates, holes kept, then WGS84."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import shapely
from pyproj import CRS, Geod, Transformer

from indexer.emprise import compute_emprise, corner_array, footprints, general_union, union_native
from indexer.models import Dalle, FileEntry

L93 = CRS.from_epsg(2154).to_wkt()
CC46 = CRS.from_epsg(3946).to_wkt()


def tile(x: float, y: float, side: float = 200.0, crs_wkt: str = L93, path: str | None = None) -> Dalle:
    """A dalle record whose lower-left corner is (x, y)."""
    corners = ((x, y + side), (x + side, y + side), (x + side, y), (x, y))
    return Dalle(file=FileEntry(path or f"{x}_{y}.tif", 1), mime="image/tiff", width=4000, height=4000,
                 bands=("Red(Byte)",), compression="JPEG", epsg=None, crs_wkt=crs_wkt, corners=corners,
                 resolution_cm=5.0, open=True)


def rotated(cx: float, cy: float, angle: float, side: float = 200.0) -> Dalle:
    """A dalle turned by `angle` radians about its centre (cx, cy)."""
    cos, sin = math.cos(angle), math.sin(angle)
    half = side / 2
    corners = tuple((cx + dx * cos - dy * sin, cy + dx * sin + dy * cos)
                    for dx, dy in ((-half, half), (half, half), (half, -half), (-half, -half)))
    return replace(tile(cx - half, cy - half, side, path="tournee.tif"), corners=corners)  # type: ignore[arg-type]


def native_union(dalles: list[Dalle]) -> shapely.Geometry:
    return union_native(footprints(corner_array(dalles), 3), 1e-3)


def native_area(geometry: shapely.Geometry, crs_wkt: str) -> float:
    """Area of a WGS84 geometry once projected back into a CRS."""
    back = Transformer.from_crs(CRS.from_epsg(4326), CRS.from_wkt(crs_wkt), always_xy=True)
    return float(shapely.transform(geometry, lambda c: np.column_stack(back.transform(c[:, 0], c[:, 1]))).area)


def test_grid_with_a_missing_dalle_keeps_the_hole() -> None:
    dalles = [tile(700000 + 200 * i, 6600000 + 200 * j) for i in range(3) for j in range(3) if (i, j) != (1, 1)]
    emprise = compute_emprise(dalles)
    assert emprise is not None and emprise.geom_type == "Polygon"
    assert len(emprise.interiors) == 1
    assert native_area(emprise, L93) == pytest.approx(8 * 200 * 200, rel=1e-6)
    hole = shapely.Polygon(emprise.interiors[0])
    assert native_area(hole, L93) == pytest.approx(200 * 200, rel=1e-6)


def test_footprints_with_float_noise_leave_no_sliver() -> None:
    # 0.05 m × 4000 px lands on 700200.00000000001 in floating point: snapped to the millimetre.
    dalles = [tile(700000 + 200 * i + 1e-9 * i, 6600000, 200.0 + 1e-10) for i in range(10)]
    emprise = compute_emprise(dalles)
    assert emprise is not None and emprise.geom_type == "Polygon"
    assert len(emprise.interiors) == 0
    assert native_area(emprise, L93) == pytest.approx(10 * 200 * 200, rel=1e-6)


def test_disjoint_blocks_give_a_multipolygon_and_two_crs_are_merged() -> None:
    dalles = [tile(700000, 6600000), tile(701000, 6600000), tile(1700000, 5200000, crs_wkt=CC46)]
    emprise = compute_emprise(dalles)
    assert emprise is not None and emprise.geom_type == "MultiPolygon"
    assert len(emprise.geoms) == 3
    geod = Geod(ellps="GRS80")
    area = sum(abs(geod.geometry_area_perimeter(g)[0]) for g in emprise.geoms)
    assert area == pytest.approx(3 * 200 * 200, rel=2e-3)  # conformal projections: scale error < 0.1 %


def test_overlapping_dalles_fall_back_to_a_general_union() -> None:
    polygons = shapely.polygons(np.array([
        [(0, 0), (200, 0), (200, 200), (0, 200)],
        [(100, 0), (300, 0), (300, 200), (100, 200)],
    ], dtype="float64"))
    merged = union_native(polygons, 1e-3)
    assert merged.area == pytest.approx(300 * 200)
    assert merged.is_valid


def test_edges_are_densified_before_reprojection() -> None:
    dalles = [tile(700000 + 200 * i, 6600000) for i in range(50)]  # a 10 km strip
    emprise = compute_emprise(dalles)
    assert emprise is not None
    # Every 200 m along the 10 km edges at least: the curved image of a straight edge is followed.
    assert shapely.get_num_coordinates(emprise) >= 2 * 50 + 2


def test_no_dalle_no_emprise() -> None:
    assert compute_emprise([]) is None


def test_the_same_dalle_twice_and_overlapping_tiles_union_exactly() -> None:
    grid = [tile(700000 + 200 * i, 6600000 + 200 * j) for i in range(3) for j in range(3)]
    again = [tile(700000, 6600000, path="copie/a.tif"), tile(700200, 6600200, path="relivraison/b.tif")]
    half_over = tile(700500, 6600100)  # half of it on the grid's east column
    expected = 9 * 200 * 200 + 100 * 200
    merged = native_union([*grid, *again, half_over])
    assert (merged.geom_type, merged.is_valid, merged.area) == ("Polygon", True, expected)
    emprise = compute_emprise([*grid, *again, half_over])
    assert emprise is not None and emprise.geom_type == "Polygon" and len(emprise.interiors) == 0
    assert native_area(emprise, L93) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("angle", [1e-5, 1e-3, 0.02])
def test_a_slightly_rotated_dalle_in_a_grid_unions_exactly(angle: float) -> None:
    grid = [tile(700000 + 200 * i, 6600000 + 200 * j) for i in range(3) for j in range(3) if (i, j) != (1, 1)]
    turned = rotated(700300, 6600300, angle)
    place = shapely.box(700200, 6600200, 700400, 6600400)
    inside = shapely.Polygon(np.round(turned.corners, 3)).intersection(place).area  # two polygons: no noding issue
    merged = native_union([*grid, turned])
    assert merged.geom_type == "Polygon" and merged.is_valid
    assert merged.area == pytest.approx(8 * 200 * 200 + inside, rel=1e-12)
    assert len(merged.interiors) == 4  # the slivers it leaves along each side stay holes
    emprise = compute_emprise([*grid, turned])
    assert emprise is not None and emprise.geom_type == "Polygon"
    assert native_area(emprise, L93) == pytest.approx(8 * 200 * 200 + inside, rel=1e-6)


def test_the_last_union_is_on_a_grid_of_the_valid_parts() -> None:
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])  # GEOS cannot union it in floating point
    square = shapely.box(5, 5, 20, 20)
    with pytest.raises(shapely.errors.GEOSException):
        shapely.union_all([bowtie, square])
    merged = general_union(np.array([bowtie, square]), 1e-3)
    assert (merged.is_valid, merged.area) == (True, 50 + 225 - 12.5)
