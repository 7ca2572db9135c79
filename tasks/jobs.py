"""The service's Celery tasks: each parses its input, calls one `indexer.service` stage, sends what follows.

Task names and arguments are the service's message interface; other services may send them by
name with JSON arguments:

- ``pcrs.publish(projet, livrable=None, full=False)``: `projet` is the projet document (an
  object, as the PCRS API serves it) or its URL; queues a scan of each livrable with a stockage
  (or of `livrable`, by ``nom``), all or nothing. Returns ``{"queued": [...], "refused": [...], "skipped": [...]}``.
- ``pcrs.scan_storage(scan_id)``: lists the storage of a queued scan, then sends one
  ``pcrs.read_chunk`` per chunk (or ``pcrs.finalize_scan`` when nothing is to be read).
- ``pcrs.read_chunk(scan_id, chunk)``: reads the chunk's headers and stores the results; the
  worker storing the last chunk sends ``pcrs.finalize_scan``.
- ``pcrs.finalize_scan(scan_id)``: aggregates the emprise, writes the storage's files, ends the scan.
- ``pcrs.requeue(storage_id, full=False)``: queues a scan of a known storage.
- ``pcrs.unpublish(projet_id, livrable)``: removes a livrable from the export.
- ``pcrs.watchdog()`` and ``pcrs.reindex_due()``: the beat schedule's periodic tasks.

Every task may run twice (messages are acknowledged after the task, and given back when a
worker dies): the stages are idempotent. Transient failures (storage, Redis, database) are
retried with exponential backoff; a scan still failing after ``PCRS_INDEXER_TASK_MAX_RETRIES``
retries ends as failed with its error, its storage's last good files left in place.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterable
from datetime import date
from typing import Any

import kombu.exceptions
import kombu.utils.url
import redis
import sqlalchemy.exc
from celery import Task
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import Engine

from indexer.errors import (
    BrokerUnreachable,
    ConfigError,
    ForbiddenAddress,
    IndexerError,
    InvalidSource,
    ListingLimitReached,
    LivrableNotFound,
    ScanRunning,
    StorageUnreachable,
)
from indexer.models import Trigger
from indexer.pipeline import ScanOptions
from indexer.projet import Projet, load_projet
from indexer.service import queueing, stages
from indexer.settings import get_fleet_settings
from indexer.storages import AccessOptions, Storage, open_storage
from indexer.store import queries
from indexer.store.engine import create_store
from indexer.store.queries import ScanTarget
from indexer.store.scans import release_finalize, unclaim_scan
from tasks.app import app
from tasks.limiter import HostLimiter, limited

log = logging.getLogger(__name__)

PERMANENT: tuple[type[Exception], ...] = (ForbiddenAddress, ListingLimitReached, InvalidSource, ConfigError)
"""Failures a retry cannot mend: the scan ends as failed at once (so does a `StorageUnreachable`
marked ``permanent``: a missing root, a refused login, a TLS error)."""
TRANSIENT: tuple[type[Exception], ...] = (
    StorageUnreachable, redis.RedisError, kombu.exceptions.OperationalError,
    sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
"""Failures retried with backoff: the storage, the broker or the database is unreachable for now."""

_engines: dict[tuple[int, str], Engine] = {}
_limiters: dict[int, HostLimiter | None] = {}


def engine() -> Engine:
    """This process's engine on the state store (one per process: prefork children do not share one)."""
    url = get_fleet_settings().database_url()
    key = (os.getpid(), url)
    if key not in _engines:
        _engines[key] = create_store(url)
    return _engines[key]


def limiter() -> HostLimiter | None:
    """This process's per-host connection limiter, None when the cap is 0."""
    pid = os.getpid()
    if pid not in _limiters:
        settings = get_fleet_settings()
        _limiters[pid] = None if settings.host_connection_cap == 0 else HostLimiter(
            redis.Redis.from_url(settings.broker_url, socket_timeout=30, socket_connect_timeout=10),
            settings.host_connection_cap, settings.host_lease_s, settings.host_wait_s)
    return _limiters[pid]


def open_target(target: ScanTarget) -> Storage:
    """The storage a scan reads, behind the fleet-wide host limiter."""
    settings = get_fleet_settings()
    source = target.source(settings.secret_box())
    if source is None:
        raise ConfigError(f"storage {target.storage} ({target.url}) has no source URL known: publish its livrable")
    storage = open_storage(source, AccessOptions.from_settings(settings))
    return limited(storage, limiter(), max_slots=settings.concurrency)


def storage_url(source: str) -> str:
    """A source's storage identity (its masked root URL), nothing contacted."""
    with open_storage(source, AccessOptions.from_settings(get_fleet_settings())) as storage:
        return storage.url


def _backoff(retries: int) -> float:
    settings = get_fleet_settings()
    delay = min(settings.task_retry_backoff_s * 2.0**retries, settings.task_retry_backoff_max_s)
    return float(delay * random.uniform(0.8, 1.2))


def _guarded(task: Task, scan: int, work: Callable[[], dict[str, Any]],
             on_error: Callable[[], object] | None = None) -> dict[str, Any]:
    """Run a stage of a scan: retry it on a transient failure, end the scan as failed otherwise."""
    def failed(error: str) -> dict[str, Any]:
        stages.fail_scan(engine(), scan, error)
        return {"scan": scan, "status": "failed", "error": error}

    try:
        return work()
    except PERMANENT as exc:
        return failed(str(exc))
    except TRANSIENT as exc:
        if on_error is not None:
            on_error()
        if isinstance(exc, StorageUnreachable) and exc.permanent:
            return failed(str(exc))
        max_retries = get_fleet_settings().task_max_retries
        if task.request.retries < max_retries:
            log.info("transient failure, retrying", extra={"task": task.name, "scan": scan, "error": str(exc),
                                                          "retries": task.request.retries})
            # Celery's own limit (3 unless told) would re-raise before the scan is ended as failed.
            raise task.retry(exc=exc, countdown=_backoff(task.request.retries), max_retries=max_retries) from exc
        if isinstance(exc, StorageUnreachable):
            return failed(str(exc))
        raise  # the store or the broker is down: the watchdog requeues the scan once it is back
    except IndexerError as exc:
        return failed(str(exc))
    except Exception as exc:
        if on_error is not None:
            on_error()
        stages.fail_scan(engine(), scan, f"unexpected error: {type(exc).__name__}: {exc}")
        raise


def dispatch_reading(scan: int, chunks: Iterable[int]) -> int:
    """Send the messages reading a scan's chunks, or finalising it when none is left; returns how many."""
    pending = list(chunks)
    for chunk in pending:
        read_chunk.delay(scan, chunk)
    if not pending:
        finalize_scan.delay(scan)
    return len(pending) or 1


SEND_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.5, "interval_step": 1.0, "interval_max": 2.0}
"""How long a door tries to send a message to a broker that does not answer: a few seconds, not forever."""


def enqueue_scans(engine: Engine, scans: Iterable[int]) -> None:
    """Send the message starting each queued scan.

    A scan whose message cannot be sent (the broker unreachable after `SEND_RETRY_POLICY`) is
    taken back (`unclaim_scan`), with every later one, and `BrokerUnreachable` raised: nothing
    stays queued that no message will start.
    """
    pending = list(scans)
    for n, scan in enumerate(pending):
        try:
            scan_storage.apply_async((scan,), retry=True, retry_policy=SEND_RETRY_POLICY, ignore_result=True)
        except (kombu.exceptions.OperationalError, redis.RedisError, OSError) as exc:
            for taken_back in pending[n:]:
                unclaim_scan(engine, taken_back)
            url = kombu.utils.url.maybe_sanitize_url(get_fleet_settings().broker_url)
            unsent = ", ".join(map(str, pending[n:]))
            raise BrokerUnreachable(f"cannot reach the broker at {url} ({exc}): scan {unsent} not queued") from exc


class PublishRequest(BaseModel):
    """The arguments of ``pcrs.publish``, checked as they come from another service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    projet: dict[str, Any] | str
    livrable: str | None = None
    full: bool = False


@app.task(name="pcrs.publish")
def publish(projet: dict[str, Any] | str, livrable: str | None = None, full: bool = False) -> dict[str, Any]:
    """Queue a scan of each livrable of a projet (document or URL) that has a stockage."""
    try:
        request = PublishRequest(projet=projet, livrable=livrable, full=full)
    except ValidationError as exc:
        raise ConfigError(f"invalid pcrs.publish arguments: {exc.errors()[0]['msg']}") from exc
    settings = get_fleet_settings()
    document = (load_projet(request.projet, AccessOptions.from_settings(settings),
                            settings.projet_token(request.projet))
                if isinstance(request.projet, str)
                else Projet.from_document(request.projet))
    try:
        queued = queueing.publish(engine(), document, request.livrable, storage_url, request.full,
                                  settings.secret_box())
    except (LivrableNotFound, ConfigError) as exc:
        return {"queued": [], "refused": [str(exc)], "skipped": []}
    enqueue_scans(engine(), [q.scan for q in queued if q.scan is not None])
    return queueing.publish_summary(queued)


@app.task(name="pcrs.unpublish")
def unpublish(projet_id: str, livrable: str) -> dict[str, Any]:
    """Remove a livrable (its projet's ``_id`` and its ``nom``) from the export."""
    try:
        storage = queueing.unpublish(engine(), str(projet_id), str(livrable))
    except LivrableNotFound as exc:
        return {"unpublished": None, "refused": str(exc)}
    return {"unpublished": {"projet": projet_id, "livrable": livrable, "storage": storage}}


@app.task(name="pcrs.requeue")
def requeue(storage_id: int, full: bool = False) -> dict[str, Any]:
    """Queue a scan of a storage already known; refused while one is queued or running."""
    try:
        scan = queueing.queue_scan(engine(), int(storage_id), Trigger.REQUEUE, bool(full))
    except ScanRunning as exc:
        return {"storage": storage_id, "scan": None, "refused": str(exc)}
    enqueue_scans(engine(), [scan])
    return {"storage": storage_id, "scan": scan}


@app.task(name="pcrs.scan_storage", bind=True)
def scan_storage(self: Task, scan_id: int) -> dict[str, Any]:
    """List a queued scan's storage and send its chunks to the workers."""
    target = queries.scan_target(engine(), scan_id)
    if target is None:
        return {"scan": scan_id, "status": "unknown"}

    def work() -> dict[str, Any]:
        with open_target(target) as storage:
            settings = get_fleet_settings()
            plan = stages.list_scan(engine(), storage, target, settings.chunk_size, settings.concurrency)
        if plan is None:
            return {"scan": scan_id, "status": "already listed"}
        dispatch_reading(scan_id, range(plan.chunks))
        return {"scan": scan_id, "status": "listed", "listed": plan.listed, "reused": plan.reused,
                "to_read": plan.to_read, "chunks": plan.chunks}

    return _guarded(self, scan_id, work)


@app.task(name="pcrs.read_chunk", bind=True)
def read_chunk(self: Task, scan_id: int, chunk: int) -> dict[str, Any]:
    """Read a chunk's headers and store them; the last chunk in sends the finalisation."""
    target = queries.scan_target(engine(), scan_id)
    if target is None:
        return {"scan": scan_id, "chunk": chunk, "status": "unknown"}
    settings = get_fleet_settings()
    options = ScanOptions(concurrency=settings.concurrency, header_bytes=settings.header_bytes,
                          max_failures_in_a_row=settings.max_failures_in_a_row)

    def work() -> dict[str, Any]:
        with open_target(target) as storage:
            outcome = stages.read_chunk(engine(), storage, target, chunk, options, self.request.hostname or "",
                                      settings.heartbeat_every_s)
        if outcome.stored and outcome.pending == 0:
            finalize_scan.delay(scan_id)
        return {"scan": scan_id, "chunk": chunk, "status": "stored" if outcome.stored else "already done",
                "read": outcome.read, "skipped": outcome.skipped, "pending": outcome.pending}

    return _guarded(self, scan_id, work)


@app.task(name="pcrs.finalize_scan", bind=True)
def finalize_scan(self: Task, scan_id: int) -> dict[str, Any]:
    """Aggregate a scan whose chunks are all in, publish its files and end it, exactly once."""
    target = queries.scan_target(engine(), scan_id)
    if target is None:
        return {"scan": scan_id, "status": "unknown"}

    def work() -> dict[str, Any]:
        with open_target(target) as storage:
            settings = get_fleet_settings()
            published = stages.finalize_scan(engine(), storage, target, settings.outputs_dir(), date.today(),
                                             settings.max_unreadable_share)
        if published is None:
            return {"scan": scan_id, "status": "not ready or already finalised"}
        return {"scan": scan_id, "status": "succeeded", "storage": published.storage, "dalles": published.dalles,
                "skipped": published.skipped, "reused": published.reused, "out": str(published.out)}

    return _guarded(self, scan_id, work, on_error=lambda: release_finalize(engine(), scan_id))


@app.task(name="pcrs.watchdog")
def watchdog() -> dict[str, Any]:
    """Requeue the work of every scan whose heartbeat stopped."""
    stalled = stages.take_stalled(engine(), get_fleet_settings().stale_after.total_seconds())
    for scan in stalled:
        if scan.action == "list":
            scan_storage.delay(scan.scan)
        elif scan.action in ("read", "finalize"):
            dispatch_reading(scan.scan, scan.chunks)
    return {"requeued": [{"scan": s.scan, "action": s.action, "chunks": len(s.chunks)} for s in stalled]}


@app.task(name="pcrs.reindex_due")
def reindex_due() -> dict[str, Any]:
    """Queue a scan of each published storage not scanned for ``PCRS_INDEXER_REINDEX_EVERY``."""
    settings = get_fleet_settings()
    queued = queueing.queue_due(engine(), settings.reindex_every.total_seconds(), settings.reindex_batch)
    enqueue_scans(engine(), [q.scan for q in queued if q.scan is not None])
    return {"queued": [{"storage": q.storage, "scan": q.scan} for q in queued]}

