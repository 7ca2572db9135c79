"""The service's core without Celery: scan stages on SQLite and PostgreSQL, migrations, the host limiter.

The stages are called in this process as the workers call them; races are real threads on a
real PostgreSQL, the limiter a real Redis.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import rasterio
import redis
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, func, inspect, select

from indexer.cli import main
from indexer.errors import ConfigError, LivrableNotFound, ScanRunning
from indexer.export import export_all
from indexer.models import Dalle, DalleProblem, SkipReason
from indexer.pipeline import ScanOptions, read_all, scan_storage
from indexer.projet import Projet
from indexer.read import read_dalle
from indexer.read.formats import Listing
from indexer.sample import write_dalle
from indexer.service import queueing, stages
from indexer.storages import AccessOptions, open_storage
from indexer.storages.addresses import AddressPolicy
from indexer.storages.local import LocalStorage
from indexer.store import catalog, queries, schema
from indexer.store import records as store_records
from indexer.store import scans as store_scans
from indexer.store.engine import HEAD, create_store, migrate
from tasks.limiter import HostLimiter, LimitedStorage, SlotsUnavailable, limited
from tests.servers.servers import Nginx, free_port
from tests.servers.service_fixtures import (  # noqa: F401 - fixtures
    PostgresServer,
    RedisServer,
    pg_url_fixture,
    postgres_server_fixture,
    redis_server_fixture,
)
from tests.unit.test_cli import PROJET

pytestmark = pytest.mark.servers

TODAY = date(2026, 1, 15)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh state store: SQLite (created), or a PostgreSQL database (migrated)."""
    url = f"sqlite:///{tmp_path / 'state.sqlite'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = create_store(url)
    yield engine
    engine.dispose()


@pytest.fixture
def pg(pg_url: str) -> Iterator[Engine]:
    engine = create_store(pg_url)
    yield engine
    engine.dispose()


def projet(url: str, **livrable: object) -> Projet:
    doc = json.loads(json.dumps(PROJET))
    doc["livrables"][0]["stockage_params"]["url"] = url
    doc["livrables"][0].update(livrable)
    return Projet.from_document(doc)


def storage_url(source: str) -> str:
    with open_storage(source) as storage:
        return storage.url


def publish(engine: Engine, root: Path, nom: str = "Ortho 2025") -> queries.ScanTarget:
    (queued,) = queueing.publish(engine, projet(str(root), nom=nom), None, storage_url)
    assert queued.scan is not None
    target = queries.scan_target(engine, queued.scan)
    assert target is not None
    return target


def run_scan(engine: Engine, root: Path, out: Path, chunk_size: int = 5, nom: str = "Ortho 2025") -> stages.Published:
    """Every stage of a scan in turn, as workers would run them."""
    target = publish(engine, root, nom)
    storage = LocalStorage(root)
    plan = stages.list_scan(engine, storage, target, chunk_size)
    assert plan is not None
    for chunk in range(plan.chunks):
        stages.read_chunk(engine, storage, target, chunk, ScanOptions(concurrency=4))
    published = stages.finalize_scan(engine, storage, target, out, TODAY)
    assert published is not None
    return published


def test_stages_give_the_records_of_scan_storage(store: Engine, livrable_copy: Path, tmp_path: Path) -> None:
    published = run_scan(store, livrable_copy, tmp_path / "out")
    assert (published.scan, published.storage, published.dalles, published.skipped, published.reused) == (
        1, 1, 15, 7, 0)
    reference = create_store(f"sqlite:///{tmp_path / 'reference.sqlite'}")
    expected = scan_storage(LocalStorage(livrable_copy), reference, ScanOptions())
    reference.dispose()
    records = list(store_records.load_records(store, 1))
    assert [r for r in records if isinstance(r, Dalle)] == expected.dalles
    assert [r for r in records if isinstance(r, DalleProblem)] == sorted(expected.problems, key=lambda p: p.path)
    with store.connect() as conn:
        row = conn.execute(select(schema.scans)).one()
        assert (row.status, row.step, row.listed, row.read, row.reused, row.skipped) == (
            "succeeded", "done", 23, 22, 0, 7)
        assert conn.execute(select(schema.livrables.c.feature)).scalar_one()["properties"]["nom"] == "Ortho 2025"


def test_a_dalle_that_cannot_be_placed_is_recorded_not_georeferenced(store: Engine, livrable_copy: Path,
                                                                     tmp_path: Path) -> None:
    local_cs = 'LOCAL_CS["Chantier Quai Nord",UNIT["metre",1,AUTHORITY["EPSG","9001"]]]'
    with rasterio.open(livrable_copy / "lot 1" / "chantier.tif", "w", driver="GTiff", width=16, height=16, count=1,
                       dtype="uint8", crs=rasterio.crs.CRS.from_wkt(local_cs),
                       transform=rasterio.transform.from_origin(1000, 2000, 1, 1)) as dst:
        dst.write(np.zeros((1, 16, 16), "uint8"))
    published = run_scan(store, livrable_copy, tmp_path / "out")
    assert (published.dalles, published.skipped) == (15, 8)
    detail = 'its CRS "Chantier Quai Nord" (Engineering CRS) has no transformation to WGS84'
    (record,) = [r for r in store_records.load_records(store, 1) if r.path == "lot 1/chantier.tif"]
    assert record == DalleProblem(record.file, SkipReason.NOT_GEOREFERENCED, detail)
    report = json.loads((tmp_path / "out" / "1" / "report.json").read_text())
    assert {"path": "lot 1/chantier.tif", "reason": "not_georeferenced", "detail": detail} in report["skipped"]
    assert (report["raster_files"], report["indexed"], len(report["skipped"])) == (23, 15, 8)
    quality = json.loads((tmp_path / "out" / "1" / "quality.json").read_text())  # checked at finalisation
    assert quality["grids"][0]["hole_cells"] == [[651200.0, 6861600.0, 651400.0, 6861800.0]]
    assert quality["skipped"]["not_georeferenced"] == ["anomalies/sans_georef.tif", "lot 1/chantier.tif"]


def test_a_rescan_reads_only_new_or_changed_dalles(store: Engine, livrable_copy: Path, tmp_path: Path) -> None:
    run_scan(store, livrable_copy, tmp_path / "out")
    write_dalle(livrable_copy / "lot 1/nouvelle.tif", (653000.0, 6862000.0), pixels=16, resolution_m=12.5)
    (livrable_copy / "lot 1/PCRS_651200_6862000_L93.tif").unlink()
    target = queries.scan_target(store, queueing.queue_scan(store, 1, "requeue"))
    assert target is not None

    class Counting(LocalStorage):
        reads: list[str] = []

        def read_start(self, entry, length):  # type: ignore[no-untyped-def]
            self.reads.append(entry.path)
            return super().read_start(entry, length)

    storage = Counting(livrable_copy)
    plan = stages.list_scan(store, storage, target, 5)
    assert plan is not None and (plan.listed, plan.reused, plan.to_read, plan.chunks) == (23, 21, 1, 1)
    stages.read_chunk(store, storage, target, 0, ScanOptions())
    published = stages.finalize_scan(store, storage, target, tmp_path / "out", TODAY)
    assert published is not None and (published.dalles, published.skipped, published.reused) == (15, 7, 14)
    report = json.loads((tmp_path / "out" / "1" / "report.json").read_text())
    # The new dalle is read, the 14 others reused; the 7 skipped files, reused too, are listed once.
    assert (report["raster_files"], report["indexed"], report["reused"], len(report["skipped"])) == (22, 1, 14, 7)
    assert storage.reads == ["lot 1/nouvelle.tif"]
    paths = [r.path for r in store_records.load_records(store, 1)]
    assert "lot 1/nouvelle.tif" in paths and "lot 1/PCRS_651200_6862000_L93.tif" not in paths
    assert len(paths) == 22


def test_repeated_stages_change_nothing_twice(store: Engine, livrable_copy: Path, tmp_path: Path) -> None:
    target = publish(store, livrable_copy)
    storage = LocalStorage(livrable_copy)
    plan = stages.list_scan(store, storage, target, 5)
    assert plan is not None
    assert stages.list_scan(store, storage, target, 5) is None  # a repeated listing message
    first = stages.read_chunk(store, storage, target, 0, ScanOptions())
    assert (first.read, first.stored, first.pending) == (5, True, 4)
    assert stages.read_chunk(store, storage, target, 0, ScanOptions()) == stages.ChunkOutcome(0, 0, False, -1)
    # A worker that read the chunk too, storing after the first: the rows are replaced, never added.
    results = [read_dalle(storage, e) for e in store_records.chunk_files(store, target.scan, 1) or []]
    assert len(results) == 5
    for _ in range(2):
        stored = store_scans.store_chunk(store, target.storage, target.scan, 1, results, "w")
        assert stored.stored and stored.pending == 3
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.scan_results)).scalar_one() == 10
        assert conn.execute(select(schema.scans.c.read)).scalar_one() == 10
    assert stages.finalize_scan(store, storage, target, tmp_path / "out", TODAY) is None  # chunks missing
    for chunk in range(2, plan.chunks):
        stages.read_chunk(store, storage, target, chunk, ScanOptions())
    assert stages.finalize_scan(store, storage, target, tmp_path / "out", TODAY) is not None
    assert stages.finalize_scan(store, storage, target, tmp_path / "out", TODAY) is None
    # A chunk message arriving after the end stores nothing.
    assert not store_scans.store_chunk(store, target.storage, target.scan, 1, results, "late").stored
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.records)).scalar_one() == 22
        assert conn.execute(select(func.count()).select_from(schema.scan_results)).scalar_one() == 0


def test_one_finaliser_wins_a_race(pg: Engine, livrable_copy: Path, tmp_path: Path) -> None:
    target = publish(pg, livrable_copy)
    storage = LocalStorage(livrable_copy)
    plan = stages.list_scan(pg, storage, target, 50)
    assert plan is not None and plan.chunks == 1
    stages.read_chunk(pg, storage, target, 0, ScanOptions())
    barrier = threading.Barrier(6)

    def finalise(n: int) -> stages.Published | None:
        barrier.wait()
        return stages.finalize_scan(pg, LocalStorage(livrable_copy), target, tmp_path / f"out{n}", TODAY)

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(finalise, range(6)))
    winners = [o for o in outcomes if o is not None]
    assert len(winners) == 1 and (winners[0].dalles, winners[0].skipped) == (15, 7)
    assert [p.parent.name for p in tmp_path.glob("out*/1")] == [winners[0].out.parent.name]
    with pg.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.records)).scalar_one() == 22
        assert conn.execute(select(schema.scans.c.status)).scalar_one() == "succeeded"


def test_concurrent_chunks_meeting_a_new_crs(pg: Engine, tmp_path: Path) -> None:
    root = tmp_path / "livrable"
    for i in range(40):
        write_dalle(root / f"d{i:02d}.tif", (900000.0 + i * 200, 6500000.0), pixels=16, resolution_m=12.5,
                    crs="EPSG:3949")
    target = publish(pg, root)
    plan = stages.list_scan(pg, LocalStorage(root), target, 4)
    assert plan is not None and plan.chunks == 10
    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(lambda c: stages.read_chunk(pg, LocalStorage(root), target, c, ScanOptions()),
                                 range(10)))
    assert sorted(o.pending for o in outcomes) == list(range(10))
    with pg.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.crs_table)).scalar_one() == 1


def test_a_storage_is_scanned_once_at_a_time(store: Engine, livrable_copy: Path) -> None:
    target = publish(store, livrable_copy)
    with pytest.raises(ScanRunning, match=r"^storage 1 is already being scanned \(scan 1\)"):
        queueing.queue_scan(store, 1, "requeue")
    (again,) = queueing.publish(store, projet(str(livrable_copy)), None, storage_url)
    assert (again.scan, again.refused) == (None, f"livrable 'Ortho 2025': storage 1 ({livrable_copy.as_uri()}) "
                                                 "is already being scanned")
    assert stages.fail_scan(store, target.scan, "cannot list it")
    assert not stages.fail_scan(store, target.scan, "twice")
    assert queueing.queue_scan(store, 1, "requeue", full=True) == 2
    rows = queries.storage_rows(store)
    assert [(r.id, r.status, r.last_error, r.livrable) for r in rows] == [(1, "queued", "cannot list it",
                                                                           "Ortho 2025")]


def test_publication_refuses_livrables_without_a_usable_stockage(store: Engine, livrable_copy: Path) -> None:
    doc = json.loads(json.dumps(PROJET))
    good = doc["livrables"][0]
    good["stockage_params"]["url"] = str(livrable_copy)
    doc["livrables"] = [good, {**good, "nom": "Papier", "stockage": None},
                        {**good, "nom": "Ailleurs", "stockage_params": {"url": "gopher://example.test/x"}},
                        {**good, "nom": "Inconnu", "stockage": "webdav"}]
    with pytest.raises(ConfigError) as refused:
        queueing.publish(store, Projet.from_document(doc), None, storage_url)
    assert str(refused.value) == (
        "projet 'PCRS Métropole Test' not published, nothing queued: livrable 'Ailleurs': gopher://example.test/x: "
        "unsupported scheme 'gopher' (use a folder, file://, http(s)://, ftp(s)://, sftp:// or s3://); "
        "livrable 'Inconnu': stockage 'webdav' is not supported (http, ftp, sftp, s3)")
    assert queries.storage_rows(store) == []
    queued = queueing.publish(store, Projet.from_document(doc), "Papier", storage_url)
    assert [(q.livrable, q.scan, q.refused, q.skipped) for q in queued] == [("Papier", None, None, "no stockage")]
    with pytest.raises(LivrableNotFound):
        queueing.publish(store, Projet.from_document(doc), "Absent", storage_url)


def test_stalled_scans_are_claimed_once_with_what_they_need(store: Engine, livrable_copy: Path,
                                                            tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        shutil.copytree(livrable_copy, tmp_path / name)
    queued = publish(store, tmp_path / "a")                      # its message was lost
    reading = publish(store, tmp_path / "b")                     # a worker died reading chunk 1
    stages.list_scan(store, LocalStorage(tmp_path / "b"), reading, 5)
    stages.read_chunk(store, LocalStorage(tmp_path / "b"), reading, 0, ScanOptions())
    aggregating = publish(store, tmp_path / "c")                 # a worker died aggregating
    stages.list_scan(store, LocalStorage(tmp_path / "c"), aggregating, 50)
    stages.read_chunk(store, LocalStorage(tmp_path / "c"), aggregating, 0, ScanOptions())
    assert store_scans.claim_finalize(store, aggregating.scan)
    cli_storage = catalog.storage_id(store, "file:///nowhere")      # `pcrs-indexer index` killed
    cli_scan = store_scans.start_scan(store, cli_storage)
    assert stages.take_stalled(store, 3600) == []
    future = datetime.now(UTC) + timedelta(seconds=5)
    stalled = store_scans.take_stalled(store, future)
    assert [(s.scan, s.action, s.chunks) for s in stalled] == [
        (queued.scan, "list", ()), (reading.scan, "read", (1, 2, 3, 4)), (aggregating.scan, "finalize", ()),
        (cli_scan, "failed", ())]
    assert store_scans.take_stalled(store, datetime.now(UTC) - timedelta(seconds=1)) == []  # heartbeats renewed
    assert stages.finalize_scan(store, LocalStorage(tmp_path / "c"), aggregating, tmp_path / "out", TODAY) is not None
    assert queries.progress(store, cli_storage).status == "failed"


def test_due_storages_longest_waiting_first(store: Engine, livrable_copy: Path, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        shutil.copytree(livrable_copy, tmp_path / name)
        run_scan(store, tmp_path / name, tmp_path / "out", nom=f"Ortho {name}")
    catalog.storage_id(store, "file:///never-published")
    later = datetime.now(UTC) + timedelta(days=8)
    assert queueing.queue_due(store, 7 * 86400, 10) == []
    first = queueing.queue_due(store, 7 * 86400, 2, at=later)
    assert [(q.storage, q.scan) for q in first] == [(1, 4), (2, 5)]
    assert [(q.storage, q.scan) for q in queueing.queue_due(store, 7 * 86400, 2, at=later)] == [(3, 6)]


def described_schema(engine: Engine) -> dict[str, object]:
    """Every table's columns, keys, indexes and comments, as the database reports them."""
    found = inspect(engine)
    return {table: (
        [(c["name"], str(c["type"]), c["nullable"], c.get("comment")) for c in found.get_columns(table)],
        found.get_pk_constraint(table)["constrained_columns"],
        sorted((fk["referred_table"], tuple(fk["constrained_columns"]), fk["options"].get("ondelete"))
               for fk in found.get_foreign_keys(table)),
        sorted((ix["name"], tuple(ix["column_names"]), ix["unique"]) for ix in found.get_indexes(table)),
        sorted(tuple(uc["column_names"]) for uc in found.get_unique_constraints(table)),
    ) for table in sorted(found.get_table_names()) if table != "alembic_version"}


def test_migrations_build_the_schema_of_the_code(postgres_server: PostgresServer, tmp_path: Path) -> None:
    migrated = [create_engine(postgres_server.create_database()) for _ in range(2)]
    created = create_engine(postgres_server.create_database())
    old = create_engine(f"sqlite:///{tmp_path / 'old.sqlite'}")
    try:
        engines = [migrated[0]] * 3  # workers starting together on one store
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(migrate, engines))
        schema.metadata.create_all(created)
        assert described_schema(migrated[0]) == described_schema(created)
        with migrated[0].connect() as conn:
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == HEAD
        # A PostgreSQL store `pcrs-indexer index` created before the service: stamped 0001, then upgraded.
        schema.metadata.create_all(migrated[1], tables=[schema.storages, schema.scans, schema.crs_table,
                                                       schema.records])
        migrate(migrated[1])
        assert described_schema(migrated[1]) == described_schema(created)
        # The same for SQLite, through the command.
        schema.metadata.create_all(old, tables=[schema.storages, schema.scans, schema.crs_table, schema.records])
        result = CliRunner().invoke(main, ["db", "upgrade", "--db", f"sqlite:///{tmp_path / 'old.sqlite'}"])
        assert result.exit_code == 0, result.output
        assert result.stderr == f"state store sqlite:///{tmp_path / 'old.sqlite'} at revision {HEAD}\n"
        assert set(described_schema(old)) == {t.name for t in schema.metadata.sorted_tables}
    finally:
        for engine in (*migrated, created, old):
            engine.dispose()


def test_a_proprietary_dalle_is_placed_as_index_places_it(store: Engine, tmp_path: Path) -> None:
    root = tmp_path / "livrable"
    for i in range(3):
        write_dalle(root / f"d{i}.tif", (651000.0 + i * 200, 6862000.0), pixels=16, resolution_m=12.5)
    (root / "d3.ecw").write_bytes(b"ECW-like" * 64)
    (root / "d3.eww").write_text("12.5\n0\n0\n-12.5\n651606.25\n6861993.75\n")
    published = run_scan(store, root, tmp_path / "out", chunk_size=2)
    reference = create_store(f"sqlite:///{tmp_path / 'reference.sqlite'}")
    expected = scan_storage(LocalStorage(root), reference, ScanOptions())
    reference.dispose()
    assert published.dalles == len(expected.dalles) == 4
    assert [r for r in store_records.load_records(store, 1) if isinstance(r, Dalle)] == expected.dalles


def test_export_memory_does_not_grow_with_the_dalles(pg: Engine, livrable_copy: Path, tmp_path: Path) -> None:
    run_scan(pg, livrable_copy, tmp_path / "out")
    (dalle,) = [r for r in store_records.load_records(pg, 1) if r.path == "lot 1/PCRS_651000_6862000_L93.tif"]
    assert isinstance(dalle, Dalle)
    copies = [replace(dalle, file=replace(dalle.file, path=f"copie/{i:05d}.tif")) for i in range(8000)]
    with pg.begin() as conn:
        crs = store_records.crs_ids(conn, [dalle.crs_wkt])
        conn.execute(schema.records.insert(), [{"storage_id": 1, "scan_id": 1, **store_records.record_row(d, crs)}
                                              for d in copies])
    del copies
    tracemalloc.start()
    summary = export_all(pg, tmp_path / "export")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (summary["livrables"], summary["dalles"]) == (1, 8015)
    # Streamed: rows come 5,000 at a time; 8,015 features held at once would take well over 20 MiB.
    assert peak < 16 * 2**20, f"{peak / 2**20:.1f} MiB"
    with open(tmp_path / "export" / "dalles.geojson", encoding="utf-8") as f:
        chemins = [feature["properties"]["chemin"] for feature in json.load(f)["features"]]
    assert chemins == sorted(chemins) and len(set(chemins)) == 8015
    assert chemins[:2] == ["copie/00000.tif", "copie/00001.tif"]


def test_the_host_limiter_caps_concurrent_slots(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.flushall()
    limiters = [HostLimiter(client, cap=2, lease_s=1.0, wait_s=10.0) for _ in range(3)]  # three "workers"
    inside = 0
    peak = 0
    lock = threading.Lock()

    def use(n: int) -> None:
        nonlocal inside, peak
        with limiters[n % 3].slot("ftp.example.test"):
            with lock:
                inside += 1
                peak = max(peak, inside)
            time.sleep(0.02)
            with lock:
                inside -= 1

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(use, range(60)))
    assert peak == 2
    assert client.zcard("pcrs:host:ftp.example.test") == 0
    # A worker that died holding a slot: its lease lapses after lease_s, then the slot is free again.
    client.zadd("pcrs:host:ftp.example.test", {"dead-1": (time.time() + 0.8) * 1000,
                                                "dead-2": (time.time() + 0.8) * 1000})
    started = time.monotonic()
    with limiters[0].slot("ftp.example.test"):
        waited = time.monotonic() - started
    assert 0.5 < waited < 3
    # A slot held longer than its lease is renewed, not lost.
    with limiters[1].slot("slow.example.test"):
        time.sleep(2.5)
        assert limiters[1].holders("slow.example.test") == 1
    client.close()


def test_slots_are_taken_all_or_nothing_and_kept_until_close(redis_server: RedisServer, tmp_path: Path) -> None:
    client = redis_server.client()
    client.flushall()
    limiter = HostLimiter(client, cap=3, lease_s=5.0, wait_s=5.0)
    held = limiter.try_acquire("h", 2)
    assert held is not None and len(held) == 2
    assert limiter.try_acquire("h", 2) is None  # never one of two: a second listing would wait holding it
    (third,) = limiter.try_acquire("h") or []
    for token in [*held, third]:
        limiter.release("h", token)
    # A storage holds its slots between calls, as its pool keeps connections alive, until closed.
    for i in range(8):
        write_dalle(tmp_path / f"d{i}.tif", (651000.0 + i * 200, 6862000.0), pixels=16, resolution_m=12.5)

    class Slow(LocalStorage):
        def read_start(self, entry, length):  # type: ignore[no-untyped-def]
            time.sleep(0.1)
            return super().read_start(entry, length)

    first, second = (LimitedStorage(Slow(tmp_path), HostLimiter(client, cap=3, wait_s=5.0), "h", max_slots=4)
                     for _ in range(2))
    entries = LocalStorage(tmp_path).list_files()
    second.read_start(entries[0], 1024)
    second.read_start(entries[1], 1024)
    assert (second.held, limiter.holders("h")) == (1, 1)
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda entry: first.read_start(entry, 1024), entries))
    assert (first.held, limiter.holders("h")) == (2, 3)  # the fleet's cap, not its own max_slots
    second.close()
    assert (second.held, limiter.holders("h")) == (0, 2)
    assert len(first.list_files()) == 8  # a listing holds min(cap, 4) slots at once
    assert (first.held, limiter.holders("h")) == (3, 3)
    first.close()
    assert limiter.holders("h") == 0
    client.close()


def test_only_remote_storages_are_limited(redis_server: RedisServer, tmp_path: Path) -> None:
    client = redis_server.client()
    limiter = HostLimiter(client, cap=1)
    assert limited(LocalStorage(tmp_path), limiter).__class__ is LocalStorage
    remote = limited(open_storage("http://Example.test:8080/ortho/"), limiter)
    assert isinstance(remote, LimitedStorage) and (remote.host, remote.url) == ("example.test",
                                                                               "http://Example.test:8080/ortho/")
    assert limited(open_storage("http://example.test/"), None).__class__ is not LimitedStorage
    client.close()


def test_a_limited_storage_keeps_what_the_first_read_learned(redis_server: RedisServer, tmp_path: Path) -> None:
    """Over a listing with neither sizes nor dates, the fleet's second scan reads no dalle again: the
    limiter forwards the first read's completed entry (size, Last-Modified) and the coroutine reader."""
    from indexer.sample import make_sample_livrable
    from indexer.storages import AccessOptions
    from indexer.storages.addresses import AddressPolicy
    from tests.conftest import SMALL
    from tests.servers.servers import PythonHTTP, public_folder

    root = public_folder()
    make_sample_livrable(root / "livrable", SMALL)
    server = PythonHTTP(root, tmp_path / "http").start()
    client = redis_server.client()
    client.flushall()
    engine = create_store(f"sqlite:///{tmp_path / 'state.sqlite'}")
    options = AccessOptions(addresses=AddressPolicy.of(["127.0.0.0/8"]))
    source = f"{server.url}/livrable/"
    try:
        plans = []
        for _ in range(2):
            (queued,) = queueing.publish(engine, projet(source), None, lambda s: open_storage(s, options).url)
            assert queued.scan is not None
            target = queries.scan_target(engine, queued.scan)
            assert target is not None
            with limited(open_storage(source, options), HostLimiter(client, cap=2), max_slots=4) as storage:
                assert isinstance(storage, LimitedStorage) and storage.async_reads() is not None
                plan = stages.list_scan(engine, storage, target, 8)
                assert plan is not None
                for chunk in range(plan.chunks):
                    stages.read_chunk(engine, storage, target, chunk, ScanOptions(concurrency=4))
                assert stages.finalize_scan(engine, storage, target, tmp_path / "out", TODAY) is not None
            plans.append(plan)
        first, second = plans
        assert (first.to_read, first.reused) == (22, 0)
        assert (second.to_read, second.reused) == (0, 22)
        stored = list(store_records.load_records(engine, 1))
        assert len(stored) == 22
        assert all(r.file.size is not None and r.file.mtime is not None for r in stored)  # from the first GET
        assert HostLimiter(client, cap=2).holders("127.0.0.1") == 0
    finally:
        engine.dispose()
        client.close()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("transport", ["local", "http"])
def test_connection_slots_out_of_reach_fail_the_chunk_not_its_dalles(transport: str, tmp_path: Path) -> None:
    # Redis restarting while a worker reads: the chunk is retried, its dalles are not made corrupt.
    root = tmp_path / "livrable"
    for i in range(6):
        write_dalle(root / f"d{i}.tif", (651000.0 + i * 200, 6862000.0), pixels=16, resolution_m=12.5)
    server = Nginx(root, tmp_path / "nginx").start() if transport == "http" else None
    try:
        loopback = AccessOptions(addresses=AddressPolicy.of(["127.0.0.1"]))
        inner = open_storage(server.url + "/", loopback) if server is not None else LocalStorage(root)
        unreachable = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
        storage = LimitedStorage(inner, HostLimiter(unreachable, cap=2, wait_s=5.0), "h", max_slots=2)
        listing = Listing.of(inner.list_files())
        with pytest.raises(SlotsUnavailable, match=r"^cannot take a connection slot for h: Redis: Error 111 "
                                                   r"connecting to 127\.0\.0\.1:\d+\. Connection refused\.$"):
            read_all(storage, listing, listing.candidates, ScanOptions(concurrency=2))
        if server is not None:
            assert [r.path for r in server.requests() if r.path.endswith(".tif")] == []
        inner.close()
    finally:
        if server is not None:
            server.stop()
