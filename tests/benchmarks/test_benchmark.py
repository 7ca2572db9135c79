"""The benchmark runs every row end to end at a tiny size: it is a benchmark, not a timed test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.benchmarks.__main__ import benchmark
from tests.servers.servers import public_folder

SIZE = 12


def test_every_row_runs_at_a_tiny_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PCRS_BENCH_IN_PROCESS", "1")  # the runs in this process: no import paid 17 times
    workdir = public_folder("pcrs-bench-")  # the FTP and SFTP sessions read it as unprivileged users
    try:
        result = CliRunner().invoke(benchmark, [
            "--sizes", str(SIZE), "--latency-ms", "2", "--synthetic", "100", "--tuned-processes", "2",
            "--template-pixels", "256", "--workdir", str(workdir), "--keep"])
        assert result.exit_code == 0, result.output
        rows = {row["label"]: row for row in json.loads((workdir / "results.json").read_text())["rows"]}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    table = result.stdout.splitlines()
    labels = [line.split("  ")[0].strip() for line in table[2:table.index("")]]
    assert labels == ["http reference", "http GDAL tuned (2)", "http ours", "http ours re-scan",
                      "ftp reference", "ftp ours", "ftp ours re-scan",
                      "sftp reference", "sftp sshfs", "sftp ours", "sftp ours re-scan",
                      "s3 GDAL tuned (2)", "s3 ours", "s3 ours re-scan", "synthetic", "quality"]
    assert table[-1].startswith("Every server behind a TCP delay line of 2 ms round trip.")

    assert {row["measured"]["dalles"] for label, row in rows.items() if label not in ("synthetic", "quality")} == {SIZE}
    for storage in ("http", "ftp", "sftp", "s3"):
        ours, rescan = rows[f"{storage} ours"], rows[f"{storage} ours re-scan"]
        assert (ours["measured"]["read"], ours["measured"]["reused"]) == (SIZE, 0), storage
        # The re-scan reuses every dalle: not one raster read.
        assert (rescan["measured"]["read"], rescan["measured"]["reused"]) == (0, SIZE), storage
        assert rescan["server"]["bytes_sent"] < ours["server"]["bytes_sent"], storage
        assert ours["vs_reference" if storage != "s3" else "vs_peer"] is not None

    http = rows["http ours"]["server"]
    assert http["raster_requests"] == SIZE and http["requests"] <= 1.2 * SIZE
    assert rows["http ours re-scan"]["server"]["raster_requests"] == 0
    # The references and peers really went through GDAL's /vsicurl/ and /vsis3/: a ranged GET per dalle at least.
    assert rows["http reference"]["server"]["range_requests"] >= SIZE
    assert rows["http GDAL tuned (2)"]["server"]["range_requests"] >= SIZE
    assert list(rows["http GDAL tuned (2)"]["measured"]["tried"]) == ["2"]
    assert rows["s3 GDAL tuned (2)"]["server"]["raster_requests"] >= SIZE
    assert rows["s3 ours re-scan"]["server"]["raster_requests"] == 0
    # FTP: the reference logs in again for every block it reads, the scan at most twice (the server's cap).
    assert rows["ftp reference"]["server"]["logins"] > SIZE
    assert rows["ftp ours"]["server"]["logins"] <= 2
    assert rows["ftp ours re-scan"]["server"]["raster_requests"] == 0
    # SFTP: one connection each, across the delay line.
    assert rows["sftp reference"]["server"]["line"]["connections"] == 1
    assert rows["sftp ours"]["server"]["line"]["connections"] == 1
    assert rows["synthetic"]["measured"]["emprise_parts"] == 1
    assert rows["quality"]["measured"]["counts"]["holes"] == 1  # the synthetic livrable's placed defect


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
