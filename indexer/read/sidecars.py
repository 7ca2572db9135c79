"""Georeferencing found beside a dalle: world files, ``.prj`` and GDAL's ``.aux.xml``.

Read only when the listing shows them, never probed: GDAL's ``.aux.xml`` always (it takes
precedence over the header, as in GDAL), world files and ``.prj`` where the header lacks
georeferencing.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from affine import Affine
from pyproj import CRS
from pyproj.exceptions import ProjError

from indexer.errors import ReadError
from indexer.models import FileEntry
from indexer.read.formats import WORLD_FILE_SUFFIXES, suffix
from indexer.read.view import RangeReader

log = logging.getLogger(__name__)

SIDECAR_BYTES = 1 << 20
"""The most read of one sidecar file."""


@dataclass(frozen=True, slots=True)
class Georef:
    """Georeferencing found outside the header: a world file and a CRS from .prj or .aux.xml."""

    transform: Affine | None = None
    crs_wkt: str | None = None
    colours: tuple[tuple[int, str], ...] = ()
    """Colour interpretations an ``.aux.xml`` gives bands: (band number from 1, the name it is written with)."""


def parse_world_file(text: str) -> Affine:
    """The geotransform of a world file (six numbers, pixel-centre based)."""
    values = [float(v) for v in text.split()[:6]]
    if len(values) != 6:
        raise ValueError("a world file has six numbers")
    a, d, b, e, c, f = values
    return Affine(a, b, c - a / 2 - b / 2, d, e, f - d / 2 - e / 2)


def parse_aux_xml(text: str) -> Georef:
    """The CRS and geotransform a GDAL ``.aux.xml`` file carries."""
    root = ET.fromstring(text)
    srs = root.findtext("SRS")
    gt = root.findtext("GeoTransform")
    transform = None
    if gt:
        c, a, b, f, d, e = (float(v) for v in re.split(r"[,\s]+", gt.strip()))
        transform = Affine(a, b, c, d, e, f)
    colours = tuple((int(band.get("band", "0")), (band.findtext("ColorInterp") or "").strip())
                    for band in root.findall("PAMRasterBand") if band.findtext("ColorInterp"))
    return Georef(transform, CRS.from_user_input(srs).to_wkt() if srs else None, colours)


def has_world_file(sidecars: list[FileEntry]) -> bool:
    """Whether a world file is among a dalle's sidecars."""
    return any(suffix(s.path) in WORLD_FILE_SUFFIXES for s in sidecars)


def read_georef(storage: RangeReader, sidecars: list[FileEntry]) -> Georef | None:
    """Georeferencing from the sidecar files the listing showed for a dalle, if any is usable."""
    transform = None
    crs_wkt = None
    colours: tuple[tuple[int, str], ...] = ()
    for side in sorted(sidecars, key=lambda s: s.path):
        ext = suffix(side.path)
        try:
            text = storage.read_range(side.path, 0, min(side.size or SIDECAR_BYTES, SIDECAR_BYTES)).decode(
                "utf-8", "replace")
            if ext in WORLD_FILE_SUFFIXES:
                transform = transform or parse_world_file(text)
            elif ext == ".prj":
                crs_wkt = crs_wkt or CRS.from_user_input(text.strip()).to_wkt()
            elif ext == ".aux.xml":
                aux = parse_aux_xml(text)
                transform = transform or aux.transform
                crs_wkt = crs_wkt or aux.crs_wkt
                colours = colours or aux.colours
        except (ReadError, ValueError, ProjError, ET.ParseError) as exc:
            log.info("sidecar not usable", extra={"path": side.path, "error": str(exc)})
    if transform is None and crs_wkt is None and not colours:
        return None
    return Georef(transform, crs_wkt, colours)


def read_pam(storage: RangeReader, sidecars: list[FileEntry]) -> Georef | None:
    """The georeferencing of GDAL's ``.aux.xml`` beside a dalle, when the listing shows one that has some."""
    pam = [s for s in sidecars if suffix(s.path) == ".aux.xml"]
    return read_georef(storage, pam) if pam else None
