"""The PCRS data API on a real ``pcrs-indexer serve``: the export's bytes, streamed, filtered, cached, gzip.

The store is filled directly with generated records (a scan of 100,000 files would take minutes):
a 100,000-dalle livrable near Paris and a 5-dalle one in Lyon, each of its own projet, published
and scanned as the fleet records them.
"""

from __future__ import annotations

import gzip
import os
import sqlite3
import subprocess
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pyproj import CRS, Transformer
from sqlalchemy import Engine, func, insert, select

from indexer.api.data import HEAD
from indexer.export import export_all
from indexer.projet import Projet
from indexer.store.engine import create_store, now
from indexer.store.records import crs_ids
from indexer.store.schema import scans, storages
from tests.servers.api_fixtures import ApiServer, ApiServers
from tests.unit.test_export import LYON, LYON_DALLES, PARIS, projet_of, publish

COLS, ROWS = 250, 400
"""The big livrable: a grid of 250 × 400 dalles of 200 m (50 km × 80 km)."""
BIG = projet_of("b6c1e3a0-5f1d-4c55-9a2e-0d8f3b7a6c11", "Grand Paris", "Orthophoto 2026")
SMALL = projet_of("0f4e2d9c-1b3a-4e8f-8c7d-6a5b4c3d2e1f", "Lyon", "Ortho Lyon")


def seed_grid(engine: Engine, url: str, projet: Projet, origin: tuple[float, float], cols: int, rows: int) -> None:
    """Publish `projet`'s livrable on `url` with a `cols` × `rows` grid of 200 m dalles, its records
    written by SQLite's own bulk insert (as `scans.finish_scan` writes them, minus its per-row cost)."""
    storage = publish(engine, url, projet, [])
    with engine.begin() as conn:
        crs = crs_ids(conn, [CRS.from_epsg(2154).to_wkt()])
        scan = conn.execute(select(func.max(scans.c.id)).where(scans.c.storage_id == storage)).scalar_one()
    (crs_id,) = crs.values()
    meta = ('{{"mime":"image/tiff","width":4000,"height":4000,"bands":["Red(Byte)","Green(Byte)","Blue(Byte)"],'
            '"compression":"JPEG","epsg":2154,"corners":[[{x},{y}],[{x2},{y}],[{x2},{y2}],[{x},{y2}]],'
            '"resolution_cm":5.0,"open":true}}')

    def rows_of() -> Iterator[tuple[object, ...]]:
        for row in range(rows):
            for col in range(cols):
                x, y = origin[0] + col * 200, origin[1] - row * 200
                yield (storage, f"r{row:03d}/PCRS_{int(x)}_{int(y)}.tif", 50_000_000 + col, "2026-01-01", "valid",
                       crs_id, meta.format(x=x, y=y, x2=x + 200, y2=y - 200), scan)

    database = engine.url.database
    assert database is not None
    with sqlite3.connect(database) as db:
        db.executemany("INSERT INTO records (storage_id, path, size, mtime, status, crs_id, meta, scan_id) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows_of())
        db.execute("UPDATE storages SET dalles = ? WHERE id = ?", (cols * rows, storage))


@dataclass
class Data:
    api: ApiServer
    db_url: str
    export: Path
    """``pcrs-indexer export``'s two files of the store before the big livrable was published."""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, module_api_server: ApiServers) -> Iterator[Data]:
    work = tmp_path_factory.mktemp("api-data")
    db_url = f"sqlite:///{work / 'state.sqlite'}"
    engine = create_store(db_url)
    publish(engine, "http://lyon.test/", SMALL, LYON_DALLES)
    export_all(engine, work / "export")  # what `pcrs-indexer export` writes of the small livrable alone
    seed_grid(engine, "http://paris.test/", BIG, PARIS, COLS, ROWS)
    engine.dispose()
    yield Data(module_api_server.start(db_url=db_url), db_url, work / "export")


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_dalles_geojson_streams_100000_dalles_in_flat_memory(data: Data, tmp_path: Path) -> None:
    target = tmp_path / "dalles.geojson"
    pid = data.api.process.pid
    before = peak = _rss_kb(pid)
    cpu = _cpu_s(pid)
    started = time.monotonic()
    curl = subprocess.Popen(["curl", "-s", "-N", "-o", str(target), "-w", "%{http_code} %{time_starttransfer}",
                             f"{data.api.url}/data/stockages/dalles.geojson"], stdout=subprocess.PIPE)
    while curl.poll() is None:
        peak = max(peak, _rss_kb(pid))
        time.sleep(0.02)
    status, first_byte = curl.communicate()[0].decode().split()
    took = time.monotonic() - started
    cpu = _cpu_s(pid) - cpu
    assert status == "200"
    assert float(first_byte) < 1.0, f"first byte after {first_byte} s"
    body = target.read_bytes()
    assert body.startswith(HEAD.encode() + b"\n") and body.endswith(b"\n]}\n")
    assert body.count(b'{"type":"Feature",') == COLS * ROWS + len(LYON_DALLES)
    assert body.count(f'"idPCRS":"{BIG.id}"'.encode()) == COLS * ROWS
    grew = (peak - before) / 1024
    print(f"dalles.geojson: {COLS * ROWS} dalles, {len(body)} bytes in {took:.1f} s, first byte {first_byte} s, "
          f"server {before / 1024:.0f} MB + {grew:.1f} MB, {cpu:.1f} s of its CPU")
    assert grew < 64, f"the server grew by {grew:.0f} MB streaming {COLS * ROWS} dalles in {took:.1f} s"


IDENTITY = {"Accept-Encoding": "identity"}
"""httpx asks for gzip unless told otherwise."""


def test_each_file_is_the_exports_bytes(data: Data) -> None:
    with data.api.client(headers=IDENTITY) as client:
        for name in ("dalles", "livrables"):
            answer = client.get(f"/data/stockages/{name}.geojson", params={"initiative": SMALL.id})
            assert answer.status_code == 200
            assert answer.content == (data.export / f"{name}.geojson").read_bytes()
            assert answer.headers["content-type"] == "application/geo+json"
            assert answer.headers["content-disposition"] == f'attachment; filename="{name}.geojson"'
            assert answer.headers["cache-control"] == "no-cache"
            assert "Accept-Encoding" in answer.headers["vary"]
            assert "content-encoding" not in answer.headers
        names = [f["properties"]["nom"] for f in client.get("/data/stockages/livrables.geojson").json()["features"]]
    assert names == ["Ortho Lyon", "Orthophoto 2026"]  # by storage id


def test_a_second_get_with_the_etag_answers_304_until_the_store_changes(data: Data) -> None:
    route = "/data/stockages/dalles.geojson"
    params = {"initiative": SMALL.id}
    with data.api.client() as client:
        first = client.get(route, params=params)
        etag, modified = first.headers["etag"], first.headers["last-modified"]
        again = client.get(route, params=params, headers={"If-None-Match": etag})
        assert (again.status_code, again.content) == (304, b"")
        assert (again.headers["etag"], again.headers["last-modified"]) == (etag, modified)
        assert client.get(route, params=params, headers={"If-None-Match": f'W/"x", {etag}'}).status_code == 304
        assert client.get(route, params=params, headers={"If-None-Match": "*"}).status_code == 304
        assert client.get(route, params=params, headers={"If-Modified-Since": modified}).status_code == 304
        assert client.get(route, params=params, headers={"If-None-Match": '"other"'}).status_code == 200
        other = client.get(route, params={"bbox": LYON_BOX}, headers={"If-None-Match": etag})  # another filter
        assert other.status_code == 200 and other.headers["etag"] != etag
        livrables = client.get("/data/stockages/livrables.geojson", params=params, headers={"If-None-Match": etag})
        assert livrables.status_code == 200
        engine = create_store(data.db_url)
        try:
            with engine.begin() as conn:  # a scan succeeds: the export may have changed
                storage = conn.execute(select(storages.c.id).where(storages.c.url == "http://lyon.test/")).scalar()
                conn.execute(insert(scans).values(storage_id=storage, status="succeeded", step="done",
                                                  started_at=now(), finished_at=now()))
        finally:
            engine.dispose()
        changed = client.get(route, params=params, headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag
        assert changed.content == first.content


def test_gzip_is_asked_for_and_streamed(data: Data) -> None:
    with data.api.client(headers=IDENTITY) as client:
        plain = client.get("/data/stockages/dalles.geojson", params={"initiative": SMALL.id})
        with client.stream("GET", "/data/stockages/dalles.geojson", params={"initiative": SMALL.id},
                           headers={"Accept-Encoding": "br;q=1.0, gzip;q=0.5"}) as zipped:
            raw = b"".join(zipped.iter_raw())
        refused = client.get("/data/stockages/dalles.geojson", params={"initiative": SMALL.id},
                             headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert zipped.status_code == 200
    assert zipped.headers["content-encoding"] == "gzip"
    assert gzip.decompress(raw) == plain.content
    assert zipped.headers["etag"] == plain.headers["etag"][:-1] + '-gzip"'
    assert "content-encoding" not in refused.headers and refused.content == plain.content


LYON_BOX = "4.8,45.5,5.0,45.9"


def test_initiative_and_bbox_filter(data: Data) -> None:
    lyon_box = LYON_BOX
    with data.api.client() as client:
        small = client.get("/data/stockages/dalles.geojson", params={"initiative": SMALL.id}).json()["features"]
        assert sorted(f["properties"]["chemin"] for f in small) == sorted(d.path for d in LYON_DALLES)
        assert {f["properties"]["idPCRS"] for f in small} == {SMALL.id}
        boxed = client.get("/data/stockages/dalles.geojson", params={"bbox": lyon_box}).json()["features"]
        assert [f["properties"]["chemin"] for f in boxed] == [f["properties"]["chemin"] for f in small]
        livrables = client.get("/data/stockages/livrables.geojson", params={"bbox": lyon_box}).json()["features"]
        assert [f["properties"]["initiative"] for f in livrables] == [SMALL.id]
        to_wgs84 = Transformer.from_crs(2154, 4326, always_xy=True)
        (west, east), (south, north) = to_wgs84.transform([LYON[0] + 50, LYON[0] + 350], [LYON[1] - 150, LYON[1] - 50])
        part = client.get("/data/stockages/dalles.geojson",  # within Lyon's first two dalles
                          params={"bbox": f"{west},{south},{east},{north}"}).json()["features"]
        assert [f["properties"]["chemin"] for f in part] == ["lot/d0.tif", "lot/d1.tif"]
        none = client.get("/data/stockages/dalles.geojson", params={"initiative": "not-a-projet"})
        assert none.status_code == 200 and none.json() == {"type": "FeatureCollection", "features": []}
        for bad in ("1,2,3", "a,b,c,d", "5,45,4,46", "nan,0,1,1", "0,0,1,inf", "-200,0,1,1", "0,-91,1,1", ""):
            for route in ("dalles", "livrables"):
                refused = client.get(f"/data/stockages/{route}.geojson", params={"bbox": bad})
                assert refused.status_code == 400, bad
                assert refused.json()["code"] == 400 and refused.json()["message"].startswith(f"bbox {bad!r} not valid")


def test_first_byte_comes_before_the_features(data: Data) -> None:
    with httpx.Client(base_url=data.api.url, timeout=30.0) as client:
        started = time.monotonic()
        with client.stream("GET", "/data/stockages/dalles.geojson", headers={"Accept-Encoding": "gzip"}) as answer:
            first = next(answer.iter_raw())
            waited = time.monotonic() - started
    assert waited < 1.0, f"first bytes after {waited:.2f} s"
    # the head is flushed through gzip at once: it decodes without the rest of the stream
    assert zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(first).startswith(HEAD.encode())
