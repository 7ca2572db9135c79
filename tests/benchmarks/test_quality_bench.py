"""The quality row of the benchmark at a tiny size: checked against the defects placed, and printed.

`make bench` runs it in a child process (`quality_row`), as the tiny run of `test_benchmark.py` does.
"""

from __future__ import annotations

from tests.benchmarks.benchmark import BenchmarkConfig, Row, format_table
from tests.benchmarks.quality_bench import Defects, run_quality


def test_the_quality_row_prints_with_the_counts_it_placed() -> None:
    measured = run_quality(2000)
    defects = Defects.of(2000)
    assert (defects.holes, defects.duplicates, defects.shifted, defects.batch, defects.misnamed) == (2, 1, 1, 2, 1)
    assert measured["dalles"] == 2000 + defects.duplicates + defects.cc48
    assert {k: v for k, v in measured["counts"].items() if k != "overlaps"} == {
        "holes": 2, "duplicates": 1, "off_grid": 1, "rotated": 1, "outliers": 12, "names": 1, "skipped": 10}
    assert 0 < measured["wall_s"] < 60 and measured["rss_mb"] > 0
    lines = format_table([Row("quality", 2000, measured)], BenchmarkConfig()).splitlines()
    (line,) = [line for line in lines if line.startswith("quality ")]
    assert line.split()[1] == "2,000"
