"""The emprise of a livrable: the union of its valid dalles' footprints, in WGS84; and where a
footprint may lie at all.

A footprint is placed only when its CRS has a transformation to WGS84 and its four corners are
finite, enclose an area and lie within its CRS's area of use widened by `MARGIN_DEG`
(`placement_problems`): a dalle failing that is `not_georeferenced`, whatever its header says,
so that no number of a file reaches shapely or PROJ unchecked.

Footprints are unioned in each dalle's own CRS, where grid tiles share exact edges (no slivers),
then each CRS group is densified, reprojected to WGS84 and the groups merged. Holes left by
missing dalles stay holes.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError, ProjError
from shapely.errors import GEOSException
from shapely.geometry.base import BaseGeometry

from indexer.crs import WGS84, is_geographic, to_wgs84
from indexer.models import Dalle, DalleProblem, Record, SkipReason

log = logging.getLogger(__name__)

DENSIFY_M = 200.0
"""Longest edge, in metres, kept straight before reprojection (a PCRS dalle's side)."""
MAX_EDGE_POINTS = 10_000
"""Most points an edge of the emprise is densified into, however long it is."""
MARGIN_DEG = 1.0
"""How far outside its CRS's area of use, in degrees of longitude and latitude, a footprint may lie."""
LARGEST_COORDINATE_M = 4e7
"""Bound of a projected coordinate, in metres (the Earth's circumference), where the area of use gives none."""


@dataclass(frozen=True, slots=True)
class Frame:
    """Where the footprints of one CRS may lie: its area of use, widened, in its own coordinates."""

    bounds: tuple[float, float, float, float]
    """xmin, ymin, xmax, ymax."""
    label: str
    """The CRS as a detail names it."""
    area: str
    """The area of use in degrees, as a detail gives it."""


def crs_label(crs: CRS) -> str:
    """A CRS named for a user: its name, and its EPSG code when it has one."""
    code = crs.to_epsg(min_confidence=100)
    return f'"{crs.name}"' + (f" (EPSG:{code})" if code else "")


def _by_code(crs: CRS | None) -> CRS | None:
    code = crs.to_epsg(min_confidence=70) if crs is not None else None
    return CRS.from_epsg(code) if code else None


def area_of_use(crs: CRS) -> tuple[float, float, float, float]:
    """West, south, east and north bounds, in degrees, of where a CRS is used.

    A file's WKT seldom carries them: they come from its EPSG definition, else from that of its
    geodetic CRS (the datum's area, for a user-defined projection), else the whole world.
    """
    candidates: list[Callable[[], CRS | None]] = [
        lambda: crs, lambda: _by_code(crs), lambda: crs.geodetic_crs, lambda: _by_code(crs.geodetic_crs)]
    for candidate in candidates:
        try:
            found = candidate()
        except CRSError:
            continue
        if found is not None and found.area_of_use is not None:
            west, south, east, north = found.area_of_use.bounds
            return west, south, east, north
    return -180.0, -90.0, 180.0, 90.0


@lru_cache(maxsize=64)
def frame(crs_wkt: str) -> Frame | str:
    """The frame of a CRS, or why no footprint in it can be placed in WGS84 (one sentence)."""
    try:
        crs = CRS.from_wkt(crs_wkt)
    except CRSError:
        return f"its CRS cannot be read by PROJ ({crs_wkt[:60]}…)"
    label = crs_label(crs)
    try:
        forward = to_wgs84(crs_wkt)
        backward = Transformer.from_crs(WGS84, crs, always_xy=True)
    except ProjError:
        return f"its CRS {label} ({crs.type_name}) has no transformation to WGS84"
    west, south, east, north = area_of_use(crs)
    if west > east:  # across the antimeridian
        west, east = -180.0, 180.0
    area = f"{west:g}° to {east:g}° E, {south:g}° to {north:g}° N"
    west, south = max(west - MARGIN_DEG, -180.0), max(south - MARGIN_DEG, -90.0)
    east, north = min(east + MARGIN_DEG, 180.0), min(north + MARGIN_DEG, 90.0)
    if crs.is_geographic:
        cap = 360.0
    else:
        factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        cap = LARGEST_COORDINATE_M / (factor or 1.0)
    try:
        found = backward.transform_bounds(west, south, east, north, densify_pts=21, errcheck=True)
    except ProjError:
        found = (-cap, -cap, cap, cap)
    xmin, ymin, xmax, ymax = (max(min(v, cap), -cap) if np.isfinite(v) else s * cap
                              for v, s in zip(found, (-1, -1, 1, 1), strict=True))
    centre = forward.transform((xmin + xmax) / 2, (ymin + ymax) / 2)
    if not (xmin < xmax and ymin < ymax and np.isfinite(centre).all()):
        return f"its CRS {label} has no usable transformation to WGS84"
    return Frame((float(xmin), float(ymin), float(xmax), float(ymax)), label, area)


def corner_array(dalles: Sequence[Dalle]) -> np.ndarray:
    """The four corners of each dalle, in its own CRS: an array of shape (n, 4, 2)."""
    flat = itertools.chain.from_iterable(itertools.chain.from_iterable(d.corners for d in dalles))
    return np.fromiter(flat, dtype="float64", count=8 * len(dalles)).reshape(-1, 4, 2)


def _convex(corners: np.ndarray) -> np.ndarray:
    """Whether each quadrilateral turns the same way at its four corners: a convex one, with an area."""
    edges = np.roll(corners, -1, axis=1) - corners
    nxt = np.roll(edges, -1, axis=1)
    turns = edges[..., 0] * nxt[..., 1] - edges[..., 1] * nxt[..., 0]
    result: np.ndarray = (turns > 0).all(axis=1) | (turns < 0).all(axis=1)
    return result


def placement_problems(dalles: Sequence[Dalle], corners: np.ndarray | None = None) -> dict[int, str]:
    """Why each dalle that cannot be placed in WGS84 cannot, by its index in `dalles`.

    Costs no coordinate transformation per dalle: a CRS is checked once (`frame`), corners are
    compared with its widened area of use in its own coordinates.
    """
    if corners is None:
        corners = corner_array(dalles)
    groups: dict[str, list[int]] = defaultdict(list)
    for index, dalle in enumerate(dalles):
        groups[dalle.crs_wkt].append(index)
    problems: dict[int, str] = {}
    for crs_wkt, indices in groups.items():
        where = frame(crs_wkt)
        if isinstance(where, str):
            problems.update(dict.fromkeys(indices, where))
            continue
        c = corners[indices]
        xmin, ymin, xmax, ymax = where.bounds
        resolution = np.array([dalles[i].resolution_cm for i in indices], dtype="float64")
        with np.errstate(invalid="ignore", over="ignore"):
            finite: np.ndarray = np.isfinite(c).all(axis=(1, 2)) & np.isfinite(resolution) & (resolution > 0)
            x, y = c[..., 0], c[..., 1]
            inside = np.asarray(((x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)).all(axis=1))
            placed = finite & inside & _convex(c)
        for k in np.flatnonzero(~placed):
            if not finite[k]:
                problems[indices[k]] = "its georeferencing is not finite (NaN or infinite numbers)"
            elif not inside[k]:
                problems[indices[k]] = (f"its footprint lies more than {MARGIN_DEG:g}° outside the area of use of "
                                        f"its CRS {where.label}: {where.area}")
            else:
                problems[indices[k]] = "its four corners enclose no area"
    return problems


def check_footprints(results: Sequence[Record]) -> list[Record]:
    """The records given, each dalle that cannot be placed in WGS84 replaced by its `not_georeferenced` problem."""
    indexed = [(i, r) for i, r in enumerate(results) if isinstance(r, Dalle)]
    problems = placement_problems([d for _, d in indexed])
    checked = list(results)
    for k, detail in problems.items():
        index, dalle = indexed[k]
        checked[index] = DalleProblem(dalle.file, SkipReason.NOT_GEOREFERENCED, detail)
    return checked


def union_native(polygons: np.ndarray, grid_size: float) -> BaseGeometry:
    """Union of valid footprints in one CRS, by the first of three ways that succeeds.

    A coverage union, fast, for tiles that only share edges; a general union where footprints
    overlap (the same dalle in two folders, a re-delivered tile); and a union snapped to a grid of
    `grid_size`, robust by construction, where edges cross at points floating point cannot
    represent (a slightly rotated dalle among its neighbours).
    """
    polygons = polygons[shapely.area(polygons) > 0]
    total = float(shapely.area(polygons).sum())
    try:
        merged = shapely.coverage_union_all(polygons)
        if shapely.is_valid(merged) and abs(merged.area - total) <= 1e-9 * max(total, 1.0):
            return merged
        cause = "footprints overlap"
    except GEOSException as exc:
        cause = str(exc)
    log.info("no coverage union, using a general union", extra={"dalles": len(polygons), "cause": cause})
    return general_union(polygons, grid_size)


def general_union(geometries: np.ndarray, grid_size: float) -> BaseGeometry:
    """Union of polygons; on a grid of `grid_size`, of their valid parts, when GEOS fails in floating point."""
    try:
        merged = shapely.union_all(geometries)
        if shapely.is_valid(merged):
            return merged
        cause = "invalid result"
    except GEOSException as exc:
        cause = str(exc)
    log.info("general union failed, using a union on a grid", extra={"grid_size": grid_size, "cause": cause})
    valid = shapely.make_valid(geometries, method="structure", keep_collapsed=False)
    return shapely.union_all(valid, grid_size=grid_size)


def footprints(corners: np.ndarray, decimals: int) -> np.ndarray:
    """Footprint polygons from corners of shape (n, 4, 2), rounded to `decimals`.

    Rounded so that tiles sharing an edge share it exactly (0.05 m × 4000 px lands on
    700200.00000000001 in floating point).
    """
    closed = np.round(np.concatenate([corners, corners[:, :1]], axis=1), decimals)
    rings = shapely.linearrings(closed.reshape(-1, 2), indices=np.repeat(np.arange(len(corners)), 5))
    polygons: np.ndarray = shapely.polygons(rings)
    return polygons


def reproject(geometry: BaseGeometry, crs_wkt: str) -> BaseGeometry:
    """Densify a geometry's edges in its CRS, then transform it to WGS84 lon/lat.

    Edges are cut every `DENSIFY_M`, or in at most `MAX_EDGE_POINTS` pieces for a geometry wider
    than that allows.
    """
    if not is_geographic(crs_wkt):
        xmin, ymin, xmax, ymax = geometry.bounds
        geometry = shapely.segmentize(geometry, max(DENSIFY_M, max(xmax - xmin, ymax - ymin) / MAX_EDGE_POINTS))
    transformer = to_wgs84(crs_wkt)

    def project(coords: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geometry, project)


def compute_emprise(dalles: Iterable[Dalle]) -> BaseGeometry | None:
    """The emprise of dalles in WGS84: a Polygon or MultiPolygon, None when no dalle can be placed.

    Dalles that cannot be placed (`placement_problems`) are left out, never an error.
    """
    dalles = list(dalles)
    corners = corner_array(dalles)
    unplaced = placement_problems(dalles, corners)
    if unplaced:
        log.warning("dalles left out of the emprise: they cannot be placed in WGS84", extra={"dalles": len(unplaced)})
    groups: dict[str, list[int]] = defaultdict(list)
    for index, dalle in enumerate(dalles):
        if index not in unplaced:
            groups[dalle.crs_wkt].append(index)
    parts = []
    for crs_wkt, indices in sorted(groups.items()):
        decimals = 9 if is_geographic(crs_wkt) else 3
        part = reproject(union_native(footprints(corners[indices], decimals), 10.0**-decimals), crs_wkt)
        if not np.isfinite(shapely.get_coordinates(part)).all():
            log.warning("a CRS group left out of the emprise: its reprojection is not finite",
                        extra={"dalles": len(indices)})
            continue
        parts.append(part if part.is_valid else shapely.make_valid(part))
    if not parts:
        return None
    emprise = parts[0] if len(parts) == 1 else general_union(np.array(parts, dtype=object), 1e-9)
    return shapely.normalize(emprise)
