"""The benchmark runs end to end at a tiny size: it is a benchmark, not a timed test."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tests.benchmarks.__main__ import benchmark


def test_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    result = CliRunner().invoke(benchmark, ["--sizes", "40", "--latency-ms", "5", "--synthetic", "200",
                                       "--workdir", str(tmp_path), "--keep"])
    assert result.exit_code == 0, result.output

    table = result.stdout.splitlines()
    labels = [line.split("  ")[0].strip() for line in table[2:6]]
    assert labels == ["reference", "ours", "ours re-scan", "synthetic"]

    rows = {row["label"]: row for row in json.loads((tmp_path / "results.json").read_text())["rows"]}
    reference, ours, rescan = rows["reference"], rows["ours"], rows["ours re-scan"]
    assert reference["measured"]["dalles"] == ours["measured"]["dalles"] == rescan["measured"]["dalles"] == 40
    assert ours["requests_per_dalle"] <= 1.2
    assert ours["server"]["raster_requests"] == 40
    # The re-scan reuses every dalle: listing pages only, not one raster request.
    assert rescan["measured"]["reused"] == 40 and rescan["measured"]["read"] == 0
    assert rescan["server"]["raster_requests"] == 0
    assert rescan["server"]["requests"] == rescan["server"]["listing_requests"] > 0
    # The reference really went through /vsicurl/: every dalle cost at least one ranged GET.
    assert reference["server"]["range_requests"] >= 40
    assert rows["synthetic"]["measured"]["emprise_parts"] == 1


def test_generated_dalles_lie_on_their_grid_cell(tmp_path: Path) -> None:
    import rasterio

    from tests.benchmarks.benchmark import KIND_CYCLE, dalle_origin, dalle_relpath, generate_livrable, load_templates

    templates = load_templates(tmp_path / "templates", pixels=400)
    generated = generate_livrable(tmp_path / "livrable", len(KIND_CYCLE), templates)
    assert generated.count == len(KIND_CYCLE)
    for index in range(len(KIND_CYCLE)):
        x, y = dalle_origin(index, len(KIND_CYCLE))
        with rasterio.open(tmp_path / "livrable" / dalle_relpath(index, len(KIND_CYCLE))) as src:
            assert src.crs.to_epsg() == 2154
            assert (src.bounds.left, src.bounds.top) == (x, y)
            assert src.read(1, window=((0, 16), (0, 16))).shape == (16, 16)
