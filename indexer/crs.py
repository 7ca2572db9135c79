"""Coordinate reference systems: EPSG codes identified once, transformers to WGS84 built once."""

from __future__ import annotations

from functools import lru_cache

from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

WGS84 = CRS.from_epsg(4326)


@lru_cache(maxsize=256)
def identify_epsg(wkt: str) -> int | None:
    """The EPSG code of a CRS, looked up by pyproj when the file carries no authority code."""
    try:
        return CRS.from_wkt(wkt).to_epsg(min_confidence=70)
    except CRSError:
        return None


@lru_cache(maxsize=64)
def to_wgs84(crs_wkt: str) -> Transformer:
    """A lon/lat transformer from a CRS, built once per CRS."""
    return Transformer.from_crs(CRS.from_wkt(crs_wkt), WGS84, always_xy=True)


@lru_cache(maxsize=64)
def is_geographic(crs_wkt: str) -> bool:
    """Whether a CRS is in degrees rather than metres."""
    return bool(CRS.from_wkt(crs_wkt).is_geographic)


@lru_cache(maxsize=64)
def crs_name(crs_wkt: str) -> str | None:
    """A CRS's name (``RGF93 v1 / Lambert-93``), None when PROJ cannot read it."""
    try:
        return str(CRS.from_wkt(crs_wkt).name)
    except CRSError:
        return None
