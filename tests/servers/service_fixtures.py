"""Real parts of the distributed service for its tests: Redis, PostgreSQL, Celery workers and beat.

Redis and PostgreSQL (the Debian packages ``tests/install-servers.sh`` installs) are started once
per session on free loopback ports, in folders of their own; each test gets an empty Redis and a
new database. Workers and beat are real ``celery -A tasks …`` processes, configured only through
``PCRS_INDEXER_*`` environment variables, each in its own process group so that a test can
``kill -9`` one whole worker. Every process started is stopped at teardown, also on failure.

A test module uses them by importing the ``*_fixture`` functions (pytest registers them by name).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.servers.servers import find_binary, free_port, wait_for_port

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `condition` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 20.0,
          group: bool = False) -> None:
    """Stop a child (its whole process group with `group`) and reap it; SIGKILL after `timeout`."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig) if group else process.send_signal(sig)
        process.wait(timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(process.pid, signal.SIGKILL) if group else process.kill()
        except ProcessLookupError:
            pass
        process.wait()


class RedisServer:
    """redis-server on 127.0.0.1 with an append-only file synced on every write, so a restart loses nothing."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server in the foreground of a child process."""
        binary = find_binary("redis-server", "/usr/bin/redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
             "--protected-mode", "no"], stdout=log, stderr=log, start_new_session=True)
        log.close()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        """Shut the server down (it flushes its append-only file)."""
        _stop(self.process)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server, stay down `down_s` seconds, and start it again on the same port and data."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def client(self) -> redis.Redis:
        """A client of database 0."""
        return redis.Redis.from_url(self.url)


class PostgresServer:
    """A PostgreSQL cluster of its own (initdb), on 127.0.0.1 with trust authentication.

    Run as the ``postgres`` user when the tests run as root (PostgreSQL refuses root). The
    cluster collates French (ICU), unlike code points: the outputs must not depend on it.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.datadir = Path(tempfile.mkdtemp(prefix="pcrs-pg-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.user: str | None = "postgres" if os.geteuid() == 0 else None
        self._databases = itertools.count(1)

    @staticmethod
    def binary(name: str) -> str:
        """A PostgreSQL server program, from the newest version Debian installed."""
        found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
        return find_binary(name, *reversed(found))

    def _as_owner(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        entry = pwd.getpwnam(self.user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
                "env": {**os.environ, "HOME": entry.pw_dir}}

    def start(self) -> PostgresServer:
        """initdb, then run ``postgres`` in the foreground of a child process."""
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.datadir, entry.pw_uid, entry.pw_gid)
        self.datadir.chmod(0o700)
        data = self.datadir / "data"
        subprocess.run([self.binary("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync",
                        "-E", "UTF8", "--locale=C.UTF-8", "--locale-provider=icu", "--icu-locale=fr-FR"],
                       check=True, capture_output=True, cwd="/", **self._as_owner())
        log = open(self.datadir / "postgres.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [self.binary("postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(self.datadir), "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=200"],
            stdout=log, stderr=log, start_new_session=True, cwd="/", **self._as_owner())
        log.close()
        wait_for_port(self.port, 30)
        wait_until(self._accepts, 30, "PostgreSQL to accept connections")
        return self

    def _accepts(self) -> bool:
        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def dsn(self, database: str) -> str:
        """A libpq connection string."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"pcrs_test_{next(self._databases)}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Fast shutdown, then remove the cluster."""
        _stop(self.process, signal.SIGINT, 30)
        shutil.rmtree(self.datadir, ignore_errors=True)


@dataclass
class CeleryProcess:
    """A ``celery -A tasks worker|beat`` process, its own process group, logging into a file."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> CeleryProcess:
        """Start the process; does not wait for it to be ready."""
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", *self.args],
                                            stdout=out, stderr=out, env=self.env, cwd=REPO,
                                            start_new_session=True)
        return self

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def wait_ready(self, timeout: float = 60.0) -> CeleryProcess:
        """Wait until the worker says it is ready to take messages."""
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.log.read_text(errors='replace')[-3000:]}")
            return any(line["message"].endswith(" ready.") for line in self.lines())
        wait_until(ready, timeout, f"{self.name} to be ready", 0.2)
        return self

    def stop(self) -> None:
        """Warm shutdown of the whole process group, SIGKILL if it takes too long."""
        _stop(self.process, signal.SIGTERM, 20, group=True)

    def kill(self) -> None:
        """``kill -9`` the whole worker: main process and pool children, as when a machine dies."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class Service:
    """The environment of one test's fleet: settings, and the processes started with them."""

    env: dict[str, str]
    workdir: Path
    redis: RedisServer
    db_url: str
    processes: list[CeleryProcess] = field(default_factory=list)
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def output_dir(self) -> Path:
        """Where the workers publish each storage's files."""
        return Path(self.env["PCRS_INDEXER_OUTPUT_DIR"])

    def configure(self, **settings: object) -> None:
        """Set ``PCRS_INDEXER_<NAME>`` for the processes started from now on."""
        for name, value in settings.items():
            self.env[f"PCRS_INDEXER_{name.upper()}"] = str(value)

    def worker(self, concurrency: int = 1, wait: bool = True, queues: str = "pcrs,pcrs.control") -> CeleryProcess:
        """Start a worker (prefork pool of `concurrency` processes) consuming `queues`."""
        name = f"w{next(self._names)}"
        worker = CeleryProcess(name, ["worker", "-P", "prefork", "-c", str(concurrency), "-n", f"{name}@%h",
                                      "-Q", queues, "--without-gossip", "--without-mingle", "-l", "INFO"],
                               dict(self.env), self.workdir / f"{name}.log").start()
        self.processes.append(worker)
        return worker.wait_ready() if wait else worker

    def beat(self) -> CeleryProcess:
        """Start the beat scheduler."""
        beat = CeleryProcess("beat", ["beat", "-l", "INFO", "-s", str(self.workdir / "beat-schedule"),
                                      "--pidfile", str(self.workdir / "beat.pid")],
                             dict(self.env), self.workdir / "beat.log").start()
        self.processes.append(beat)
        return beat

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``pcrs-indexer ARGS`` in a process of its own, with the fleet's settings."""
        result = subprocess.run([str(VENV_BIN / "pcrs-indexer"), *args], env=self.env, cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"pcrs-indexer {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def cli_json(self, *args: str) -> Any:
        """Run a command and parse its JSON on stdout."""
        return json.loads(self.cli(*args).stdout)

    def stop(self) -> None:
        """Stop every process started: all asked at once (beat first), each killed if not gone within 10 s."""
        running = [p.process for p in reversed(self.processes) if p.process is not None and p.process.poll() is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="session", name="redis_server")
def redis_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis server for the whole session; each test empties it."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", name="postgres_server")
def postgres_server_fixture() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for the whole session; each test gets a database of its own."""
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(name="pg_url")
def pg_url_fixture(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty PostgreSQL database."""
    return postgres_server.create_database()


@pytest.fixture(name="service")
def service_fixture(redis_server: RedisServer, pg_url: str, tmp_path: Path) -> Iterator[Service]:
    """Settings for a fleet on the session's Redis (emptied) and a new database; stops its processes."""
    redis_server.client().flushall()
    workdir = tmp_path / "service"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCRS_INDEXER_")}
    env.update({
        "PCRS_INDEXER_ALLOWED_NETWORKS": "127.0.0.0/8,::1",
        "PCRS_INDEXER_BROKER_URL": redis_server.url,
        "PCRS_INDEXER_DB_URL": pg_url,
        "PCRS_INDEXER_DATA_DIR": str(workdir / "data"),
        "PCRS_INDEXER_OUTPUT_DIR": str(workdir / "out"),
        "PCRS_INDEXER_CHUNK_SIZE": "50",
        "PCRS_INDEXER_TASK_RETRY_BACKOFF_S": "0.2",
        "PCRS_INDEXER_TASK_RETRY_BACKOFF_MAX_S": "1",
        "PCRS_INDEXER_HEARTBEAT_EVERY_S": "1",
        "PCRS_INDEXER_HOST_LEASE_S": "3",
        "PCRS_INDEXER_VISIBILITY_TIMEOUT_S": "3600",
        "PCRS_INDEXER_BROKER_RESTORE_EVERY_S": "1",
        "PCRS_INDEXER_REINDEX_CHECK_EVERY_S": "3600",
        "PCRS_INDEXER_WATCHDOG_EVERY_S": "3600",
    })
    fleet = Service(env, workdir, redis_server, pg_url)
    try:
        yield fleet
    finally:
        fleet.stop()
