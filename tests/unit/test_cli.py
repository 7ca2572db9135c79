"""`pcrs-indexer index` end to end on the sample livrable: every output field, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import shapely
from click.testing import CliRunner
from pyproj import CRS, Transformer
from shapely.geometry import shape

from indexer.cli import main
from indexer.sample import BAD_FILES
from tests.conftest import SMALL

PROJET = {
    "_id": "6523f6b0c3a5d1a2b3c4d5e6",
    "nom": "PCRS Métropole Test",
    "etapes": [{"statut": "investigation", "date_debut": "2023-01-01"},
               {"statut": "prod_en_cours", "date_debut": "2024-03-01"},
               {"statut": "disponible", "date_debut": "2025-09-15"},
               {"statut": "obsolete", "date_debut": "2099-01-01"}],
    "acteurs": [{"nom": "Métropole Test", "siren": "123456789", "role": "porteur"},
                {"nom": "Enedis", "role": "financeur"},
                {"nom": "Métropole Test", "role": "aplc"}],
    "subventions": [{"nom": "FEDER 1", "nature": "feder", "montant": 1000, "echeance": "2025-01-01"},
                    {"nom": "Région", "nature": "cepr", "montant": 10},
                    {"nom": "FEDER 2", "nature": "feder"}],
    "livrables": [{"nom": "Ortho 2025", "nature": "raster_rvb", "licence": "ouvert_lo", "diffusion": "wms",
                   "diffusion_url": "https://example.test/wms", "diffusion_layer": "ortho2025",
                   "recouvr_lat": 30, "recouvr_lon": 60, "focale": 100.0, "stockage": "http",
                   "stockage_params": {"url": "https://example.test/ortho/"}, "stockage_public": True}],
}


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def indexed(sample_livrable: Path, tmp_path: Path) -> Path:
    (tmp_path / "projet.json").write_text(json.dumps(PROJET), encoding="utf-8")
    out = tmp_path / "out"
    result = run("index", str(sample_livrable), "--out", str(out), "--projet", str(tmp_path / "projet.json"),
                 "--db", f"sqlite:///{tmp_path / 'state.sqlite'}", "--quiet")
    assert result.exit_code == 0, result.output
    return out


def expected_paths() -> list[str]:
    from indexer.sample import dalle_path

    return sorted(dalle_path(SMALL, c, r) for r in range(SMALL.rows) for c in range(SMALL.cols)
                  if (c, r) != SMALL.hole)


def wgs84_ring(corners: list[tuple[float, float]]) -> list[list[float]]:
    t = Transformer.from_crs(CRS.from_epsg(2154), CRS.from_epsg(4326), always_xy=True)
    ring = [[round(v, 7) for v in t.transform(x, y)] for x, y in corners]
    return [*ring, ring[0]]


def test_dalles_geojson(indexed: Path, sample_livrable: Path) -> None:
    collection = load(indexed / "dalles.geojson")
    features = collection["features"]
    assert collection["type"] == "FeatureCollection"
    assert [f["properties"]["chemin"] for f in features] == expected_paths()
    first = features[0]
    path = "lot 1/PCRS_651000_6861800_L93.tif"
    assert first["properties"] == {
        "dateAcquisition": None, "dateRecette": None, "descriptionElementsQualite": None,
        "idPCRS": "6523f6b0c3a5d1a2b3c4d5e6", "nomImage": "PCRS_651000_6861800_L93.tif",
        "precisionplanimetriqueCorpsdeRue": None, "precisionplanimetriqueZonesNaturelles": None,
        "resolution": 100, "typeImage": "image/tiff", "producteur": None, "licence": "ouvert_lo",
        "tailleFichier": (sample_livrable / path).stat().st_size, "tailleImage": "200x200",
        "compression": "JPEG", "epsg": "EPSG:2154", "bandes": "Red(Byte)/Green(Byte)/Blue(Byte)",
        "open": True, "focale": 100, "chemin": path,
    }
    assert list(first["properties"]) == [
        "dateAcquisition", "dateRecette", "descriptionElementsQualite", "idPCRS", "nomImage",
        "precisionplanimetriqueCorpsdeRue", "precisionplanimetriqueZonesNaturelles", "resolution",
        "typeImage", "producteur", "licence", "tailleFichier", "tailleImage", "compression", "epsg",
        "bandes", "open", "focale", "chemin"]
    # Counter-clockwise (RFC 7946): upper-left, lower-left, lower-right, upper-right.
    assert first["geometry"] == {"type": "Polygon", "coordinates": [wgs84_ring(
        [(651000, 6861800), (651000, 6861600), (651200, 6861600), (651200, 6861800)])]}
    by_path = {f["properties"]["chemin"]: f["properties"] for f in features}
    jp2 = by_path["lot 2/secteur été/PCRS_651600_6861400_L93.jp2"]
    assert (jp2["typeImage"], jp2["compression"], jp2["nomImage"]) == (
        "image/jp2", "LOSSY", "PCRS_651600_6861400_L93.jp2")
    assert {p["compression"] for p in by_path.values()} == {"JPEG", "LZW", "DEFLATE", "LOSSY"}


def test_livrables_geojson(indexed: Path, sample_livrable: Path) -> None:
    collection = load(indexed / "livrables.geojson")
    (feature,) = collection["features"]
    taille = sum((sample_livrable / p).stat().st_size for p in expected_paths())
    assert feature["properties"] == {
        "initiative": "6523f6b0c3a5d1a2b3c4d5e6", "dateActualite": "2025-09-15", "calendrier": "01",
        "nom": "Ortho 2025", "format": None, "compression": None, "epsg": "EPSG:2154", "taille": taille,
        "recouvrLat": 30, "recouvrLon": 60, "focale": 100, "licence": "ouvert_lo",
        "subventions": ["feder", "cepr"], "acteurs": ["Métropole Test", "Enedis"], "diffusion": "wms",
        "diffusionUrl": "https://example.test/wms", "diffusionLayer": "ortho2025",
    }
    # The document's numbers as it wrote them: 30 and 60, not 30.0 and 60.0.
    assert '"recouvrLat":30,"recouvrLon":60,' in (indexed / "livrables.geojson").read_text(encoding="utf-8")
    emprise = shape(feature["geometry"])
    assert emprise.geom_type == "Polygon" and emprise.is_valid
    assert len(emprise.interiors) == 1  # the missing dalle
    back = Transformer.from_crs(CRS.from_epsg(4326), CRS.from_epsg(2154), always_xy=True)
    native = shapely.transform(emprise, lambda c: np.column_stack(back.transform(c[:, 0], c[:, 1])))
    assert native.area == pytest.approx(15 * 200 * 200, rel=1e-5)
    assert native.bounds == pytest.approx((651000, 6861200, 651800, 6862000), abs=0.02)
    assert shapely.Polygon(native.interiors[0]).bounds == pytest.approx((651200, 6861600, 651400, 6861800),
                                                                        abs=0.02)
    assert not shapely.is_ccw(shapely.LinearRing(feature["geometry"]["coordinates"][1]))
    assert shapely.is_ccw(shapely.LinearRing(feature["geometry"]["coordinates"][0]))


def test_report(indexed: Path, sample_livrable: Path) -> None:
    report = load(indexed / "report.json")
    assert set(report) == {"source", "listed_files", "raster_files", "indexed", "reused", "skipped", "duration_s"}
    assert report["source"] == sample_livrable.as_uri()
    assert (report["listed_files"], report["raster_files"], report["indexed"], report["reused"]) == (23, 22, 15, 0)
    assert {s["path"]: s["reason"] for s in report["skipped"]} == BAD_FILES
    assert all(s["detail"] for s in report["skipped"])
    assert report["duration_s"] > 0


def test_outputs_open_with_gdal(indexed: Path) -> None:
    info = pyogrio.read_info(indexed / "dalles.geojson")
    assert info["features"] == 15
    assert info["crs"] == "EPSG:4326"
    assert list(info["fields"]) == ["dateAcquisition", "dateRecette", "descriptionElementsQualite", "idPCRS",
                                    "nomImage", "precisionplanimetriqueCorpsdeRue",
                                    "precisionplanimetriqueZonesNaturelles", "resolution", "typeImage",
                                    "producteur", "licence", "tailleFichier", "tailleImage", "compression",
                                    "epsg", "bandes", "open", "focale", "chemin"]
    livrables = pyogrio.read_info(indexed / "livrables.geojson")
    assert (livrables["features"], livrables["geometry_type"]) == (1, "Polygon")


def test_without_projet_the_projet_fields_are_null(sample_livrable: Path, tmp_path: Path) -> None:
    result = run("index", str(sample_livrable), "--out", str(tmp_path / "out"), "--db",
                 f"sqlite:///{tmp_path / 's.sqlite'}", "--quiet")
    assert result.exit_code == 0
    props = load(tmp_path / "out" / "livrables.geojson")["features"][0]["properties"]
    assert {k: v for k, v in props.items() if k not in ("format", "compression", "epsg", "taille")} == {
        "initiative": None, "dateActualite": None, "calendrier": None, "nom": None, "recouvrLat": None,
        "recouvrLon": None, "focale": None, "licence": None, "subventions": [], "acteurs": [], "diffusion": None,
        "diffusionUrl": None, "diffusionLayer": None}
    dalle = load(tmp_path / "out" / "dalles.geojson")["features"][0]["properties"]
    assert (dalle["idPCRS"], dalle["licence"], dalle["focale"]) == (None, None, None)
    summary = json.loads(result.stdout)
    assert (summary["indexed"], summary["skipped"], summary["reused"]) == (15, 7, 0)


def test_invalid_source_fails_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("index", str(tmp_path / "missing"), "--out", str(out), "--db", f"sqlite:///{tmp_path / 's'}")
    assert result.exit_code == 2
    assert result.stderr == f"pcrs-indexer: error: {tmp_path / 'missing'}: no such folder\n"
    assert not out.exists()
    result = run("index", "gopher://host/x", "--out", str(out), "--db", f"sqlite:///{tmp_path / 's'}")
    assert result.exit_code == 2
    assert result.stderr.startswith("pcrs-indexer: error: gopher://host/x: unsupported scheme 'gopher'")
    assert not out.exists()


def test_unknown_livrable_exits_4(sample_livrable: Path, tmp_path: Path) -> None:
    (tmp_path / "projet.json").write_text(json.dumps(PROJET), encoding="utf-8")
    result = run("index", str(sample_livrable), "--out", str(tmp_path / "out"), "--projet",
                 str(tmp_path / "projet.json"), "--livrable", "Autre", "--db", f"sqlite:///{tmp_path / 's'}")
    assert result.exit_code == 4
    assert result.stderr == "pcrs-indexer: error: livrable 'Autre' not found in projet 'PCRS Métropole Test'\n"


def test_the_only_raster_livrable_is_chosen_and_said(sample_livrable: Path, tmp_path: Path) -> None:
    doc = json.loads(json.dumps(PROJET))
    ortho = {**doc["livrables"][0], "nature": "jpeg2000", "stockage_params": {"url": "https://elsewhere.test/o/"}}
    vecteur = {**ortho, "nom": "Corps de rue", "nature": "gml", "stockage_params": {"url": "https://v.test/"}}
    doc["livrables"] = [vecteur, ortho]
    (tmp_path / "projet.json").write_text(json.dumps(doc), encoding="utf-8")
    result = run("index", str(sample_livrable), "--out", str(tmp_path / "out"), "--projet",
                 str(tmp_path / "projet.json"), "--db", f"sqlite:///{tmp_path / 's.sqlite'}")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["livrable"], summary["livrable_chosen"]) == ("Ortho 2025", "the projet's only raster livrable")
    assert result.stderr.splitlines()[0] == "livrable 'Ortho 2025' (the projet's only raster livrable)"
    props = load(tmp_path / "out" / "livrables.geojson")["features"][0]["properties"]
    assert props["nom"] == "Ortho 2025"
