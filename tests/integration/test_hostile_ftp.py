"""Hostile FTP and SSH servers on loopback: every scan ends in bounded time and memory, leaks nothing.

Each scenario runs ``pcrs-indexer index`` as a child process against a server written to
misbehave (`tests/servers/hostile_ftp.py`, `tests/servers/fault_server.py`), into an output folder
holding the outputs of an earlier good scan, and asserts the exit code, the one line on stderr,
the wall time and the command's own peak RSS (``tests/servers/measure.py``), and that the earlier outputs are intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from indexer.sample import write_dalle
from tests.servers.measure import Run, pcrs_indexer, run_measured
from tests.servers.servers import HostileFTP, HostileSFTP, Nginx, public_folder

BASE_RSS_MB = 250
"""Peak RSS of a plain ``index`` run (Python, GDAL, rasterio, SQLAlchemy loaded), with room to spare."""


def run_index(source: str, out: Path, db: Path, env: dict[str, str], *extra: str, limit_s: float = 120) -> Run:
    """Run ``pcrs-indexer index SOURCE --out OUT`` in a child process, measured (`run_measured`).

    A child still running after `limit_s` is killed and the test fails.
    """
    run = run_measured(pcrs_indexer(*extra, "index", source, "--out", str(out), "--db", f"sqlite:///{db}",
                                    "--quiet"), env, db.parent, kill_after_s=limit_s)
    if run.killed is not None:
        pytest.fail(f"pcrs-indexer index {source} killed ({run.killed})")
    return run


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
    files = {p.name: p.read_bytes() for p in out.glob("*") if p.is_file()}  # the files, not their releases
    assert set(files) == {"dalles.geojson", "livrables.geojson", "report.json", "quality.json", "preview.html"}
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
    assert {p.name: p.read_bytes() for p in out.glob("*") if p.is_file()} == files


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
    env.update({"PCRS_INDEXER_MAX_FOLDERS": "200", "PCRS_INDEXER_TIMEOUT_S": "10"})  # no retry on a loaded machine
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
    assert ("PASS", password) in [c[1:3] for c in server.commands()]  # the server did get it, and repeated it
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


TIMEOUT_S, RETRIES = 2.0, 1
"""The child's settings (see `env`): a livrable that cannot be listed fails within 4 s, plus a margin."""
MARGIN_S = 1.5
"""The backoff between attempts (0.5 s) and the failed scan recorded in the store."""


@pytest.mark.parametrize("mode", ["trickle-banner", "trickle-list"])
def test_a_trickling_server_fails_within_the_deadline(mode: str, hostile: list[HostileFTP], previous: tuple[
        Path, dict[str, bytes]], env: dict[str, str], tmp_path: Path) -> None:
    server = start_ftp(hostile, tmp_path, mode, delay=0.5)  # a byte every 0.5 s: never idle for TIMEOUT_S
    out, files = previous
    db = tmp_path / "state.sqlite"
    run = run_index(f"ftp://pcrs:Trickle-Pass@{server.host}/livrable", out, db, env)
    assert run.code == 3
    line = f"cannot list ftp://pcrs:***@{server.host}/livrable: timed out (2 attempts)"
    assert run.stderr == f"pcrs-indexer: error: {line}\n"
    assert last_error(db) == line
    connects = [c for c in server.commands() if c[1] == "CONNECT" and c[0] > 1]  # session 1: the start's probe
    assert len(connects) == RETRIES + 1  # one connection per attempt
    assert run.first_stderr_at is not None
    listing_s = run.first_stderr_at - connects[0][3]  # from the first connection to the error line
    if mode == "trickle-list":
        assert [c[1] for c in server.commands() if c[1] == "LIST"] == ["LIST"] * (RETRIES + 1)
    assert TIMEOUT_S * (RETRIES + 1) <= listing_s < TIMEOUT_S * (RETRIES + 1) + MARGIN_S
    assert run.wall_s < 60
    assert run.peak_rss_mb < BASE_RSS_MB
    assert_intact(out, files)
    print(f"{mode}: {run.wall_s:.1f} s in all, {listing_s:.1f} s from the first connection to the error, "
          f"{run.peak_rss_mb:.0f} MB")


def test_an_endless_listing_stops_at_the_listing_cap(hostile: list[HostileFTP], previous: tuple[
        Path, dict[str, bytes]], env: dict[str, str], tmp_path: Path) -> None:
    server = start_ftp(hostile, tmp_path, "endless-list")
    out, files = previous
    env["PCRS_INDEXER_TIMEOUT_S"] = "30"  # the cap ends it, not the deadline
    db = tmp_path / "state.sqlite"
    run = run_index(f"ftp://{server.host}/livrable", out, db, env)
    assert run.code == 3
    line = (f"cannot list ftp://{server.host}/livrable: the response is larger than 16777216 bytes "
            "(the max_listing_bytes setting): reading stopped there")
    assert run.stderr == f"pcrs-indexer: error: {line}\n"
    assert last_error(db) == line
    assert [c[1] for c in server.commands() if c[1] == "LIST"] == ["LIST"]  # not retried
    assert run.wall_s < 30
    assert run.peak_rss_mb < BASE_RSS_MB + 100
    assert_intact(out, files)
    print(f"endless LIST: {run.wall_s:.1f} s, {run.peak_rss_mb:.0f} MB")


def test_a_listing_of_too_many_entries_stops_at_the_crawl_caps(hostile: list[HostileFTP], previous: tuple[
        Path, dict[str, bytes]], env: dict[str, str], tmp_path: Path) -> None:
    server = start_ftp(hostile, tmp_path, "endless-list")
    out, files = previous
    env.update({"PCRS_INDEXER_MAX_ENTRIES": "1000", "PCRS_INDEXER_MAX_FOLDERS": "10", "PCRS_INDEXER_TIMEOUT_S": "10"})
    run = run_index(f"ftp://{server.host}/livrable", out, tmp_path / "state.sqlite", env)
    assert (run.code, run.stderr) == (3, f"pcrs-indexer: error: cannot list ftp://{server.host}/livrable: the response "
                                         "is larger than 1010 entries (the max_entries and max_folders setting): "
                                         "reading stopped there\n")
    assert run.wall_s < 30
    assert run.peak_rss_mb < BASE_RSS_MB
    assert_intact(out, files)
    print(f"LIST past the entries: {run.wall_s:.1f} s, {run.peak_rss_mb:.0f} MB")


def test_a_read_answered_with_more_than_asked_keeps_what_was_asked(hostile: list[HostileFTP], env: dict[str, str],
                                                                   tmp_path: Path) -> None:
    server = start_ftp(hostile, tmp_path, "big-retr")
    env["PCRS_INDEXER_TIMEOUT_S"] = "10"
    out = tmp_path / "out"
    run = run_index(f"ftp://{server.host}/livrable", out, tmp_path / "state.sqlite", env)
    assert run.code == 0, run.stderr
    report = json.loads((out / "report.json").read_text())
    # 64 MiB sent for a file the listing says is 1,000 bytes long: 1,000 read, found to be no TIFF.
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [("a.tif", "corrupt")]
    assert [c[1] for c in server.commands() if c[1] == "RETR"] == ["RETR"]
    assert run.wall_s < 30
    assert run.peak_rss_mb < BASE_RSS_MB
    print(f"RETR of 64 MiB for 1,000 bytes: {run.wall_s:.1f} s, {run.peak_rss_mb:.0f} MB")


def test_a_silent_ssh_port_fails_within_the_deadline(hostile: list[HostileFTP], previous: tuple[
        Path, dict[str, bytes]], env: dict[str, str], tmp_path: Path) -> None:
    server = start_ftp(hostile, tmp_path, "silent")
    out, files = previous
    db = tmp_path / "state.sqlite"
    run = run_index(f"sftp://pcrs:Silent-Pass@{server.host}/srv/pcrs", out, db, env)
    line = f"cannot list sftp://pcrs:***@{server.host}/srv/pcrs: timed out (2 attempts)"
    assert (run.code, run.stderr) == (3, f"pcrs-indexer: error: {line}\n")
    assert last_error(db) == line
    connects = [c for c in server.commands() if c[1] == "CONNECT" and c[0] > 1]  # session 1: the start's probe
    assert len(connects) == RETRIES + 1  # one connection per attempt
    assert run.first_stderr_at is not None
    listing_s = run.first_stderr_at - connects[0][3]  # from the first connection to the error line
    assert TIMEOUT_S * (RETRIES + 1) <= listing_s < TIMEOUT_S * (RETRIES + 1) + MARGIN_S
    assert run.peak_rss_mb < BASE_RSS_MB
    assert_intact(out, files)
    print(f"silent SSH port: {run.wall_s:.1f} s in all, {listing_s:.1f} s from the first connection to the error, "
          f"{run.peak_rss_mb:.0f} MB")


def test_an_endless_sftp_folder_stops_at_the_entries_cap(hostile: list[HostileFTP], previous: tuple[
        Path, dict[str, bytes]], env: dict[str, str], tmp_path: Path) -> None:
    server = HostileSFTP(tmp_path / "sftp", "endless-folder").start()
    hostile.append(server)
    out, files = previous
    env.update({"PCRS_INDEXER_MAX_ENTRIES": "1000", "PCRS_INDEXER_MAX_FOLDERS": "10", "PCRS_INDEXER_TIMEOUT_S": "10"})
    db = tmp_path / "state.sqlite"
    run = run_index(f"sftp://pcrs:Sftp-Pass-1@{server.host}/srv/pcrs", out, db, env)
    line = (f"cannot list sftp://pcrs:***@{server.host}/srv/pcrs: the response is larger than 1010 entries "
            "(the max_entries and max_folders setting): reading stopped there")
    assert (run.code, run.stderr) == (3, f"pcrs-indexer: error: {line}\n")
    assert last_error(db) == line
    assert [r[:2] for r in server.requests()] == [("LOGIN", "pcrs"), ("READDIR", "/srv/pcrs")]  # not retried
    assert run.wall_s < 30
    assert run.peak_rss_mb < BASE_RSS_MB
    assert_intact(out, files)
    print(f"endless SFTP folder: {run.wall_s:.1f} s, {run.peak_rss_mb:.0f} MB")


def test_log_lines_show_their_fields(serve: Callable[[Path], Nginx], env: dict[str, str], tmp_path: Path) -> None:
    root = public_folder()
    try:
        write_dalle(root / "livrable" / "lot" / "a.tif", (700000.0, 6600200.0), pixels=64, resolution_m=1.0)
        (root / "livrable" / "lot" / "boucle").symlink_to("..")
        server = serve(root)
        run = run_index(f"{server.url}/livrable/", tmp_path / "out", tmp_path / "state.sqlite", env)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert run.code == 0, run.stderr
    assert run.stderr == ("WARNING indexer.storages.crawl: folder skipped: it repeats an ancestor (a link looping "
                          f"back up) storage={server.url}/livrable/ folder=lot/boucle/\n")
