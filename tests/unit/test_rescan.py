"""Change detection: unchanged dalles are reused, changed ones re-read, deleted ones leave."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from indexer.cli import main
from indexer.models import Dalle
from indexer.pipeline import ScanOptions, scan_storage
from indexer.sample import write_dalle
from indexer.storages.local import LocalStorage
from indexer.store import catalog, schema
from indexer.store import records as store_records


class CountingStorage(LocalStorage):
    """A local storage that counts the dalles whose header it read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.prefix_reads: list[str] = []

    def read_start(self, entry, length):  # type: ignore[no-untyped-def]
        self.prefix_reads.append(entry.path)
        return super().read_start(entry, length)


def test_rescan_with_nothing_changed_reads_no_raster(livrable_copy: Path, engine: Engine) -> None:
    first = scan_storage(CountingStorage(livrable_copy), engine, ScanOptions())
    storage = CountingStorage(livrable_copy)
    second = scan_storage(storage, engine, ScanOptions())
    assert storage.prefix_reads == []
    assert first.raster_files == second.raster_files == 22
    assert (first.indexed, first.reused, len(first.problems)) == (15, 0, 7)
    assert (second.indexed, second.reused, len(second.problems)) == (0, 15, 7)
    assert second.dalles == first.dalles
    assert second.problems == first.problems


def test_changed_deleted_and_new_dalles(livrable_copy: Path, engine: Engine) -> None:
    scan_storage(CountingStorage(livrable_copy), engine, ScanOptions())
    changed = livrable_copy / "lot 1/PCRS_651000_6862000_L93.tif"
    write_dalle(changed, (651000.0, 6862000.0), pixels=100, resolution_m=2.0, compress="lzw")
    os.utime(changed, (1_800_000_000, 1_800_000_000))
    (livrable_copy / "lot 1/PCRS_651200_6862000_L93.tif").unlink()
    shutil.copy(changed, livrable_copy / "lot 1/copie.tif")
    storage = CountingStorage(livrable_copy)
    result = scan_storage(storage, engine, ScanOptions())
    assert sorted(storage.prefix_reads) == ["lot 1/PCRS_651000_6862000_L93.tif", "lot 1/copie.tif"]
    assert (result.indexed, result.reused, len(result.problems)) == (2, 13, 7)
    by_path = {d.path: d for d in result.dalles}
    assert "lot 1/PCRS_651200_6862000_L93.tif" not in by_path
    assert (by_path["lot 1/PCRS_651000_6862000_L93.tif"].compression,
            by_path["lot 1/PCRS_651000_6862000_L93.tif"].resolution_cm) == ("LZW", 200.0)
    assert len(result.dalles) == 15
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.records)).scalar() == 22
        rows = conn.execute(select(schema.records.c.path, schema.records.c.scan_id))
        scan_of = {row.path: row.scan_id for row in rows}
    # Only what was read again is written again; the store holds exactly the scan's result.
    assert {path for path, scan in scan_of.items() if scan == 2} == {
        "lot 1/PCRS_651000_6862000_L93.tif", "lot 1/copie.tif"}
    assert set(scan_of.values()) == {1, 2}
    stored = list(store_records.load_records(engine, catalog.storage_id(engine, livrable_copy.as_uri())))
    assert sorted(stored, key=lambda r: r.path) == sorted([*result.dalles, *result.problems], key=lambda r: r.path)


def test_full_rescan_reads_everything(livrable_copy: Path, engine: Engine) -> None:
    scan_storage(CountingStorage(livrable_copy), engine, ScanOptions())
    storage = CountingStorage(livrable_copy)
    result = scan_storage(storage, engine, ScanOptions(full=True))
    assert len(storage.prefix_reads) == 21  # every raster but the 0-byte file
    assert (result.indexed, result.reused) == (15, 0)


def test_records_round_trip(livrable_copy: Path, engine: Engine) -> None:
    result = scan_storage(LocalStorage(livrable_copy), engine, ScanOptions())
    stored = list(store_records.load_records(engine, catalog.storage_id(engine, livrable_copy.as_uri())))
    assert [r for r in stored if isinstance(r, Dalle)] == result.dalles
    with engine.connect() as conn:
        row = conn.execute(select(schema.storages)).one()
        assert (row.status, row.dalles, row.skipped, row.last_error) == ("ok", 15, 7, None)
        scan = conn.execute(select(schema.scans)).one()
        assert (scan.status, scan.step, scan.listed, scan.read, scan.reused, scan.skipped) == (
            "succeeded", "done", 23, 22, 0, 7)


def test_report_counts_add_up_on_a_rescan(livrable_copy: Path, tmp_path: Path) -> None:
    def index() -> tuple[dict[str, Any], dict[str, Any], int]:
        result = CliRunner().invoke(main, ["index", str(livrable_copy), "--out", str(tmp_path / "out"), "--db",
                                           f"sqlite:///{tmp_path / 'state.sqlite'}", "--quiet"])
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        features = len(json.loads((tmp_path / "out" / "dalles.geojson").read_text())["features"])
        return json.loads(result.stdout), report, features

    write_dalle(livrable_copy / "lot 1/nouvelle.tif", (651000.0, 6863000.0), pixels=100, resolution_m=2.0)
    for expected in ((16, 0, 7), (0, 16, 7)):
        summary, report, features = index()
        assert (report["indexed"], report["reused"], len(report["skipped"])) == expected
        assert (summary["indexed"], summary["reused"], summary["skipped"]) == expected
        assert report["raster_files"] == 23 == report["indexed"] + report["reused"] + len(report["skipped"])
        assert features == report["indexed"] + report["reused"] == 16
    (livrable_copy / "lot 1/nouvelle.tif").unlink()
    write_dalle(livrable_copy / "lot 1/autre.tif", (651000.0, 6863000.0), pixels=100, resolution_m=2.0)
    summary, report, features = index()
    assert (report["raster_files"], report["indexed"], report["reused"], len(report["skipped"])) == (23, 1, 15, 7)
    assert features == 16
