"""Over HTTP, where headers are parsed by one thread beside the reads: a bad dalle never stops the others."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import Engine

from indexer import pipeline
from indexer.pipeline import ScanOptions, scan_storage
from indexer.storages import AccessOptions, open_storage
from indexer.storages.addresses import AddressPolicy

OPTIONS = AccessOptions(connections=16, addresses=AddressPolicy.of(["127.0.0.1"]))

pytestmark = pytest.mark.servers


def livrable(make_dalle, dalles: int) -> Path:
    first = make_dalle("d0000.tif", pixels=20, resolution_m=1.0)
    for n in range(1, dalles):
        shutil.copyfile(first, first.parent / f"d{n:04d}.tif")
    return first.parent


@pytest.mark.timeout(60)
def test_a_three_byte_tif_among_hundreds_of_dalles_ends_the_scan(make_dalle, serve, engine: Engine) -> None:
    root = livrable(make_dalle, 300)
    (root / "d0150.tif").write_bytes(b"II*")
    server = serve(root)
    with open_storage(server.url + "/", OPTIONS) as storage:
        result = scan_storage(storage, engine, ScanOptions(concurrency=16))
    assert len(result.dalles) == 299
    assert [(p.path, p.reason, p.detail) for p in result.problems] == [
        ("d0150.tif", "corrupt", "not a TIFF file: 3 bytes")]


@pytest.mark.timeout(60)
def test_any_error_parsing_one_dalle_is_that_dalles_problem(make_dalle, serve, engine: Engine,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    root = livrable(make_dalle, 300)
    server = serve(root)
    real_parse = pipeline.parse_dalle

    def parse(storage, entry, prefix, sidecars=None):  # type: ignore[no-untyped-def]
        if entry.path == "d0007.tif":
            raise RuntimeError("boom")
        return real_parse(storage, entry, prefix, sidecars)

    monkeypatch.setattr(pipeline, "parse_dalle", parse)
    with open_storage(server.url + "/", OPTIONS) as storage:
        result = scan_storage(storage, engine, ScanOptions(concurrency=16))
    assert len(result.dalles) == 299
    assert [(p.path, p.reason, p.detail) for p in result.problems] == [
        ("d0007.tif", "corrupt", "the header cannot be read: RuntimeError: boom")]
