"""Failures of the distributed service end, and never overwrite good data: real workers, Redis, PostgreSQL,
and real storage servers that refuse, vanish or fail halfway."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from indexer import secrets
from indexer.sample import write_dalle
from indexer.store import schema
from indexer.store.engine import create_store
from tests.integration.test_service import (  # noqa: F401 - fixtures
    flat_livrable,
    progress,
    projet_file,
    record_paths,
    wait_scan,
)
from tests.servers.servers import SFTP_USER, SSHD, FaultyHTTP, Nginx, ProFTPD, PythonHTTP, free_port, public_folder
from tests.servers.service_fixtures import (  # noqa: F401 - fixtures
    VENV_BIN,
    CeleryProcess,
    Service,
    pg_url_fixture,
    postgres_server_fixture,
    redis_server_fixture,
    service_fixture,
    wait_until,
)
from tests.unit.test_cli import PROJET

pytestmark = pytest.mark.servers

OUTPUTS = ("dalles.geojson", "livrables.geojson", "report.json")


@pytest.fixture
def engine(service: Service) -> Iterator[Engine]:
    """The fleet's state store, in this process."""
    store = create_store(service.db_url)
    yield store
    store.dispose()


@pytest.fixture
def served(sample_livrable: Path, tmp_path: Path) -> Iterator[Path]:
    """The sample livrable in a folder FTP and SFTP sessions (unprivileged users) can read."""
    root = public_folder()
    shutil.copytree(sample_livrable, root / "livrable")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def servers() -> Iterator[Callable[[Any], Any]]:
    """Start a server for the test; every one started is stopped at its end."""
    started: list[Any] = []

    def start(server: Any) -> Any:
        started.append(server)
        return server.start()

    yield start
    for server in reversed(started):
        server.stop()


def projet_of(folder: Path, urls: dict[str, str]) -> Path:
    """A projet with one livrable per URL, named by the keys."""
    doc = json.loads(json.dumps(PROJET))
    template = doc["livrables"][0]
    doc["livrables"] = [{**template, "nom": nom, "stockage_params": {"url": url}} for nom, url in urls.items()]
    path = folder / "projet-failing.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def retries_of(worker: CeleryProcess, scan: int) -> int:
    """How many times the worker retried a task of the scan."""
    return sum(1 for line in worker.lines() if line.get("message") == "transient failure, retrying"
               and line.get("scan") == scan)


def test_permanent_failures_fail_at_once_transient_ones_after_the_retries(
        service: Service, engine: Engine, served: Path, servers: Callable[[Any], Any], tmp_path: Path) -> None:
    service.configure(retries=0, task_max_retries=4, timeout_s=5, secret_key=secrets.new_key())
    worker = service.worker(concurrency=2, wait=False)  # it starts with the servers
    nginx = servers(Nginx(served, tmp_path / "nginx"))
    ftp = servers(ProFTPD(served, tmp_path / "ftp", password="ftp-Pass-1"))
    sshd = servers(SSHD(tmp_path / "sshd", password="sftp-Pass-1"))
    closed = free_port()
    urls = {
        "http 404": f"{nginx.url}/missing/",
        "ftp login": f"ftp://pcrs:wrong-Pass@{ftp.host}/livrable",
        "ftps on plain ftp": f"ftps://pcrs:ftp-Pass-1@{ftp.host}/livrable",
        "sftp login": f"sftp://{SFTP_USER}:wrong-Pass@{sshd.host}{served / 'livrable'}",
        "refused": f"http://127.0.0.1:{closed}/livrable/",
    }
    queued = service.cli_json("publish", str(projet_of(tmp_path, urls)))["queued"]
    worker.wait_ready()
    assert [q["livrable"] for q in queued] == list(urls)
    ended = {q["livrable"]: wait_scan(engine, q["storage"], scan=q["scan"], status="failed", timeout=90)
             for q in queued}
    errors = {nom: p.error for nom, p in ended.items()}
    assert errors == {
        "http 404": f"cannot list {nginx.url}/missing/: not found (HTTP 404)",
        "ftp login": f"cannot list ftp://pcrs:***@{ftp.host}/livrable: FTP 530 Login incorrect.",
        "ftps on plain ftp": f"cannot list ftps://pcrs:***@{ftp.host}/livrable: FTP 500 AUTH not understood",
        "sftp login": f"cannot list sftp://{SFTP_USER}:***@{sshd.host}{served / 'livrable'}: "
                      "authentication failed (wrong user name, password or key)",
        "refused": f"cannot list http://127.0.0.1:{closed}/livrable/: connection refused",
    }
    retried = {q["livrable"]: retries_of(worker, q["scan"]) for q in queued}
    assert retried == {"http 404": 0, "ftp login": 0, "ftps on plain ftp": 0, "sftp login": 0, "refused": 4}
    rows = {row["id"]: row for row in map(json.loads, service.cli("storages", "--json").stdout.splitlines())}
    statuses = [subprocess.Popen([str(VENV_BIN / "pcrs-indexer"), "status", str(q["storage"])], env=service.env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for q in queued]
    for q, status in zip(queued, statuses, strict=True):  # the commands run side by side
        assert (rows[q["storage"]]["status"], rows[q["storage"]]["last_error"]) == ("failed", errors[q["livrable"]])
        out, err = status.communicate(timeout=120)
        assert status.returncode == 0, err
        assert out.endswith(f"error: {errors[q['livrable']]}\n")
    requeued = service.cli_json("requeue", "--failed")
    assert sorted(q["storage"] for q in requeued["queued"]) == sorted(q["storage"] for q in queued)


def test_a_storage_down_halfway_fails_the_scan_and_keeps_the_last_good_result(
        service: Service, engine: Engine, served: Path, servers: Callable[[Any], Any], tmp_path: Path) -> None:
    switch = tmp_path / "down"
    server = servers(FaultyHTTP(served, tmp_path / "faulty", down_while=switch))
    url = server.url + "/livrable/"
    service.configure(retries=0, task_max_retries=1, chunk_size=50)
    worker = service.worker(wait=False)
    service.cli("publish", str(projet_file(tmp_path, url)))
    worker.wait_ready()
    good = wait_scan(engine)
    out = service.output_dir / "1"
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    # Every dalle of one lot answers 503 from now on: a share far above the 2 % setting.
    switch.write_text("/livrable/lot%201/")
    service.cli("requeue", "1", "--full")
    failed = wait_scan(engine, scan=2, status="failed")
    assert failed.error == (
        f"cannot read {url}: 7 of 22 dalles unreadable (more than 2%, the max_unreadable_share setting), "
        "lot 1/PCRS_651000_6861800_L93.tif: HTTP 503 Service Unavailable; the last good result is kept")
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before
    assert len(record_paths(engine)) == good.read == 22
    row = json.loads(service.cli("storages", "--json").stdout)
    assert (row["status"], row["dalles"], row["skipped"], row["last_error"]) == ("failed", 15, 7, failed.error)
    # The storage is back: the next scan reads again what the failed one could not.
    switch.unlink()
    service.cli("requeue", "1")
    again = wait_scan(engine, scan=3)
    assert (again.read, again.reused, again.skipped) == (0, 22, 7)
    assert {name: (out / name).read_bytes() for name in OUTPUTS[:2]} == {n: before[n] for n in OUTPUTS[:2]}


def index_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``pcrs-indexer index ARGS`` in a process of its own."""
    return subprocess.run([str(VENV_BIN / "pcrs-indexer"), "index", *args, "--quiet"], env=env,
                          capture_output=True, text=True, timeout=120)


def test_index_keeps_the_last_good_result_when_every_read_fails(served: Path, servers: Callable[[Any], Any],
                                                                tmp_path: Path) -> None:
    switch = tmp_path / "down"
    server = servers(FaultyHTTP(served, tmp_path / "faulty", down_while=switch))
    url = server.url + "/livrable/"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PCRS_INDEXER_")},
           "PCRS_INDEXER_ALLOWED_NETWORKS": "127.0.0.0/8", "PCRS_INDEXER_RETRIES": "0"}
    db, out = f"sqlite:///{tmp_path / 'state.sqlite'}", tmp_path / "out"
    first = index_cli(url, "--out", str(out), "--db", db, env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["indexed"] == 15
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    switch.write_text("")  # every file answers 503 from now on, the listing still works
    failed = index_cli(url, "--out", str(out), "--db", db, "--full", env=env)
    assert (failed.returncode, failed.stdout) == (3, "")
    assert failed.stderr.startswith(f"pcrs-indexer: error: cannot read {url}: 22 of 22 dalles unreadable (more "
                                    "than 2%, the max_unreadable_share setting), ")
    assert failed.stderr.count("\n") == 1
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before
    store = create_store(db)
    try:
        row = json.loads(subprocess.run([str(VENV_BIN / "pcrs-indexer"), "storages", "--json", "--db", db],
                                        env=env, capture_output=True, text=True, check=True).stdout)
        assert (row["status"], row["dalles"], row["skipped"]) == ("failed", 15, 7)
        assert row["last_error"] == failed.stderr.removeprefix("pcrs-indexer: error: ").strip()
        assert len(record_paths(store)) == 22
    finally:
        store.dispose()
    # An isolated unreadable dalle stays that dalle's problem.
    switch.write_text("/livrable/lot%201/PCRS_651000_6861800_L93.tif")
    one = index_cli(url, "--out", str(out), "--db", db, "--full", env=env)
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["indexed"] == 14


def test_a_killed_index_leaves_no_scan_running_forever(service: Service, engine: Engine, served: Path,
                                                       servers: Callable[[Any], Any], tmp_path: Path) -> None:
    # One dalle's GET never gets an answer: the index runs until it is killed.
    server = servers(FaultyHTTP(served, tmp_path / "faulty", stall="/livrable/lot%201/PCRS_651000_6862000"))
    url = server.url + "/livrable/"
    service.configure(scan_lease_s=2, timeout_s=600, retries=0)
    index = subprocess.Popen([str(VENV_BIN / "pcrs-indexer"), "index", url, "--out", str(tmp_path / "out"),
                              "--db", service.db_url, "--quiet"], env=service.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: catalog_has(engine) and progress(engine).step == "reading", 60, "index to read")
        # One scan of a storage at a time, whoever runs it: the fleet and another index are refused.
        with subprocess.Popen([str(VENV_BIN / "pcrs-indexer"), "requeue", "1"], env=service.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as requeue:  # beside the index
            second = index_cli(url, "--out", str(tmp_path / "out2"), "--db", service.db_url, env=service.env)
            assert requeue.wait(120) == 5
        assert (second.returncode, second.stderr) == (5, f"pcrs-indexer: error: {url} is already being scanned "
                                                         "(storage 1): wait for it to end, see `pcrs-indexer status`\n")
        first_beat = progress(engine).heartbeat_at  # renewed while index runs, though it reads for longer
        wait_until(lambda: progress(engine).heartbeat_at != first_beat, 5, "the heartbeat to be renewed")
        assert progress(engine).status == "running"
        with subprocess.Popen([str(VENV_BIN / "pcrs-indexer"), "status", "1", "--watch", "--interval", "0.2",
                               "--json"], env=service.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True) as watch:
            try:
                os.killpg(index.pid, signal.SIGKILL)
                index.wait()
                killed = time.monotonic()
                out, _ = watch.communicate(timeout=30)
            finally:
                watch.kill()
    finally:
        if index.poll() is None:
            os.killpg(index.pid, signal.SIGKILL)
            index.wait()
    watched = json.loads(out)
    assert (watched["scan"], watched["status"]) == (1, "failed")
    assert watched["error"].startswith("abandoned: its process stopped (no heartbeat since ")
    assert time.monotonic() - killed < 30  # the lease (2 s), and the command's own start under load
    assert service.cli_json("requeue", "1") == {"queued": [{"storage": 1, "scan": 2}], "refused": []}


def catalog_has(engine: Engine) -> bool:
    """Whether the store has a storage yet."""
    with engine.connect() as conn:
        return conn.execute(select(schema.storages.c.id)).first() is not None


def test_no_broker_queues_nothing(service: Service, engine: Engine, sample_livrable: Path, tmp_path: Path) -> None:
    projet = projet_file(tmp_path, str(sample_livrable))
    broker = service.env["PCRS_INDEXER_BROKER_URL"]
    worker = service.worker(wait=False)  # on the broker the commands cannot reach until it is back
    service.configure(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    refused = service.cli("publish", str(projet), check=False)
    assert time.monotonic() - started < 25  # it took 20 s and more, then printed a traceback
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"pcrs-indexer: error: cannot reach the broker at "
                                     f"{service.env['PCRS_INDEXER_BROKER_URL']} (")
    assert refused.stderr.endswith("): scan 1 not queued\n") and refused.stderr.count("\n") == 1
    row = json.loads(service.cli("storages", "--json").stdout)
    assert (row["id"], row["status"]) == (1, "new")
    assert progress(engine).scan is None
    requeued = service.cli("requeue", "1", check=False)
    assert (requeued.returncode, requeued.stderr.endswith("): scan 2 not queued\n")) == (1, True)
    service.configure(broker_url=broker)  # the broker is back: nothing stands in the way
    worker.wait_ready()
    assert service.cli_json("requeue", "1")["queued"] == [{"storage": 1, "scan": 3}]
    wait_scan(engine, scan=3)


def test_concurrent_commands_create_one_store(tmp_path: Path) -> None:
    sources = []
    for n in range(3):
        sources.append(tmp_path / f"livrable{n}")
        write_dalle(sources[-1] / "a.tif", (700000.0 + n * 200, 6600200.0), pixels=16, resolution_m=12.5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCRS_INDEXER_")}
    for trial in range(2):
        db = f"sqlite:///{tmp_path / f'new{trial}' / 'state.sqlite'}"
        runs = [subprocess.Popen([str(VENV_BIN / "pcrs-indexer"), "index", str(source), "--out",
                                  str(tmp_path / f"out{trial}-{n}"), "--db", db, "--quiet"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for n, source in enumerate(sources)]
        ended = [run.communicate(timeout=120) for run in runs]
        assert [(run.returncode, err) for run, (_, err) in zip(runs, ended, strict=True)] == [(0, "")] * 3
        assert [json.loads(out)["indexed"] for out, _ in ended] == [1] * 3


def records_of(engine: Engine, storage: int) -> list[tuple[Any, ...]]:
    """(path, size, mtime, etag, status, reason) of a storage's records, by path."""
    r = schema.records
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(
            select(r.c.path, r.c.size, r.c.mtime, r.c.etag, r.c.status, r.c.reason)
            .where(r.c.storage_id == storage).order_by(r.c.path))]


def test_the_fleet_keeps_what_the_first_read_learned_as_index_does(
        service: Service, engine: Engine, served: Path, servers: Callable[[Any], Any], tmp_path: Path) -> None:
    server = servers(PythonHTTP(served, tmp_path / "pyhttp"))  # a bare list of links: no size, no date
    url = server.url + "/livrable/"
    service.configure(chunk_size=5)
    worker = service.worker(wait=False)
    env = {k: v for k, v in service.env.items() if k != "PCRS_INDEXER_DB_URL"}
    db = f"sqlite:///{tmp_path / 'index.sqlite'}"
    with subprocess.Popen([str(VENV_BIN / "pcrs-indexer"), "index", url, "--out", str(tmp_path / "out"), "--db", db,
                           "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as index:  # beside the fleet's scan
        service.cli("publish", str(projet_file(tmp_path, url)))
        worker.wait_ready()
        wait_scan(engine)
        _, err = index.communicate(timeout=120)
    assert index.returncode == 0, err
    reference = create_store(db)
    try:
        expected = records_of(reference, 1)
    finally:
        reference.dispose()
    got = records_of(engine, 1)
    assert [row[0] for row in got] == [row[0] for row in expected]
    assert got == expected
    assert all(row[2] is not None for row in got if row[4] == "valid")
    service.cli("requeue", "1")
    again = wait_scan(engine, scan=2)
    assert (again.read, again.reused) == (0, 22)


def test_control_tasks_run_while_every_reader_is_stuck(service: Service, engine: Engine, served: Path,
                                                      servers: Callable[[Any], Any], tmp_path: Path) -> None:
    # The dalles of one lot never answer: the chunk reading them holds its worker's only process.
    server = servers(FaultyHTTP(served, tmp_path / "faulty", stall="/livrable/lot%201/P"))
    service.configure(timeout_s=600, retries=0, chunk_size=50, watchdog_every_s=1)
    reader = service.worker(queues="pcrs", wait=False)
    control = service.worker(queues="pcrs.control", wait=False)
    service.beat()
    service.cli("publish", str(projet_file(tmp_path, server.url + "/livrable/")))
    reader.wait_ready()
    control.wait_ready()
    wait_until(lambda: progress(engine).step == "reading", 60, "the scan to read")

    def watchdog_runs() -> int:
        return sum(1 for line in control.lines() if "pcrs.watchdog" in line.get("message", "")
                   and "succeeded" in line.get("message", ""))

    wait_until(lambda: watchdog_runs() >= 3, 30, "the watchdog to run three times beside the stuck reader")
    assert progress(engine).step == "reading"
    assert not [line for line in reader.lines() if "pcrs.watchdog" in line.get("message", "")]


def test_reading_stops_once_many_reads_in_a_row_failed(served: Path, servers: Callable[[Any], Any],
                                                       tmp_path: Path) -> None:
    # A storage that stops answering: without the breaker every remaining dalle waits out its deadline.
    switch = tmp_path / "down"
    server = servers(FaultyHTTP(served, tmp_path / "faulty", down_while=switch))
    url = server.url + "/livrable/"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PCRS_INDEXER_")},
           "PCRS_INDEXER_ALLOWED_NETWORKS": "127.0.0.0/8", "PCRS_INDEXER_RETRIES": "0",
           "PCRS_INDEXER_MAX_FAILURES_IN_A_ROW": "5"}
    db, out = f"sqlite:///{tmp_path / 'state.sqlite'}", tmp_path / "out"
    assert index_cli(url, "--out", str(out), "--db", db, env=env).returncode == 0
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    server.log.write_text("")
    switch.write_text("")
    failed = index_cli(url, "--out", str(out), "--db", db, "--full", "--concurrency", "2", env=env)
    assert (failed.returncode, failed.stdout) == (3, "")
    assert re.fullmatch(
        rf"pcrs-indexer: error: cannot read {re.escape(url)}: 5 dalles in a row unreadable \(the "
        r"max_failures_in_a_row setting\), reading stopped; the last: \S+\.(tif|jp2): HTTP 503 Service Unavailable\n",
        failed.stderr), failed.stderr
    files_asked = [r for r in server.requests() if r.path.endswith((".tif", ".jp2"))]
    assert 5 <= len(files_asked) <= 5 + 2  # the five, and at most the two in flight; not the 22 dalles
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before
    row = json.loads(subprocess.run([str(VENV_BIN / "pcrs-indexer"), "storages", "--json", "--db", db],
                                    env=env, capture_output=True, text=True, check=True).stdout)
    assert (row["status"], row["dalles"], row["last_error"]) == (
        "failed", 15, failed.stderr.removeprefix("pcrs-indexer: error: ").strip())


def test_a_storage_that_stops_answering_frees_the_worker_for_the_others(
        service: Service, engine: Engine, servers: Callable[[Any], Any], tmp_path: Path) -> None:
    # 120 dalles whose reads never get an answer: waited out one by one (1 s each, 2 at a time), its
    # three chunks held the only worker process for 86 s before the other storage's turn.
    dead = servers(FaultyHTTP(flat_livrable(tmp_path / "dead", 120), tmp_path / "dead-server", stall="/PCRS"))
    alive = servers(FaultyHTTP(flat_livrable(tmp_path / "alive", 6), tmp_path / "alive-server"))
    service.configure(timeout_s=1, retries=0, concurrency=2, chunk_size=50, max_failures_in_a_row=3,
                      task_max_retries=1, task_retry_backoff_s=5)
    worker = service.worker(wait=False)
    service.cli("publish", str(projet_file(tmp_path, dead.url + "/", "Mort")))
    worker.wait_ready()
    wait_until(lambda: progress(engine, 1).step == "reading", 60, "the dead storage's scan to read")
    published = time.monotonic()
    service.cli("publish", str(projet_file(tmp_path, alive.url + "/", "Vivant")))
    done = wait_scan(engine, storage=2, timeout=120)
    took = time.monotonic() - published
    assert (done.read, done.skipped) == (6, 0)
    assert took < 40, f"the live storage waited {took:.0f} s behind the dead one"
    failed = wait_scan(engine, storage=1, status="failed", timeout=120)
    assert re.fullmatch(rf"cannot read {re.escape(dead.url)}/: 3 dalles in a row unreadable \(the "
                        r"max_failures_in_a_row setting\), reading stopped; the last: PCRS_\d+_6862000\.tif: "
                        r"timed out", failed.error or ""), failed.error
    asked = [r for r in dead.requests() if r.path.endswith(".tif")]
    assert len(asked) <= 2 * 3 * (3 + 2)  # two tries of each chunk started: 3 failed reads and 2 in flight each
