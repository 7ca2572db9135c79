"""The map page's data and `preview.html`, as ``pcrs-indexer index`` writes them (no browser here:
tests/integration/test_map_page.py loads the pages in Chromium)."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from indexer import preview
from indexer.cli import main
from indexer.errors import MapAssetsMissing
from indexer.models import DalleProblem, FileEntry, ScanResult, SkipReason
from indexer.sample import BAD_FILES
from tests.conftest import SMALL

ROOT = Path(__file__).resolve().parents[2]
VALID = SMALL.cols * SMALL.rows - 1


def index(source: Path, out: Path, db: Path) -> Any:
    return CliRunner().invoke(main, ["index", str(source), "--out", str(out), "--db", f"sqlite:///{db}"],
                              catch_exceptions=False)


def page_data(page: str) -> Any:
    found = re.search(r'<script type="application/json" id="pcrs-data">(.*?)</script>', page, re.S)
    assert found is not None
    return json.loads(found.group(1))


def layer(data: Any, layer_id: str) -> Any:
    return next(item for item in data["layers"] if item["id"] == layer_id)


def counts(dalles: Any) -> dict[str, int]:
    return {c["id"]: c["count"] for c in dalles["classes"]}


def test_index_writes_a_self_contained_map_of_its_outputs(sample_livrable: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = index(sample_livrable, out, tmp_path / "state.sqlite")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["outputs"]["preview"] == str(out / "preview.html")
    assert f"map of the livrable: {out / 'preview.html'}" in result.stderr.splitlines()
    page = (out / "preview.html").read_text(encoding="utf-8")
    # Self-contained: Leaflet, the page's script and style inlined, nothing fetched.
    assert "<script src=" not in page and '<link rel="stylesheet"' not in page and "sourceMappingURL" not in page
    head = page[:page.index("</head>")]
    assert re.findall(r'(?:src|href)="([^"]*)"', head) == [re.search(r'rel="icon" href="(data:[^"]*)"', head)[1]]
    assert (preview.LEAFLET / "leaflet.js").read_text(encoding="utf-8")[:200] in page
    data = page_data(page)
    assert data["title"] == "livrable" and data["subtitle"] == sample_livrable.as_uri()
    assert data["download"] is None
    assert [item["id"] for item in data["layers"]] == ["emprise", "dalles", "quality"]
    dalles = layer(data, "dalles")
    expected = {"indexed": VALID, "reused": 0, **Counter(BAD_FILES.values())}
    assert counts(dalles) == {**dict.fromkeys(preview.OUTCOMES, 0), **expected}
    # The dalles are those of dalles.geojson, with the same geometry; the skipped files have none.
    published = json.loads((out / "dalles.geojson").read_text(encoding="utf-8"))["features"]
    classes = {c["id"]: c for c in dalles["classes"]}
    for feature in dalles["features"]:  # as the page shows them: their own properties, then their class's
        feature["properties"].update(classes[feature["properties"]["outcome"]].get("common", {}))
    drawn = [f for f in dalles["features"] if f["geometry"] is not None]
    assert [f["geometry"] for f in drawn] == [f["geometry"] for f in published]
    assert [f["properties"]["chemin"] for f in drawn] == [f["properties"]["chemin"] for f in published]
    for mine, theirs in zip(drawn, published, strict=True):
        assert mine["properties"] == {"outcome": "indexed", **{k: v for k, v in theirs["properties"].items()
                                                               if v is not None}}
    # What the dalles share is sent once (the sample mixes GeoTIFF and JPEG 2000, and their bands).
    assert classes["indexed"]["common"] == {"epsg": "EPSG:2154", "open": True, "resolution": 100,
                                            "tailleImage": f"{SMALL.pixels}x{SMALL.pixels}"}
    skipped = {f["properties"]["chemin"]: f["properties"] for f in dalles["features"] if f["geometry"] is None}
    assert {path: p["outcome"] for path, p in skipped.items()} == BAD_FILES
    assert skipped["anomalies/vide.tif"]["tailleFichier"] == 0
    reported = json.loads((out / "report.json").read_text(encoding="utf-8"))["skipped"]
    assert {path: p["detail"] for path, p in skipped.items()} == {s["path"]: s["detail"] for s in reported}
    emprise = layer(data, "emprise")
    livrables = json.loads((out / "livrables.geojson").read_text(encoding="utf-8"))["features"]
    assert [f["geometry"] for f in emprise["features"]] == [livrables[0]["geometry"]]
    assert counts(emprise) == {"emprise": 1}
    facts = dict(map(tuple, data["facts"]))
    assert (facts["fichiers raster"], facts["dalles publiées"], facts["fichiers écartés"]) == \
        (VALID + len(BAD_FILES), VALID, len(BAD_FILES))


def test_a_rescan_shows_the_reused_dalles(sample_livrable: Path, tmp_path: Path) -> None:
    for _ in range(2):
        assert index(sample_livrable, tmp_path / "out", tmp_path / "state.sqlite").exit_code == 0
    dalles = layer(page_data((tmp_path / "out" / "preview.html").read_text(encoding="utf-8")), "dalles")
    assert counts(dalles)["reused"] == VALID and counts(dalles)["indexed"] == 0


def test_every_skip_reason_has_a_colour_and_a_label() -> None:
    assert set(preview.OUTCOMES) == {"indexed", "reused", *SkipReason}
    colours = [colour for _, colour in preview.OUTCOMES.values()]
    assert len(set(colours)) == len(colours) and all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colours)


def test_no_file_name_can_end_the_data_script() -> None:
    hostile = "</script><img src=x onerror=alert(1)>&amp;<!--.tif"
    data = {"title": "<b>x</b>", "subtitle": "", "facts": [], "download": None,
            "layers": [preview.dalle_layer(ScanResult(source="file:///x", listed_files=1, problems=[
                DalleProblem(FileEntry(hostile, 3), SkipReason.CORRUPT, "bad </script>")]))]}
    page = preview.render_page(data, static_url="../../static/")
    assert "</script><img" not in page and "<!--.tif" not in page and "<b>x</b>" not in page
    assert "<title>&lt;b&gt;x&lt;/b&gt; — carte PCRS</title>" in page
    assert page_data(page) == data
    assert '<script src="../../static/leaflet/leaflet.js"></script>' in page


def test_without_leaflet_index_publishes_and_says_why_there_is_no_map(
        sample_livrable: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preview, "LEAFLET", tmp_path / "missing")
    with pytest.raises(MapAssetsMissing, match=r"the map library is missing .*: install it with `npm ci --prefix"):
        preview.check_assets()
    out = tmp_path / "out"
    result = index(sample_livrable, out, tmp_path / "state.sqlite")
    assert result.exit_code == 0
    assert not (out / "preview.html").exists() and (out / "dalles.geojson").exists()
    assert "preview" not in json.loads(result.stdout.splitlines()[-1])["outputs"]
    warning = [line for line in result.stderr.splitlines() if "preview.html not written" in line]
    assert len(warning) == 1 and "the map library is missing" in warning[0]


def test_without_leaflet_the_api_answers_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from indexer.api import app, page

    monkeypatch.setattr(preview, "LEAFLET", tmp_path / "missing")
    with pytest.raises(MapAssetsMissing) as refused:
        asyncio.run(page.static("leaflet/leaflet.js"))
    assert app._status(refused.value) == 503


def test_a_wheel_carries_the_page_and_leaflet() -> None:
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"]["indexer.api"]
    needed = [preview.LEAFLET / "leaflet.js", preview.LEAFLET / "leaflet.css", preview.STATIC / "map.html",
              preview.STATIC / "map.js", preview.STATIC / "map.css"]
    for path in needed:
        assert path.is_file()
        relative = path.relative_to(ROOT / "indexer" / "api").as_posix()
        assert any(fnmatch.fnmatchcase(relative, glob) for glob in globs), relative


def test_a_private_storage_shows_no_connection_detail(sample_livrable: Path, tmp_path: Path) -> None:
    projet = {"_id": "p1", "nom": "Privé", "livrables": [{"nom": "Ortho privée", "nature": "geotiff",
                                                          "stockage": "http", "stockage_public": False}]}
    (tmp_path / "projet.json").write_text(json.dumps(projet), encoding="utf-8")
    result = CliRunner().invoke(main, ["index", str(sample_livrable), "--out", str(tmp_path / "out"), "--projet",
                                       str(tmp_path / "projet.json"), "--db", f"sqlite:///{tmp_path / 'db.sqlite'}"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "out" / "preview.html").read_text(encoding="utf-8")
    data = page_data(page)
    assert (data["title"], data["subtitle"]) == ("Ortho privée", "stockage privé")
    assert str(sample_livrable) not in page
    assert layer(data, "dalles")["classes"][0]["common"]["idPCRS"] == "p1"


def test_more_layers_are_drawn_above_the_dalles() -> None:
    holes = {"id": "holes", "label": "Trous", "key": "check", "name": "cell", "link": None,
             "classes": [{"id": "hole", "label": "trous", "color": "#ff00ff", "count": 1}],
             "features": [{"type": "Feature", "geometry": None, "properties": {"check": "hole", "cell": "3,3"}}]}
    data = preview.map_data(ScanResult(source="file:///x", listed_files=0), [], "x", "", more=[holes])
    assert [item["id"] for item in data["layers"]] == ["emprise", "dalles", "holes"]
