"""Indexing through a real nginx: same outputs as the local folder, one ranged GET per dalle."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest
from click.testing import CliRunner

from indexer.cli import main
from indexer.storages.access import RetryPolicy
from indexer.storages.addresses import AddressPolicy
from indexer.storages.http import HTTPListingStorage

pytestmark = pytest.mark.servers


def index(source: str, out: Path, db: Path) -> dict[str, object]:
    result = CliRunner().invoke(main, ["index", source, "--out", str(out), "--db", f"sqlite:///{db}", "--quiet"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_http_listing_gives_the_same_outputs_as_the_folder(sample_livrable: Path, serve, tmp_path: Path) -> None:
    server = serve(sample_livrable)
    index(str(sample_livrable), tmp_path / "local", tmp_path / "local.sqlite")
    index(server.url + "/", tmp_path / "http", tmp_path / "http.sqlite")
    for name in ("dalles.geojson", "livrables.geojson"):
        assert (tmp_path / "http" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    local = json.loads((tmp_path / "local" / "report.json").read_text())
    remote = json.loads((tmp_path / "http" / "report.json").read_text())
    assert remote["source"] == server.url + "/"
    for key in ("listed_files", "raster_files", "indexed", "reused", "skipped"):
        assert remote[key] == local[key]


def test_one_ranged_get_per_dalle_and_no_probing(sample_livrable: Path, serve, tmp_path: Path) -> None:
    server = serve(sample_livrable)
    index(server.url + "/", tmp_path / "out", tmp_path / "state.sqlite")
    requests = server.requests()
    pages = [r for r in requests if r.path.endswith("/")]
    files = [r for r in requests if not r.path.endswith("/")]
    assert sorted(unquote(r.path) for r in pages) == ["/", "/anomalies/", "/lot 1/", "/lot 2/",
                                                      "/lot 2/secteur été/"]
    assert {r.method for r in requests} == {"GET"}  # no HEAD
    per_file = Counter(unquote(r.path) for r in files)
    # Every raster but the 0-byte one costs exactly one request; nothing else is fetched.
    rasters = {f"/{p.relative_to(sample_livrable).as_posix()}" for p in sample_livrable.rglob("*")
               if p.suffix in (".tif", ".jp2", ".ecw") and p.stat().st_size > 0}
    assert per_file == dict.fromkeys(rasters, 1)
    assert all(r.range == "bytes=0-16383" for r in files)
    assert all(r.status == 206 for r in files)
    assert sum(r.bytes_sent for r in files) / len(files) < 16 * 1024 + 1024


def test_sidecar_listed_is_read_only_for_a_dalle_that_needs_it(make_dalle, serve, tmp_path: Path) -> None:
    root = make_dalle("geo.tif").parent
    make_dalle("bare.tif", georeferenced=False, pixels=200, resolution_m=1.0)
    (root / "bare.tfw").write_text("1.0\n0.0\n0.0\n-1.0\n700000.5\n6600199.5\n")
    (root / "bare.prj").write_text('PROJCS["RGF93 v1 / Lambert-93",GEOGCS["RGF93 v1",DATUM["Reseau_Geodesique_'
                                   'Francais_1993_v1",SPHEROID["GRS 1980",6378137,298.257222101]],PRIMEM["Greenwich"'
                                   ',0],UNIT["degree",0.0174532925199433]],PROJECTION["Lambert_Conformal_Conic_2SP"],'
                                   'PARAMETER["latitude_of_origin",46.5],PARAMETER["central_meridian",3],PARAMETER['
                                   '"standard_parallel_1",49],PARAMETER["standard_parallel_2",44],PARAMETER["false_'
                                   'easting",700000],PARAMETER["false_northing",6600000],UNIT["metre",1]]')
    (root / "geo.tfw").write_text("1.0\n0.0\n0.0\n-1.0\n0.5\n0.5\n")  # ignored: the header has georeferencing
    server = serve(root)
    summary = index(server.url + "/", tmp_path / "out", tmp_path / "state.sqlite")
    assert (summary["indexed"], summary["skipped"]) == (2, 0)
    fetched = sorted(r.path for r in server.requests() if r.path != "/")
    assert fetched == ["/bare.prj", "/bare.tfw", "/bare.tif", "/geo.tif"]
    dalles = {f["properties"]["chemin"]: f["properties"]
              for f in json.loads((tmp_path / "out" / "dalles.geojson").read_text())["features"]}
    assert dalles["bare.tif"]["epsg"] == "EPSG:2154"


def test_sizes_and_dates_come_from_the_listing(sample_livrable: Path, serve) -> None:
    server = serve(sample_livrable)
    storage = HTTPListingStorage(server.url + "/", RetryPolicy(), "test", addresses=AddressPolicy.of(["127.0.0.1"]))
    entries = {e.path: e for e in storage.list_files()}
    path = "lot 2/secteur été/PCRS_651600_6861400_L93.jp2"
    assert entries[path].size == (sample_livrable / path).stat().st_size
    assert entries[path].mtime is not None and entries[path].mtime.startswith("20")
    assert len(server.requests()) == 5  # listing pages only


def test_unlistable_storage_exits_3_and_keeps_the_last_result(sample_livrable: Path, serve, tmp_path: Path) -> None:
    server = serve(sample_livrable)
    out = tmp_path / "out"
    index(server.url + "/", out, tmp_path / "state.sqlite")
    before = (out / "dalles.geojson").read_bytes()
    result = CliRunner().invoke(main, ["index", server.url + "/absent/", "--out", str(out), "--db",
                                       f"sqlite:///{tmp_path / 'state.sqlite'}"])
    assert result.exit_code == 3
    assert result.stderr == f"pcrs-indexer: error: cannot list {server.url}/absent/: not found (HTTP 404)\n"
    assert (out / "dalles.geojson").read_bytes() == before


def test_rescan_of_a_listing_without_exact_sizes_costs_one_head_per_dalle(tmp_path: Path) -> None:
    import os
    import shutil
    import time

    from indexer.pipeline import ScanOptions, scan_storage
    from indexer.sample import make_sample_livrable
    from indexer.store.engine import create_store
    from tests.conftest import SMALL
    from tests.servers.servers import Apache, public_folder

    root = public_folder()
    server = None
    try:
        make_sample_livrable(root / "livrable", SMALL)
        for path in (root / "livrable").rglob("*"):  # Apache makes the ETag of a file changed in the last
            os.utime(path, (time.time() - 3600,) * 2)  # second weak, and strong again on the re-scan's HEAD
        server = Apache(root, tmp_path / "apache").start()
        engine = create_store(f"sqlite:///{tmp_path / 'state.sqlite'}")
        policy = AddressPolicy.of(["127.0.0.1"])
        url = server.url + "/fancy/livrable/"
        with HTTPListingStorage(url, RetryPolicy(), "test", addresses=policy) as storage:
            rounded = {e.path for e in storage.list_files() if e.size is None and e.path.endswith((".tif", ".jp2"))}
            first = scan_storage(storage, engine, ScanOptions())
        assert len(rounded) >= 15  # Apache shows "9.0K": no exact size, no signature
        before = len(server.requests())
        with HTTPListingStorage(url, RetryPolicy(), "test", addresses=policy) as storage:
            second = scan_storage(storage, engine, ScanOptions())
        again = server.requests()[before:]
        assert (second.indexed, second.reused, len(second.problems)) == (0, 15, 7)
        assert second.dalles == first.dalles
        assert sorted({r.method for r in again}) == ["GET", "HEAD"]
        heads = [r.path.encode().decode("unicode_escape").encode("latin-1").decode() for r in again
                 if r.method == "HEAD"]  # Apache logs "é" as "\\xc3\\xa9"
        assert sorted(heads) == sorted(
            f"/fancy/livrable/{p}" for p in rounded)
        assert all(r.path.endswith("/") for r in again if r.method == "GET")  # listing pages only
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
