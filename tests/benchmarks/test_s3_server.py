"""The benchmark's S3 server, read by the clients of the S3 row: s3fs (botocore), GDAL's /vsis3/, raw HTTP/1.1."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from tests.benchmarks.s3_server import S3Server

BUCKET = "bench"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, S3Server]]:
    root = tmp_path_factory.mktemp("bucket")
    for folder in ("a", "a/b", "c"):
        (root / "liv" / folder).mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(["a/1.bin", "a/2.bin", "a/b/3.bin", "c/4.bin", "c/5.bin", "top.txt"]):
        (root / "liv" / name).write_bytes(bytes(range(256)) * (index + 1))
    with rasterio.open(root / "liv" / "c" / "dalle.tif", "w", driver="GTiff", width=64, height=48, count=3,
                       dtype="uint8", crs="EPSG:2154", transform=from_origin(651000, 6861000, 0.05, 0.05),
                       tiled=True, blockxsize=32, blockysize=32, compress="deflate") as out:
        out.write(np.arange(64 * 48 * 3, dtype="uint8").reshape(3, 48, 64))
    with S3Server(root, BUCKET, page_cap=2) as server:
        yield root, server


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_s3fs_lists_the_folder_over_pages_and_reads_a_range(served: tuple[Path, S3Server]) -> None:
    import s3fs

    root, server = served
    fs = s3fs.S3FileSystem(anon=True, client_kwargs={"endpoint_url": f"http://{server.endpoint}"},
                           use_listings_cache=False)
    before = server.counters.requests
    found = sorted(fs.find(f"{BUCKET}/liv"))
    assert found == [f"{BUCKET}/{key}" for key in _files(root)]
    assert server.counters.requests - before == 4  # 7 keys, pages of 2
    assert sorted(fs.ls(f"{BUCKET}/liv", detail=False)) == [f"{BUCKET}/liv/{n}" for n in ("a", "c", "top.txt")]
    info = fs.info(f"{BUCKET}/liv/a/2.bin")
    assert info["size"] == 512
    with fs.open(f"{BUCKET}/liv/c/4.bin", "rb", block_size=5) as handle:
        handle.seek(300)
        assert handle.read(5) == (root / "liv/c/4.bin").read_bytes()[300:305]
    assert fs.cat_file(f"{BUCKET}/liv/c/5.bin", start=10, end=1000) == (root / "liv/c/5.bin").read_bytes()[10:1000]


def test_gdal_vsis3_opens_a_geotiff_as_locally(served: tuple[Path, S3Server]) -> None:
    root, server = served
    env = {"AWS_S3_ENDPOINT": server.endpoint, "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
           "AWS_NO_SIGN_REQUEST": "YES", "AWS_REGION": "us-east-1", "GDAL_DISABLE_READDIR_ON_OPEN": "NO"}
    with rasterio.Env(**env), rasterio.open(f"/vsis3/{BUCKET}/liv/c/dalle.tif") as remote, \
            rasterio.open(root / "liv/c/dalle.tif") as local:
        assert remote.profile == local.profile
        assert remote.crs.to_epsg() == 2154
        assert (remote.read() == local.read()).all()


def test_ranges_errors_and_keep_alive(served: tuple[Path, S3Server]) -> None:
    root, server = served
    data = (root / "liv/a/b/3.bin").read_bytes()
    server.counters.connections = 0
    server.counters.seen.clear()
    connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
    connection.request("GET", f"/{BUCKET}/liv/a/b/3.bin", headers={"Range": "bytes=100-299",
                                                                   "Authorization": "AWS4-HMAC-SHA256 x"})
    answer = connection.getresponse()
    assert (answer.status, answer.read()) == (206, data[100:300])
    assert answer.headers["Content-Range"] == f"bytes 100-299/{len(data)}"
    assert answer.headers["Content-Length"] == "200"
    assert answer.headers["ETag"].startswith('"') and answer.headers["Last-Modified"].endswith("GMT")
    sock = connection.sock
    connection.request("HEAD", f"/{BUCKET}/liv/a/b/3.bin")
    answer = connection.getresponse()
    answer.read()
    assert (answer.status, answer.headers["Content-Length"]) == (200, str(len(data)))
    connection.request("GET", f"/{BUCKET}/liv/a/b/3.bin", headers={"Range": f"bytes={len(data)}-"})
    answer = connection.getresponse()
    answer.read()
    assert (answer.status, answer.headers["Content-Range"]) == (416, f"bytes */{len(data)}")
    connection.request("GET", f"/{BUCKET}/liv/missing.tif")
    answer = connection.getresponse()
    assert answer.status == 404 and b"<Code>NoSuchKey</Code>" in answer.read()
    assert connection.sock is sock
    assert server.counters.connections == 1
    connection.close()
