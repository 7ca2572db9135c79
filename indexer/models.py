"""Typed records passed between the stages of a scan. Output field names live in `export.py`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Reason = Literal["empty", "corrupt", "not_georeferenced", "unsupported", "unreadable"]
REASONS: tuple[Reason, ...] = ("empty", "corrupt", "not_georeferenced", "unsupported", "unreadable")

Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file seen in a storage listing.

    Args:
        path: path relative to the storage root, '/'-separated, no leading slash.
        size: bytes, when the listing shows it.
        mtime: modification time as the storage gives it (ISO 8601 when known).
        etag: entity tag, when the storage gives one.
    """

    path: str
    size: int | None = None
    mtime: str | None = None
    etag: str | None = None

    @property
    def name(self) -> str:
        """The file name, without folders."""
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class Dalle:
    """A valid dalle: what its header says, plus where it is.

    `corners` are the four corners (upper-left, upper-right, lower-right, lower-left) in the
    dalle's own CRS, given by `crs_wkt`; a rotated geotransform gives a rotated quadrilateral.
    """

    path: str
    size: int
    mime: str
    width: int
    height: int
    bands: tuple[str, ...]
    compression: str | None
    epsg: int | None
    crs_wkt: str
    corners: tuple[Point, Point, Point, Point]
    resolution_cm: float
    open: bool
    mtime: str | None = None
    etag: str | None = None

    @property
    def name(self) -> str:
        """The file name, without folders."""
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class DalleProblem:
    """A raster file that is not indexed, and why: data, never an exception."""

    path: str
    reason: Reason
    detail: str
    size: int | None = None
    mtime: str | None = None
    etag: str | None = None


@dataclass(slots=True)
class ScanResult:
    """Everything one scan of a livrable's storage produced."""

    source: str
    listed_files: int
    dalles: list[Dalle] = field(default_factory=list)
    problems: list[DalleProblem] = field(default_factory=list)
    reused: int = 0
    duration_s: float = 0.0

    @property
    def raster_files(self) -> int:
        """How many listed files looked like rasters."""
        return len(self.dalles) + len(self.problems)
