"""A private storage (``stockage_public: false``): its published files name no connection detail."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from indexer.cli import main
from indexer.models import DalleProblem, FileEntry, ScanResult, SkipReason
from indexer.publish import report
from indexer.sample import make_sample_livrable
from tests.conftest import SMALL
from tests.servers.servers import ProFTPD, public_folder
from tests.unit.test_cli import PROJET

pytestmark = pytest.mark.servers

PASSWORD = "ftp-Private-5501"


@pytest.fixture
def ftp_server(tmp_path: Path) -> Iterator[ProFTPD]:
    root = public_folder()
    make_sample_livrable(root / "livrable", SMALL)
    server = ProFTPD(root, tmp_path / "ftp", password=PASSWORD).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def index(server: ProFTPD, tmp_path: Path, public: bool) -> tuple[Path, dict[str, object]]:
    doc = json.loads(json.dumps(PROJET))
    doc["livrables"][0].update(stockage="ftp", stockage_public=public, stockage_params={
        "host": "ftp://127.0.0.1", "port": str(server.port), "username": "pcrs", "password": PASSWORD,
        "startPath": "/livrable"})
    projet = tmp_path / f"projet-{public}.json"
    projet.write_text(json.dumps(doc), encoding="utf-8")
    out = tmp_path / f"out-{public}"
    source = f"ftp://pcrs:{PASSWORD}@{server.host}/livrable"
    result = CliRunner().invoke(main, ["index", source, "--out", str(out), "--projet", str(projet), "--db",
                                       f"sqlite:///{out}.sqlite", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "report.json").read_text())


def test_a_private_storage_publishes_no_connection_detail(ftp_server: ProFTPD, tmp_path: Path) -> None:
    out, private = index(ftp_server, tmp_path, public=False)
    assert private["source"] is None
    assert (private["indexed"], len(private["skipped"])) == (15, 7)  # type: ignore[arg-type]
    for name in ("report.json", "dalles.geojson", "livrables.geojson"):
        text = (out / name).read_text(encoding="utf-8")
        for detail in ("127.0.0.1", str(ftp_server.port), "ftp://", "pcrs@", "pcrs:", PASSWORD):
            assert detail not in text, (name, detail)
    public_out, public = index(ftp_server, tmp_path, public=True)
    assert public["source"] == f"ftp://pcrs:***@{ftp_server.host}/livrable"
    assert (public_out / "dalles.geojson").read_bytes() == (out / "dalles.geojson").read_bytes()


def test_a_private_report_masks_the_host_in_details() -> None:
    source = "sftp://ortho@sftp.commune.example:2222/pcrs"
    problem = DalleProblem(FileEntry("a.tif", 10), SkipReason.UNREADABLE,
                           f"cannot read {source}/a.tif: sftp.commune.example refused the channel")
    result = ScanResult(source=source, listed_files=1, problems=[problem])
    assert report(result, private=True)["skipped"] == [
        {"path": "a.tif", "reason": "unreadable", "detail": "cannot read ***/a.tif: *** refused the channel"}]
    assert report(result)["source"] == source
