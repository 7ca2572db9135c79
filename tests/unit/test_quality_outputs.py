"""quality.json beside the outputs of `index`, the verdict in its summary, and `pcrs-indexer quality` on the store."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
from click.testing import CliRunner
from fastapi import FastAPI

from indexer.api.app import create_app
from indexer.cli import main
from indexer.sample import write_dalle
from indexer.settings import ApiSettings

X0, Y0, TILE = 651000, 6861000, 200


def call(app: FastAPI, method: str, path: str) -> httpx.Response:
    """One request to the application, without a server (httpx's ASGI transport)."""
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.request(method, path)
    return asyncio.run(run())


def ul(col: int, row: int) -> tuple[int, int]:
    """Upper-left corner of a cell of the Lambert-93 grid (row 0 at the bottom)."""
    return X0 + col * TILE, Y0 + (row + 1) * TILE


def make_livrable(root: Path) -> None:
    """A 5 x 4 grid of 200 m dalles (20 px at 10 m): a hole, a missing corner, a copy, a shifted dalle, a batch of
    another resolution, a dalle in EPSG:3948, a misnamed dalle and an empty file."""
    for col in range(5):
        for row in range(4):
            if (col, row) in ((2, 1), (4, 3)):  # an enclosed hole, and a corner outside the outline
                continue
            x, y = ul(col, row)
            named = "PCRS_651000_6860000_L93.tif" if (col, row) == (4, 0) else f"PCRS_{x}_{y}_L93.tif"
            pixels, resolution = (40, 5.0) if (col, row) == (1, 2) else (20, 10.0)
            shift = 0.5 if (col, row) == (3, 2) else 0.0
            write_dalle(root / "lot" / named, (x + shift, y), pixels, resolution)
    shutil.copy(root / "lot" / "PCRS_651000_6861200_L93.tif", root / "copie" / "PCRS_651000_6861200_L93.tif")
    write_dalle(root / "cc48" / "PCRS_1651000_7200200_CC48.tif", (1651000, 7200200), 20, 10.0, crs="EPSG:3948")
    (root / "lot" / "vide.tif").write_bytes(b"")


def test_index_writes_quality_json_and_the_command_reads_it_from_the_store(tmp_path: Path) -> None:
    (tmp_path / "livrable" / "copie").mkdir(parents=True)
    make_livrable(tmp_path / "livrable")
    out, db = tmp_path / "out", f"sqlite:///{tmp_path / 'state.sqlite'}"
    runner = CliRunner()
    result = runner.invoke(main, ["index", str(tmp_path / "livrable"), "--out", str(out), "--db", db])
    assert result.exit_code == 0, result.output
    verdict = ("1 hole, 1 duplicate, 1 off-grid, 2 outliers (crs EPSG:3948, resolution 500 cm, pixels 40x40), "
               "1 overlapping, "
               "1 misnamed, 1 skipped")
    summary = json.loads(result.stdout)
    assert summary["quality"] == verdict
    assert summary["outputs"]["quality"] == str(out / "quality.json")
    assert f"quality: {verdict}\n" in result.stderr

    document = json.loads((out / "quality.json").read_text(encoding="utf-8"))
    assert document["counts"] == {"holes": 1, "duplicates": 1, "off_grid": 1, "overlaps": 1, "rotated": 0,
                                  "outliers": 2, "names": 1, "skipped": 1}
    lambert, cc48 = document["grids"]
    assert lambert == {"crs": "EPSG:2154", "dalles": 19, "size": [200.0, 200.0], "origin": [0.0, 0.0], "on_grid": 18,
                       "holes": 1, "hole_area": 40000.0, "hole_cells": [[651400.0, 6861200.0, 651600.0, 6861400.0]]}
    assert (cc48["crs"], cc48["dalles"], cc48["holes"]) == ("EPSG:3948", 1, 0)
    copies = ["copie/PCRS_651000_6861200_L93.tif", "lot/PCRS_651000_6861200_L93.tif"]
    assert document["duplicates"] == [{"crs": "EPSG:2154", "cell": [651000.0, 6861000.0, 651200.0, 6861200.0],
                                       "chemins": copies, "identical": True, "differences": []}]
    assert document["off_grid"] == [{"chemin": "lot/PCRS_651600_6861600_L93.tif", "crs": "EPSG:2154", "offset": 0.5,
                                     "dx": 0.5, "dy": 0.0}]
    assert document["overlaps"] == [{"chemins": ["lot/PCRS_651600_6861600_L93.tif", "lot/PCRS_651800_6861600_L93.tif"],
                                     "area": 100.0}]
    assert document["outliers"] == [
        {"chemin": "cc48/PCRS_1651000_7200200_CC48.tif", "parameter": "crs", "value": "EPSG:3948",
         "majority": "EPSG:2154"},
        {"chemin": "lot/PCRS_651200_6861600_L93.tif", "parameter": "resolution", "value": "500 cm",
         "majority": "1000 cm"},
        {"chemin": "lot/PCRS_651200_6861600_L93.tif", "parameter": "pixels", "value": "40x40", "majority": "20x20"},
    ]
    assert document["names"]["convention"] == {"unit": "m", "corner": "upper-left", "separator": True,
                                               "example": "PCRS_1651000_7200200_CC48.tif"}
    assert document["names"]["disagreeing"] == [{"chemin": "lot/PCRS_651000_6860000_L93.tif",
                                                 "named": [651000.0, 6860000.0], "corner": [651800.0, 6861200.0]}]
    assert document["skipped"] == {"empty": ["lot/vide.tif"]}

    stored = runner.invoke(main, ["quality", summary["source"], "--db", db, "--json"])
    assert stored.exit_code == 0, stored.output
    assert json.loads(stored.stdout) == document
    text = runner.invoke(main, ["quality", "1", "--db", db])
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[0] == verdict
    assert "  hole 651400.000 6861200.000 651600.000 6861400.000" in lines
    assert "misnamed lot/PCRS_651000_6860000_L93.tif" in lines

    app = create_app(ApiSettings(db_url=db, output_dir=tmp_path / "api-out"))
    served = call(app, "GET", "/storages/1/quality")
    assert served.status_code == 200 and served.json() == document
    for missing in ("/storages/7/quality", "/storages/x/quality"):
        answer = call(app, "GET", missing)
        assert (answer.status_code, answer.json()["code"]) == (404, 404), missing

    unknown = runner.invoke(main, ["quality", "7", "--db", db])
    assert (unknown.exit_code, unknown.stderr) == (4, "pcrs-indexer: error: no storage '7' in the state store: see "
                                                      "`pcrs-indexer storages`\n")
