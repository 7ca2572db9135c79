"""The GeoJSON of the PCRS data API: the features of `dalles.geojson` and `livrables.geojson`.

Every output property name is spelled here and nowhere else. Features are streamed one at a time
into an open file (`indexer.publish.OutputSet` places the files), so millions of dalles need no
list in memory.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import IO, Any

import numpy as np
import orjson
import shapely
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from indexer.crs import to_wgs84
from indexer.emprise import corner_array, placement_problems
from indexer.models import Dalle
from indexer.projet import CALENDRIER, Livrable, Projet, current_etape

log = logging.getLogger(__name__)

DECIMALS = 7

DALLE_PROPERTIES = (
    "dateAcquisition", "dateRecette", "descriptionElementsQualite", "idPCRS", "nomImage",
    "precisionplanimetriqueCorpsdeRue", "precisionplanimetriqueZonesNaturelles", "resolution",
    "typeImage", "producteur", "licence", "tailleFichier", "tailleImage", "compression", "epsg",
    "bandes", "open", "focale", "chemin",
)
LIVRABLE_PROPERTIES = (
    "initiative", "dateActualite", "calendrier", "nom", "format", "compression", "epsg", "taille",
    "recouvrLat", "recouvrLon", "focale", "licence", "subventions", "acteurs", "diffusion",
    "diffusionUrl", "diffusionLayer",
)
PROPERTY_TYPES: dict[str, type] = {
    "resolution": float, "tailleFichier": int, "open": bool, "focale": float,
    "taille": int, "recouvrLat": float, "recouvrLon": float, "subventions": list, "acteurs": list,
}
"""The type of each property of the two files that is not a string (or null), for typed formats."""


def _number(value: float | None) -> int | float | None:
    """An integer when the value is whole (5.0 -> 5), else the value; None when it is not finite."""
    if value is None or not math.isfinite(value):
        return None
    return int(value) if float(value).is_integer() else value


def _projet_number(livrable: Livrable | None, name: str) -> int | float | None:
    """A number of the livrable's projet document as written, dropped with a warning when it is not
    finite (1e999 reads as infinity): the outputs stay JSON."""
    value: int | float | None = getattr(livrable, name) if livrable else None
    if value is not None and not math.isfinite(value):
        log.warning("the livrable's %s is not a finite number (%s): written as null", name, value)
        return None
    return value


def epsg_label(epsg: int | None) -> str | None:
    """``EPSG:2154`` form, None when unknown."""
    return f"EPSG:{epsg}" if epsg is not None else None


def dalle_rings(dalles: list[Dalle], corners: np.ndarray | None = None) -> np.ndarray:
    """Each dalle's closed ring in WGS84, counter-clockwise from its upper-left corner, 7 decimals.

    One coordinate transformation per CRS for all the dalles given: an array of shape (n, 5, 2).
    The dalles must be placeable (`indexer.emprise.placement_problems`).
    """
    if corners is None:
        corners = corner_array(dalles)
    lonlat = np.empty_like(corners)
    groups: dict[str, list[int]] = {}
    for index, dalle in enumerate(dalles):
        groups.setdefault(dalle.crs_wkt, []).append(index)
    for crs_wkt, indices in groups.items():
        xy = corners[indices].reshape(-1, 2)
        lon, lat = to_wgs84(crs_wkt).transform(xy[:, 0], xy[:, 1])
        lonlat[indices] = np.column_stack([lon, lat]).reshape(-1, 4, 2)
    rings = np.round(lonlat, DECIMALS)
    x, y = rings[:, :, 0], rings[:, :, 1]
    with np.errstate(invalid="ignore", over="ignore"):  # a transformation that failed gives inf
        clockwise = (x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1) < 0
    rings[clockwise] = rings[clockwise][:, [0, 3, 2, 1]]
    return np.concatenate([rings, rings[:, :1]], axis=1)


def dalle_properties(dalle: Dalle, projet: Projet | None, livrable: Livrable | None) -> dict[str, Any]:
    """The properties of a dalle feature, in the order of the PCRS API (`DALLE_PROPERTIES`)."""
    (properties,) = _properties([dalle], projet, livrable)
    return properties


def _properties(dalles: list[Dalle], projet: Projet | None, livrable: Livrable | None) -> list[dict[str, Any]]:
    """`dalle_properties` of each dalle, the livrable's values looked up once."""
    id_pcrs = projet.id if projet else None
    licence = livrable.licence if livrable else None
    focale = _number(livrable.focale) if livrable else None
    return [{
        "dateAcquisition": None,
        "dateRecette": None,
        "descriptionElementsQualite": None,
        "idPCRS": id_pcrs,
        "nomImage": dalle.name,
        "precisionplanimetriqueCorpsdeRue": None,
        "precisionplanimetriqueZonesNaturelles": None,
        "resolution": _number(dalle.resolution_cm),
        "typeImage": dalle.mime,
        "producteur": None,
        "licence": licence,
        "tailleFichier": dalle.size,
        "tailleImage": f"{dalle.height}x{dalle.width}",
        "compression": dalle.compression,
        "epsg": epsg_label(dalle.epsg),
        "bandes": "/".join(dalle.bands),
        "open": dalle.open,
        "focale": focale,
        "chemin": dalle.path,
    } for dalle in dalles]


def _common(values: Iterable[Any]) -> Any:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else None


def _unique(values: Iterable[str | None]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def livrable_properties(dalles: list[Dalle], projet: Projet | None, livrable: Livrable | None,
                        today: date) -> dict[str, Any]:
    """The properties of a livrable feature, in the order of the PCRS API."""
    etape = current_etape(projet.etapes, today) if projet else None
    values = {
        "initiative": projet.id if projet else None,
        "dateActualite": etape.date_debut.isoformat() if etape and etape.date_debut else None,
        "calendrier": CALENDRIER.get(etape.statut) if etape else None,
        "nom": livrable.nom if livrable else None,
        "format": _common(d.mime for d in dalles),
        "compression": _common(d.compression for d in dalles),
        "epsg": epsg_label(_common(d.epsg for d in dalles)),
        "taille": sum(d.size for d in dalles),
        "recouvrLat": _projet_number(livrable, "recouvr_lat"),
        "recouvrLon": _projet_number(livrable, "recouvr_lon"),
        "focale": _number(_projet_number(livrable, "focale")),
        "licence": livrable.licence if livrable else None,
        "subventions": _unique(s.nature for s in projet.subventions) if projet else [],
        "acteurs": _unique(a.nom for a in projet.acteurs) if projet else [],
        "diffusion": livrable.diffusion if livrable else None,
        "diffusionUrl": livrable.diffusion_url if livrable else None,
        "diffusionLayer": livrable.diffusion_layer if livrable else None,
    }
    return {name: values[name] for name in LIVRABLE_PROPERTIES}


def emprise_geometry(emprise: BaseGeometry | None) -> dict[str, Any] | None:
    """The emprise as RFC 7946 GeoJSON: snapped to 7 decimals, exterior rings counter-clockwise."""
    if emprise is None or emprise.is_empty:
        return None
    snapped = shapely.set_precision(emprise, 10.0**-DECIMALS)
    oriented = shapely.orient_polygons(snapped, exterior_cw=False)
    geometry: dict[str, Any] = _round(json.loads(json.dumps(mapping(oriented), allow_nan=False)))
    return geometry


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, DECIMALS)
    if isinstance(value, list | tuple):
        return [_round(v) for v in value]
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False, allow_nan=False)
"""One encoder for every feature (`json.dumps` with options builds one per call); NaN and
infinities raise rather than write what is not JSON."""


def write_feature_collection(f: IO[str], features: Iterable[dict[str, Any]]) -> int:
    """Stream features into an open file as one FeatureCollection; returns how many."""
    return write_texts(f, (_COMPACT.encode(feature) for feature in features))


def write_texts(f: IO[str], texts: Iterable[str]) -> int:
    """Stream features already encoded (`_COMPACT`'s text) into an open file as one
    FeatureCollection; returns how many."""
    f.write('{"type":"FeatureCollection","features":[')
    count = 0
    for text in texts:
        f.write(",\n" if count else "\n")
        f.write(text)
        count += 1
    f.write("\n]}\n")
    return count


def _fast_float(value: Any) -> bool:
    """Whether orjson writes this number as `_COMPACT` does: it does not for non-finite floats
    (null instead of an error) nor for those below 1e-4 but zero (``1e-7``, not ``1e-07``)."""
    return not isinstance(value, float) or value == 0.0 or (math.isfinite(value) and abs(value) >= 1e-4)


def _fast_rings(rings: np.ndarray) -> np.ndarray:
    """Whether orjson writes each ring's coordinates as `_COMPACT` does (`_fast_float`)."""
    magnitude = np.abs(rings)
    with np.errstate(invalid="ignore"):
        fast = np.isfinite(rings) & ((rings == 0.0) | (magnitude >= 1e-4))
    result: np.ndarray = fast.all(axis=(1, 2))
    return result


def feature_text(feature: dict[str, Any], fast: bool = True) -> str:
    """`_COMPACT.encode(feature)`, byte for byte, through orjson when `fast`: the caller vouches
    that the feature's floats are `_fast_float`; orjson refusing a value (an integer beyond 64
    bits, a lone surrogate) falls back to `_COMPACT`, which raises where it must."""
    if fast:
        try:
            return orjson.dumps(feature, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        except orjson.JSONEncodeError:
            pass
    return _COMPACT.encode(_plain(feature))


def _plain(value: Any) -> Any:
    """A feature with its numpy arrays (a ring of `page_texts`) as lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def page_texts(page: DallePage) -> Iterator[str]:
    """The features of `page_features` encoded as `_COMPACT` encodes them (`feature_text`): the
    rings go to orjson as arrays (it writes a float64 as a float)."""
    rings = np.ascontiguousarray(page.rings, dtype=np.float64)
    fast_rings = _fast_rings(rings).tolist()
    for ring, properties, fast in zip(rings, page.properties, fast_rings, strict=True):
        feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                   "properties": properties}
        yield feature_text(feature, fast and _fast_float(properties["resolution"])
                           and _fast_float(properties["focale"]))


BBox = tuple[float, float, float, float]
"""A box in WGS84: (min lon, min lat, max lon, max lat)."""
PAGE = 5000
"""Dalles transformed at once."""


@dataclass(frozen=True, slots=True)
class DallePage:
    """Dalles of one livrable ready to be written, in the order given: their rings and their properties."""

    rings: np.ndarray
    """Shape (n, 5, 2): each dalle's closed ring in WGS84 (`dalle_rings`)."""
    properties: list[dict[str, Any]]
    """Each dalle's properties (`dalle_properties`)."""


def dalle_pages(dalles: Iterable[Dalle], projet: Projet | None, livrable: Livrable | None,
                bbox: BBox | None = None) -> Iterator[DallePage]:
    """The dalles that can be placed in WGS84, in the order given, a few thousand a page; with
    `bbox`, only those whose footprint's box meets it (edges included). Pages are never empty."""
    batch: list[Dalle] = []
    for dalle in dalles:
        batch.append(dalle)
        if len(batch) == PAGE:
            if page := _page(batch, projet, livrable, bbox):
                yield page
            batch = []
    if page := _page(batch, projet, livrable, bbox):
        yield page


def dalle_features(dalles: Iterable[Dalle], projet: Projet | None, livrable: Livrable | None,
                   bbox: BBox | None = None) -> Iterator[dict[str, Any]]:
    """GeoJSON features of dalles (`dalle_pages`): those that can be placed, in the order given."""
    for page in dalle_pages(dalles, projet, livrable, bbox):
        yield from page_features(page)


def page_features(page: DallePage) -> Iterator[dict[str, Any]]:
    """The GeoJSON features of a page of dalles."""
    for ring, properties in zip(page.rings.tolist(), page.properties, strict=True):
        yield {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": properties}


def _meets(rings: np.ndarray, bbox: BBox) -> np.ndarray:
    """Whether each ring's box meets `bbox` (edges included)."""
    x, y = rings[:, :, 0], rings[:, :, 1]
    with np.errstate(invalid="ignore"):
        result: np.ndarray = ((x.min(axis=1) <= bbox[2]) & (x.max(axis=1) >= bbox[0])
                              & (y.min(axis=1) <= bbox[3]) & (y.max(axis=1) >= bbox[1]))
    return result


def _page(dalles: list[Dalle], projet: Projet | None, livrable: Livrable | None,
          bbox: BBox | None) -> DallePage | None:
    """The page of the dalles that can be placed in WGS84 (the others, left out, are logged) and
    meet `bbox` when given; None when none is left."""
    if not dalles:
        return None
    corners = corner_array(dalles)
    unplaced = placement_problems(dalles, corners)
    if unplaced:
        keep = [i for i in range(len(dalles)) if i not in unplaced]
        dalles, corners = [dalles[i] for i in keep], corners[keep]
    rings = dalle_rings(dalles, corners)
    kept = np.isfinite(rings).all(axis=(1, 2))
    skipped = len(unplaced) + int((~kept).sum())
    if skipped:
        log.warning("dalles left out of dalles.geojson: they cannot be placed in WGS84", extra={"dalles": skipped})
    if bbox is not None:
        kept &= _meets(rings, bbox)
    if not kept.all():
        dalles, rings = [d for d, ok in zip(dalles, kept, strict=True) if ok], rings[kept]
    if not dalles:
        return None
    return DallePage(rings, _properties(dalles, projet, livrable))


def livrable_feature(dalles: list[Dalle], emprise: BaseGeometry | None, projet: Projet | None,
                     livrable: Livrable | None, today: date) -> dict[str, Any]:
    """The GeoJSON feature of one livrable."""
    return {"type": "Feature", "geometry": emprise_geometry(emprise),
            "properties": livrable_properties(dalles, projet, livrable, today)}
