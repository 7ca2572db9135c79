"""The published files: modes from the umask, synced, and replaced as one set."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest

from indexer.models import DalleProblem, FileEntry, ScanResult, SkipReason
from indexer.projet import Livrable, Projet
from indexer.publish import OutputSet, publish_outputs
from indexer.read import read_dalle
from indexer.storages import open_storage

NAMES = ("dalles.geojson", "livrables.geojson", "report.json", "quality.json")


@pytest.fixture
def umask() -> Iterator[None]:
    """Run the test under umask 022 whatever the caller's, and restore it."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def scan_of(folder: Path, count: int) -> ScanResult:
    """A scan result of the first `count` dalles of a folder, read for real."""
    storage = open_storage(str(folder))
    entries = sorted(storage.list_files(), key=lambda e: e.path)
    dalles = [read_dalle(storage, e, []) for e in entries if e.path.endswith(".tif")][:count]
    return ScanResult(source=storage.url, listed_files=len(entries), dalles=dalles)  # type: ignore[arg-type]


@pytest.fixture
def rows(make_dalle: object, tmp_path: Path) -> Path:
    for n in range(6):
        make_dalle(f"d{n}.tif", (700000.0 + n * 200, 6600200.0), pixels=16, resolution_m=12.5)  # type: ignore[operator]
    return tmp_path / "livrable"


def test_files_take_the_umask_s_mode_and_one_release_is_served(umask: None, rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    publish_outputs(out, scan_of(rows, 2), None, None, date(2025, 1, 1))
    for name in NAMES:
        assert os.readlink(out / name) == f".current/{name}"
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644
    (release,) = (out / ".releases").iterdir()
    assert os.readlink(out / ".current") == f".releases/{release.name}"
    assert stat.S_IMODE(release.stat().st_mode) == 0o755
    assert sorted(p.name for p in release.iterdir()) == sorted([*NAMES, ".inputs.json"])
    os.umask(0o027)
    publish_outputs(out, scan_of(rows, 3), None, None, date(2025, 1, 1))
    assert stat.S_IMODE((out / "dalles.geojson").stat().st_mode) == 0o640
    assert len(json.loads((out / "dalles.geojson").read_text())["features"]) == 3
    # The previous release stays for readers still on it; older ones go.
    publish_outputs(out, scan_of(rows, 4), None, None, date(2025, 1, 1))
    releases = sorted(p.name for p in (out / ".releases").iterdir())
    assert len(releases) == 2 and releases[0] > release.name
    assert sorted(p.name for p in out.iterdir()) == sorted([*NAMES, ".current", ".releases"])


def test_a_regular_file_left_by_an_older_version_is_replaced(umask: None, rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in NAMES:
        (out / name).write_text("old")
    publish_outputs(out, scan_of(rows, 1), None, None, date(2025, 1, 1))
    assert all((out / name).is_symlink() for name in NAMES)
    assert json.loads((out / "report.json").read_text())["indexed"] == 1


def test_a_failed_write_changes_nothing(umask: None, rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    publish_outputs(out, scan_of(rows, 2), None, None, date(2025, 1, 1))
    before = {name: (out / name).read_bytes() for name in NAMES}
    with pytest.raises(RuntimeError), OutputSet(out) as files:
        with files.open("dalles.geojson") as f:
            f.write("{}")
        raise RuntimeError("disk full")
    assert {name: (out / name).read_bytes() for name in NAMES} == before
    assert len(list((out / ".releases").iterdir())) == 1


def test_a_reader_of_the_current_release_sees_one_set(umask: None, rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    publish_outputs(out, scan_of(rows, 1), None, None, date(2025, 1, 1))
    results = [scan_of(rows, n) for n in range(1, 7)]
    stop = threading.Event()
    seen: list[tuple[int, int]] = []

    def read() -> None:
        while not stop.is_set():
            current = out / os.readlink(out / ".current")
            dalles = json.loads((current / "dalles.geojson").read_text())["features"]
            report = json.loads((current / "report.json").read_text())
            seen.append((len(dalles), report["indexed"]))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(5):
            for result in results:
                publish_outputs(out, result, None, None, date(2025, 1, 1))
    finally:
        stop.set()
        reader.join()
    assert seen and all(count == indexed for count, indexed in seen)
    assert len({count for count, _ in seen}) > 1


def test_a_file_made_from_the_same_inputs_is_taken_from_the_served_release(umask: None, rows: Path,
                                                                           tmp_path: Path) -> None:
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    result = scan_of(rows, 3)
    publish_outputs(out, result, None, None, date(2025, 1, 1))
    first = {name: (out / name).stat().st_ino for name in NAMES}
    publish_outputs(out, replace(result, duration_s=2.0), None, None, date(2025, 1, 1))
    publish_outputs(fresh, replace(result, duration_s=2.0), None, None, date(2025, 1, 1))
    # dalles.geojson and quality.json are the served files, linked unwritten; the others written again
    assert {name for name in NAMES if (out / name).stat().st_ino == first[name]} == {"dalles.geojson",
                                                                                     "quality.json"}
    assert {name: (out / name).read_bytes() for name in NAMES} == {
        name: (fresh / name).read_bytes() for name in NAMES}
    # a changed projet document, a changed dalle, a changed problem: written again, as a fresh publication
    projet = Projet(id="P1", nom="p", livrables=[])
    livrable = Livrable(nom="l", licence="ouvert_lo")
    dalle = replace(result.dalles[0], file=replace(result.dalles[0].file, size=1))
    problem = DalleProblem(FileEntry("z.tif", 3), SkipReason.EMPTY, "0 bytes")
    for changed, doc, liv, rewritten in [(result, projet, livrable, {"dalles.geojson"}),
                                         (replace(result, dalles=[dalle, *result.dalles[1:]]), None, None,
                                          {"dalles.geojson", "quality.json"}),
                                         (replace(result, problems=[problem]), None, None, {"quality.json"})]:
        publish_outputs(out, result, None, None, date(2025, 1, 1))
        before = {name: (out / name).stat().st_ino for name in NAMES}
        publish_outputs(out, changed, doc, liv, date(2025, 1, 1))
        publish_outputs(fresh / "again", changed, doc, liv, date(2025, 1, 1))
        assert {name for name in NAMES if (out / name).stat().st_ino != before[name]} == {
            *rewritten, "livrables.geojson", "report.json"}
        assert {name: (out / name).read_bytes() for name in NAMES} == {
            name: (fresh / "again" / name).read_bytes() for name in NAMES}
        shutil.rmtree(fresh / "again")
