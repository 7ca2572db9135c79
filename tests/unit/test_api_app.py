"""The application without a server (httpx's ASGI transport), and the scanner's document made from store facts."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pyproj import CRS

from indexer.api.app import create_app
from indexer.api.scanner import (
    Contents,
    Group,
    ScanFacts,
    StorageFacts,
    parse_id,
    posted_source,
    read_contents,
    storage_document,
    storage_params,
    storage_type,
)
from indexer.errors import ConfigError, StorageNotFound
from indexer.models import Dalle, DalleProblem, FileEntry, SkipReason
from indexer.settings import ApiSettings
from indexer.store import catalog, queries, scans
from indexer.store.engine import create_store
from tests.servers.servers import free_port

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
T1 = datetime(2026, 5, 1, 12, 0, 42, 500000, tzinfo=UTC)


def call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.request(method, path, **kwargs)
    return asyncio.run(run())


@pytest.fixture
def broker_app(tmp_path: Path) -> FastAPI:
    """The app in broker mode, its broker a closed port (no scanning thread is started without lifespan)."""
    settings = ApiSettings(db_url=f"sqlite:///{tmp_path / 's.sqlite'}", output_dir=tmp_path / "out",
                           broker_url=f"redis://127.0.0.1:{free_port()}/0", admin_token="t0ken-Admin")
    return create_app(settings)


def test_healthz_answers_503_when_the_broker_does_not(broker_app: FastAPI) -> None:
    answer = call(broker_app, "GET", "/healthz")
    assert answer.status_code == 503
    body = answer.json()
    assert (body["status"], body["mode"], body["store"]) == ("unavailable", "broker", "ok")
    assert body["broker"].startswith("Error 111 connecting to 127.0.0.1:")


def test_an_unexpected_error_is_a_json_500_without_detail(broker_app: FastAPI) -> None:
    @broker_app.get("/boom")
    def boom() -> None:
        raise RuntimeError("password=hunter2 in /srv/secret.py line 3")

    answer = call(broker_app, "GET", "/boom")
    assert (answer.status_code, answer.json()) == (500, {"code": 500, "message": "An unexpected error has occurred"})
    assert "hunter2" not in answer.text and "Traceback" not in answer.text


ADMIN = {"Authorization": "Token t0ken-Admin"}


def test_download_tokens_need_the_secret(broker_app: FastAPI) -> None:
    answer = call(broker_app, "POST", "/storages/1/generate-download-token", headers=ADMIN)
    assert (answer.status_code, answer.json()) == (404, {"code": 404, "message": "Storage not found"})
    catalog.register_storage(broker_app.state.api.engine, "https://example.fr/", "https://example.fr/", None)
    answer = call(broker_app, "POST", "/storages/1/generate-download-token", headers=ADMIN)
    assert (answer.status_code, answer.json()) == (503, {
        "code": 503, "message": "downloads are disabled: PCRS_INDEXER_DOWNLOAD_TOKEN_SECRET is not set"})


def test_a_scan_the_broker_cannot_take_is_taken_back(broker_app: FastAPI) -> None:
    engine = broker_app.state.api.engine
    catalog.register_storage(engine, "https://example.fr/", "https://example.fr/", None)
    answer = call(broker_app, "POST", "/storages/1/scan", headers=ADMIN)
    assert answer.status_code == 503
    assert answer.json()["message"].startswith("cannot reach the broker at redis://127.0.0.1:")
    assert answer.json()["message"].endswith(": scan 1 not queued")
    assert queries.active_scan(engine, 1) is None  # nothing left queued that no message will start
    assert call(broker_app, "GET", "/storages/1").json()["scan"]["status"] == "idle"


def test_a_validation_error_is_a_400_naming_the_field(broker_app: FastAPI) -> None:
    @broker_app.get("/typed")
    def typed(n: int) -> int:
        return n

    answer = call(broker_app, "GET", "/typed?n=x")
    assert (answer.status_code, answer.json()) == (400, {
        "code": 400, "message": "query.n: Input should be a valid integer, unable to parse string as an integer"})


def _facts(latest: ScanFacts | None, succeeded: ScanFacts | None, **kwargs: Any) -> StorageFacts:
    values: dict[str, Any] = {"id": 7, "url": "ftp://pcrs:***@ftp.example.fr:2121/ortho", "source": None,
                              "sealed": True, "last_success_at": T1 if succeeded else None, "last_error": None}
    values.update(kwargs)
    return StorageFacts(latest=latest, succeeded=succeeded, **values)


def _scan(status: str, step: str, **kwargs: Any) -> ScanFacts:
    values: dict[str, Any] = {"id": 3, "status": status, "step": step, "started_at": T0, "heartbeat_at": T1,
                              "listed": 10, "read": 4, "reused": 5, "skipped": 1, "to_read": 5,
                              "duration_s": None, "error": None}
    values.update(kwargs)
    return ScanFacts(**values)


def test_a_queued_storage_is_pending_and_its_params_shown_to_the_admin_only() -> None:
    facts = _facts(_scan("queued", "listing", to_read=None, listed=0, read=0, reused=0, skipped=0), None)
    public = storage_document(facts, Contents(), None, admin=False)
    assert public == {"_id": "7", "type": "ftp", "scan": {
        "status": "pending", "step": None, "queuedAt": "2026-05-01T12:00:00.000Z", "processingSince": None,
        "heartbeat": None, "progress": {"files": 0, "directories": None, "dataFiles": None,
                                        "notModifiedDataFiles": 0, "analyzedDataFiles": 0, "brokenDataFiles": 0},
        "lastError": None}, "lastError": None, "result": None}
    admin = storage_document(facts, Contents(), None, admin=True)
    assert admin["params"] == {"host": "ftp.example.fr", "port": 2121, "startPath": "/ortho", "username": "pcrs",
                               "password": "***", "secure": False}
    assert list(admin) == ["_id", "type", "params", "scan", "lastError", "result"]


def test_a_storage_being_read_is_processing_with_its_progress() -> None:
    document = storage_document(_facts(_scan("running", "reading"), None, last_error="earlier failure"),
                                Contents(), None, admin=False)
    assert document["scan"] == {
        "status": "processing", "step": "analyzing", "queuedAt": None, "processingSince": "2026-05-01T12:00:00.000Z",
        "heartbeat": "2026-05-01T12:00:42.500Z", "progress": {
            "files": 10, "directories": None, "dataFiles": 10, "notModifiedDataFiles": 5, "analyzedDataFiles": 3,
            "brokenDataFiles": 1}, "lastError": "earlier failure"}
    assert document["lastError"] == "earlier failure"


BANDS = ("Red(Byte)", "Green(Byte)", "Blue(Byte)")
L93 = "RGF93 v1 / Lambert-93"


def test_the_result_sums_up_the_records_of_the_last_successful_scan() -> None:
    contents = Contents((Group("valid", "image/tiff", "JPEG", 2154, BANDS, L93, 2, 300, 1),
                         Group("skipped", None, None, None, (), None, 2, 60, 2)), 3,
                        "the block table ends past the end of the file")
    envelope = {"type": "Polygon", "coordinates": [[[2.0, 48.0], [2.1, 48.0], [2.1, 48.1], [2.0, 48.0]]]}
    done = _scan("succeeded", "done", duration_s=1.25, listed=6)
    result = storage_document(_facts(done, done), contents, envelope, admin=False)["result"]
    assert result == {
        "lastSuccessfulScan": "2026-05-01T12:00:42.500Z", "files": 6, "directories": 3, "dataFiles": 4,
        "notModifiedDataFiles": 1, "analyzedDataFiles": 1, "brokenDataFiles": 2,
        "brokenDataSampleError": "the block table ends past the end of the file", "duration": 1.25,
        "raster": {"numRasterFiles": 2, "sizeRasterFiles": 300, "format": "geotiff", "compression": "JPEG",
                   "projection": {"name": L93, "code": "EPSG:2154"},
                   "bands": [{"id": 1, "colorInterpretation": "Red", "dataType": "Byte"},
                             {"id": 2, "colorInterpretation": "Green", "dataType": "Byte"},
                             {"id": 3, "colorInterpretation": "Blue", "dataType": "Byte"}],
                   "envelope": envelope}}
    mixed = Contents((*contents.groups, Group("valid", "image/jp2", "LOSSY", 2154, BANDS, L93, 1, 5, 1)), 3)
    raster = storage_document(_facts(done, done), mixed, None, admin=False)["result"]["raster"]
    assert (raster["format"], raster["compression"], raster["numRasterFiles"], raster["sizeRasterFiles"]) == (
        None, None, 3, 305)
    assert raster["bands"] is not None and raster["projection"] == {"name": L93, "code": "EPSG:2154"}


def test_a_storage_without_valid_dalle_has_no_raster() -> None:
    done = _scan("succeeded", "done")
    contents = Contents((Group("skipped", None, None, None, (), None, 1, 1, 1),), 1, "empty")
    assert storage_document(_facts(done, done), contents, None, admin=False)["result"]["raster"] is None


def test_contents_are_grouped_in_the_store(tmp_path: Path) -> None:
    engine = create_store(f"sqlite:///{tmp_path / 's.sqlite'}")
    storage, _ = catalog.register_storage(engine, "https://example.fr/", "https://example.fr/", None)
    wkt = CRS.from_epsg(2154).to_wkt()
    corners = ((700000.0, 6600200.0), (700200.0, 6600200.0), (700200.0, 6600000.0), (700000.0, 6600000.0))
    dalles = [Dalle(FileEntry(path, 100 + n, None, None), "image/tiff", 10, 10, BANDS, "DEFLATE", 2154, wkt,
                    corners, 20.0, True) for n, path in enumerate(["a/1.tif", "a/2.tif", "b/c/3.tif"])]
    problems = [DalleProblem(FileEntry("z.tif", 7, None, None), SkipReason.EMPTY, "no block written")]
    scan = scans.start_scan(engine, storage)
    assert scan is not None
    scans.finish_scan(engine, storage, scan, dalles, problems, {"listed": 5, "read": 4})
    assert read_contents(engine, storage, scan) == Contents(
        (Group("skipped", None, None, None, (), None, 1, 7, 1),
         Group("valid", "image/tiff", "DEFLATE", 2154, BANDS, L93, 3, 303, 3)), 3, "no block written")
    assert read_contents(engine, storage, scan + 1).groups[1].read == 0  # read by an earlier scan: reused


@pytest.mark.parametrize("ref", ["abc", "0", "-3", "1.0", "٣", "9" * 19, ""])
def test_malformed_ids_are_not_found(ref: str) -> None:
    with pytest.raises(StorageNotFound, match="^Invalid storage identifier$"):
        parse_id(ref)


@pytest.mark.parametrize(("body", "source"), [
    ({"type": "http", "params": {"url": "https://data.example.fr/ortho/"}}, "https://data.example.fr/ortho/"),
    ({"type": "ftp", "params": {"host": "ftp.example.fr", "port": "2121", "startPath": "/o", "username": "u",
                                "password": "p@ss", "secure": "1"}}, "ftps://u:p%40ss@ftp.example.fr:2121/o"),
    ({"type": "sftp", "params": {"host": "sftp.example.fr", "username": "u"}}, "sftp://u@sftp.example.fr/"),
    ({"type": "s3", "params": {"bucket": "b", "prefix": "p/q", "region": "gra"}}, "s3://b/p/q?region=gra"),
])
def test_posted_storages_make_their_source_url(body: dict[str, Any], source: str) -> None:
    assert posted_source(body) == source


def test_a_posted_url_of_another_scheme_or_an_external_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="^storage: a ftp storage is reached by ftp:// or ftps://, not https://$"):
        posted_source({"type": "ftp", "params": {"url": "https://example.fr/"}})
    # The site attaches every livrable with a stockage, an external download portal included.
    with pytest.raises(ConfigError, match=r"^storage: external \(url_externe only\): it cannot be scanned$"):
        posted_source({"type": "http", "params": {"url_externe": "https://portail.example.fr/"}})


@pytest.mark.parametrize(("url", "sealed", "kind", "params"), [
    ("https://u:pw-Secret@data.example.fr/o/", True, "http", {"url": "https://u:***@data.example.fr/o/"}),
    ("ftps://pcrs@ftp.example.fr/ortho%20A", True, "ftp", {
        "host": "ftp.example.fr", "port": None, "startPath": "/ortho A", "username": "pcrs", "password": "***",
        "secure": True}),
    ("sftp://u@sftp.example.fr:2222/", False, "sftp", {
        "host": "sftp.example.fr", "port": 2222, "startPath": "/", "username": "u", "password": None}),
    ("s3://pcrs-bucket/lot%201?endpoint_url=https://s3.gra.io.cloud.ovh.net&region=gra", False, "s3", {
        "bucket": "pcrs-bucket", "prefix": "lot 1", "endpoint_url": "https://s3.gra.io.cloud.ovh.net",
        "region": "gra"}),
])
def test_params_are_rebuilt_from_the_url_the_password_masked(url: str, sealed: bool, kind: str,
                                                             params: dict[str, Any]) -> None:
    assert (storage_type(url), storage_params(url, sealed)) == (kind, params)


def test_a_storage_registered_at_once_by_several_requests_is_created_once(tmp_path: Path) -> None:
    engine = create_store(f"sqlite:///{tmp_path / 's.sqlite'}")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: catalog.register_storage(
            engine, "https://example.fr/o/", "https://example.fr/o/", None), range(8)))
    assert sorted(answers) == [(1, False)] * 7 + [(1, True)]
