"""The store's export (`indexer.export`): its pages, its filters and its fingerprint, on a SQLite store
filled with generated records of three livrables on two storages."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pyproj import Transformer
from sqlalchemy import Engine, event, update

from indexer import export, geojson
from indexer.emprise import compute_emprise
from indexer.models import Dalle, DalleProblem, FileEntry, SkipReason
from indexer.projet import Projet, published_document
from indexer.store import catalog, scans
from indexer.store.engine import create_store
from indexer.store.schema import livrables
from tests.unit.test_cli import PROJET

TODAY = date(2026, 1, 15)
WKT = "EPSG:2154"
PARIS = (651000.0, 6862000.0)
LYON = (842000.0, 6519000.0)


def dalles(origin: tuple[float, float], count: int, prefix: str = "") -> list[Dalle]:
    """`count` 200 m dalles in a row from `origin` (Lambert-93), named so that their paths sort
    in code point order unlike their numbers (``d10`` before ``d2``)."""
    from pyproj import CRS

    wkt = CRS.from_epsg(2154).to_wkt()
    made = []
    for i in range(count):
        x, y = origin[0] + i * 200, origin[1]
        made.append(Dalle(file=FileEntry(f"{prefix}d{i}.tif", 1000 + i, "2026-01-01T00:00:00"), mime="image/tiff",
                          width=4000, height=4000, bands=("Red(Byte)", "Green(Byte)", "Blue(Byte)"),
                          compression="JPEG", epsg=2154, crs_wkt=wkt,
                          corners=((x, y), (x + 200, y), (x + 200, y - 200), (x, y - 200)),
                          resolution_cm=5.0, open=True))
    return made


def projet_of(projet_id: str | None, nom: str, livrable: str) -> Projet:
    doc: dict[str, Any] = json.loads(json.dumps(PROJET))
    doc.pop("_id")
    if projet_id is not None:
        doc["_id"] = projet_id
    doc["nom"] = nom
    doc["livrables"][0]["nom"] = livrable
    return Projet.from_document(doc)


def publish(engine: Engine, url: str, projet: Projet, records: list[Dalle], problems: Sequence[DalleProblem] = ()
            ) -> int:
    """A livrable published on the storage at `url`, whose scan found `records`; returns the storage id."""
    (livrable,) = projet.livrables
    storage = catalog.publish_livrable(engine, url, url, None, projet.id or projet.nom or "", livrable.nom,
                                       published_document(projet, livrable))
    scan = scans.start_scan(engine, storage)
    assert scan is not None
    scans.finish_scan(engine, storage, scan, records, list(problems), {"listed": len(records), "read": len(records)})
    ordered = sorted(records, key=lambda d: d.path)
    feature = geojson.livrable_feature(ordered, compute_emprise(ordered), projet, livrable, TODAY)
    with engine.begin() as conn:
        conn.execute(update(livrables).where(livrables.c.storage_id == storage, livrables.c.nom == livrable.nom)
                     .values(feature=feature))
    return storage


PARIS_DALLES = dalles(PARIS, 12)
LYON_DALLES = dalles(LYON, 5, prefix="lot/")
A = projet_of("p-a", "Paris", "A")
B = projet_of("p-b", "Lyon", "B")
C = projet_of("p-c", "Paris commune", "C")
NAMELESS = projet_of(None, "p-a", "Sans id")  # a projet known by its nom only, equal to A's _id


def filled(path: Path) -> Engine:
    return fill(create_store(f"sqlite:///{path}"))


def fill(engine: Engine) -> Engine:
    """Three projets' livrables on two storages (one shared), and a projet without _id on a third."""
    publish(engine, "http://paris.test/", A, PARIS_DALLES)
    publish(engine, "http://lyon.test/", B, LYON_DALLES,
            [DalleProblem(FileEntry("lot/broken.tif", 10, None), SkipReason.CORRUPT, "truncated")])
    publish(engine, "http://paris.test/", C, PARIS_DALLES)  # shares A's storage
    publish(engine, "http://paris-bis.test/", NAMELESS, dalles(PARIS, 1, prefix="bis/"))
    return engine


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The store the tests read only."""
    engine = filled(tmp_path_factory.mktemp("export") / "state.sqlite")
    yield engine
    engine.dispose()


@pytest.fixture
def changing(tmp_path: Path) -> Iterator[Engine]:
    """A store of its own for a test that changes it."""
    engine = filled(tmp_path / "state.sqlite")
    yield engine
    engine.dispose()


def expected(projet: Projet, records: list[Dalle]) -> list[dict[str, Any]]:
    """A livrable's dalle features as its own storage's files give them: by path."""
    ordered = sorted(records, key=lambda d: d.path)
    return list(geojson.dalle_features(ordered, projet, projet.livrables[0]))


def chemins(features: Iterator[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(f["properties"]["idPCRS"], f["properties"]["chemin"]) for f in features]


def test_the_export_is_each_livrables_files_in_turn(store: Engine, tmp_path: Path) -> None:
    summary = export.export_all(store, tmp_path / "export")
    assert (summary["livrables"], summary["dalles"]) == (4, 12 + 5 + 12 + 1)
    written = json.loads((tmp_path / "export" / "dalles.geojson").read_text(encoding="utf-8"))["features"]
    bis = dalles(PARIS, 1, prefix="bis/")
    assert written == expected(A, PARIS_DALLES) + expected(C, PARIS_DALLES) + expected(B, LYON_DALLES) \
        + expected(NAMELESS, bis)
    assert [f["properties"]["chemin"] for f in written[:4]] == ["d0.tif", "d1.tif", "d10.tif", "d11.tif"]
    noms = [f["properties"]["nom"] for f in
            json.loads((tmp_path / "export" / "livrables.geojson").read_text(encoding="utf-8"))["features"]]
    assert noms == ["A", "C", "B", "Sans id"]  # by storage, then in the order first published


@pytest.mark.parametrize(("page", "livrable_page"), [(1, 1), (2, 1), (3, 2), (12, 3), (13, 100)])
def test_pages_of_any_size_give_the_same_features(store: Engine, page: int, livrable_page: int) -> None:
    assert list(export.dalle_features(store, page=page, livrable_page=livrable_page)) \
        == list(export.dalle_features(store))
    assert list(export.livrable_features(store, page=livrable_page)) == list(export.livrable_features(store))


def test_each_page_is_one_query_with_its_limit(store: Engine) -> None:
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM records" in statement:
            statements.append(statement)

    event.listen(store, "before_cursor_execute", seen)
    try:
        features = list(export.dalle_features(store, initiative="p-b", page=2))
    finally:
        event.remove(store, "before_cursor_execute", seen)
    assert len(features) == 5
    assert len(statements) == 3  # 2 + 2 + 1 dalles: the short page ends the walk
    assert all("LIMIT" in s and "records.path >" in s for s in statements[1:])
    assert "records.path >" not in statements[0]


def test_initiative_keeps_one_projets_livrables(store: Engine) -> None:
    assert chemins(export.dalle_features(store, initiative="p-b", page=2)) == [
        ("p-b", f"lot/d{i}.tif") for i in range(5)]
    assert [f["properties"]["nom"] for f in export.livrable_features(store, initiative="p-b")] == ["B"]
    # "p-a" is A's _id, and the nom (not an initiative) of the projet without _id.
    assert {c for c, _ in chemins(export.dalle_features(store, initiative="p-a"))} == {"p-a"}
    assert len(list(export.dalle_features(store, initiative="p-a"))) == 12
    assert [f["properties"]["nom"] for f in export.livrable_features(store, initiative="p-a")] == ["A"]
    assert list(export.dalle_features(store, initiative="unknown")) == []
    assert list(export.livrable_features(store, initiative="unknown")) == []


def lonlat(x: float, y: float) -> tuple[float, float]:
    lon, lat = Transformer.from_crs(2154, 4326, always_xy=True).transform(x, y)
    return float(lon), float(lat)


def test_bbox_keeps_the_dalles_and_livrables_it_meets(store: Engine) -> None:
    lon, lat = lonlat(PARIS[0] + 2 * 200 + 100, PARIS[1] - 100)  # the middle of d2
    inside_d2 = (lon - 1e-5, lat - 1e-5, lon + 1e-5, lat + 1e-5)
    assert chemins(export.dalle_features(store, bbox=inside_d2, page=3)) == [("p-a", "d2.tif"), ("p-c", "d2.tif")]
    assert [f["properties"]["nom"] for f in export.livrable_features(store, bbox=inside_d2)] == ["A", "C"]
    # With the initiative too.
    assert chemins(export.dalle_features(store, initiative="p-c", bbox=inside_d2)) == [("p-c", "d2.tif")]
    # A box from the middle of d1 to the middle of d3 (x + 300 to x + 700): d1, d2, d3.
    west, south = lonlat(PARIS[0] + 300, PARIS[1] - 150)
    east, north = lonlat(PARIS[0] + 700, PARIS[1] - 50)
    around = (min(west, east), min(south, north), max(west, east), max(south, north))
    assert chemins(export.dalle_features(store, bbox=around, initiative="p-a")) == [
        ("p-a", "d1.tif"), ("p-a", "d2.tif"), ("p-a", "d3.tif")]
    # Lyon's livrable: all of it, and nothing of Paris.
    lyon = (*lonlat(LYON[0] - 10, LYON[1] - 210), *lonlat(LYON[0] + 1010, LYON[1] + 10))
    assert [f["properties"]["nom"] for f in export.livrable_features(store, bbox=lyon)] == ["B"]
    assert chemins(export.dalle_features(store, bbox=lyon)) == [("p-b", f"lot/d{i}.tif") for i in range(5)]
    assert list(export.dalle_features(store, bbox=(-60.0, 10.0, -59.0, 11.0))) == []
    assert list(export.livrable_features(store, bbox=(-60.0, 10.0, -59.0, 11.0))) == []


def test_a_dalle_meeting_the_box_by_an_edge_is_kept(store: Engine) -> None:
    (feature,) = [f for f in export.dalle_features(store, initiative="p-b")
                  if f["properties"]["chemin"] == "lot/d4.tif"]
    east = max(x for x, _ in feature["geometry"]["coordinates"][0])
    lats = [y for _, y in feature["geometry"]["coordinates"][0]]
    touching = (east, min(lats), east + 0.01, max(lats))
    assert chemins(export.dalle_features(store, bbox=touching)) == [("p-b", "lot/d4.tif")]


@pytest.mark.parametrize("bbox", [(1.0, 2.0, 0.0, 3.0), (0.0, 3.0, 1.0, 2.0), (0.0, 0.0, float("nan"), 1.0),
                                  (0.0, 0.0, 1.0), (0.0, 0.0, float("inf"), 1.0)])
def test_a_bbox_is_four_finite_numbers_min_first(bbox: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="bbox"):
        export.check_bbox(bbox)


def test_the_fingerprint_changes_with_what_is_exported(changing: Engine) -> None:
    store = changing
    first, at = export.fingerprint(store), export.last_modified(store)
    assert first == export.fingerprint(store) and len(first) == 32
    assert at is not None and at.tzinfo is not None
    storage = catalog.storage_id(store, "http://lyon.test/")
    scan = scans.start_scan(store, storage)
    assert scan is not None
    scans.fail_scan(store, scan, "unreachable")  # a failed scan changes nothing exported
    assert export.fingerprint(store) == first
    scan = scans.start_scan(store, storage)
    assert scan is not None
    scans.finish_scan(store, storage, scan, LYON_DALLES[:4], [], {"listed": 4, "read": 4})
    second = export.fingerprint(store)
    assert second != first
    later = export.last_modified(store)
    assert later is not None and later > at
    catalog.unpublish(store, "p-b", "B")
    assert export.fingerprint(store) not in (first, second)
    unpublished = export.last_modified(store)
    assert unpublished is not None and unpublished > later  # If-Modified-Since sees it too
    publish(store, "http://lyon.test/", B, LYON_DALLES)
    assert export.fingerprint(store) not in (first, second)


def test_an_empty_store_has_a_fingerprint_and_no_time(tmp_path: Path) -> None:
    engine = create_store(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    assert len(export.fingerprint(engine)) == 32 and export.last_modified(engine) is None
    assert list(export.dalle_features(engine)) == [] == list(export.livrable_features(engine))
    engine.dispose()


def geojson_export(store: Engine, out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    export.export_all(store, out)
    return (json.loads((out / "dalles.geojson").read_text(encoding="utf-8"))["features"],
            json.loads((out / "livrables.geojson").read_text(encoding="utf-8"))["features"])


def keyed(features: list[dict[str, Any]], *names: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {tuple(f["properties"][n] for n in names): f for f in features}


def ogr_features(path: Path) -> list[dict[str, Any]]:
    """The features of a file as GDAL reads them (pyogrio), as GeoJSON-like dicts."""
    import pyogrio
    import shapely

    meta, _, geometries, fields = pyogrio.raw.read(path)
    features = []
    for i, wkb in enumerate(geometries):
        properties = {name: values[i].item() if hasattr(values[i], "item") else values[i]
                      for name, values in zip(meta["fields"], fields, strict=True)}
        shape = shapely.from_wkb(wkb) if wkb is not None else None
        features.append({"properties": properties,
                         "geometry": shapely.geometry.mapping(shape) if shape is not None else None})
    return features


def same_geometry(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    import shapely.geometry

    if a is None or b is None:
        return a is b
    return bool(shapely.geometry.shape(a).equals_exact(shapely.geometry.shape(b), 0.0))


def test_flatgeobuf_holds_the_geojson_features_with_a_spatial_index(store: Engine, tmp_path: Path) -> None:
    import pyogrio

    dalles, livrables_ = geojson_export(store, tmp_path / "geojson")
    summary = export.export_all(store, tmp_path / "fgb", "fgb")
    assert (summary["dalles"], summary["livrables"]) == (30, 4)
    info = pyogrio.read_info(tmp_path / "fgb" / "dalles.fgb")
    assert (info["features"], info["geometry_type"], info["layer_name"]) == (30, "Polygon", "dalles")
    assert info["capabilities"]["fast_spatial_filter"] and "CRS84" in info["crs"]
    assert list(info["fields"]) == list(geojson.DALLE_PROPERTIES)
    read = ogr_features(tmp_path / "fgb" / "dalles.fgb")
    expected_dalles = keyed(dalles, "idPCRS", "chemin")
    assert len(read) == 30 and keyed(read, "idPCRS", "chemin").keys() == expected_dalles.keys()
    for feature in read:  # in the index's order (Hilbert), each dalle once
        want = expected_dalles[feature["properties"]["idPCRS"], feature["properties"]["chemin"]]
        assert feature["properties"] == want["properties"]
        assert same_geometry(feature["geometry"], want["geometry"])
    read = ogr_features(tmp_path / "fgb" / "livrables.fgb")
    expected_livrables = keyed(livrables_, "nom")
    assert sorted(f["properties"]["nom"] for f in read) == ["A", "B", "C", "Sans id"]
    for feature in read:
        want = expected_livrables[(feature["properties"]["nom"],)]
        lists = {k: json.loads(feature["properties"].pop(k)) for k in ("subventions", "acteurs")}  # JSON strings
        assert {**feature["properties"], **lists} == want["properties"]
        assert same_geometry(feature["geometry"], want["geometry"])
    # A spatial filter answers from the index: the d2 dalles of A and C.
    lon, lat = lonlat(PARIS[0] + 2 * 200 + 100, PARIS[1] - 100)
    meta, _, _, fields = pyogrio.raw.read(tmp_path / "fgb" / "dalles.fgb", bbox=(lon, lat, lon + 1e-6, lat + 1e-6),
                                          columns=["idPCRS", "chemin"])
    assert sorted(zip(*fields, strict=True)) == [("p-a", "d2.tif"), ("p-c", "d2.tif")]


def test_geoparquet_holds_the_geojson_features_in_geoarrow(store: Engine, tmp_path: Path) -> None:
    import duckdb
    import pyarrow.parquet as pq

    dalles, livrables_ = geojson_export(store, tmp_path / "geojson")
    summary = export.export_all(store, tmp_path / "parquet", "parquet")
    assert (summary["dalles"], summary["livrables"]) == (30, 4)
    path = tmp_path / "parquet" / "dalles.parquet"
    geo = json.loads(pq.read_metadata(path).metadata[b"geo"])
    all_coordinates = [c for f in dalles for c in f["geometry"]["coordinates"][0]]
    assert geo == {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": {
        "encoding": "polygon", "geometry_types": ["Polygon"], "orientation": "counterclockwise",
        "covering": {"bbox": {"xmin": ["bbox", "xmin"], "ymin": ["bbox", "ymin"], "xmax": ["bbox", "xmax"],
                              "ymax": ["bbox", "ymax"]}},
        "bbox": [min(x for x, _ in all_coordinates), min(y for _, y in all_coordinates),
                 max(x for x, _ in all_coordinates), max(y for _, y in all_coordinates)]}}}
    rows = pq.read_table(path).to_pylist()
    assert len(rows) == 30
    for row, want in zip(rows, dalles, strict=True):  # in the GeoJSON's order
        ring = [[v["x"], v["y"]] for v in row.pop("geometry")[0]]
        box = row.pop("bbox")
        assert row == want["properties"] and ring == want["geometry"]["coordinates"][0]
        assert box == {"xmin": min(x for x, _ in ring), "ymin": min(y for _, y in ring),
                       "xmax": max(x for x, _ in ring), "ymax": max(y for _, y in ring)}
    livrable_rows = pq.read_table(tmp_path / "parquet" / "livrables.parquet").to_pylist()
    assert [r["nom"] for r in livrable_rows] == ["A", "C", "B", "Sans id"]
    for row, want in zip(livrable_rows, livrables_, strict=True):
        polygons = [[[[v["x"], v["y"]] for v in ring] for ring in polygon] for polygon in row.pop("geometry")]
        row.pop("bbox")
        assert row == want["properties"]
        geometry = want["geometry"]
        assert polygons == ([geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"])
    # DuckDB reads it: the count, and the bbox column as a filter (the d2 dalles).
    lon, lat = lonlat(PARIS[0] + 2 * 200 + 100, PARIS[1] - 100)
    found = duckdb.connect().execute(
        "SELECT idPCRS, chemin FROM read_parquet(?) WHERE bbox.xmin <= ? AND bbox.xmax >= ? AND bbox.ymin <= ? "
        "AND bbox.ymax >= ? ORDER BY ALL", [str(path), lon, lon, lat, lat]).fetchall()
    assert found == [("p-a", "d2.tif"), ("p-c", "d2.tif")]


def test_the_export_command_takes_a_format(store: Engine, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from indexer.cli import main

    db = str(store.url)
    result = CliRunner().invoke(main, ["export", "--db", db, "--out", str(tmp_path / "out"), "--format", "fgb"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["format"], summary["dalles"], summary["livrables"]) == ("fgb", 30, 4)
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == [
        "dalles.fgb", "livrables.fgb"]
    result = CliRunner().invoke(main, ["export", "--db", db, "--out", str(tmp_path / "out"), "--format", "shp"])
    assert result.exit_code == 2 and "'shp' is not one of 'geojson', 'fgb', 'parquet'" in result.stderr
