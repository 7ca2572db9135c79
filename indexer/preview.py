"""The map of a storage's last scan: its livrables' emprises and its dalles coloured by outcome.

One page made two ways from one template (``indexer/api/static/map.html``, its script ``map.js``
and its style ``map.css``): ``pcrs-indexer index`` writes it as ``preview.html`` beside its
outputs, self-contained (Leaflet, the script, the style and the data inlined: it opens from disk,
offline), and the API serves it at ``GET /storages/{id}/preview`` with Leaflet from its
``/static/`` folder. Leaflet is installed from npm (``npm ci`` in the static folder, run by
``make venv``); without it no page is made (`MapAssetsMissing`).

The script draws whatever layers the data lists (`map_data`)::

    {"title": str, "subtitle": str, "facts": [[label, number], ...],
     "download": "files/" | null,  # base of the download links, relative to the page, used with ?token=
     "layers": [{"id": str, "label": str, "key": str, "name": str, "link": str | null,
                 "classes": [{"id", "label", "color" ("#rrggbb"), "count", "fill"?, "outline"?, "dash"?,
                              "common"?: {properties every feature of the class has, sent once}}],
                 "features": [GeoJSON features, in WGS84; geometry null for a file that cannot be placed]}]}

A feature's class is its property `key`; its title is its property `name`, and `link` names the
property holding the path a download link opens. A layer appended to the list is drawn with its
classes' colours, listed in the legend with its counts and clickable: the page needs no change.
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import date
from pathlib import Path
from string import Template
from typing import Any

from sqlalchemy import Engine

from indexer.crs import to_wgs84
from indexer.emprise import check_footprints, compute_emprise
from indexer.errors import MapAssetsMissing
from indexer.geojson import dalle_features, livrable_feature
from indexer.models import Dalle, DalleProblem, ScanResult, SkipReason
from indexer.projet import Livrable, Projet
from indexer.publish import Publication, report
from indexer.quality import Quality, assess
from indexer.store import queries, records

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "api" / "static"
"""The page's template, script and style, and Leaflet below ``node_modules`` once installed."""
LEAFLET = STATIC / "node_modules" / "leaflet" / "dist"
PREVIEW = "preview.html"

INDEXED, REUSED = "indexed", "reused"
OUTCOMES: dict[str, tuple[str, str]] = {
    INDEXED: ("indexées", "#18753c"),
    REUSED: ("réutilisées (inchangées)", "#0078f3"),
    SkipReason.EMPTY: ("vides", "#c8aa39"),
    SkipReason.CORRUPT: ("corrompues", "#ce0500"),
    SkipReason.NOT_GEOREFERENCED: ("non géoréférencées", "#a558a0"),
    SkipReason.UNSUPPORTED: ("non prises en charge", "#7b7b7b"),
    SkipReason.UNREADABLE: ("illisibles", "#fc5d00"),
}
"""The label and colour of each outcome of a raster file: indexed, reused, or skipped for a reason."""
EMPRISE_COLOR = "#000091"
CHECKS: dict[str, tuple[str, str]] = {
    "hole": ("trous (cases manquantes)", "#ff00a8"),
    "duplicate": ("doublons", "#ffca00"),
    "off_grid": ("hors grille", "#00a3a6"),
}
"""The label and colour of each quality finding the map draws (`quality_layer`)."""


def check_assets() -> None:
    """Raise `MapAssetsMissing` unless Leaflet is installed beside the page's files."""
    if not (LEAFLET / "leaflet.js").is_file() or not (LEAFLET / "leaflet.css").is_file():
        raise MapAssetsMissing(f"the map library is missing ({LEAFLET / 'leaflet.js'}): install it with "
                               f"`npm ci --prefix {STATIC}` (`make venv` does)")


def _scalars(properties: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in properties.items() if isinstance(v, str | int | float | bool) and v != ""}


def dalle_layer(result: ScanResult, projet: Projet | None = None, livrable: Livrable | None = None,
                private: bool = False) -> dict[str, Any]:
    """The layer of a scan's raster files: each valid dalle's footprint, as ``dalles.geojson`` has it,
    classed indexed or reused; each skipped file without geometry, classed by its reason, with its
    detail (masked as ``report.json`` masks it for a `private` storage)."""
    features = list(dalle_features(result.dalles, projet, livrable))
    reused = result.reused_paths
    for feature in features:
        properties = feature["properties"]
        outcome = REUSED if properties["chemin"] in reused else INDEXED
        feature["properties"] = {"outcome": outcome, **{k: v for k, v in properties.items() if v is not None}}
    sizes = {p.path: p.file.size for p in result.problems}
    for skipped in report(result, private)["skipped"]:
        path = skipped["path"]
        properties = {"outcome": str(skipped["reason"]), "nomImage": path.rsplit("/", 1)[-1], "chemin": path,
                      "tailleFichier": sizes[path], "detail": skipped["detail"]}
        features.append({"type": "Feature", "geometry": None, "properties": _scalars(properties)})
    counts = Counter(f["properties"]["outcome"] for f in features)
    return {"id": "dalles", "label": "Dalles", "key": "outcome", "name": "nomImage", "link": "chemin",
            "classes": [{"id": str(outcome), "label": label, "color": color, "count": counts[outcome]}
                        for outcome, (label, color) in OUTCOMES.items()],
            "features": features}


def emprise_layer(livrable_features: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The layer of the livrables' emprises (their ``livrables.geojson`` features), drawn as outlines."""
    features = [{"type": "Feature", "geometry": f["geometry"],
                 "properties": {"kind": "emprise", **_scalars(f.get("properties") or {})}}
                for f in livrable_features if f.get("geometry")]
    return {"id": "emprise", "label": "Livrable", "key": "kind", "name": "nom", "link": None,
            "classes": [{"id": "emprise", "label": "emprise", "color": EMPRISE_COLOR, "count": len(features),
                         "fill": 0.05, "outline": True, "dash": "6 4"}],
            "features": features}


def _cell_geometry(bounds: tuple[float, float, float, float], crs_wkt: str) -> dict[str, Any]:
    """A grid cell of a CRS as a GeoJSON polygon in WGS84 (its corners transformed, counter-clockwise)."""
    x0, y0, x1, y1 = bounds
    xs, ys = to_wgs84(crs_wkt).transform([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0])
    return {"type": "Polygon", "coordinates": [[[round(x, 7), round(y, 7)] for x, y in zip(xs, ys, strict=True)]]}


def quality_layer(quality: Quality, dalles: Sequence[Dalle]) -> dict[str, Any]:
    """The layer of the quality checks (`indexer.quality`) of `dalles`: each hole cell, each duplicated
    cell and each off-grid dalle (its footprint as ``dalles.geojson`` has it)."""
    off = {o.chemin for o in quality.off_grid}
    footprints = {f["properties"]["chemin"]: f["geometry"]
                  for f in dalle_features([d for d in dalles if d.path in off], None, None)}
    wkts = {g.crs: g.crs_wkt for g in quality.grids}
    features: list[dict[str, Any]] = []
    for grid in quality.grids:
        features += [{"type": "Feature", "geometry": _cell_geometry(b, grid.crs_wkt),
                      "properties": {"check": "hole", "name": "case manquante", "crs": grid.crs,
                                     "bounds": " ".join(f"{v:.3f}" for v in b)}} for b in grid.hole_cells]
    features += [{"type": "Feature", "geometry": _cell_geometry(d.cell, wkts[d.crs]),
                  "properties": {"check": "duplicate", "name": d.chemins[0].rsplit("/", 1)[-1], "chemin": d.chemins[0],
                                 "chemins": " · ".join(d.chemins),
                                 "copies": "identiques" if d.identical else "différentes: " + ", ".join(d.differences)}}
                 for d in quality.duplicates]
    features += [{"type": "Feature", "geometry": footprints[o.chemin],
                  "properties": {"check": "off_grid", "name": o.chemin.rsplit("/", 1)[-1], "chemin": o.chemin,
                                 "crs": o.crs, "offset": round(o.offset, 3), "dx": round(o.dx, 3),
                                 "dy": round(o.dy, 3)}}
                 for o in quality.off_grid if o.chemin in footprints]
    counts = Counter(f["properties"]["check"] for f in features)
    return {"id": "quality", "label": "Contrôle qualité", "key": "check", "name": "name", "link": "chemin",
            "classes": [{"id": check, "label": label, "color": color, "count": counts[check], "fill": 0.35,
                         "outline": True} for check, (label, color) in CHECKS.items()],
            "features": features}


def map_data(result: ScanResult, livrable_features: Sequence[dict[str, Any]], title: str, subtitle: str,
             projet: Projet | None = None, livrable: Livrable | None = None, private: bool = False,
             download: str | None = None, when: str | None = None,
             more: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The page's data for a scan (see the module's docstring): the emprises, the dalles, then the
    layers of `more` (drawn above them)."""
    facts: list[list[Any]] = [["fichiers listés", result.listed_files], ["fichiers raster", result.raster_files],
                              ["dalles publiées", len(result.dalles)], ["fichiers écartés", len(result.problems)],
                              ["durée du parcours (s)", round(result.duration_s, 1)]]
    if when:
        facts.insert(0, ["date", when])
    layers = [emprise_layer(livrable_features), dalle_layer(result, projet, livrable, private), *more]
    return {"title": title, "subtitle": subtitle, "facts": facts, "download": download,
            "layers": [factor_common(layer) for layer in layers]}


def factor_common(layer: dict[str, Any]) -> dict[str, Any]:
    """The layer with the properties all features of a class share (a livrable's dalles share their
    size, bands, CRS…) moved to that class's ``common``, sent once instead of once per feature."""
    key = layer["key"]
    by_class: dict[str, list[dict[str, Any]]] = {}
    for feature in layer["features"]:
        by_class.setdefault(feature["properties"][key], []).append(feature["properties"])
    for cls in layer["classes"]:
        members = by_class.get(cls["id"])
        if not members or len(members) < 2:
            continue
        common = {k: v for k, v in members[0].items() if k != key and all(
            k in p and p[k] == v for p in members)}
        for properties in members:
            for k in common:
                del properties[k]
        cls["common"] = common
    return layer


def _script_json(data: dict[str, Any]) -> str:
    """The data as JSON that no text inside it can end the script element holding it."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _inline_script(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if not line.startswith("//# sourceMappingURL="))


def render_page(data: dict[str, Any], static_url: str | None = None) -> str:
    """The page's HTML for `data`: Leaflet and the page's files linked below `static_url` (the API's
    ``/static/``, relative to the page), or inlined when it is None (``preview.html``).

    Raises `MapAssetsMissing` when Leaflet is not installed.
    """
    check_assets()
    if static_url is None:
        css = "\n".join((LEAFLET / "leaflet.css").read_text(encoding="utf-8").splitlines()
                        + (STATIC / "map.css").read_text(encoding="utf-8").splitlines())
        styles = f"<style>\n{css}\n</style>"
        scripts = "\n".join(f"<script>\n{_inline_script(p)}\n</script>" for p in (LEAFLET / "leaflet.js",
                                                                                  STATIC / "map.js"))
    else:
        base = html.escape(static_url)
        styles = (f'<link rel="stylesheet" href="{base}leaflet/leaflet.css">\n'
                  f'<link rel="stylesheet" href="{base}map.css">')
        scripts = f'<script src="{base}leaflet/leaflet.js"></script>\n<script src="{base}map.js"></script>'
    template = Template((STATIC / "map.html").read_text(encoding="utf-8"))
    return template.substitute(title=html.escape(str(data["title"])), styles=styles, scripts=scripts,
                               data=_script_json(data))


def preview_of(publication: Publication, projet: Projet | None, livrable: Livrable | None, today: date) -> str:
    """The self-contained ``preview.html`` of what ``pcrs-indexer index`` published."""
    result = publication.result
    private = livrable is not None and livrable.stockage_public is False
    title = livrable.nom if livrable else (result.source.rstrip("/").rsplit("/", 1)[-1] or result.source)
    subtitle = "stockage privé" if private else result.source
    data = map_data(result, [publication.feature], title, subtitle, projet, livrable, private, when=today.isoformat(),
                    more=[quality_layer(publication.quality, result.dalles)])
    return render_page(data)


def storage_map(engine: Engine, storage: int, download: str | None = None) -> dict[str, Any] | None:
    """The page's data of a storage's last successful scan, from the store (its records, and its
    livrables' emprises as last published, else computed from the records); None when it has none.

    Raises `StorageNotFound` for an unknown storage.
    """
    last = queries.last_scan(engine, storage)
    if last is None:
        return None
    checked = check_footprints(list(records.load_records(engine, storage)))
    dalles = [r for r in checked if isinstance(r, Dalle)]
    result = ScanResult(source=last.url, listed_files=last.listed, dalles=dalles,
                        problems=[r for r in checked if isinstance(r, DalleProblem)], reused_paths=last.reused,
                        duration_s=last.duration_s)
    published = [(Projet.model_validate(document), nom, feature) for document, nom, feature in last.livrables]
    chosen = [(p, next((liv for liv in p.livrables if liv.nom == nom), None)) for p, nom, _ in published]
    projet, livrable = chosen[0] if chosen else (None, None)
    private = any(liv is not None and liv.stockage_public is False for _, liv in chosen)
    today = date.today()
    features = [f for *_, f in published if f] or [livrable_feature(dalles, compute_emprise(dalles), projet,
                                                                    livrable, today)]
    title = " · ".join(nom for _, nom, _ in published) or last.url.rstrip("/").rsplit("/", 1)[-1] or last.url
    when = last.finished_at.strftime("%Y-%m-%d %H:%M UTC") if last.finished_at else None
    return map_data(result, features, title, "stockage privé" if private else last.url, projet, livrable,
                    private, download, when, [quality_layer(assess(checked, placed=True), dalles)])


def write_index_preview(out: Path, publication: Publication, projet: Projet | None, livrable: Livrable | None,
                        today: date) -> Path | None:
    """Write the ``preview.html`` of ``pcrs-indexer index`` beside its outputs; None, with one warning
    line, when Leaflet is missing (the outputs are published all the same)."""
    try:
        page = preview_of(publication, projet, livrable, today)
    except MapAssetsMissing as exc:
        log.warning("%s not written: %s", PREVIEW, exc)
        return None
    return write_preview(out, page)


def write_preview(out: Path, page: str) -> Path:
    """Write ``out/preview.html`` in one rename (a reader sees the old page or the new one, whole)."""
    path = out / PREVIEW
    tmp = out / f".{PREVIEW}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
