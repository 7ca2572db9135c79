"""A livrable that is one file behind an HTTP server (``…/dalle.tif``), as the PCRS scanner accepts it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from indexer.cli import main
from tests.servers.servers import Nginx

pytestmark = pytest.mark.servers


def test_a_url_naming_one_dalle_indexes_that_dalle(make_dalle: Callable[..., Path],
                                                   serve: Callable[[Path], Nginx], tmp_path: Path) -> None:
    dalle = make_dalle("lot 1/PCRS 651000.tif", origin=(651000.0, 6862000.0))
    make_dalle("lot 1/autre.tif", origin=(651200.0, 6862000.0))
    server = serve(tmp_path / "livrable")
    url = f"{server.url}/lot%201/PCRS%20651000.tif"
    result = CliRunner().invoke(main, ["index", url, "--out", str(tmp_path / "out"), "--db",
                                       f"sqlite:///{tmp_path / 's.sqlite'}", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["source"], summary["indexed"], summary["skipped"]) == (url, 1, 0)
    (feature,) = json.loads((tmp_path / "out" / "dalles.geojson").read_text())["features"]
    assert (feature["properties"]["chemin"], feature["properties"]["tailleFichier"]) == (
        "PCRS 651000.tif", dalle.stat().st_size)
    assert [(r.method, r.path, r.status) for r in server.requests()] == [
        ("HEAD", "/lot%201/PCRS%20651000.tif", 200), ("GET", "/lot%201/PCRS%20651000.tif", 206)]


def test_a_missing_dalle_cannot_be_listed(make_dalle: Callable[..., Path], serve: Callable[[Path], Nginx],
                                          tmp_path: Path) -> None:
    make_dalle("a.tif")
    server = serve(tmp_path / "livrable")
    result = CliRunner().invoke(main, ["index", f"{server.url}/absente.tif", "--out", str(tmp_path / "out"),
                                       "--db", f"sqlite:///{tmp_path / 's.sqlite'}", "--quiet"])
    assert result.exit_code == 3
    assert result.stderr == f"pcrs-indexer: error: cannot list {server.url}/absente.tif: not found (HTTP 404)\n"
    assert not (tmp_path / "out").exists()
