"""The emprise of a livrable: the union of its valid dalles' footprints, in WGS84.

Footprints are unioned in each dalle's own CRS, where grid tiles share exact edges (no slivers),
then each CRS group is densified, reprojected to WGS84 and the groups merged. Holes left by
missing dalles stay holes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from indexer.crs import is_geographic, to_wgs84
from indexer.models import Dalle

log = logging.getLogger(__name__)

DENSIFY_M = 200.0
"""Longest edge, in metres, kept straight before reprojection (a PCRS dalle's side)."""


def footprints(dalles: Iterable[Dalle]) -> np.ndarray:
    """Footprint polygons of dalles, in their own CRS."""
    corners = np.array([d.corners for d in dalles], dtype="float64").reshape(-1, 4, 2)
    polygons: np.ndarray = shapely.polygons(corners)
    return polygons


def union_native(polygons: np.ndarray, decimals: int) -> BaseGeometry:
    """Union of footprints in one CRS: coverage union when they do not overlap, else a general union.

    Corners are rounded to `decimals` first, so that tiles sharing an edge share it exactly
    (0.05 m × 4000 px lands on 700200.00000000001 in floating point).
    """
    coords = np.round(shapely.get_coordinates(polygons), decimals)
    polygons = shapely.set_coordinates(polygons.copy(), coords)
    polygons = polygons[shapely.area(polygons) > 0]
    total = float(shapely.area(polygons).sum())
    merged = shapely.coverage_union_all(polygons)
    if shapely.is_valid(merged) and abs(merged.area - total) <= 1e-9 * max(total, 1.0):
        return merged
    log.info("footprints overlap, using a general union", extra={"dalles": len(polygons)})
    return shapely.union_all(polygons)


def reproject(geometry: BaseGeometry, crs_wkt: str) -> BaseGeometry:
    """Densify a geometry's edges in its CRS, then transform it to WGS84 lon/lat."""
    if not is_geographic(crs_wkt):
        geometry = shapely.segmentize(geometry, DENSIFY_M)
    transformer = to_wgs84(crs_wkt)

    def project(coords: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geometry, project)


def compute_emprise(dalles: Iterable[Dalle]) -> BaseGeometry | None:
    """The emprise of dalles in WGS84: a Polygon or MultiPolygon, None when there is no dalle."""
    groups: dict[str, list[Dalle]] = defaultdict(list)
    for dalle in dalles:
        groups[dalle.crs_wkt].append(dalle)
    if not groups:
        return None
    parts = []
    for crs_wkt, group in sorted(groups.items()):
        decimals = 9 if is_geographic(crs_wkt) else 3
        parts.append(reproject(union_native(footprints(group), decimals), crs_wkt))
    emprise = parts[0] if len(parts) == 1 else shapely.union_all(parts)
    return shapely.normalize(emprise)
