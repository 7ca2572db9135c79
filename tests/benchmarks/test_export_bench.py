"""The export benchmark row at a tiny size (`tests.benchmarks.export_bench`): each format exported by
a process of its own and read back, the table printed, and memory flat between two sizes."""

from __future__ import annotations

from pathlib import Path

from tests.benchmarks.export_bench import FORMATS, run_export_bench, table

PAGE = 50
"""Pages small enough for every buffer of the export (a page, a row group) to be full at both sizes."""


def test_the_export_row_prints_reads_back_and_stays_flat(tmp_path: Path) -> None:
    small = run_export_bench(500, 250, tmp_path, page=PAGE)
    large = run_export_bench(5_000, 2_500, tmp_path, page=PAGE)
    lines = table(small + large).splitlines()
    assert lines[0] == ("| export | dalles | wall s | export s | dalles/s | CPU s | CPU µs/dalle | peak RSS MB "
                        "| file MB | read back |")
    assert [line.split(" | ")[:2] for line in lines[2:8]] == [
        [f"| {fmt}", size] for size in ("500", "5,000") for fmt in FORMATS]
    assert all(line.endswith("| equal |") for line in lines[2:8]), "\n".join(lines)
    for row in small + large:
        assert row.read_back["features"] == row.dalles and row.equal, row.read_back
    for a, b in zip(small, large, strict=True):
        # Ten times the dalles: the same pages and row groups held at once; FlatGeobuf's index adds
        # about 100 bytes per feature (0.5 MB here). The 5,000 features kept as dicts would add 10 MB.
        assert b.peak_rss_mb - a.peak_rss_mb < 6, f"{a.fmt}: {a.peak_rss_mb:.0f} MB -> {b.peak_rss_mb:.0f} MB"
