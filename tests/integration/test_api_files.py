"""The scanner's file routes on a real ``pcrs-indexer serve``: tree items, their GeoJSON, the download proxy.

One sample livrable is published by nginx, ProFTPD, OpenSSH and moto's S3 server, indexed into
the API's store (credentials sealed, as a publication keeps them), and read back through the API
with httpx (raw sockets where a client would clean the path up).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import rasterio
from sqlalchemy import insert, literal, select, update

from indexer.api.auth import issue_download_token
from indexer.errors import ReadError
from indexer.pipeline import index_livrable
from indexer.sample import BAD_FILES, SampleSpec, make_sample_livrable
from indexer.secrets import SecretBox, new_key
from indexer.settings import Settings
from indexer.storages import AccessOptions, open_storage
from indexer.store.engine import create_store
from indexer.store.schema import records, storages
from tests.servers.api_fixtures import DOWNLOAD_SECRET, ApiServer, ApiServers
from tests.servers.servers import SFTP_USER, SSHD, MotoS3, Nginx, ProFTPD, PythonHTTP, free_port, public_folder

pytestmark = pytest.mark.servers

SPEC = SampleSpec(cols=3, rows=2, pixels=300, resolution_m=1.0, hole=None, bad_files=True)
FTP_PASSWORD = "ftp-Api-Pass-9931"
SFTP_PASSWORD = "sftp-Api-Pass-5521"
BUCKET = "pcrs-api"
BIG = 5 * 1024**3
"""The sparse file's size: 5 GiB."""
MARK_AT = BIG - 3 * 1024 * 1024
MARK = os.urandom(4096)


@dataclass
class World:
    root: Path
    api: ApiServer
    nginx: Nginx
    ids: dict[str, int]
    """Storage ids by transport (``http``, ``ftp``, ``sftp``, ``s3``), and ``big`` (the sparse file)."""
    outs: dict[str, Path]
    ftp: ProFTPD
    unscanned: int

    @property
    def livrable(self) -> Path:
        return self.root / "livrable"

    def token(self, name: str) -> str:
        return issue_download_token(self.ids[name], DOWNLOAD_SECRET, time.time())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, module_api_server: ApiServers) -> Iterator[World]:
    work = tmp_path_factory.mktemp("api-files")
    root = public_folder("pcrs-api-files-")
    make_sample_livrable(root / "livrable", SPEC)
    big = root / "big" / "grande.tif"
    big.parent.mkdir()
    with open(big, "wb") as f:  # sparse: 5 GiB on the file system, a few KiB on disk
        f.seek(MARK_AT)
        f.write(MARK)
        f.truncate(BIG)
    servers: list[object] = []
    try:
        nginx = Nginx(root, work / "nginx").start()
        servers.append(nginx)
        ftp = ProFTPD(root, work / "ftp", password=FTP_PASSWORD).start()
        servers.append(ftp)
        sshd = SSHD(work / "sshd", password=SFTP_PASSWORD).start()
        servers.append(sshd)
        s3 = MotoS3(work / "moto").start()
        servers.append(s3)
        # only the folder the download test reads: the storage's records come from the HTTP scan
        s3.upload(root / "livrable" / "lot 2", BUCKET, "pcrs/livrable/lot 2", public=True)
        key = new_key()
        box = SecretBox(key)
        db_url = f"sqlite:///{work / 'state.sqlite'}"
        sources = {  # http first: the others get its records
            "http": f"{nginx.url}/livrable/",
            "ftp": f"ftp://pcrs:{FTP_PASSWORD}@{ftp.host}/livrable",
            # by key: the system user's password is shared with every SSH test running on the machine
            "sftp": f"sftp://{SFTP_USER}@{sshd.host}{root / 'livrable'}",
            "s3": f"s3://{BUCKET}/pcrs/livrable",
            "big": f"{nginx.url}/big/",
            "gone": f"http://127.0.0.1:{free_port()}/livrable/",  # nothing listens there
        }
        settings = Settings(_env_file=None, data_dir=work / "data", allowed_networks=["127.0.0.0/8"],  # type: ignore[call-arg]
                            s3_endpoint_url=s3.url, retries=1, timeout_s=10.0, concurrency=4)
        engine = create_store(db_url)
        ids: dict[str, int] = {}
        outs = {name: work / "out" / name for name in ("http", "big")}
        for name in outs:
            index_livrable(settings, sources[name], outs[name], db_url=db_url)
        for name, source in sources.items():
            with open_storage(source, AccessOptions.from_settings(settings)) as opened:
                url = opened.url
            with engine.begin() as conn:  # the URL sealed, as a publication keeps it
                found = conn.execute(select(storages.c.id).where(storages.c.url == url)).scalar()
                if found is None:  # the same files on another transport: the same records (scans tested elsewhere)
                    found = conn.execute(insert(storages).values(
                        url=url, status="ok", dalles=0, skipped=0, last_success_at=datetime.now(UTC))
                    ).inserted_primary_key[0]
                    columns = [c for c in records.c if c.name != "storage_id"]
                    conn.execute(insert(records).from_select(
                        ["storage_id", *(c.name for c in columns)],
                        select(literal(found), *columns).where(records.c.storage_id == ids["http"])))
                conn.execute(update(storages).where(storages.c.id == found).values(secret=box.seal(source)))
                ids[name] = int(found)
        with engine.begin() as conn:
            unscanned = conn.execute(insert(storages).values(url="https://nowhere.example/", status="new",
                                                             dalles=0, skipped=0)).inserted_primary_key[0]
        engine.dispose()
        assert len(set(ids.values())) == len(sources), ids
        api = module_api_server.start(db_url=db_url, secret_key=key, s3_endpoint_url=s3.url, retries=1,
                                      timeout_s=10, ftp_max_connections=2, sftp_key_file=sshd.client_key)
        yield World(root, api, nginx, ids, outs, ftp, int(unscanned))
    finally:
        for server in reversed(servers):
            server.stop()  # type: ignore[attr-defined]
        shutil.rmtree(root, ignore_errors=True)


def _dalles(out: Path) -> dict[str, dict[str, object]]:
    features = json.loads((out / "dalles.geojson").read_text())["features"]
    return {f["properties"]["chemin"]: f for f in features}


def test_data_lists_every_raster_file_as_the_scanners_tree_items(world: World) -> None:
    storage = world.ids["http"]
    with world.api.client() as client:
        answer = client.get(f"/storages/{storage}/data")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    items = answer.json()
    report = json.loads((world.outs["http"] / "report.json").read_text())
    dalles = _dalles(world.outs["http"])
    assert len(items) == report["raster_files"] == len(dalles) + len(BAD_FILES)
    by_path = {item["fullPath"]: item for item in items}
    files = f"{world.api.url}/storages/{storage}/files/"
    for path, feature in dalles.items():
        item = by_path[f"/{path}"]
        with rasterio.open(world.livrable / path) as src:
            gdal = {"size": {"height": src.height, "width": src.width},
                    "bands": [{"id": i + 1, "colorInterpretation": ci.name.capitalize(), "dataType": "Byte"}
                              for i, ci in enumerate(src.colorinterp)],
                    "pixelSize": {"width": abs(src.transform.a), "height": abs(src.transform.e)}}
        metadata = item["computedMetadata"]
        assert {k: metadata[k] for k in gdal} == gdal
        assert metadata["fileName"] == path.rsplit("/", 1)[1]
        tif = path.endswith(".tif")
        assert (metadata["format"], metadata["extension"]) == (("GeoTIFF", "tif") if tif else ("JPEG2000", "jp2"))
        assert metadata["compression"] == feature["properties"]["compression"]
        assert metadata["projection"] == {"name": "RGF93 v1 / Lambert-93", "code": "EPSG:2154"}
        assert metadata["envelope"] == feature["geometry"]
        assert item["name"] == path.rsplit("/", 1)[1]
        assert item["parentDirectory"] == "/" + path[: path.rfind("/") + 1]
        assert item["size"] == (world.livrable / path).stat().st_size
        assert item["dataFormat"] == ("geotiff" if tif else "jpeg2000")
        assert item["analyzeError"] is None
        assert item["downloadUrl"] == files + quote(path)
    skipped = {s["path"]: s for s in report["skipped"]}
    for path, reason in BAD_FILES.items():
        item = by_path[f"/{path}"]
        assert item["computedMetadata"] is None
        assert item["analyzeError"] == f"{reason}: {skipped[path]['detail']}"
        assert item["size"] == (world.livrable / path).stat().st_size
    assert by_path["/anomalies/proprietaire.ecw"]["dataFormat"] == "ecw"
    assert "/LISEZMOI.txt" not in by_path  # not a raster file: not a data item, as in pcrs-scanner


def test_geojson_is_the_analysed_dalles_with_the_scanners_properties(world: World) -> None:
    storage = world.ids["sftp"]
    with world.api.client() as client:
        collection = client.get(f"/storages/{storage}/geojson")
        items = {i["fullPath"]: i for i in client.get(f"/storages/{storage}/data").json()}
    assert collection.status_code == 200
    assert collection.headers["content-type"] == "application/geo+json"
    body = collection.json()
    dalles = _dalles(world.outs["http"])
    assert body["type"] == "FeatureCollection"
    assert len(body["features"]) == len(dalles) == SPEC.cols * SPEC.rows
    for feature in body["features"]:
        item = items["/" + feature["properties"]["downloadUrl"].split("/files/", 1)[1].replace("%20", " ")
                     .replace("%C3%A9", "é")]
        assert feature["geometry"] == item["computedMetadata"]["envelope"]
        assert feature["properties"] == {"id": item["hash"], "name": item["name"], "size": item["size"],
                                         "format": item["dataFormat"], "downloadUrl": item["downloadUrl"]}


def test_data_and_geojson_answer_404_without_a_successful_scan(world: World) -> None:
    with world.api.client() as client:
        for route in ("data", "geojson"):
            never = client.get(f"/storages/{world.unscanned}/{route}")
            assert (never.status_code, never.json()) == (404, {"code": 404, "message": "No successful scan found"})
            for unknown, message in (("999999", "Storage not found"), ("not-an-id", "Invalid storage identifier"),
                                     ("12345678901234567890123", "Invalid storage identifier")):
                answer = client.get(f"/storages/{unknown}/{route}")
                assert (answer.status_code, answer.json()) == (404, {"code": 404, "message": message})


@pytest.mark.parametrize("transport", ["http", "ftp", "sftp", "s3"])
def test_download_streams_the_file_and_one_range(world: World, transport: str) -> None:
    path = sorted(_dalles(world.outs["http"]))[-1]  # in "lot 2/secteur été/": a space and an accent
    data = (world.livrable / path).read_bytes()
    url = f"/storages/{world.ids[transport]}/files/{quote(path)}"
    token = {"token": world.token(transport)}
    with world.api.client() as client:
        whole = client.get(url, params=token)
        assert whole.status_code == 200, whole.text
        assert whole.content == data
        assert whole.headers["content-length"] == str(len(data))
        assert whole.headers["accept-ranges"] == "bytes"
        assert whole.headers["content-type"] == ("image/tiff" if path.endswith(".tif") else "image/jp2")
        name = path.rsplit("/", 1)[1]
        assert whole.headers["content-disposition"] == f"attachment; filename=\"{name}\"; filename*=UTF-8''{name}"
        part = client.get(url, params=token, headers={"Range": "bytes=1000-70999"})
        assert part.status_code == 206
        assert part.content == data[1000:71000]
        assert part.headers["content-range"] == f"bytes 1000-70999/{len(data)}"  # the size, not the length
        assert part.headers["content-length"] == "70000"
        head = client.head(url, params=token)
        assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", str(len(data)))


def test_ranges_suffix_open_ended_and_refused(world: World) -> None:
    path = sorted(_dalles(world.outs["http"]))[0]
    data = (world.livrable / path).read_bytes()
    size = len(data)
    url = f"/storages/{world.ids['http']}/files/{quote(path)}"
    token = {"token": world.token("http")}
    with world.api.client() as client:
        tail = client.get(url, params=token, headers={"Range": "bytes=-100"})
        assert (tail.status_code, tail.content) == (206, data[-100:])
        assert tail.headers["content-range"] == f"bytes {size - 100}-{size - 1}/{size}"
        rest = client.get(url, params=token, headers={"Range": f"bytes={size - 10}-"})
        assert (rest.status_code, rest.content) == (206, data[-10:])
        past = client.get(url, params=token, headers={"Range": f"bytes=0-{size * 3}"})
        assert (past.status_code, past.content) == (206, data)
        assert past.headers["content-range"] == f"bytes 0-{size - 1}/{size}"
        for bad in (f"bytes={size}-", "bytes=0-1,5-6", "bytes=abc", "bytes=10-5", "items=0-1", "bytes=-0", "bytes=-"):
            refused = client.get(url, params=token, headers={"Range": bad})
            assert refused.status_code == 416, bad
            assert refused.headers["content-range"] == f"bytes */{size}"
            assert refused.json()["code"] == 416
        empty = client.get(f"/storages/{world.ids['http']}/files/anomalies/vide.tif", params=token)
        assert (empty.status_code, empty.content, empty.headers["content-length"]) == (200, b"", "0")


def test_download_tokens_missing_wrong_expired_or_of_another_storage_are_refused(world: World) -> None:
    storage = world.ids["http"]
    url = f"/storages/{storage}/files/{quote(sorted(_dalles(world.outs['http']))[0])}"
    expired = issue_download_token(storage, DOWNLOAD_SECRET, time.time() - 25 * 3600, ttl=24 * 3600)
    cases = {
        None: "a download token is required (?token=…)",
        "": "a download token is required (?token=…)",
        "nonsense": "download token not valid",
        issue_download_token(storage, "another-secret", time.time()): "download token not valid for this storage",
        world.token("ftp"): "download token not valid for this storage",
        expired: "download token expired",
    }
    with world.api.client() as client:
        for token, message in cases.items():
            answer = client.get(url, params={} if token is None else {"token": token})
            assert (answer.status_code, answer.json()) == (403, {"code": 403, "message": message}), token
            head = client.head(url, params={} if token is None else {"token": token})
            assert head.status_code == 403
        assert client.get(url, params={"token": world.token("http")}).status_code == 200


def _raw_get(api: ApiServer, target: str) -> tuple[int, bytes]:
    """A GET of `target` exactly as written (httpx would resolve the dot segments first)."""
    host, port = api.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_no_path_escapes_the_last_scans_listing(world: World) -> None:
    storage = world.ids["http"]
    token = world.token("http")
    dalle = quote(sorted(_dalles(world.outs["http"]))[0])
    not_found = json.dumps({"code": 404, "message": "File not found"}, separators=(",", ":")).encode()
    for target in (
        f"/storages/{storage}/files/../../{world.ids['big']}/files/grande.tif",
        f"/storages/{storage}/files/lot%201/../{dalle}",
        f"/storages/{storage}/files/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        f"/storages/{storage}/files/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        f"/storages/{storage}/files//etc/passwd",
        f"/storages/{storage}/files/%2Fetc%2Fpasswd",
        f"/storages/{storage}/files/{world.livrable / 'lot 1'}".replace(" ", "%20"),
        f"/storages/{storage}/files/./{dalle}",
        f"/storages/{storage}/files/grande.tif",  # the other storage's file
        f"/storages/{storage}/files/LISEZMOI.txt",  # listed, but not a raster file the scan recorded
        f"/storages/{storage}/files/lot%201%5C..%5C..%5Cbig%5Cgrande.tif",
    ):
        status, body = _raw_get(world.api, f"{target}?token={token}")
        assert (status, body) == (404, not_found), target
    status, body = _raw_get(world.api, f"/storages/{storage}/files/{dalle}?token={token}")
    assert status == 200 and len(body) > 0


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_5_gb_file_streams_in_flat_memory(world: World) -> None:
    storage = world.ids["big"]
    url = f"/storages/{storage}/files/grande.tif"
    token = {"token": world.token("big")}
    pid = world.api.process.pid
    with httpx.Client(base_url=world.api.url, timeout=60.0) as client:
        head = client.head(url, params=token)
        assert (head.status_code, head.headers["content-length"]) == (200, str(BIG))
        mark = client.get(url, params=token, headers={"Range": f"bytes={MARK_AT - 10}-{MARK_AT + len(MARK) + 9}"})
        assert mark.status_code == 206
        assert mark.content == bytes(10) + MARK + bytes(10)
        assert mark.headers["content-range"] == f"bytes {MARK_AT - 10}-{MARK_AT + len(MARK) + 9}/{BIG}"
    start = 4 * 1024**3  # past 4 GiB: offsets beyond 32 bits
    length = 512 * 1024**2
    headers = world.root.parent / f"{world.root.name}-headers.txt"
    before = peak = _rss_kb(pid)
    # curl reads as fast as the server sends (httpx, in pure Python, would be the bottleneck)
    curl = subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-D", str(headers), "-w", "%{http_code} %{size_download}",
                             "-r", f"{start}-{start + length - 1}", f"{world.api.url}{url}?token={token['token']}"],
                            stdout=subprocess.PIPE)
    while curl.poll() is None:
        peak = max(peak, _rss_kb(pid))
        time.sleep(0.02)
    out = curl.communicate()[0].decode()
    received = headers.read_text().lower()
    headers.unlink()
    assert out == f"206 {length}"
    assert f"content-range: bytes {start}-{start + length - 1}/{BIG}" in received
    assert f"content-length: {length}" in received
    print(f"512 MiB of 5 GiB streamed: server {before / 1024:.0f} MB + {(peak - before) / 1024:.1f} MB")
    assert peak - before < 48 * 1024, f"the server grew by {(peak - before) / 1024:.0f} MB streaming 512 MiB"


def test_concurrent_ftp_downloads_share_the_storages_logins(world: World) -> None:
    paths = sorted(_dalles(world.outs["http"]))
    token = world.token("ftp")
    logins = len(world.ftp.logins())
    failures: list[str] = []

    def fetch(path: str) -> None:
        with httpx.Client(base_url=world.api.url, timeout=30.0) as client:
            answer = client.get(f"/storages/{world.ids['ftp']}/files/{quote(path)}", params={"token": token})
            if answer.status_code != 200 or answer.content != (world.livrable / path).read_bytes():
                failures.append(f"{path}: {answer.status_code}")

    threads = [threading.Thread(target=fetch, args=(p,)) for p in paths for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    # 12 downloads at once through the storage's pool: at most FTP_MAX_CONNECTIONS logins, kept for the next
    assert len(world.ftp.logins()) - logins <= 2


def test_a_storage_that_cannot_give_the_file_answers_502_before_any_byte(world: World) -> None:
    path = quote(sorted(_dalles(world.outs["http"]))[0])
    with world.api.client() as client:
        answer = client.get(f"/storages/{world.ids['gone']}/files/{path}", params={"token": world.token("gone")})
    assert answer.status_code == 502
    assert answer.json()["code"] == 502
    assert answer.json()["message"].startswith("the storage did not give the file: ")
    assert "content-length" in answer.headers and "content-disposition" not in answer.headers


@pytest.mark.parametrize("server", ["nginx", "http.server", "ftp"])
def test_stream_range_keeps_pieces_small_whatever_the_server(world: World, tmp_path: Path, server: str) -> None:
    path = sorted(_dalles(world.outs["http"]))[-1]
    data = (world.livrable / path).read_bytes()
    options = AccessOptions.from_settings(Settings(_env_file=None, allowed_networks=["127.0.0.0/8"],  # type: ignore[call-arg]
                                                   retries=1, timeout_s=10.0))
    started: list[PythonHTTP] = []
    if server == "http.server":  # ignores Range: answers 200 with the whole file, read past the start
        started.append(PythonHTTP(world.root, tmp_path / "pyhttp").start())
        source = f"{started[0].url}/livrable/"
    elif server == "ftp":  # no streamed read of its own: read_range a piece at a time
        source = f"ftp://{world.ftp.host}/livrable"
    else:
        source = f"{world.nginx.url}/livrable/"
    try:
        with open_storage(source, options) as storage:
            pieces = list(storage.stream_range(path, 1000, 71000, 60.0, chunk=16384))
            assert b"".join(pieces) == data[1000:71000]
            assert [len(p) for p in pieces] == [16384] * 4 + [70000 - 4 * 16384]
            with pytest.raises(ReadError, match="before byte"):
                list(storage.stream_range(path, len(data) - 10, len(data) + 10, 60.0))
            with pytest.raises(ReadError, match="the download took more than -1 s"):
                list(storage.stream_range(path, 0, 100, -1.0))
    finally:
        for pyhttp in started:
            pyhttp.stop()



def test_the_sites_dalles_export_reads_ours_from_data_and_geojson(world: World) -> None:
    """The PCRS site's ``computeDallesGeoJSON`` (backend/export/stockage.js), written from its code,
    gets from ``/data`` and ``/geojson`` what our ``dalles.geojson`` says of each dalle."""
    storage = world.ids["http"]
    with world.api.client() as client:
        indexed = {item["name"]: item for item in client.get(f"/storages/{storage}/data").json()}
        features = client.get(f"/storages/{storage}/geojson").json()["features"]
    formats = {"geotiff": "image/tiff", "jpeg2000": "image/jp2"}
    ours = {f["properties"]["nomImage"]: f for f in _dalles(world.outs["http"]).values()}
    assert len(features) == len(ours)
    for feature in features:
        dalle = indexed[feature["properties"]["name"]]
        metadata = dalle["computedMetadata"]
        site = {
            "nomImage": dalle["name"],
            "resolution": metadata["pixelSize"]["height"] * 100,
            "typeImage": formats[dalle["dataFormat"]],
            "tailleFichier": dalle["size"],
            "tailleImage": f"{metadata['size']['height']}x{metadata['size']['width']}",
            "compression": metadata["compression"],
            "epsg": metadata["projection"]["code"],
            "bandes": "/".join(f"{b['colorInterpretation'] or 'Unknown'}({b['dataType'] or 'Unknown'})"
                               for b in metadata["bands"]),
        }
        expected = ours[dalle["name"]]
        assert site == {k: expected["properties"][k] for k in site}
        assert feature["geometry"] == expected["geometry"]
