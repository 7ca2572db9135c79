"""Where the scans the API queues run: in threads of the API's own process, or on the Celery fleet.

With no broker configured (`ApiSettings.broker_mode`), a `Runner` runs each queued scan through
the fleet's stages (`indexer.service.stages`: list, read every chunk, finalise), in a few threads,
publishing into the same output folder as workers would. Scans cut short by a server stopped or
killed are not lost: their heartbeat stops, and the runner's watchdog takes them back by the
fleet's rule (`take_stalled`, after ``PCRS_INDEXER_STALE_AFTER``) and runs what they still need.
With a broker, `dispatch` only sends the messages starting them (`tasks.jobs.enqueue_scans`,
imported when called: `indexer/` does not import Celery at module import).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable
from datetime import date
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from indexer.errors import ConfigError, IndexerError
from indexer.pipeline import ScanOptions
from indexer.service import stages
from indexer.settings import ApiSettings
from indexer.storages import AccessOptions, open_storage
from indexer.storages.access import scrub
from indexer.store import queries

log = logging.getLogger(__name__)

STOP_WAIT_S = 5.0
"""How long stopping waits for the scans in progress; one still running is left to the watchdog's rule."""


class Runner:
    """A few threads running queued scans over the store, and a watchdog resuming stalled ones."""

    def __init__(self, engine: Engine, settings: ApiSettings, out_dir: Path) -> None:
        self.engine = engine
        self.settings = settings
        self.out_dir = out_dir
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Runner:
        """Start the scanning threads and the watchdog (which looks for stalled scans at once)."""
        for n in range(self.settings.scan_threads):
            self._threads.append(threading.Thread(target=self._work, name=f"pcrs-scan-{n}", daemon=True))
        self._threads.append(threading.Thread(target=self._watch, name="pcrs-watchdog", daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        """Stop taking scans; wait at most `wait_s` for those in progress."""
        self._stop.set()
        for _ in range(self.settings.scan_threads):
            self._queue.put(None)
        for thread in self._threads:
            thread.join(wait_s / max(len(self._threads), 1))

    def submit(self, scans: Iterable[int]) -> None:
        """Run these queued scans, in the order given, as threads become free."""
        for scan in scans:
            self._queue.put(scan)

    def _work(self) -> None:
        while not self._stop.is_set():
            scan = self._queue.get()
            if scan is None:
                return
            try:
                self.run(scan)
            except Exception:  # noqa: BLE001 - a thread must outlive any one scan
                log.exception("scan runner failed", extra={"scan": scan})

    def _watch(self) -> None:
        every = self.settings.watchdog_every_s
        while True:
            try:
                stalled = stages.take_stalled(self.engine, self.settings.stale_after.total_seconds())
                self.submit(s.scan for s in stalled if s.action != "failed")
            except SQLAlchemyError as exc:
                log.warning("cannot look for stalled scans", extra={"error": scrub(str(exc).split("\n")[0])})
            if self._stop.wait(every):
                return

    def run(self, scan: int) -> None:
        """Run what a scan still needs (listing, its pending chunks, its finalisation), ending it failed on error.

        A store that cannot be reached leaves the scan as it is: its heartbeat stops and the
        watchdog resumes it once the store is back.
        """
        target = queries.scan_target(self.engine, scan)
        if target is None:
            return
        settings = self.settings
        options = ScanOptions(concurrency=settings.concurrency, header_bytes=settings.header_bytes,
                              max_failures_in_a_row=settings.max_failures_in_a_row)
        try:
            source = target.source(settings.secret_box())
            if source is None:
                raise ConfigError(f"storage {target.storage} ({target.url}) has no source URL known")
            with open_storage(source, AccessOptions.from_settings(settings)) as storage:
                stages.list_scan(self.engine, storage, target, settings.chunk_size, settings.concurrency)
                for chunk in queries.pending_chunks(self.engine, scan):
                    stages.read_chunk(self.engine, storage, target, chunk, options, "api",
                                      settings.heartbeat_every_s)
                stages.finalize_scan(self.engine, storage, target, self.out_dir, date.today(),
                                     settings.max_unreadable_share)
        except SQLAlchemyError as exc:
            log.warning("state store unreachable: scan left to the watchdog",
                        extra={"scan": scan, "error": scrub(str(exc).split("\n")[0])})
        except IndexerError as exc:
            stages.fail_scan(self.engine, scan, scrub(str(exc)))
        except Exception as exc:
            stages.fail_scan(self.engine, scan, scrub(f"unexpected error: {type(exc).__name__}: {exc}"))
            raise


def dispatch(engine: Engine, runner: Runner | None, scans: list[int]) -> None:
    """Start queued scans: on the runner of this process, else by sending their messages to the broker.

    Raises `BrokerUnreachable` (the scans taken back) when the broker does not answer.
    """
    if not scans:
        return
    if runner is not None:
        runner.submit(scans)
        return
    import tasks.jobs  # the Celery door, only in broker mode

    tasks.jobs.enqueue_scans(engine, scans)
