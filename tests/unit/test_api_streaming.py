"""The API's pieces that need no server: bodies as the export writes them, gzip, ranges, bboxes, pages."""

from __future__ import annotations

import io
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy import Engine, event, update
from starlette.exceptions import HTTPException

from indexer.api import streaming
from indexer.api.data import parse_bbox
from indexer.api.deps import ApiState
from indexer.api.files import OpenStorages, parse_range
from indexer.api.items import detail_mask, record_pages, tree_items
from indexer.api.streaming import accepts_gzip, from_thread, gzipped, json_pieces
from indexer.errors import ReadError
from indexer.geojson import write_feature_collection
from indexer.models import DalleProblem, FileEntry, SkipReason
from indexer.secrets import NO_KEY, SecretBox, new_key
from indexer.settings import ApiSettings
from indexer.store import catalog, scans
from indexer.store.schema import storages
from tests.unit.test_export import LYON_DALLES, projet_of, publish


@pytest.mark.parametrize("count", [0, 1, 3, 2000])
def test_json_pieces_are_the_feature_collection_the_export_writes(count: int) -> None:
    features = [{"type": "Feature", "geometry": None, "properties": {"n": i, "nom": "é" * (i % 50)}}
                for i in range(count)]
    written = io.StringIO()
    write_feature_collection(written, features)
    pieces = list(json_pieces(features, '{"type":"FeatureCollection","features":[', "]}\n"))
    assert b"".join(pieces).decode() == written.getvalue()
    assert pieces[0] == b'{"type":"FeatureCollection","features":['  # the head alone, first
    assert max(len(p) for p in pieces) < 2 * 64 * 1024


def test_gzipped_decodes_to_the_pieces_and_flushes_the_first_at_once() -> None:
    pieces = [b"head", *(bytes([i % 7]) * 50_000 for i in range(20)), b"tail"]
    zipped = list(gzipped(pieces))
    assert zlib.decompress(b"".join(zipped), 16 + zlib.MAX_WBITS) == b"".join(pieces)
    assert zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(zipped[0]) == b"head"


@pytest.mark.parametrize(("header", "accepted"), [
    (None, False), ("", False), ("gzip", True), ("br, gzip;q=0.5", True), ("gzip;q=0", False),
    ("identity", False), ("*", True), ("*;q=0", False), ("deflate, x-gzip", True), ("gzip;q=zero", False),
])
def test_accepts_gzip(header: str | None, accepted: bool) -> None:
    assert accepts_gzip(header) is accepted


@pytest.mark.parametrize(("header", "wanted"), [
    (None, None), ("bytes=0-99", (0, 99)), ("bytes=100-", (100, 999)), ("bytes=-10", (990, 999)),
    ("bytes=-5000", (0, 999)), ("bytes=900-5000", (900, 999)), ("bytes = 5 - 6", (5, 6)), ("bytes=999-999", (999, 999)),
])
def test_one_range(header: str | None, wanted: tuple[int, int] | None) -> None:
    assert parse_range(header, 1000) == wanted


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=0-1,5-6", "bytes=abc", "bytes=10-5", "items=0-1",
                                    "bytes=-0", "bytes=-", "bytes=" + "9" * 30 + "-", ""])
def test_bad_ranges_are_416_with_the_size(header: str) -> None:
    with pytest.raises(HTTPException) as refused:
        parse_range(header, 1000)
    assert refused.value.status_code == 416
    assert refused.value.headers == {"Content-Range": "bytes */1000"}


def test_bbox() -> None:
    assert parse_bbox(None) is None
    assert parse_bbox("2.2,48.8,2.5,49") == (2.2, 48.8, 2.5, 49.0)
    for bad in ("1,2,3", "1,2,3,4,5", "a,b,c,d", "3,0,1,1", "0,3,1,1", "nan,0,1,1", "0,0,inf,1", "-181,0,1,1",
                "0,0,1,91", ""):
        with pytest.raises(HTTPException) as refused:
            parse_bbox(bad)
        assert refused.value.status_code == 400
        assert str(refused.value.detail).startswith(f"bbox {bad!r} not valid: ")


def test_records_are_read_a_page_a_query(engine: Engine, tmp_path: Path) -> None:
    storage = catalog.storage_id(engine, "http://a.test/")
    scan = scans.start_scan(engine, storage)
    assert scan is not None
    problems = [DalleProblem(FileEntry(f"d{i}.tif", i), SkipReason.CORRUPT, "bad") for i in (10, 2, 1, 3, 20)]
    scans.finish_scan(engine, storage, scan, [], problems, {})
    queries: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: queries.append(args[2]))
    pages = [[r.path for r in page] for page in record_pages(engine, storage, page=2)]
    assert pages == [["d1.tif", "d10.tif"], ["d2.tif", "d20.tif"], ["d3.tif"]]  # code point order
    assert sum("FROM records" in q for q in queries) == 3


@pytest.mark.usefixtures("no_secrets")
def test_a_storage_whose_sealed_credentials_the_server_cannot_open_is_503(engine: Engine, tmp_path: Path) -> None:
    source = "ftp://pcrs:ftp-Secret-Pass-77@ftp.example.test/livrable"
    storage = catalog.storage_id(engine, "ftp://pcrs:***@ftp.example.test/livrable")
    with engine.begin() as conn:
        conn.execute(update(storages).where(storages.c.id == storage).values(secret=SecretBox(new_key()).seal(source)))
    keyless = ApiState(ApiSettings(_env_file=None, secret_key=None), engine, tmp_path, None)  # type: ignore[call-arg]
    with pytest.raises(HTTPException) as refused:
        OpenStorages().get(keyless, storage)
    assert (refused.value.status_code, refused.value.detail) == (503, f"the storage cannot be opened: {NO_KEY}")


@pytest.mark.parametrize("public", [True, False])
def test_a_private_storages_items_name_no_connection_detail(engine: Engine, public: bool) -> None:
    made = projet_of("p-1", "Privé", "Ortho")
    projet = made.model_copy(update={"livrables": [made.livrables[0].model_copy(update={"stockage_public": public})]})
    url = "http://secret-host.example/ortho/"
    problem = DalleProblem(FileEntry("a.tif", 10), SkipReason.UNREADABLE,
                           f"{url}a.tif: cannot connect to secret-host.example:80")
    storage = publish(engine, url, projet, LYON_DALLES, [problem])
    items = list(tree_items(record_pages(engine, storage), "http://api/files/", detail_mask(engine, storage)))
    (error,) = [i["analyzeError"] for i in items if i["analyzeError"]]
    assert error == ("unreadable: http://secret-host.example/ortho/a.tif: cannot connect to secret-host.example:80"
                     if public else "unreadable: ***a.tif: cannot connect to ***:80")


def test_bodies_are_produced_a_bounded_number_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "MAX_BODIES", 2)
    running: list[int] = []
    most = 0
    release = threading.Event()

    def produce(n: int) -> Iterator[bytes]:
        nonlocal most
        running.append(n)
        most = max(most, len(running))
        release.wait(10)
        yield str(n).encode()
        running.remove(n)

    async def main() -> list[bytes]:
        got: list[bytes] = []

        async def read(n: int) -> None:
            async for piece in from_thread(lambda: produce(n)):
                got.append(piece)

        async with anyio.create_task_group() as group:
            for n in range(5):
                group.start_soon(read, n)
            with anyio.fail_after(10):
                while len(running) < 2:
                    await anyio.sleep(0.01)
            assert len(running) == 2  # the others wait for a turn
            release.set()
        return got

    assert sorted(anyio.run(main)) == [b"0", b"1", b"2", b"3", b"4"]
    assert most == 2


def test_a_producers_error_is_raised_after_its_pieces_and_its_iterator_closed() -> None:
    closed = threading.Event()

    def produce() -> Iterator[bytes]:
        try:
            yield b"a"
            raise ReadError("x.tif", "cut")
        finally:
            closed.set()

    async def main() -> list[bytes]:
        got = []
        with pytest.raises(ReadError, match="cut"):
            async for piece in from_thread(produce):
                got.append(piece)
        return got

    assert anyio.run(main) == [b"a"]
    assert closed.is_set()
