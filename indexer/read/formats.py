"""What a file is by its name: raster candidates, their MIME types and drivers, sidecar files.

The one rule joining a dalle to its sidecars lives here: both share a `stem`, the lower-case
path without extension (``a.tif.aux.xml`` describes ``a.tif``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from indexer.models import FileEntry

OPEN_FORMATS = {".tif": "image/tiff", ".tiff": "image/tiff", ".geotif": "image/tiff",
                ".geotiff": "image/tiff", ".jp2": "image/jp2", ".j2k": "image/jp2", ".j2c": "image/jp2"}
"""Open formats by extension; the bytes decide in the end (a JPEG 2000 named ``.tif`` is one)."""
PROPRIETARY_FORMATS = {".ecw": "image/ecw", ".sid": "image/x-mrsid"}
DRIVERS = {"image/tiff": "GTiff", "image/jp2": "JP2OpenJPEG"}
"""The GDAL driver of each open format."""
WORLD_FILE_SUFFIXES = (".tfw", ".tifw", ".j2w", ".jkw", ".j2kw", ".jcw", ".j2cw", ".wld", ".eww", ".sdw")
SIDECAR_SUFFIXES = (*WORLD_FILE_SUFFIXES, ".prj", ".aux.xml")


def suffix(path: str) -> str:
    """The lower-case extension of a path, ``.aux.xml`` counted as one."""
    lower = path.lower()
    if lower.endswith(".aux.xml"):
        return ".aux.xml"
    dot = lower.rfind(".")
    return lower[dot:] if dot > lower.rfind("/") else ""


def raster_mime(path: str) -> str | None:
    """The MIME type of a raster candidate by its extension, None when it is not a raster."""
    ext = suffix(path)
    return OPEN_FORMATS.get(ext) or PROPRIETARY_FORMATS.get(ext)


def stem(path: str) -> str:
    """The lower-case path without its extension: the key joining a dalle and its sidecars."""
    ext = suffix(path)
    return (path[: -len(ext)] if ext else path).lower()


def sidecar_stem(path: str) -> str | None:
    """For a sidecar file, the `stem` of the raster it describes; None for any other file."""
    ext = suffix(path)
    if ext not in SIDECAR_SUFFIXES:
        return None
    described = path[: -len(ext)].lower()
    if ext == ".aux.xml":  # a.tif.aux.xml describes a.tif
        described = stem(described)
    return described


@dataclass(slots=True)
class Listing:
    """A storage listing sorted into raster candidates and the sidecar files describing them."""

    files: list[FileEntry]
    candidates: list[FileEntry] = field(default_factory=list)
    sidecars: dict[str, list[FileEntry]] = field(default_factory=dict)
    """Sidecar files by the `stem` of the raster they describe."""

    @classmethod
    def of(cls, files: list[FileEntry]) -> Listing:
        """Sort the listed files by role."""
        listing = cls(files)
        for entry in files:
            if raster_mime(entry.path):
                listing.candidates.append(entry)
            else:
                described = sidecar_stem(entry.path)
                if described is not None:
                    listing.sidecars.setdefault(described, []).append(entry)
        listing.candidates.sort(key=lambda e: e.path)
        return listing

    def sidecars_of(self, entry: FileEntry) -> list[FileEntry]:
        """The sidecar files listed beside a dalle."""
        return self.sidecars.get(stem(entry.path), [])
