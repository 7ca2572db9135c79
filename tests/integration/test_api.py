"""The HTTP API on a real ``pcrs-indexer serve`` (uvicorn) process, read with httpx.

One server (in-process mode, its own SQLite store) is shared by the module; its storages are
served by nginx, a local folder, a closed FTP port and a listener that never answers.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from indexer.api.auth import check_download_token
from indexer.sample import write_dalle
from indexer.secrets import new_key
from indexer.store import catalog
from indexer.store.engine import create_store
from indexer.store.schema import scans
from tests.servers.api_fixtures import ADMIN, ADMIN_TOKEN, DOWNLOAD_SECRET, ApiServer, ApiServers
from tests.servers.servers import Nginx
from tests.servers.service_fixtures import (  # noqa: F401 - fixtures
    Service,
    pg_url_fixture,
    postgres_server_fixture,
    redis_server_fixture,
    service_fixture,
    wait_until,
)

FTP_PASSWORD = "ftp-Secret-Pw-4711"
SAMPLE_RESULT = {"files": 23, "directories": 3, "dataFiles": 22, "notModifiedDataFiles": 0, "analyzedDataFiles": 15,
                 "brokenDataFiles": 7}
"""The result counts of a first scan of the sample livrable (tests/conftest.py SMALL)."""


class ScannerClient:
    """A client written only from pcrs-scanner's routes, as the PCRS site's backend/lib/api-scanner.js is."""

    def __init__(self, url: str, admin_token: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10.0)
        self.admin = {"authorization": f"Token {admin_token}"}

    def close(self) -> None:
        self.http.close()

    def attach_storage(self, kind: str, params: dict[str, Any]) -> str:
        response = self.http.post("/storages", json={"type": kind, "params": params}, headers=self.admin)
        if not response.is_success:
            raise RuntimeError(response.json()["message"])
        storage_id: str = response.json()["_id"]
        return storage_id

    def ask_download_token(self, stockage_id: str) -> str:
        response = self.http.post(f"/storages/{stockage_id}/generate-download-token", headers=self.admin)
        response.raise_for_status()
        token: str = response.json()["token"]
        return token

    def refresh_scan(self, stockage_id: str) -> dict[str, Any]:
        response = self.http.post(f"/storages/{stockage_id}/scan", headers=self.admin)
        response.raise_for_status()
        stockage: dict[str, Any] = response.json()
        return stockage

    def get_stockage(self, stockage_id: str) -> dict[str, Any]:
        response = self.http.get(f"/storages/{stockage_id}", headers={"content-type": "application/json"})
        response.raise_for_status()
        stockage: dict[str, Any] = response.json()
        return stockage


@pytest.fixture(scope="module")
def hanging_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@pytest.fixture(scope="module")
def nginx(sample_livrable: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    server = Nginx(sample_livrable.parent, tmp_path_factory.mktemp("nginx")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(module_api_server: ApiServers) -> ApiServer:
    return module_api_server.start(timeout_s=2, retries=0, secret_key=new_key())


def wait_idle(client: httpx.Client, storage_id: str, timeout: float = 20.0) -> dict[str, Any]:
    def idle() -> dict[str, Any] | None:
        document: dict[str, Any] = client.get(f"/storages/{storage_id}").json()
        return document if document["scan"]["status"] == "idle" else None
    found: dict[str, Any] = wait_until(idle, timeout, f"storage {storage_id} to be idle")
    return found


def scan_count(api: ApiServer, storage_id: str) -> int:
    engine = create_store(api.db_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(scans).where(
                scans.c.storage_id == int(storage_id))).scalar_one())
    finally:
        engine.dispose()


def test_healthz_says_the_mode_and_the_docs_are_served(api: ApiServer) -> None:
    with api.client() as client:
        health = client.get("/healthz")
        assert health.status_code == 200
        assert {k: v for k, v in health.json().items() if k != "version"} == {
            "status": "ok", "mode": "in-process", "store": "ok", "broker": None}
        docs = client.get("/docs")
        assert docs.status_code == 200 and "swagger-ui" in docs.text
        paths = client.get("/openapi.json").json()["paths"]
        assert {"/storages", "/storages/{storage_id}", "/storages/{storage_id}/scan",
                "/storages/{storage_id}/generate-download-token", "/projets", "/healthz"} <= set(paths)
        missing = client.get("/nowhere", headers={"Origin": "https://pcrs.beta.gouv.fr"})
        assert (missing.status_code, missing.json()) == (404, {"code": 404, "message": "Not Found"})
        assert missing.headers["access-control-allow-origin"] == "*"


def test_admin_routes_need_the_token(api: ApiServer) -> None:
    with api.client() as client:
        for method, path in (("POST", "/storages"), ("GET", "/storages"), ("POST", "/storages/1/scan"),
                             ("POST", "/storages/1/generate-download-token"), ("POST", "/projets")):
            for headers in ({}, {"Authorization": "Token wrong"}, {"Authorization": ADMIN_TOKEN},
                            {"Authorization": f"Bearer {ADMIN_TOKEN}"}):
                answer = client.request(method, path, headers=headers, json={"type": "http"})
                assert answer.status_code == 401, (method, path, headers)
                assert answer.json() == {"code": 401,
                                         "message": "Unauthorized: send Authorization: Token <admin token>"}
                assert answer.headers["www-authenticate"] == "Token"


@pytest.mark.parametrize(("body", "message"), [
    ({"type": "webdav", "params": {"url": "https://example.fr/"}}, "type must be one of http, ftp, sftp, s3"),
    ({"params": {"url": "https://example.fr/"}}, "type must be one of http, ftp, sftp, s3"),
    ({"type": "ftp", "params": {"host": "bad host!"}}, "storage: host 'bad host!' is not a host name or an IP address"),
    ({"type": "ftp", "params": {"host": "10.1.2.3"}},
     "10.1.2.3 is a private address: refused (allow it with the allowed_networks setting)"),
    ({"type": "http", "params": {"url": "http://169.254.169.254/latest/"}},
     "169.254.169.254 is a link-local address: refused (allow it with the allowed_networks setting)"),
    ({"type": "http", "params": {"url": "file:///etc/"}},
     "storage: a http storage is reached by http:// or https://, not file://"),
    ({"type": "sftp", "params": {"url": "/var/lib"}},
     "storage: a sftp storage is reached by sftp://, not a local path"),
    ({"type": "ftp", "params": {"host": "ftp.example.fr", "port": 70000}},
     "storage: port 70000 is not a port number (1 to 65535)"),
    ([1, 2], "the body must be a JSON object {type, params}"),
    ({"type": "http", "params": "https://example.fr/"}, "params must be an object"),
])
def test_a_storage_that_makes_no_storage_is_refused_with_a_reason(api: ApiServer, body: Any, message: str) -> None:
    with api.client() as client:
        answer = client.post("/storages", json=body, headers=ADMIN)
        assert (answer.status_code, answer.json()) == (400, {"code": 400, "message": message})
        assert not [row for row in client.get("/storages", headers=ADMIN).json()
                    if "example.fr" in row["url"] or "169.254" in row["url"] or "10.1.2.3" in row["url"]]


def test_a_body_too_large_or_not_json_is_refused(api: ApiServer) -> None:
    with api.client() as client:
        big = client.post("/storages", content=b'{"type": "http", "x": "' + b"a" * 70000 + b'"}', headers=ADMIN)
        assert big.json() == {"code": 400, "message": "the body is larger than 65536 bytes"}
        broken = client.post("/storages", content=b"{nope", headers=ADMIN)
        assert broken.json() == {"code": 400, "message": "the body is not JSON: Expecting property name enclosed in "
                                                         "double quotes at line 1"}
        deep = client.post("/storages", content=b"[" * 40 + b"]" * 40, headers=ADMIN)
        assert deep.json() == {"code": 400, "message": "the body nests arrays and objects more than 16 levels deep"}


@pytest.mark.parametrize("ref", ["999", "abc", "0", "-1", "1e3", "1" * 40, "%20"])
def test_an_unknown_or_malformed_storage_is_a_json_404(api: ApiServer, ref: str) -> None:
    message = "Storage not found" if ref == "999" else "Invalid storage identifier"
    with api.client() as client:
        for method, path in (("GET", f"/storages/{ref}"), ("POST", f"/storages/{ref}/scan"),
                             ("POST", f"/storages/{ref}/generate-download-token")):
            answer = client.request(method, path, headers=ADMIN)
            assert (answer.status_code, answer.json()) == (404, {"code": 404, "message": message}), (method, path)


def test_an_http_storage_posted_twice_is_one_storage_scanned_in_process(api: ApiServer, nginx: Nginx) -> None:
    site = ScannerClient(api.url, ADMIN_TOKEN)
    params = {"url": f"{nginx.url}/livrable/"}
    with api.client() as client:
        first = client.post("/storages", json={"type": "http", "params": params}, headers=ADMIN)
        assert first.status_code == 201
        storage_id = first.json()["_id"]
        assert isinstance(storage_id, str) and storage_id.isdigit()
        assert first.json()["type"] == "http" and first.json()["params"] == params
        assert first.json()["scan"]["status"] in ("pending", "processing", "idle")
        again = client.post("/storages", json={"type": "http", "params": params}, headers=ADMIN)
        assert again.status_code == 200 and again.json()["_id"] == storage_id
        assert site.attach_storage("http", params) == storage_id
        done = wait_idle(client, storage_id)
        assert scan_count(api, storage_id) == 1  # posted three times, scanned once
    assert done["_id"] == storage_id and "params" not in done
    assert done["scan"]["progress"]["files"] == 23
    assert done["lastError"] is None and done["scan"]["lastError"] is None
    assert {k: done["scan"][k] for k in ("status", "step", "queuedAt", "processingSince", "heartbeat")} == {
        "status": "idle", "step": None, "queuedAt": None, "processingSince": None, "heartbeat": None}
    result = done["result"]
    assert {k: result[k] for k in SAMPLE_RESULT} == SAMPLE_RESULT
    assert result["brokenDataSampleError"] in {p["detail"] for p in json.loads(
        (api.out_dir / storage_id / "report.json").read_text())["skipped"]}
    assert result["lastSuccessfulScan"].endswith("Z") and isinstance(result["duration"], float)
    raster = result["raster"]
    assert raster["numRasterFiles"] == 15
    assert raster["sizeRasterFiles"] == sum(f["properties"]["tailleFichier"] for f in json.loads(
        (api.out_dir / storage_id / "dalles.geojson").read_text())["features"])
    assert (raster["format"], raster["compression"], raster["bands"]) == (None, None, None)  # a JP2 among TIFFs
    assert raster["projection"] == {"name": "RGF93 v1 / Lambert-93", "code": "EPSG:2154"}
    assert raster["envelope"] == json.loads((api.out_dir / storage_id / "livrables.geojson").read_text())[
        "features"][0]["geometry"]
    assert raster["envelope"]["type"] == "Polygon"
    # The site's browser pages read it across origins.
    with api.client() as client:
        answer = client.get(f"/storages/{storage_id}", headers={"Origin": "https://pcrs.beta.gouv.fr"})
        assert answer.headers["access-control-allow-origin"] == "*"
        preflight = client.options(f"/storages/{storage_id}", headers={
            "Origin": "https://pcrs.beta.gouv.fr", "Access-Control-Request-Method": "GET"})
        assert preflight.status_code == 200 and "GET" in preflight.headers["access-control-allow-methods"]
        token = site.ask_download_token(storage_id)
        check_download_token(token, storage_id, DOWNLOAD_SECRET, time.time() + 47 * 3600)
        assert int(token.split(".")[0]) == pytest.approx(time.time() + 48 * 3600, abs=60)
        rescanned = site.refresh_scan(storage_id)
        assert rescanned["scan"]["status"] in ("pending", "processing", "idle")
        again = wait_idle(client, storage_id)
    assert again["result"]["notModifiedDataFiles"] == 15 and again["result"]["analyzedDataFiles"] == 0
    assert site.get_stockage(storage_id)["result"]["raster"]["numRasterFiles"] == 15
    site.close()


def test_a_local_storage_of_the_store_is_scanned_in_process(api: ApiServer, tmp_path: Path) -> None:
    folder = tmp_path / "local"
    for n in range(3):
        write_dalle(folder / f"d{n}.tif", (700000.0 + 200 * n, 6600200.0), pixels=100, resolution_m=2.0)
    sizes = sum(p.stat().st_size for p in folder.iterdir())
    engine = create_store(api.db_url)
    storage, created = catalog.register_storage(engine, folder.as_uri(), folder.as_uri(), None)
    engine.dispose()
    assert created
    with api.client() as client:
        queued = client.post(f"/storages/{storage}/scan", headers=ADMIN)
        assert queued.status_code == 200 and queued.json()["params"] == {"url": folder.as_uri()}
        done = wait_idle(client, str(storage))
    assert done["type"] == "file"
    assert {k: done["result"][k] for k in SAMPLE_RESULT} == {
        "files": 3, "directories": 1, "dataFiles": 3, "notModifiedDataFiles": 0, "analyzedDataFiles": 3,
        "brokenDataFiles": 0}
    assert done["result"]["brokenDataSampleError"] is None
    assert {k: v for k, v in done["result"]["raster"].items() if k != "envelope"} == {
        "numRasterFiles": 3, "sizeRasterFiles": sizes, "format": "geotiff", "compression": "DEFLATE",
        "projection": {"name": "RGF93 v1 / Lambert-93", "code": "EPSG:2154"},
        "bands": [{"id": 1, "colorInterpretation": "Red", "dataType": "Byte"},
                  {"id": 2, "colorInterpretation": "Green", "dataType": "Byte"},
                  {"id": 3, "colorInterpretation": "Blue", "dataType": "Byte"}]}
    lons = [x for x, _ in done["result"]["raster"]["envelope"]["coordinates"][0]]
    assert max(lons) - min(lons) == pytest.approx(600 / 79_000, rel=0.05)  # 600 m at 45.5° N


def test_a_scan_running_refuses_another_and_a_failed_one_shows_no_credential(api: ApiServer, hanging_port: int
                                                                              ) -> None:
    params = {"host": "127.0.0.1", "port": hanging_port, "startPath": "/ortho", "username": "pcrs",
              "password": FTP_PASSWORD}
    with api.client() as client:
        first = client.post("/storages", json={"type": "ftp", "params": params}, headers=ADMIN)
        assert first.status_code == 201, first.text
        storage_id = first.json()["_id"]
        assert first.json()["params"] == {"host": "127.0.0.1", "port": hanging_port, "startPath": "/ortho",
                                          "username": "pcrs", "password": "***", "secure": False}
        # The listing waits for a server that never answers: the scan stays pending or processing.
        busy = client.post(f"/storages/{storage_id}/scan", headers=ADMIN)
        assert busy.status_code == 409
        assert busy.json() == {"code": 409, "message": f"storage {storage_id} is already being scanned (scan "
                                                       f"{busy.json()['message'].split('scan ')[1].split(')')[0]}): "
                                                       "wait for it to end, see `pcrs-indexer status`"}
        posted = client.post("/storages", json={"type": "ftp", "params": params}, headers=ADMIN)
        assert posted.status_code == 200 and posted.json()["_id"] == storage_id  # not pcrs-scanner's 409
        assert posted.json()["scan"]["status"] in ("pending", "processing")
        done = wait_idle(client, storage_id)
        listed = client.get("/storages", headers=ADMIN)
    assert done["result"] is None
    assert done["lastError"] == done["scan"]["lastError"]
    assert done["lastError"].startswith(f"cannot list ftp://pcrs:***@127.0.0.1:{hanging_port}/ortho")
    row = next(r for r in listed.json() if r["_id"] == storage_id)
    assert (row["status"], row["credentials"], row["url"]) == ("failed", True,
                                                               f"ftp://pcrs:***@127.0.0.1:{hanging_port}/ortho")
    for text in (first.text, busy.text, posted.text, json.dumps(done), listed.text, api.log_text()):
        assert FTP_PASSWORD not in text
        assert "Traceback" not in text


def test_a_projet_is_published_over_the_api(api: ApiServer, nginx: Nginx) -> None:
    livrable = {"nom": "Ortho", "nature": "geotiff", "stockage": "http", "stockage_public": True,
                "stockage_params": {"url": f"{nginx.url}/livrable/"}}
    projet = {"_id": "p-api-1", "nom": "Projet API", "livrables": [livrable, {**livrable, "nom": "Vecteur",
                                                                               "nature": "gml"}]}
    with api.client() as client:
        local = client.post("/projets", json={**projet, "livrables": [
            {**livrable, "stockage_params": {"url": "/etc"}}]}, headers=ADMIN)
        assert local.status_code == 400
        assert local.json()["message"] == ("projet 'Projet API' not published, nothing queued: livrable 'Ortho': only "
                                           "http(s), ftp(s), sftp and s3 storages can be published over the API, "
                                           "not a local path")
        published = client.post("/projets", json=projet, headers=ADMIN)
        assert published.status_code == 200, published.text
        body = published.json()
        storage_id = client.post("/storages", json={"type": "http", "params": livrable["stockage_params"]},
                                 headers=ADMIN).json()["_id"]
    assert body["storages"] in ([storage_id], [])  # queued, unless its scan of the earlier test still ran
    assert body["skipped"] == [{"livrable": "Vecteur", "reason": "nature 'gml' is vector data, not dalles"}]


def test_a_scan_cut_short_by_a_killed_server_is_taken_back(api: ApiServer, api_server: ApiServers,
                                                           hanging_port: int) -> None:
    # The last test of the module's server: it is killed mid-scan.
    with api.client() as client:
        storage_id = client.post("/storages", json={"type": "http", "params": {
            "url": f"http://127.0.0.1:{hanging_port}/killed/"}}, headers=ADMIN).json()["_id"]
        wait_until(lambda: client.get(f"/storages/{storage_id}").json()["scan"]["status"] == "processing", 10,
                   "the scan to be processing")
    api.kill()
    engine = create_store(api.db_url)
    try:
        with engine.connect() as conn:
            left = conn.execute(select(scans.c.status, scans.c.step).where(
                scans.c.storage_id == int(storage_id))).one()
    finally:
        engine.dispose()
    assert tuple(left) == ("running", "listing")  # as the killed server left it
    # A server started again on the store takes the scan back once its heartbeat is STALE_AFTER old; this one
    # has no admin token: its admin routes are closed, saying why.
    again = api_server.start(db_url=api.db_url, out_dir=api.out_dir, timeout_s=1, retries=0, stale_after=1,
                             watchdog_every_s=0.5, admin_token=None)
    with again.client() as client:
        done = wait_idle(client, storage_id)
        for headers in ({}, ADMIN):
            answer = client.post("/storages", json={"type": "http", "params": {"url": "https://example.fr/"}},
                                 headers=headers)
            assert (answer.status_code, answer.json()) == (503, {
                "code": 503, "message": "admin routes are disabled: PCRS_INDEXER_ADMIN_TOKEN is not set"})
    assert done["lastError"].startswith(f"cannot list http://127.0.0.1:{hanging_port}/killed/")
    assert "abandoned" not in done["lastError"]  # listed again, not given up


def test_in_broker_mode_the_fleet_scans_a_posted_storage(api_server: ApiServers, service: Service, nginx: Nginx
                                                         ) -> None:
    worker = service.worker(wait=False)  # the worker and the server start side by side
    server = api_server.start(db_url=service.db_url, out_dir=service.output_dir,
                              broker_url=service.env["PCRS_INDEXER_BROKER_URL"])
    worker.wait_ready()
    with server.client() as client:
        health = client.get("/healthz").json()
        assert (health["mode"], health["store"], health["broker"]) == ("broker", "ok", "ok")
        posted = client.post("/storages", json={"type": "http", "params": {"url": f"{nginx.url}/livrable/"}},
                             headers=ADMIN)
        assert posted.status_code == 201
        done = wait_idle(client, posted.json()["_id"], 60)
    assert {k: done["result"][k] for k in SAMPLE_RESULT} == SAMPLE_RESULT
    assert done["result"]["raster"]["numRasterFiles"] == 15
    assert (service.output_dir / posted.json()["_id"] / "dalles.geojson").exists()
    assert "pcrs.scan_storage" in " ".join(line["message"] for line in worker.lines())
