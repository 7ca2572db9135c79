"""Hostile FTP and SSH servers on loopback: every scan ends in bounded time and memory, leaks nothing.

Each scenario runs ``pcrs-indexer index`` as a child process against a server written to
misbehave (`tests/servers/hostile_ftp.py`, `tests/servers/fault_server.py`), into an output folder
holding the outputs of an earlier good scan, and asserts the exit code, the one line on stderr,
the wall time and the child's peak RSS (from ``wait4``), and that the earlier outputs are intact.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.servers.servers import HostileFTP

PCRS_INDEXER = str(Path(sys.executable).with_name("pcrs-indexer"))
BASE_RSS_MB = 250
"""Peak RSS of a plain ``index`` run (Python, GDAL, rasterio, SQLAlchemy loaded), with room to spare."""


@dataclass(frozen=True, slots=True)
class Run:
    """How one ``pcrs-indexer index`` child process ended."""

    code: int
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_mb: float


def run_index(source: str, out: Path, db: Path, env: dict[str, str], *extra: str, limit_s: float = 120) -> Run:
    """Run ``pcrs-indexer index SOURCE --out OUT`` in a child process, measured with ``wait4``."""
    started = time.monotonic()
    with open(out.parent / "stdout.txt", "w+") as stdout, open(out.parent / "stderr.txt", "w+") as stderr:
        child = subprocess.Popen([PCRS_INDEXER, *extra, "index", source, "--out", str(out), "--db",
                                  f"sqlite:///{db}", "--quiet"], stdout=stdout, stderr=stderr, env=env)
        deadline = started + limit_s
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                child.kill()
                child.wait()
                pytest.fail(f"pcrs-indexer index {source} still running after {limit_s} s")
            time.sleep(0.05)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        stdout.seek(0)
        stderr.seek(0)
        return Run(child.returncode, stdout.read(), stderr.read(), wall, usage.ru_maxrss / 1024)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The child's environment: loopback allowed, short timeouts, no setting from the caller's."""
    values = {k: v for k, v in os.environ.items() if not k.startswith(("PCRS_INDEXER_", "AWS_"))}
    values.update({"PCRS_INDEXER_DATA_DIR": str(tmp_path / "data"), "PCRS_INDEXER_ALLOWED_NETWORKS": "127.0.0.0/8",
                   "PCRS_INDEXER_TIMEOUT_S": "2", "PCRS_INDEXER_RETRIES": "1"})
    return values


@pytest.fixture
def previous(sample_livrable: Path, tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[Path, dict[str, bytes]]]:
    """An output folder holding a good scan's outputs, and those files' bytes."""
    out = tmp_path / "out"
    good = run_index(str(sample_livrable), out, tmp_path / "good.sqlite", env)
    assert good.code == 0, good.stderr
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(files) == {"dalles.geojson", "livrables.geojson", "report.json"}
    yield out, files


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[list[HostileFTP]]:
    """Hostile FTP servers started by the test, stopped at its end."""
    started: list[HostileFTP] = []
    yield started
    for server in started:
        server.stop()


def start_ftp(hostile: list[HostileFTP], tmp_path: Path, mode: str, delay: float = 2.0) -> HostileFTP:
    server = HostileFTP(tmp_path / mode, mode, delay).start()
    hostile.append(server)
    return server


def assert_intact(out: Path, files: dict[str, bytes]) -> None:
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def last_error(db: Path) -> str | None:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT last_error FROM storages")).scalar()
    finally:
        engine.dispose()


def test_an_endless_fan_out_of_folders_stops_at_the_folder_cap(hostile: list[HostileFTP], previous: tuple[
        Path, dict[str, bytes]], env: dict[str, str], tmp_path: Path) -> None:
    server = start_ftp(hostile, tmp_path, "fanout")
    out, files = previous
    env["PCRS_INDEXER_MAX_FOLDERS"] = "200"
    run = run_index(f"ftp://{server.host}/livrable", out, tmp_path / "state.sqlite", env)
    assert run.code == 3
    lists = [c for c in server.commands() if c[1] == "LIST"]
    # Four new folders in each: levels of 1, 4, 16 and 64 folders are listed (85 in all), and the
    # 201st folder found, four levels down, ends the crawl.
    assert re.fullmatch(rf"pcrs-indexer: error: cannot list ftp://{server.host}/livrable: more than 200 folders "
                        r"\(the max_folders setting\), (d\d+/){4} among them\n", run.stderr), run.stderr
    assert len(lists) == 1 + 4 + 16 + 64
    assert run.wall_s < 60  # without the cap: no end (the child is killed after 120 s)
    assert run.peak_rss_mb < BASE_RSS_MB
    assert_intact(out, files)
    print(f"fan-out: {len(lists)} LIST, {run.wall_s:.1f} s, {run.peak_rss_mb:.0f} MB")


@pytest.mark.parametrize("verbose", [[], ["-v"]])
def test_a_reply_repeating_the_password_is_scrubbed(verbose: list[str], hostile: list[HostileFTP], previous: tuple[
        Path, dict[str, bytes]], env: dict[str, str], tmp_path: Path) -> None:
    server = start_ftp(hostile, tmp_path, "echo-password")
    out, files = previous
    password = "Echo/Pass#7319"  # unencoded "/" and "#": read as the password all the same
    db = tmp_path / "state.sqlite"
    run = run_index(f"ftp://pcrs:{password}@{server.host}/livrable", out, db, env, *verbose)
    assert run.code == 3
    assert ("PASS", password) in [c[1:] for c in server.commands()]  # the server did get it, and repeated it
    line = (f"pcrs-indexer: error: cannot list ftp://pcrs:***@{server.host}/livrable: FTP 530 Login incorrect: "
            "password *** refused\n")
    if verbose:
        assert "Traceback (most recent call last):" in run.stderr
        assert run.stderr.endswith(line)
    else:
        assert run.stderr == line
    assert password not in run.stderr and "Echo" not in run.stderr
    assert last_error(db) == line.removeprefix("pcrs-indexer: error: ").rstrip("\n")
    assert run.wall_s < 15
    assert run.peak_rss_mb < BASE_RSS_MB
    assert_intact(out, files)
    print(f"530 echoing the password: {run.wall_s:.1f} s, {run.peak_rss_mb:.0f} MB")
