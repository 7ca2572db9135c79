"""The records passed between the rooms of a scan, and the closed sets they use.

A record holds the record it is made from: a `Dalle` and a `DalleProblem` hold the `FileEntry`
the listing (completed by the first read) gave, instead of copying its fields. GeoJSON property
names live in `indexer.geojson`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class SkipReason(StrEnum):
    """Why a raster file is not indexed."""

    EMPTY = "empty"
    CORRUPT = "corrupt"
    NOT_GEOREFERENCED = "not_georeferenced"
    UNSUPPORTED = "unsupported"
    UNREADABLE = "unreadable"


class ScanStatus(StrEnum):
    """Where a scan is in its life; `ACTIVE_SCANS` have not ended."""

    QUEUED = "queued"
    RUNNING = "running"
    AGGREGATING = "aggregating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


ACTIVE_SCANS = (ScanStatus.QUEUED, ScanStatus.RUNNING, ScanStatus.AGGREGATING)
"""Statuses of a scan not yet ended; a storage has at most one such scan."""


class StorageStatus(StrEnum):
    """A storage's status: that of its latest scan, ``ok`` once one succeeded."""

    NEW = "new"
    QUEUED = "queued"
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"


class ScanStep(StrEnum):
    """The step a scan is at."""

    LISTING = "listing"
    READING = "reading"
    AGGREGATING = "aggregating"
    DONE = "done"


class FileRole(StrEnum):
    """What a scan does with a listed file it keeps."""

    READ = "read"
    REUSED = "reused"
    SIDECAR = "sidecar"


class Trigger(StrEnum):
    """What queued a scan of the distributed service."""

    PUBLISH = "publish"
    REQUEUE = "requeue"
    SCHEDULE = "schedule"


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
class Signature:
    """What identifies a file's version without reading it."""

    size: int | None
    mtime: str | None
    etag: str | None

    @classmethod
    def of(cls, entry: FileEntry) -> Signature:
        """The signature of a listed file."""
        return cls(entry.size, entry.mtime, entry.etag)

    @property
    def usable(self) -> bool:
        """A signature with neither a modification time nor an ETag proves nothing."""
        return self.size is not None and (self.mtime is not None or self.etag is not None)


@dataclass(frozen=True, slots=True)
class Dalle:
    """A valid dalle: what its header says, plus the file it is.

    `file` carries the exact size. `corners` are the four corners (upper-left, upper-right,
    lower-right, lower-left) in the dalle's own CRS, given by `crs_wkt`; a rotated geotransform
    gives a rotated quadrilateral.
    """

    file: FileEntry
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

    @property
    def path(self) -> str:
        """The path below the storage root."""
        return self.file.path

    @property
    def name(self) -> str:
        """The file name, without folders."""
        return self.file.name

    @property
    def size(self) -> int:
        """The file's size in bytes."""
        return self.file.size or 0


@dataclass(frozen=True, slots=True)
class DalleProblem:
    """A raster file that is not indexed, and why: data, never an exception."""

    file: FileEntry
    reason: SkipReason
    detail: str

    @property
    def path(self) -> str:
        """The path below the storage root."""
        return self.file.path


Record = Dalle | DalleProblem
"""What a scan keeps of each raster file."""


@dataclass(slots=True)
class ScanResult:
    """Everything one scan of a livrable's storage produced.

    Its counts add up: `indexed` + `reused` dalles + `problems` = `raster_files`.
    """

    source: str
    listed_files: int
    dalles: list[Dalle] = field(default_factory=list)
    problems: list[DalleProblem] = field(default_factory=list)
    reused_paths: frozenset[str] = frozenset()
    """The paths whose record was taken from the previous scan, valid or not."""
    duration_s: float = 0.0

    @property
    def raster_files(self) -> int:
        """How many listed files looked like rasters."""
        return len(self.dalles) + len(self.problems)

    @property
    def reused(self) -> int:
        """Valid dalles taken from the previous scan, not read again."""
        return sum(1 for d in self.dalles if d.path in self.reused_paths)

    @property
    def indexed(self) -> int:
        """Valid dalles read by this scan."""
        return len(self.dalles) - self.reused
