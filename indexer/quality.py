"""Livrable quality control: the checks a PCRS controller makes, computed from the records alone.

From the valid dalles of a scan (footprints, CRS, headers) and its skipped files, `assess` finds:

- the grid of each CRS: the dominant dalle size in ground units, its origin (the corners modulo
  the size), how many dalles sit on it;
- holes: grid cells missing inside the outer boundary, that is empty cells enclosed by delivered
  cells (4-connected, never the outside of an irregular perimeter);
- duplicates: cells holding the centre of more than one dalle, with each `chemin`, identical
  (same size and header) or not;
- off-grid dalles (a corner farther than `tolerance` from the grid, by how much), dalles
  overlapping a neighbour without being a duplicate, rotated dalles;
- mixed parameters: every dalle whose CRS, resolution, size in pixels, bands, compression or
  format differs from the livrable's majority;
- names against coordinates: the convention of the dalles' names (corner coordinates in km or
  m, with or without a separator, lower-left or upper-left corner) and the dalles disagreeing;
- the skipped files by reason.

The grid, duplicates and holes are array operations (numpy, and GDAL's polygonize of the
grid's empty cells through rasterio); only the few suspect dalles (off the grid, rotated, of
another size) are compared with their neighbours (shapely's STRtree).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS
from rasterio import features

from indexer.crs import is_geographic
from indexer.emprise import corner_array, footprints, placement_problems
from indexer.models import Dalle, DalleProblem, Record, SkipReason

Bounds = tuple[float, float, float, float]
"""xmin, ymin, xmax, ymax in a CRS's units."""

PROJECTED_TOLERANCE = 1e-3
"""How far (in metres, or the CRS's unit) a corner may lie from the grid and still be on it."""
GEOGRAPHIC_TOLERANCE = 1e-8
"""The same, in degrees."""
MAX_GRID_CELLS = 16_000_000
"""Most cells of one CRS's grid (its extent, in dalles) searched for holes: 800 km by 800 km of 200 m dalles."""
MAX_LISTED_HOLES = 10_000
"""Most hole cells listed with their bounds; all are counted."""
MAX_NEIGHBOUR_CELLS = 1_000_000
"""Most cells around suspect dalles whose dalles are compared with them; beyond, every dalle is."""
NAME_SAMPLE = 500
"""Dalles whose names decide the naming convention (evenly spread); every name is then checked."""
MAX_NAME_NUMBER = 20
"""Longest number of a name (digits and decimals) read as a coordinate."""
NAME_UNITS = {"m": 1.0, "km": 1000.0}
PARAMETERS = ("crs", "resolution", "pixels", "bands", "compression", "format")
"""The parameters compared with the livrable's majority, in the order shown."""
FORMATS = {"image/tiff": "GeoTIFF", "image/jp2": "JPEG 2000", "image/ecw": "ECW", "image/x-mrsid": "MrSID"}
_COORDINATE_DECIMALS = 6
"""Coordinates, distances and areas are written rounded to this many decimals."""


def _r(value: float) -> float:
    return round(float(value), _COORDINATE_DECIMALS)


def _bounds(b: Bounds) -> list[float]:
    return [_r(v) for v in b]


@dataclass(frozen=True, slots=True)
class Grid:
    """The grid of the dalles of one CRS, and its holes."""

    crs: str
    dalles: int
    size: tuple[float, float]
    """Width and height of the dominant dalle, in the CRS's units."""
    origin: tuple[float, float]
    """Where the grid's lines cross nearest (0, 0): the dominant corners modulo the size."""
    on_grid: int
    """Dalles whose four corners lie on the grid (within the tolerance)."""
    holes: int | None
    """Empty cells enclosed by delivered cells; None when the grid spans more than `MAX_GRID_CELLS`."""
    hole_cells: tuple[Bounds, ...] = ()
    """The bounds of each hole cell (at most `MAX_LISTED_HOLES`), by x then y."""
    crs_wkt: str = field(default="", compare=False)
    """The CRS itself (not in `to_dict`)."""

    @property
    def hole_area(self) -> float:
        """The area of the holes, in the CRS's units squared."""
        return (self.holes or 0) * self.size[0] * self.size[1]

    def to_dict(self) -> dict[str, Any]:
        """The grid as `quality.json` writes it."""
        return {"crs": self.crs, "dalles": self.dalles, "size": [_r(v) for v in self.size],
                "origin": [_r(v) for v in self.origin], "on_grid": self.on_grid, "holes": self.holes,
                "hole_area": _r(self.hole_area), "hole_cells": [_bounds(b) for b in self.hole_cells]}


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A grid cell holding the centre of several dalles."""

    crs: str
    cell: Bounds
    chemins: tuple[str, ...]
    identical: bool
    """Same file size and same header (size in pixels, bands, compression, format, resolution, CRS, corners)."""
    differences: tuple[str, ...] = ()
    """What differs between the copies, when they are not identical."""

    def to_dict(self) -> dict[str, Any]:
        """The duplicate as `quality.json` writes it."""
        return {"crs": self.crs, "cell": _bounds(self.cell), "chemins": list(self.chemins),
                "identical": self.identical, "differences": list(self.differences)}


@dataclass(frozen=True, slots=True)
class OffGrid:
    """A dalle whose corners are not on its CRS's grid."""

    chemin: str
    crs: str
    offset: float
    """The largest distance of one of its corners' coordinates to the nearest grid line."""
    dx: float
    """Its lower-left corner minus that of the cell holding its centre, along x."""
    dy: float

    def to_dict(self) -> dict[str, Any]:
        """The dalle as `quality.json` writes it."""
        return {"chemin": self.chemin, "crs": self.crs, "offset": _r(self.offset), "dx": _r(self.dx),
                "dy": _r(self.dy)}


@dataclass(frozen=True, slots=True)
class Overlap:
    """Two dalles whose footprints overlap while they are no duplicates (not in the same cell)."""

    chemins: tuple[str, str]
    area: float
    """The area they share, in the CRS's units squared."""

    def to_dict(self) -> dict[str, Any]:
        """The pair as `quality.json` writes it."""
        return {"chemins": list(self.chemins), "area": _r(self.area)}


@dataclass(frozen=True, slots=True)
class Rotated:
    """A dalle whose edges are not along its CRS's axes."""

    chemin: str
    angle: float
    """Of its top edge, in degrees, counter-clockwise."""

    def to_dict(self) -> dict[str, Any]:
        """The dalle as `quality.json` writes it."""
        return {"chemin": self.chemin, "angle": _r(self.angle)}


@dataclass(frozen=True, slots=True)
class Outlier:
    """A dalle whose parameter differs from the livrable's majority."""

    chemin: str
    parameter: str
    value: str | None
    majority: str | None

    def to_dict(self) -> dict[str, Any]:
        """The outlier as `quality.json` writes it."""
        return {"chemin": self.chemin, "parameter": self.parameter, "value": self.value, "majority": self.majority}


@dataclass(frozen=True, slots=True)
class NameConvention:
    """How the livrable's dalle names carry their corner's coordinates."""

    unit: str
    """``km`` or ``m``."""
    corner: str
    """``lower-left`` or ``upper-left``."""
    separator: bool
    """Whether x and y are two numbers (``0651_6862``) rather than one run of digits (``06516862``)."""
    example: str
    """A name following it."""

    def to_dict(self) -> dict[str, Any]:
        """The convention as `quality.json` writes it."""
        return {"unit": self.unit, "corner": self.corner, "separator": self.separator, "example": self.example}


@dataclass(frozen=True, slots=True)
class NameMismatch:
    """A dalle whose name disagrees with its georeferencing under the livrable's convention."""

    chemin: str
    named: tuple[float, float] | None
    """The coordinates its name gives, in the CRS's units; None when its name carries none."""
    corner: tuple[float, float]
    """The coordinates of its corner (the convention's)."""

    def to_dict(self) -> dict[str, Any]:
        """The dalle as `quality.json` writes it."""
        return {"chemin": self.chemin, "named": None if self.named is None else [_r(v) for v in self.named],
                "corner": [_r(v) for v in self.corner]}


@dataclass(frozen=True, slots=True)
class Quality:
    """What the checks found in one livrable; `to_dict` is ``quality.json``, `verdict` its one line."""

    dalles: int
    grids: tuple[Grid, ...] = ()
    duplicates: tuple[Duplicate, ...] = ()
    off_grid: tuple[OffGrid, ...] = ()
    overlaps: tuple[Overlap, ...] = ()
    rotated: tuple[Rotated, ...] = ()
    majority: tuple[tuple[str, str | None], ...] = ()
    """(parameter, value) of the livrable's majority, in `PARAMETERS` order."""
    outliers: tuple[Outlier, ...] = ()
    convention: NameConvention | None = None
    """The naming convention found, None when no convention explains half the names."""
    names_agreeing: int = 0
    names_disagreeing: tuple[NameMismatch, ...] = ()
    skipped: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(reason, paths) of the skipped files, by reason."""

    @property
    def holes(self) -> int:
        """Hole cells, every grid's."""
        return sum(g.holes or 0 for g in self.grids)

    @property
    def outlier_dalles(self) -> int:
        """Dalles with at least one parameter off the majority."""
        return len({o.chemin for o in self.outliers})

    def counts(self) -> dict[str, int]:
        """How many of each finding."""
        return {"holes": self.holes, "duplicates": len(self.duplicates), "off_grid": len(self.off_grid),
                "overlaps": len(self.overlaps), "rotated": len(self.rotated), "outliers": self.outlier_dalles,
                "names": len(self.names_disagreeing), "skipped": sum(len(paths) for _, paths in self.skipped)}

    def verdict(self) -> str:
        """One line: ``12 holes, 3 duplicates, 0 off-grid, 1 outlier (resolution 10 cm)``, then what else was found."""
        counts = self.counts()
        parts = [_plural(counts["holes"], "hole"), _plural(counts["duplicates"], "duplicate"),
                 f"{counts['off_grid']} off-grid", _plural(counts["outliers"], "outlier")]
        if self.outliers:
            kinds = Counter((o.parameter, o.value) for o in self.outliers).most_common()
            shown = ", ".join(f"{parameter} {value}" for (parameter, value), _ in kinds[:3])
            parts[-1] += f" ({shown}{', …' if len(kinds) > 3 else ''})"
        extras = (("overlaps", "overlapping"), ("rotated", "rotated"), ("names", "misnamed"), ("skipped", "skipped"))
        parts += [f"{counts[key]} {label}" for key, label in extras if counts[key]]
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The document ``quality.json`` holds (the README's schema)."""
        return {
            "dalles": self.dalles,
            "verdict": self.verdict(),
            "counts": self.counts(),
            "grids": [g.to_dict() for g in self.grids],
            "duplicates": [d.to_dict() for d in self.duplicates],
            "off_grid": [o.to_dict() for o in self.off_grid],
            "overlaps": [o.to_dict() for o in self.overlaps],
            "rotated": [r.to_dict() for r in self.rotated],
            "majority": dict(self.majority),
            "outliers": [o.to_dict() for o in self.outliers],
            "names": {"convention": self.convention.to_dict() if self.convention else None,
                      "agreeing": self.names_agreeing,
                      "disagreeing": [m.to_dict() for m in self.names_disagreeing]},
            "skipped": {reason: list(paths) for reason, paths in self.skipped},
        }


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


# --------------------------------------------------------------------------------------------
# The grid of one CRS
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Group:
    """The dalles of one CRS, their corners and bounding boxes."""

    crs: str
    dalles: list[Dalle]
    corners: np.ndarray
    """(n, 4, 2): upper-left, upper-right, lower-right, lower-left."""
    tolerance: float

    @property
    def xmin(self) -> np.ndarray:
        """Left edge of each dalle's bounding box."""
        return np.asarray(self.corners[..., 0].min(axis=1))

    @property
    def xmax(self) -> np.ndarray:
        """Right edge."""
        return np.asarray(self.corners[..., 0].max(axis=1))

    @property
    def ymin(self) -> np.ndarray:
        """Bottom edge."""
        return np.asarray(self.corners[..., 1].min(axis=1))

    @property
    def ymax(self) -> np.ndarray:
        """Top edge."""
        return np.asarray(self.corners[..., 1].max(axis=1))


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal rows of a 2-column integer array: the order sorting them (by the first column, then the
    second), where each run of equal rows starts in that order, and its length."""
    order = np.lexsort((values[:, 1], values[:, 0]))
    ordered = values[order]
    change = np.concatenate([[True], (ordered[1:] != ordered[:-1]).any(axis=1)])
    starts = np.flatnonzero(change)
    return order, starts, np.diff(np.append(starts, len(values)))


def _mode_rows(values: np.ndarray) -> np.ndarray:
    """The most frequent row of a 2-column integer array (the smallest one among equals)."""
    order, starts, lengths = _runs(values)
    found: np.ndarray = values[order[starts[int(np.argmax(lengths))]]]
    return found


def _rotation(group: _Group) -> np.ndarray:
    """Whether each dalle's edges leave its CRS's axes by more than the tolerance."""
    c = group.corners
    skew = np.maximum.reduce([np.abs(c[:, 0, 1] - c[:, 1, 1]), np.abs(c[:, 3, 1] - c[:, 2, 1]),
                              np.abs(c[:, 0, 0] - c[:, 3, 0]), np.abs(c[:, 1, 0] - c[:, 2, 0])])
    rotated: np.ndarray = skew > group.tolerance
    return rotated


def _distance_to_lines(values: np.ndarray, origin: float, size: float) -> np.ndarray:
    steps = (values - origin) / size
    distance: np.ndarray = np.abs(steps - np.rint(steps)) * size
    return distance


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where one CRS's grid lies and where each of its dalles sits on it."""

    size: tuple[float, float]
    origin: tuple[float, float]
    rotated: np.ndarray
    offset: np.ndarray
    """Largest distance of a corner coordinate to the grid's lines."""
    cells: np.ndarray
    """(n, 2) integer cell of each dalle's centre."""
    dominant: np.ndarray
    """Whether each dalle has the dominant size."""


def _layout(group: _Group) -> _Layout:
    tol = group.tolerance
    xmin, xmax, ymin, ymax = group.xmin, group.xmax, group.ymin, group.ymax
    rotated = _rotation(group)
    straight = ~rotated if (~rotated).any() else np.ones_like(rotated)
    quantised = np.rint(np.column_stack([xmax - xmin, ymax - ymin]) / tol).astype(np.int64)
    sx, sy = (max(float(v), 1.0) * tol for v in _mode_rows(quantised[straight]))  # a dalle narrower: one step
    dominant = straight & (np.abs(quantised - np.array([round(sx / tol), round(sy / tol)])) <= 1).all(axis=1)
    periods = np.array([max(round(sx / tol), 1), max(round(sy / tol), 1)], dtype=np.int64)
    corners = np.rint(np.column_stack([np.mod(xmin, sx), np.mod(ymin, sy)]) / tol).astype(np.int64) % periods
    ox, oy = (float(v) * tol for v in _mode_rows(corners[dominant]))
    offset = np.maximum.reduce([_distance_to_lines(xmin, ox, sx), _distance_to_lines(xmax, ox, sx),
                                _distance_to_lines(ymin, oy, sy), _distance_to_lines(ymax, oy, sy)])
    centre = group.corners.mean(axis=1)
    cells = np.column_stack([np.ceil((centre[:, 0] - ox) / sx) - 1, np.ceil((centre[:, 1] - oy) / sy) - 1])
    return _Layout((sx, sy), (ox, oy), rotated, offset, cells.astype(np.int64), dominant)


def _cell_bounds(layout: _Layout, i: float, j: float) -> Bounds:
    (sx, sy), (ox, oy) = layout.size, layout.origin
    return ox + i * sx, oy + j * sy, ox + (i + 1) * sx, oy + (j + 1) * sy


def _holes(group: _Group, layout: _Layout) -> tuple[int | None, tuple[Bounds, ...]]:
    """The empty cells of the grid enclosed by covered ones, counted and listed.

    A cell is covered when its centre lies in a dalle's bounding box (half-open). The covered
    cells are rasterised over the grid's extent (a summed difference array: any dalle size),
    then GDAL polygonises the empty cells, 4-connected, on a frame of empty cells: the region
    reaching the frame is the outside, every other empty cell is a hole.
    """
    (sx, sy), (ox, oy) = layout.size, layout.origin
    i0 = np.ceil((group.xmin - ox) / sx - 0.5).astype(np.int64)
    i1 = np.ceil((group.xmax - ox) / sx - 0.5).astype(np.int64)
    j0 = np.ceil((group.ymin - oy) / sy - 0.5).astype(np.int64)
    j1 = np.ceil((group.ymax - oy) / sy - 0.5).astype(np.int64)
    some = (i1 > i0) & (j1 > j0)
    if not some.any():
        return 0, ()
    i0, i1, j0, j1 = i0[some], i1[some], j0[some], j1[some]
    base_i, base_j = int(i0.min()), int(j0.min())
    nx, ny = int(i1.max()) - base_i, int(j1.max()) - base_j
    if nx * ny > MAX_GRID_CELLS:
        return None, ()
    diff = np.zeros((ny + 1, nx + 1), dtype=np.int32)
    i0, i1, j0, j1 = i0 - base_i, i1 - base_i, j0 - base_j, j1 - base_j
    np.add.at(diff, (j0, i0), 1)
    np.add.at(diff, (j0, i1), -1)
    np.add.at(diff, (j1, i0), -1)
    np.add.at(diff, (j1, i1), 1)
    covered = diff.cumsum(axis=0).cumsum(axis=1)[:ny, :nx] > 0
    empty = np.ones((ny + 2, nx + 2), dtype=np.uint8)
    empty[1:-1, 1:-1] = ~covered
    outside = [geometry for geometry, _ in features.shapes(empty, mask=empty.astype(bool), connectivity=4,
                                                              transform=Affine.identity())
               if min(x for x, _ in geometry["coordinates"][0]) == 0]
    reached = features.rasterize([(g, 1) for g in outside], out_shape=empty.shape, fill=0, dtype="uint8",
                                 transform=Affine.identity())
    holes = (empty[1:-1, 1:-1] == 1) & (reached[1:-1, 1:-1] == 0)
    jj, ii = np.nonzero(holes)
    order = np.lexsort((jj, ii))[:MAX_LISTED_HOLES]
    listed = tuple(_cell_bounds(layout, base_i + float(i), base_j + float(j)) for i, j in zip(ii[order], jj[order],
                                                                                              strict=True))
    return int(holes.sum()), listed


def _header(dalle: Dalle) -> dict[str, object]:
    return {"size": dalle.size, "pixels": (dalle.width, dalle.height), "bands": dalle.bands,
            "compression": dalle.compression, "format": dalle.mime, "resolution": dalle.resolution_cm,
            "crs": dalle.crs_wkt, "corners": tuple(np.round(np.array(dalle.corners), 3).ravel().tolist())}


def _duplicates(group: _Group, layout: _Layout) -> list[Duplicate]:
    """Cells holding the centre of several dalles, with their dalles in path order."""
    order, starts, lengths = _runs(layout.cells)
    found: list[Duplicate] = []
    for start, length in zip(starts[lengths > 1].tolist(), lengths[lengths > 1].tolist(), strict=True):
        members = [group.dalles[k] for k in sorted(order[start:start + length].tolist())]
        headers = [_header(d) for d in members]
        differences = tuple(key for key in headers[0] if any(h[key] != headers[0][key] for h in headers[1:]))
        i, j = layout.cells[order[start]].tolist()
        found.append(Duplicate(group.crs, _cell_bounds(layout, i, j), tuple(d.path for d in members),
                               not differences, differences))
    return found


def _neighbourhood(layout: _Layout, group: _Group, suspects: np.ndarray) -> np.ndarray:
    """The dalles a suspect may overlap: those whose cell is within its reach (its size in cells, and
    one more), the suspects included; every dalle when that would cost more than `MAX_NEIGHBOUR_CELLS`."""
    k = np.flatnonzero(suspects)
    (sx, sy) = layout.size
    reach = np.column_stack([np.ceil((group.xmax[k] - group.xmin[k]) / sx),
                             np.ceil((group.ymax[k] - group.ymin[k]) / sy)]).astype(np.int64) + 1
    if int(((2 * reach[:, 0] + 1) * (2 * reach[:, 1] + 1)).sum()) > MAX_NEIGHBOUR_CELLS:
        return np.ones(len(suspects), dtype=bool)
    keys = []
    order, starts, lengths = _runs(reach)
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        rx, ry = reach[order[start]].tolist()
        offsets = np.stack(np.meshgrid(np.arange(-rx, rx + 1), np.arange(-ry, ry + 1)), axis=-1).reshape(-1, 2)
        cells = layout.cells[k[order[start:start + length]]]
        keys.append((cells[:, None, :] + offsets[None, :, :]).reshape(-1, 2))
    near = np.concatenate(keys)
    # A cell as one number, exactly (cells are integers far below 2**53), for a vectorised lookup.
    found: np.ndarray = np.isin(layout.cells[:, 0] + 1j * layout.cells[:, 1], near[:, 0] + 1j * near[:, 1]) | suspects
    return found


def _overlaps(group: _Group, layout: _Layout, suspects: np.ndarray) -> list[Overlap]:
    """Pairs of dalles in different cells sharing more than a sliver, one of them suspect (off the grid,
    rotated or of another size): dalles of the dominant size on the grid overlap nothing else."""
    if not suspects.any():
        return []
    involved = np.flatnonzero(_neighbourhood(layout, group, suspects))
    polygons = footprints(group.corners[involved], 9 if group.tolerance < PROJECTED_TOLERANCE else 3)
    candidates = np.flatnonzero(suspects[involved])
    pairs = shapely.STRtree(polygons).query(polygons[candidates], predicate="intersects")
    a, b = candidates[pairs[0]], pairs[1]
    keep = (layout.cells[involved[a]] != layout.cells[involved[b]]).any(axis=1)
    first, second = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    unique = np.unique(np.column_stack([first, second]), axis=0) if len(first) else np.empty((0, 2), np.int64)
    if not len(unique):
        return []
    areas = shapely.area(shapely.intersection(polygons[unique[:, 0]], polygons[unique[:, 1]]))
    sliver = group.tolerance * max(layout.size)
    return [Overlap((group.dalles[involved[i]].path, group.dalles[involved[j]].path), float(area))
            for (i, j), area in zip(unique.tolist(), areas.tolist(), strict=True) if area > sliver]


@dataclass(frozen=True, slots=True)
class _GroupFindings:
    grid: Grid
    duplicates: list[Duplicate]
    off_grid: list[OffGrid]
    overlaps: list[Overlap]
    rotated: list[Rotated]


def _assess_group(group: _Group) -> _GroupFindings:
    layout = _layout(group)
    off = ~layout.rotated & (layout.offset > group.tolerance)
    holes, cells = _holes(group, layout)
    grid = Grid(group.crs, len(group.dalles), layout.size, layout.origin,
                int((~layout.rotated & ~off).sum()), holes, cells, group.dalles[0].crs_wkt)
    duplicates = _duplicates(group, layout)
    (sx, sy), (ox, oy) = layout.size, layout.origin
    dx = group.xmin - (ox + layout.cells[:, 0] * sx)
    dy = group.ymin - (oy + layout.cells[:, 1] * sy)
    off_grid = [OffGrid(group.dalles[k].path, group.crs, float(layout.offset[k]), float(dx[k]), float(dy[k]))
                for k in np.flatnonzero(off)]
    c = group.corners
    angles = np.degrees(np.arctan2(c[:, 1, 1] - c[:, 0, 1], c[:, 1, 0] - c[:, 0, 0]))
    rotated = [Rotated(group.dalles[k].path, float(angles[k])) for k in np.flatnonzero(layout.rotated)]
    overlaps = _overlaps(group, layout, layout.rotated | off | ~layout.dominant)
    return _GroupFindings(grid, duplicates, off_grid, overlaps, rotated)


# --------------------------------------------------------------------------------------------
# Parameters against the majority
# --------------------------------------------------------------------------------------------


def crs_name(epsg: int | None, crs_wkt: str) -> str:
    """A CRS as the checks name it: ``EPSG:2154``, else its name."""
    if epsg:
        return f"EPSG:{epsg}"
    try:
        return str(CRS.from_wkt(crs_wkt).name)
    except Exception:  # a WKT PROJ cannot read still names a group
        return crs_wkt[:60]


def _shown(combination: tuple[Any, ...]) -> tuple[str | None, ...]:
    """The `PARAMETERS` values of one combination (see `_combinations`)."""
    epsg, crs_wkt, resolution, width, height, bands, compression, mime = combination
    return (crs_name(epsg, crs_wkt), f"{resolution:g} cm", f"{width}x{height}", "/".join(bands), compression,
            FORMATS.get(mime, mime))


def _combinations(dalles: Sequence[Dalle]) -> tuple[list[tuple[Any, ...]], np.ndarray]:
    """The distinct combinations of (EPSG code, CRS, resolution, width, height, bands, compression, mime)
    and the number of each dalle's: a livrable has a handful, spelled once each rather than per dalle."""
    combinations: dict[tuple[Any, ...], int] = {}
    ids = np.array([combinations.setdefault((d.epsg, d.crs_wkt, d.resolution_cm, d.width, d.height, d.bands,
                                             d.compression, d.mime), len(combinations)) for d in dalles],
                   dtype=np.int64)
    return list(combinations), ids


def _outliers(dalles: Sequence[Dalle], shown: list[tuple[str | None, ...]], ids: np.ndarray
              ) -> tuple[tuple[tuple[str, str | None], ...], list[Outlier]]:
    """The majority value of each parameter, and every dalle's parameter off it."""
    if not dalles:
        return (), []
    sizes = np.bincount(ids, minlength=len(shown))
    majority: list[tuple[str, str | None]] = []
    outliers: list[Outlier] = []
    for p, parameter in enumerate(PARAMETERS):
        counts: Counter[str | None] = Counter()
        for c, values in enumerate(shown):
            counts[values[p]] += int(sizes[c])
        common = counts.most_common(1)[0][0]
        majority.append((parameter, common))
        off = [c for c, values in enumerate(shown) if values[p] != common]
        if off:
            outliers += [Outlier(dalles[k].path, parameter, shown[ids[k]][p], common)
                         for k in np.flatnonzero(np.isin(ids, off)).tolist()]
    outliers.sort(key=lambda o: (o.chemin, PARAMETERS.index(o.parameter)))
    return tuple(majority), outliers


# --------------------------------------------------------------------------------------------
# Names against coordinates
# --------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+(?:\.\d+)?")

_Candidate = tuple[str, int, int, str, str]
"""(``pair`` or ``joined``, token index, split position, unit, corner)."""


def _tokens(name: str) -> list[str]:
    """The numbers of a file name without its extension."""
    return _NUMBER.findall(name.rsplit(".", 1)[0])


def _named(tokens: list[str], kind: str, index: int, split: int) -> tuple[str, str] | None:
    """The x and y texts a name gives under a layout, None when it has none."""
    if kind == "pair":
        return (tokens[index], tokens[index + 1]) if index + 1 < len(tokens) else None
    if index < len(tokens) and "." not in tokens[index] and 0 < split < len(tokens[index]):
        return tokens[index][:split], tokens[index][split:]
    return None


def _value(text: str, unit: float) -> tuple[float, float]:
    """The coordinate a number of a name stands for, and the step of its last digit."""
    digits, _, decimals = text.partition(".")
    step = unit / 10 ** len(decimals)
    return int(digits + decimals) * step, step


def _agrees(text: str, coordinate: float, unit: float, tolerance: float) -> bool:
    """Whether a name's number is the coordinate, truncated to its last digit."""
    value, step = _value(text, unit)
    return value - tolerance <= coordinate < value + step - tolerance


def _layouts(tokens: list[str]) -> Iterable[tuple[str, int, int]]:
    """Where a name's coordinates could be: two numbers in a row, or one run of digits cut in two.

    Numbers longer than `MAX_NAME_NUMBER` characters are no coordinates.
    """
    short = [len(token) <= MAX_NAME_NUMBER for token in tokens]
    for index in range(len(tokens) - 1):
        if short[index] and short[index + 1]:
            yield "pair", index, 0
    for index, token in enumerate(tokens):
        if short[index] and "." not in token:
            for split in range(3, len(token) - 2):
                yield "joined", index, split


def _convention(dalles: Sequence[Dalle], corner: dict[str, tuple[np.ndarray, np.ndarray]],
                tolerance: float) -> tuple[_Candidate, str] | None:
    """The layout, unit and corner agreeing with most sampled names, if with half of them."""
    sample = np.unique(np.linspace(0, len(dalles) - 1, min(NAME_SAMPLE, len(dalles))).astype(np.int64))
    votes: Counter[_Candidate] = Counter()
    examples: dict[_Candidate, str] = {}
    for k in sample.tolist():
        tokens = _tokens(dalles[k].name)
        for kind, index, split in _layouts(tokens):
            named = _named(tokens, kind, index, split)
            if named is None:
                continue
            for unit_name, unit in NAME_UNITS.items():
                for corner_name, (xs, ys) in corner.items():
                    if _agrees(named[0], float(xs[k]), unit, tolerance) and \
                            _agrees(named[1], float(ys[k]), unit, tolerance):
                        key = (kind, index, split, unit_name, corner_name)
                        votes[key] += 1
                        examples.setdefault(key, dalles[k].name)
    if not votes:
        return None
    best, count = max(votes.items(), key=lambda item: (item[1], item[0][0] == "pair", item[0][3] == "km",
                                                       item[0][4] == "lower-left"))
    return (best, examples[best]) if 2 * count >= len(sample) else None


def _named_texts(stems: list[str], kind: str, index: int, split: int) -> list[tuple[str, str]]:
    """The x and y texts of every name under a layout, ``("", "")`` where it has none.

    One regular expression over all the names, one per line: it skips `index` numbers (each
    taken whole, as `_tokens` takes them: atomic groups), then takes two numbers, or one run of
    digits cut after `split` of them.
    """
    number = r"(?>\d+(?:\.\d+)?)"
    skip = rf"(?:[^\d\n]*{number}){{{index}}}[^\d\n]*"
    wanted = rf"({number})[^\d\n]+({number})" if kind == "pair" else rf"(\d{{{split}}})(?>(\d+))(?!\.\d)"
    text = "\n".join(stems)
    if text.count("\n") != len(stems) - 1:  # a name holding a line break
        text = "\n".join(stem.replace("\n", " ") for stem in stems)
    found: list[tuple[str, str]] = re.findall(rf"^{skip}{wanted}|^", text, flags=re.MULTILINE)
    return found


def _numbers(texts: Sequence[str], unit: float) -> tuple[np.ndarray, np.ndarray]:
    """The coordinates numbers of names stand for (NaN for none), and the step of their last digit."""
    array = np.array(texts, dtype=str)
    present = array != ""
    values = np.where(present, array, "nan").astype(np.float64) * unit
    dot = np.strings.find(array, ".")
    decimals = np.where(dot >= 0, np.strings.str_len(array) - dot - 1, 0)
    return values, unit / 10.0 ** decimals


def _names(dalles: Sequence[Dalle], corners: np.ndarray, tolerance: float
           ) -> tuple[NameConvention | None, int, list[NameMismatch]]:
    if not dalles:
        return None, 0, []
    corner = {"lower-left": (corners[:, 3, 0], corners[:, 3, 1]), "upper-left": (corners[:, 0, 0], corners[:, 0, 1])}
    found = _convention(dalles, corner, tolerance)
    if found is None:
        return None, 0, []
    (kind, index, split, unit_name, corner_name), example = found
    unit = NAME_UNITS[unit_name]
    xs, ys = corner[corner_name]
    texts = _named_texts([d.file.path.rsplit("/", 1)[-1].rsplit(".", 1)[0] for d in dalles], kind, index, split)
    (nx, stepx), (ny, stepy) = _numbers([t[0] for t in texts], unit), _numbers([t[1] for t in texts], unit)
    with np.errstate(invalid="ignore"):
        agree = (nx - tolerance <= xs) & (xs < nx + stepx - tolerance) & \
                (ny - tolerance <= ys) & (ys < ny + stepy - tolerance)
    mismatches = [NameMismatch(dalles[k].path, None if np.isnan(nx[k]) or np.isnan(ny[k]) else
                               (float(nx[k]), float(ny[k])), (float(xs[k]), float(ys[k])))
                  for k in np.flatnonzero(~agree).tolist()]
    return NameConvention(unit_name, corner_name, kind == "pair", example), int(agree.sum()), mismatches


# --------------------------------------------------------------------------------------------
# The whole livrable
# --------------------------------------------------------------------------------------------


def _tolerance(crs_wkt: str) -> float:
    try:
        return GEOGRAPHIC_TOLERANCE if is_geographic(crs_wkt) else PROJECTED_TOLERANCE
    except Exception:  # a CRS PROJ cannot read: its dalles were not placed anyway
        return PROJECTED_TOLERANCE


def assess(records: Iterable[Record], placed: bool = False) -> Quality:
    """Check a livrable from its records: the valid dalles and the skipped files of its last scan.

    A dalle that cannot be placed (`placement_problems`) counts as a skipped ``not_georeferenced``
    file; `placed` says the caller checked that already. Costs a few array passes over the
    dalles, and a Python step per dalle only to read its fields and its name.
    """
    dalles: list[Dalle] = []
    skipped: dict[str, list[str]] = defaultdict(list)
    for record in records:
        if isinstance(record, Dalle):
            dalles.append(record)
        elif isinstance(record, DalleProblem):
            skipped[record.reason].append(record.path)
    dalles.sort(key=attrgetter("file.path"))
    corners = corner_array(dalles)
    unplaced = {} if placed else placement_problems(dalles, corners)
    if unplaced:
        skipped[SkipReason.NOT_GEOREFERENCED] += [dalles[k].path for k in unplaced]
        keep = np.array([k not in unplaced for k in range(len(dalles))], dtype=bool)
        dalles = [d for d, kept in zip(dalles, keep.tolist(), strict=True) if kept]
        corners = corners[keep]
    combinations, ids = _combinations(dalles)
    shown = [_shown(c) for c in combinations]
    crs_of = np.array([values[0] for values in shown], dtype=object)[ids] if dalles else np.array([], dtype=object)
    groups = []
    for crs in set(crs_of.tolist()):
        ks = np.flatnonzero(crs_of == crs)
        tolerance = _tolerance(dalles[int(ks[0])].crs_wkt)
        groups.append(_Group(str(crs), [dalles[k] for k in ks.tolist()], corners[ks], tolerance))
    findings = [_assess_group(g) for g in sorted(groups, key=lambda g: (-len(g.dalles), g.crs))]
    majority, outliers = _outliers(dalles, shown, ids)
    tolerance = _tolerance(dalles[0].crs_wkt) if dalles else PROJECTED_TOLERANCE
    convention, agreeing, mismatches = _names(dalles, corners, tolerance)
    return Quality(
        dalles=len(dalles),
        grids=tuple(f.grid for f in findings),
        duplicates=tuple(sorted((d for f in findings for d in f.duplicates), key=lambda d: d.chemins)),
        off_grid=tuple(sorted((o for f in findings for o in f.off_grid), key=lambda o: o.chemin)),
        overlaps=tuple(sorted((o for f in findings for o in f.overlaps), key=lambda o: o.chemins)),
        rotated=tuple(sorted((r for f in findings for r in f.rotated), key=lambda r: r.chemin)),
        majority=majority,
        outliers=tuple(outliers),
        convention=convention,
        names_agreeing=agreeing,
        names_disagreeing=tuple(mismatches),
        skipped=tuple((reason, tuple(sorted(paths))) for reason, paths in sorted(skipped.items())),
    )
