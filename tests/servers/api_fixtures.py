"""A real ``pcrs-indexer serve`` (uvicorn) process on a free loopback port, for the API's tests.

The server runs in a process of its own over the store, output folder and settings a test gives
(``PCRS_INDEXER_*`` only from what it is given: the test process's own are left out), logs into a
file, and is ready once ``GET /healthz`` answers 200. Every server started is stopped at teardown,
also on failure. ``api_server`` starts servers for one test; ``module_api_server`` for a module
(start one per module where the tests can share it: a start costs about 1.5 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers.servers import free_port
from tests.servers.service_fixtures import REPO, VENV_BIN, _stop

ADMIN_TOKEN = "admin-Token-5150"
DOWNLOAD_SECRET = "download-Secret-8086"
ADMIN = {"Authorization": f"Token {ADMIN_TOKEN}"}
"""The headers of an admin request to a server started with the default settings."""


@dataclass
class ApiServer:
    """A running ``pcrs-indexer serve``: its base URL, settings and log."""

    url: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def out_dir(self) -> Path:
        """Where it publishes each storage's files."""
        return Path(self.env["PCRS_INDEXER_OUTPUT_DIR"])

    @property
    def db_url(self) -> str:
        """Its state store."""
        return self.env["PCRS_INDEXER_DB_URL"]

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client on the server, 10 s deadline per request."""
        return httpx.Client(base_url=self.url, timeout=10.0, **kwargs)

    def log_text(self) -> str:
        """What the server logged so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after 15 s)."""
        _stop(self.process, signal.SIGTERM, 15, group=True)

    def kill(self) -> None:
        """``kill -9`` the server, as when its machine dies."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class ApiServers:
    """Starts servers in a folder; stops them all at the end."""

    workdir: Path
    started: list[ApiServer] = field(default_factory=list)

    def start(self, *, db_url: str | None = None, out_dir: Path | None = None, timeout: float = 30.0,
              healthy: bool = True, **settings: object) -> ApiServer:
        """Start ``pcrs-indexer serve`` over `db_url` (default a new SQLite file) and `out_dir`.

        `settings` are ``PCRS_INDEXER_<NAME>`` values (``broker_url=…``, ``admin_token=None`` to
        leave one unset); the admin token and download secret are set unless told otherwise. With
        `healthy` false, ``/healthz`` answering at all (503 included) is enough.
        """
        n = len(self.started) + 1
        folder = self.workdir / f"api{n}"
        folder.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PCRS_INDEXER_")}
        values: dict[str, object] = {
            "allowed_networks": "127.0.0.0/8,::1",
            "data_dir": folder / "data",
            "db_url": db_url or f"sqlite:///{folder / 'state.sqlite'}",
            "output_dir": out_dir or folder / "out",
            "admin_token": ADMIN_TOKEN,
            "download_token_secret": DOWNLOAD_SECRET,
            "watchdog_every_s": 1,
            "heartbeat_every_s": 1,
            **settings,
        }
        env.update({f"PCRS_INDEXER_{k.upper()}": str(v) for k, v in values.items() if v is not None})
        port = free_port()
        log = folder / "serve.log"
        with open(log, "ab") as out:
            process = subprocess.Popen([str(VENV_BIN / "pcrs-indexer"), "serve", "--port", str(port)],
                                       stdout=out, stderr=out, env=env, cwd=REPO, start_new_session=True)
        server = ApiServer(f"http://127.0.0.1:{port}", env, log, process)
        self.started.append(server)
        wait_healthy(server, timeout, 200 if healthy else None)
        return server

    def stop(self) -> None:
        """Stop every server started."""
        for server in reversed(self.started):
            server.stop()


def wait_healthy(server: ApiServer, timeout: float, status: int | None = 200) -> dict[str, Any]:
    """Wait until ``GET /healthz`` answers `status` (None: anything); fail with the server's log if it exits
    or times out."""
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise AssertionError(f"pcrs-indexer serve exited {server.process.returncode}: {server.log_text()[-3000:]}")
        try:
            answer = httpx.get(f"{server.url}/healthz", timeout=2.0)
            if status is None or answer.status_code == status:
                body: dict[str, Any] = json.loads(answer.content)
                return body
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"pcrs-indexer serve not healthy after {timeout} s: {server.log_text()[-3000:]}")
        time.sleep(0.05)


@pytest.fixture(name="api_server")
def api_server_fixture(tmp_path: Path) -> Iterator[ApiServers]:
    """Start ``pcrs-indexer serve`` processes for one test: ``api_server.start(...)``."""
    servers = ApiServers(tmp_path / "api")
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(name="module_api_server", scope="module")
def module_api_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServers]:
    """Start ``pcrs-indexer serve`` processes shared by a module's tests."""
    servers = ApiServers(tmp_path_factory.mktemp("api"))
    try:
        yield servers
    finally:
        servers.stop()
