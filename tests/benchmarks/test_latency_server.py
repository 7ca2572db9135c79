"""The benchmark's latency server answers as nginx does, after its latency, and counts what it sends."""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.benchmarks.latency_server import LatencyServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LatencyServer]:
    (tmp_path / "lot").mkdir()
    (tmp_path / "lot" / "a.tif").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "lot" / "b.jp2").write_bytes(b"")
    with LatencyServer(tmp_path, latency_ms=50) as running:
        yield running


def test_ranges_heads_and_listings_on_one_kept_alive_connection(server: LatencyServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)

    def ask(method: str, path: str, **headers: str) -> tuple[http.client.HTTPResponse, bytes, float]:
        started = time.perf_counter()
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response, response.read(), time.perf_counter() - started

    response, body, waited = ask("GET", "/lot/a.tif", Range="bytes=0-9")
    assert (response.status, body, response.headers["Content-Range"]) == (206, bytes(range(10)), "bytes 0-9/1024")
    assert response.headers["Content-Type"] == "image/tiff" and response.headers["ETag"].startswith('"')
    assert waited >= 0.05
    response, body, _ = ask("GET", "/lot/a.tif", Range="bytes=1020-5000")
    assert (response.status, body, response.headers["Content-Range"]) == (206, bytes([252, 253, 254, 255]),
                                                                         "bytes 1020-1023/1024")
    response, body, _ = ask("HEAD", "/lot/a.tif")
    assert (response.status, body, response.headers["Content-Length"]) == (200, b"", "1024")
    response, body, _ = ask("GET", "/lot/b.jp2", Range="bytes=0-9")
    assert (response.status, response.headers["Content-Range"]) == (416, "bytes */0")
    response, body, _ = ask("GET", "/lot")
    assert (response.status, response.headers["Location"]) == (301, "/lot/")
    response, body, _ = ask("GET", "/lot/")
    page = body.decode()
    assert response.status == 200 and '<a href="a.tif">a.tif</a>' in page and page.count(" 1024\r\n") == 1
    response, body, _ = ask("GET", "/lot/missing.tif")
    assert response.status == 404
    response, body, _ = ask("GET", "/../etc/passwd")
    assert response.status == 404
    response, body, _ = ask("DELETE", "/lot/a.tif")
    assert response.status == 405
    connection.close()

    stats = server.stats()
    assert {k: stats[k] for k in ("requests", "listing_requests", "raster_requests", "head_requests",
                                  "range_requests", "full_gets", "not_found")} == {
        "requests": 9, "listing_requests": 2, "raster_requests": 4, "head_requests": 1, "range_requests": 2,
        "full_gets": 0, "not_found": 2}
    assert stats["raster_bytes"] > 14 and stats["bytes_sent"] > stats["raster_bytes"] + stats["listing_bytes"]
    server.reset()
    assert server.stats()["requests"] == 0


def test_requests_in_flight_wait_together_not_in_turn(server: LatencyServer) -> None:
    connections = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10) for _ in range(20)]
    started = time.perf_counter()
    for connection in connections:
        connection.request("GET", "/lot/a.tif", headers={"Range": "bytes=0-0"})
    statuses = [connection.getresponse().status for connection in connections]
    assert statuses == [206] * 20
    assert time.perf_counter() - started < 0.5  # 20 × 50 ms one after the other would be 1 s
    for connection in connections:
        connection.close()
