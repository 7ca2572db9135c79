"""The distributed service with real parts: Redis, PostgreSQL, nginx, and ``celery -A tasks`` workers and beat.

Scans are published and requeued with the ``pcrs-indexer`` command, run by workers in processes
of their own, and compared with what ``pcrs-indexer index`` writes for the same storage.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from indexer.cli import main
from indexer.sample import write_dalle
from indexer.service import queueing
from indexer.store import catalog, queries, schema
from indexer.store import scans as store_scans
from indexer.store.engine import create_store
from tasks.celeryconfig import broker_transport_options
from tests.servers.servers import FaultyHTTP, Nginx
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

BIG = 1000
"""Dalles of the big livrable: a 40 x 25 grid of 200 m dalles (16 px at 12.5 m), in five folders."""


def projet_file(folder: Path, url: str, nom: str = "Ortho 2025") -> Path:
    """The test projet, its one livrable stored at `url`."""
    doc = json.loads(json.dumps(PROJET))
    doc["livrables"][0]["stockage_params"]["url"] = url
    doc["livrables"][0]["nom"] = nom
    path = folder / f"projet-{nom}.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def index_with_cli(source: str, projet: Path, out: Path, db: Path) -> Path:
    """What ``pcrs-indexer index`` writes for a storage, the reference."""
    result = CliRunner().invoke(main, ["index", source, "--out", str(out), "--projet", str(projet),
                                       "--db", f"sqlite:///{db}", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def same_outputs(reference: Path, published: Path, same_source: bool = True) -> None:
    """Byte-identical dalles and livrables files, and the same report but for its duration."""
    for name in ("dalles.geojson", "livrables.geojson"):
        assert (published / name).read_bytes() == (reference / name).read_bytes(), name
    expected, got = (json.loads((d / "report.json").read_text()) for d in (reference, published))
    for report in (expected, got):
        report.pop("duration_s")
        if not same_source:
            report.pop("source")
    assert got == expected


def progress(engine: Engine, storage: int = 1) -> queries.Progress:
    return queries.progress(engine, storage)


def wait_scan(engine: Engine, storage: int = 1, scan: int | None = None, timeout: float = 120.0,
              status: str = "succeeded") -> queries.Progress:
    """Wait until the storage's latest scan (or scan `scan`) has ended with `status`."""
    def ended() -> queries.Progress | None:
        current = progress(engine, storage)
        if current.active or (scan is not None and current.scan != scan):
            return None
        return current
    current: queries.Progress = wait_until(ended, timeout, f"the scan of storage {storage} to end", 0.2)
    assert current.status == status, current
    return current


def chunks_read(worker: CeleryProcess, scan: int = 1) -> list[int]:
    """The chunks a worker stored results for, from its JSON log."""
    return [line["chunk"] for line in worker.lines() if line.get("message") == "chunk read" and line["scan"] == scan]


def record_paths(engine: Engine, storage: int = 1) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(schema.records.c.path).where(schema.records.c.storage_id == storage)).scalars())


@pytest.fixture(scope="module")
def big_livrable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 tiny dalles, each with its own footprint."""
    root = tmp_path_factory.mktemp("big") / "livrable"
    for i in range(BIG):
        col, row = i % 40, i // 40
        write_dalle(root / f"lot {row // 5}" / f"PCRS_{651000 + col * 200}_{6862000 - row * 200}.tif",
                    (651000.0 + col * 200, 6862000.0 - row * 200), pixels=16, resolution_m=12.5)
    return root


@pytest.fixture(scope="module")
def big_reference(big_livrable: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pcrs-indexer index`` of the big livrable's folder."""
    work = tmp_path_factory.mktemp("big-reference")
    return index_with_cli(str(big_livrable), projet_file(work, str(big_livrable)), work / "out",
                          work / "state.sqlite")


@pytest.fixture
def engine(service: Service) -> Iterator[Engine]:
    """The fleet's state store, in this process."""
    store = create_store(service.db_url)
    yield store
    store.dispose()


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[..., Nginx]]:
    """Start nginx on a folder with extra directives; stopped at the end of the test."""
    started: list[Nginx] = []

    def start(root: Path, directives: str = "") -> Nginx:
        server = Nginx(root, tmp_path / f"nginx{len(started)}", directives).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[Callable[..., FaultyHTTP]]:
    """Start the fault server on a folder with options; stopped at the end of the test."""
    started: list[FaultyHTTP] = []

    def start(root: Path, **options: object) -> FaultyHTTP:
        server = FaultyHTTP(root, tmp_path / f"faulty{len(started)}", **options)  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def throttled(rate: int, per: str = "s") -> str:
    """nginx directives delaying requests beyond `rate` per second (or per minute, `per="m"`), none refused."""
    return f"limit_req_zone $server_port zone=slow:1m rate={rate}r/{per}; limit_req zone=slow burst=100000;"


def test_publish_gives_the_outputs_of_index(service: Service, engine: Engine, sample_livrable: Path,
                                            nginx: Callable[..., Nginx], tmp_path: Path) -> None:
    server = nginx(sample_livrable)
    url = server.url + "/"
    projet = projet_file(tmp_path, url)
    service.configure(chunk_size=4)
    worker = service.worker(wait=False)  # it starts while the reference is made
    reference = index_with_cli(url, projet, tmp_path / "cli", tmp_path / "cli.sqlite")
    published = service.cli_json("publish", str(projet))
    worker.wait_ready()
    assert published == {"queued": [{"storage": 1, "scan": 1, "url": url, "livrable": "Ortho 2025"}], "refused": [],
                         "skipped": []}
    done = wait_scan(engine)
    assert (done.scan, done.step, done.trigger, done.listed, done.to_read, done.read, done.reused, done.skipped,
            done.chunks, done.chunks_done, done.error) == (1, "done", "publish", 23, 22, 22, 0, 7, 6, 6, None)
    same_outputs(reference, service.output_dir / "1")

    # Published again unchanged: every record is reused, nothing is read, the files stay the same.
    server.reset_log()
    assert service.cli_json("publish", str(projet))["queued"] == [
        {"storage": 1, "scan": 2, "url": url, "livrable": "Ortho 2025"}]
    again = wait_scan(engine, scan=2)
    assert (again.listed, again.read, again.reused, again.skipped, again.chunks) == (23, 0, 22, 7, 0)
    assert {r.path for r in server.requests()} == {"/", "/anomalies/", "/lot%201/", "/lot%202/",
                                                    "/lot%202/secteur%20%C3%A9t%C3%A9/"}
    for name in ("dalles.geojson", "livrables.geojson"):
        assert (service.output_dir / "1" / name).read_bytes() == (reference / name).read_bytes()
    report = json.loads((service.output_dir / "1" / "report.json").read_text())
    assert (report["raster_files"], report["indexed"], report["reused"], len(report["skipped"])) == (22, 0, 15, 7)

    # Requeued with --full: every dalle is read again.
    assert service.cli_json("requeue", url, "--full") == {"queued": [{"storage": 1, "scan": 3}], "refused": []}
    full = wait_scan(engine, scan=3)
    assert (full.trigger, full.read, full.reused, full.skipped) == ("requeue", 22, 0, 7)
    same_outputs(reference, service.output_dir / "1")
    with engine.connect() as conn:  # the work tables of ended scans are emptied
        for table in (schema.scan_files, schema.scan_chunks, schema.scan_results):
            assert conn.execute(select(func.count()).select_from(table)).scalar_one() == 0


def test_two_workers_share_a_big_livrable(service: Service, engine: Engine, big_livrable: Path,
                                          big_reference: Path, tmp_path: Path) -> None:
    w1, w2 = service.worker(wait=False), service.worker(wait=False)
    w1.wait_ready()
    w2.wait_ready()
    service.cli("publish", str(projet_file(tmp_path, str(big_livrable))))
    done = wait_scan(engine)
    assert (done.listed, done.read, done.reused, done.skipped, done.chunks) == (BIG, BIG, 0, 0, 20)
    first, second = chunks_read(w1), chunks_read(w2)
    assert first and second
    assert sorted(first + second) == list(range(20))
    same_outputs(big_reference, service.output_dir / "1")
    rows = service.cli_json("storages", "--json")
    assert (rows["id"], rows["url"], rows["status"], rows["dalles"], rows["skipped"], rows["last_error"],
            rows["livrable"]) == (1, big_livrable.as_uri(), "ok", BIG, 0, None, "Ortho 2025")


RECOVERY_S = 60.0
"""Longest time a scan interrupted by a dead worker may take to end once another worker runs."""


def test_a_worker_killed_mid_scan(service: Service, engine: Engine, big_livrable: Path, big_reference: Path,
                                  nginx: Callable[..., Nginx], tmp_path: Path) -> None:
    server = nginx(big_livrable, throttled(150))
    # The defaults a deployment has: no watchdog run, only the workers' own recovery.
    service.configure(visibility_timeout_s=30, broker_restore_every_s=5, host_lease_s=10)
    first = service.worker(wait=False)
    service.cli("publish", str(projet_file(tmp_path, server.url + "/")))
    first.wait_ready()
    wait_until(lambda: progress(engine).chunks_done >= 3, 60, "three chunks stored")
    first.kill()
    # As if it died sweeping for messages to give back: the sweep's lock left behind, with the
    # expiry the transport gives it (kombu's default of 5 minutes stalled the recovery as long).
    service.redis.client().set("unacked_mutex", "the killed worker's",
                               ex=broker_transport_options["unacked_mutex_expire"])
    killed_at = progress(engine)
    assert killed_at.status == "running" and killed_at.chunks_done < 20
    second = service.worker()
    available = time.monotonic()
    done = wait_scan(engine, timeout=RECOVERY_S + 30)
    recovery = time.monotonic() - available
    print(f"scan ended {recovery:.1f} s after a worker replaced the one killed")
    assert recovery < RECOVERY_S
    assert (done.read, done.reused, done.skipped, done.chunks, done.chunks_done) == (BIG, 0, 0, 20, 20)
    assert sorted(set(chunks_read(first)) | set(chunks_read(second))) == list(range(20))
    same_outputs(big_reference, service.output_dir / "1", same_source=False)
    paths = record_paths(engine)
    assert len(paths) == len(set(paths)) == BIG
    features = json.loads((service.output_dir / "1" / "dalles.geojson").read_text())["features"]
    assert sorted(Counter(f["properties"]["chemin"] for f in features).values()) == [1] * BIG


def test_redis_restarted_mid_scan(service: Service, engine: Engine, big_livrable: Path, big_reference: Path,
                                  nginx: Callable[..., Nginx], tmp_path: Path) -> None:
    server = nginx(big_livrable, throttled(150))
    # The defaults a deployment has, and no beat: the workers recover on their own.
    service.configure(visibility_timeout_s=30, broker_restore_every_s=5, host_lease_s=10)
    workers = [service.worker(wait=False), service.worker(wait=False)]
    service.cli("publish", str(projet_file(tmp_path, server.url + "/")))
    for worker in workers:
        worker.wait_ready()
    wait_until(lambda: progress(engine).chunks_done >= 3, 60, "three chunks stored")
    service.redis.restart(down_s=1.0)
    back = time.monotonic()
    assert progress(engine).chunks_done < 20
    done = wait_scan(engine, timeout=RECOVERY_S + 30)
    recovery = time.monotonic() - back
    print(f"scan ended {recovery:.1f} s after Redis came back")
    assert recovery < RECOVERY_S
    assert (done.read, done.reused, done.skipped, done.chunks, done.chunks_done) == (BIG, 0, 0, 20, 20)
    same_outputs(big_reference, service.output_dir / "1", same_source=False)
    paths = record_paths(engine)
    assert len(paths) == len(set(paths)) == BIG


def flat_livrable(root: Path, count: int) -> Path:
    """`count` tiny dalles side by side in one folder."""
    for i in range(count):
        write_dalle(root / f"PCRS_{651000 + i * 200}_6862000.tif", (651000.0 + i * 200, 6862000.0), pixels=16,
                    resolution_m=12.5)
    return root


def test_requeue_and_status(service: Service, engine: Engine, faulty: Callable[..., FaultyHTTP],
                            tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    hold.touch()  # every dalle waits for its answer until the test lets the scan end, however loaded the machine
    server = faulty(flat_livrable(tmp_path / "flat", 10), hold_while=hold)
    url = server.url + "/"
    service.configure(chunk_size=3, timeout_s=300)
    service.cli("publish", str(projet_file(tmp_path, url)))
    refused = service.cli("requeue", "1", check=False)  # queued, no worker yet
    assert refused.returncode == 5
    assert refused.stderr == ("pcrs-indexer: error: storage 1 is already being scanned (scan 1): "
                              "wait for it to end, see `pcrs-indexer status`\n")
    with subprocess.Popen([str(VENV_BIN / "pcrs-indexer"), "status", "1", "--watch", "--interval", "0.2", "--json"],
                          env=service.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as watch:
        try:
            service.worker()
            wait_until(lambda: progress(engine).step == "reading", 30, "the scan to read")
            assert service.cli_json("requeue", "--all") == {"queued": [], "refused": [
                "storage 1 is already being scanned (scan 1): wait for it to end, see `pcrs-indexer status`"]}
            assert progress(engine).step == "reading"
            hold.unlink()
            out, err = watch.communicate(timeout=120)
        finally:
            watch.kill()
    assert watch.returncode == 0
    watched = json.loads(out)
    assert (watched["scan"], watched["status"], watched["step"], watched["read"], watched["to_read"]) == (
        1, "succeeded", "done", 10, 10)
    assert "reading" in err and "10/10" in err
    assert service.cli("status", "1").stdout == (
        f"storage 1 {url}\nscan 1: succeeded, step done (publish)\n"
        "listed 10, read 10/10, reused 0, skipped 0, chunks 4/4\n")

    assert service.cli_json("requeue", "1") == {"queued": [{"storage": 1, "scan": 2}], "refused": []}
    again = wait_scan(engine, scan=2)
    assert (again.trigger, again.read, again.reused) == ("requeue", 0, 10)
    assert service.cli_json("requeue", "--failed") == {"queued": [], "refused": []}
    missing = CliRunner().invoke(main, ["status", "7", "--db", service.db_url])
    assert (missing.exit_code, missing.stderr) == (
        4, "pcrs-indexer: error: no storage '7' in the state store: see `pcrs-indexer storages`\n")
    assert CliRunner().invoke(main, ["requeue", "--db", service.db_url]).exit_code == 2


def established(port: int) -> int:
    """TCP connections established to a local server port, seen on the server's side (/proc/net/tcp).

    Each connection is counted once by its client's address: the kernel writes the table while it
    is read, and a socket can be listed twice in one read.
    """
    clients = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
            clients.add(fields[2])
    return len(clients)


def peak_overlap(intervals: list[tuple[float, float]], tolerance: float = 0.002) -> int:
    """The most intervals open at the same instant (touching ends within `tolerance` do not overlap)."""
    events = sorted([(start + tolerance, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda e: (e[0], e[1]))
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def test_the_host_connection_cap_holds_across_the_fleet(service: Service, engine: Engine, tmp_path: Path,
                                                        nginx: Callable[..., Nginx]) -> None:
    root = flat_livrable(tmp_path / "flat", 24)
    timed = tmp_path / "timed.log"
    server = nginx(root, throttled(20) + " log_format timed '$msec $request_time $connection $status';"
                   f" access_log {timed} timed;")  # connections kept alive between requests
    service.configure(host_connection_cap=2, concurrency=8, chunk_size=6)
    for worker in [service.worker(wait=False), service.worker(wait=False)]:
        worker.wait_ready()
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(established(server.port))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        service.cli("publish", str(projet_file(tmp_path, server.url + "/")))
        done = wait_scan(engine)
    finally:
        stop.set()
        watcher.join()
    assert (done.read, done.skipped, done.chunks) == (24, 0, 4)
    requests = [line.split() for line in timed.read_text().splitlines()]
    assert len(requests) == 25 and {r[3] for r in requests} == {"200", "206"}
    spans = [(float(r[0]) - float(r[1]), float(r[0])) for r in requests]
    assert peak_overlap(spans) == 2
    connections: dict[str, list[tuple[float, float]]] = {}
    for r, span in zip(requests, spans, strict=True):
        connections.setdefault(r[2], []).append(span)
    lifetimes = [(min(s for s, _ in used), max(e for _, e in used)) for used in connections.values()]
    assert peak_overlap(lifetimes) == 2  # a connection kept alive between its requests still counts
    assert max(seen) == 2
    assert service.redis.client().zcard("pcrs:host:127.0.0.1") == 0  # every slot given back


def test_beat_requeues_due_storages_and_stalled_scans(service: Service, engine: Engine, sample_livrable: Path,
                                                      tmp_path: Path) -> None:
    service.configure(reindex_every=3, reindex_check_every_s=1, watchdog_every_s=1, stale_after=2)
    worker = service.worker(wait=False)
    projet = projet_file(tmp_path, str(sample_livrable))
    service.cli("publish", str(projet))
    # A scan claimed in the store whose message was lost (sent to a broker that forgot it).
    other = tmp_path / "other"
    write_dalle(other / "a.tif", (700000.0, 6600200.0), pixels=16, resolution_m=12.5)
    lost_storage = catalog.publish_livrable(engine, other.as_uri(), str(other), None, "p-autre", "Autre",
                                            {"livrables": [{"nom": "Autre"}]})
    lost = queueing.queue_scan(engine, lost_storage, "requeue")
    # A scan of `pcrs-indexer index` that died: no worker can resume it.
    cli_storage = catalog.storage_id(engine, "file:///nowhere")
    dead = store_scans.start_scan(engine, cli_storage)
    beat = service.beat()  # once every storage of the test is in the store
    worker.wait_ready()
    wait_scan(engine, 1, scan=1)
    resumed = wait_scan(engine, lost_storage, scan=lost)
    assert (resumed.trigger, resumed.read) == ("requeue", 1)
    failed = wait_scan(engine, cli_storage, scan=dead, status="failed")
    assert failed.error is not None and failed.error.startswith("abandoned: no heartbeat since ")
    # The schedule queues the published storages again once their last scan is 3 s old.
    scheduled = wait_until(lambda: (p := progress(engine)).trigger == "schedule" and not p.active and p, 60,
                           "a scheduled scan")
    assert (scheduled.status, scheduled.read, scheduled.reused) == ("succeeded", 0, 22)
    sent = [line["message"] for line in beat.lines() if "Scheduler: Sending due task" in line.get("message", "")]
    assert any("pcrs.reindex_due" in m for m in sent) and any("pcrs.watchdog" in m for m in sent)


def test_a_failing_storage_keeps_its_last_good_files(service: Service, engine: Engine, sample_livrable: Path,
                                                     nginx: Callable[..., Nginx], tmp_path: Path) -> None:
    server = nginx(sample_livrable)
    url = server.url + "/"
    service.configure(retries=0, task_max_retries=2)
    worker = service.worker(wait=False)
    service.cli("publish", str(projet_file(tmp_path, url)))
    worker.wait_ready()
    wait_scan(engine)
    out = service.output_dir / "1"
    before = {name: (out / name).read_bytes() for name in ("dalles.geojson", "livrables.geojson", "report.json")}
    server.stop()
    service.cli("requeue", "1")
    failed = wait_scan(engine, scan=2, status="failed")
    assert failed.error is not None and failed.error.startswith(f"cannot list {url}: ")
    row = service.cli_json("storages", "--json")
    assert (row["status"], row["dalles"], row["skipped"], row["last_error"]) == ("failed", 15, 7, failed.error)
    assert row["last_success_at"] is not None
    assert {name: (out / name).read_bytes() for name in before} == before
    assert len(record_paths(engine)) == 22
    table = service.cli("storages").stdout.splitlines()
    assert table[0].split() == ["ID", "URL", "STATUS", "LAST", "SUCCESS", "DALLES", "SKIPPED", "LAST", "ERROR"]
    assert table[1].split()[:3] == ["1", url, "failed"] and table[1].endswith(failed.error)


def test_export_streams_every_published_livrable(service: Service, engine: Engine, sample_livrable: Path,
                                                 big_livrable: Path, tmp_path: Path) -> None:
    worker = service.worker(wait=False)
    service.cli("publish", str(projet_file(tmp_path, str(sample_livrable), "Ortho 2025")))
    worker.wait_ready()
    # Another service sends the documented task by name, with the projet document as JSON.
    client = Celery(broker=service.redis.url, backend=service.redis.url)
    try:
        document = json.loads(projet_file(tmp_path, str(big_livrable), "Ortho grand").read_text())
        sent = client.send_task("pcrs.publish", kwargs={"projet": document}, queue="pcrs")
        assert sent.get(timeout=60) == {"queued": [{"storage": 2, "scan": 2, "url": big_livrable.as_uri(),
                                                    "livrable": "Ortho grand"}], "refused": [],
                                                    "skipped": []}
    finally:
        client.close()
    wait_scan(engine, 1)
    wait_scan(engine, 2)
    summary = service.cli_json("export", "--out", str(tmp_path / "export"))
    assert (summary["livrables"], summary["dalles"]) == (2, 15 + BIG)
    exported = json.loads((tmp_path / "export" / "dalles.geojson").read_text())["features"]
    each = [json.loads((service.output_dir / s / "dalles.geojson").read_text())["features"] for s in ("1", "2")]
    assert exported == each[0] + each[1]
    livrables = json.loads((tmp_path / "export" / "livrables.geojson").read_text())["features"]
    assert livrables == [json.loads((service.output_dir / s / "livrables.geojson").read_text())["features"][0]
                         for s in ("1", "2")]
    assert [f["properties"]["nom"] for f in livrables] == ["Ortho 2025", "Ortho grand"]
