"""The emprise: union per CRS in native coordinates, holes kept, then WGS84."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from pyproj import CRS, Geod, Transformer

from indexer.emprise import compute_emprise, union_native
from indexer.models import Dalle, FileEntry

L93 = CRS.from_epsg(2154).to_wkt()
CC46 = CRS.from_epsg(3946).to_wkt()


def tile(x: float, y: float, side: float = 200.0, crs_wkt: str = L93, path: str | None = None) -> Dalle:
    """A dalle record whose lower-left corner is (x, y)."""
    corners = ((x, y + side), (x + side, y + side), (x + side, y), (x, y))
    return Dalle(file=FileEntry(path or f"{x}_{y}.tif", 1), mime="image/tiff", width=4000, height=4000,
                 bands=("Red(Byte)",), compression="JPEG", epsg=None, crs_wkt=crs_wkt, corners=corners,
                 resolution_cm=5.0, open=True)


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
    merged = union_native(polygons, 3)
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
