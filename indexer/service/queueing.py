"""Queue scans for the workers: on publication of a projet, on request, on schedule.

Each function records what was asked in the store and returns the scans queued; sending the
messages that start them is the door's (`tasks.jobs.enqueue_scans`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine

from indexer.errors import IndexerError, LivrableNotFound, ScanRunning
from indexer.models import Trigger
from indexer.projet import Projet, livrable_source
from indexer.store import catalog, queries, scans
from indexer.store.engine import now

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Queued:
    """A scan asked for: the storage and the scan queued, or why none was."""

    storage: int | None
    url: str | None
    scan: int | None
    livrable: str | None = None
    reason: str | None = None

    @property
    def refused(self) -> str | None:
        """Why no scan was queued, for the user."""
        if self.scan is not None:
            return None
        if self.reason is not None:
            return self.reason
        return (f"livrable {self.livrable!r}: " if self.livrable else "") + \
            f"storage {self.storage} ({self.url}) is already being scanned"


def queue_scan(engine: Engine, storage: int, trigger: str, full: bool = False) -> int:
    """Queue a scan of a storage; raises `ScanRunning` when one is queued or running already."""
    scan = scans.claim_scan(engine, storage, trigger, full)
    if scan is None:
        running = queries.active_scan(engine, storage)
        raise ScanRunning(f"storage {storage} is already being scanned (scan {running}): "
                          "wait for it to end, see `pcrs-indexer status`")
    return scan


def publish(engine: Engine, projet: Projet, livrable_name: str | None, storage_url: Callable[[str], str],
            full: bool = False) -> list[Queued]:
    """Record the livrables of a projet that have a stockage, and queue a scan of each.

    Args:
        engine: the state store.
        projet: the projet document.
        livrable_name: only this livrable (by ``nom``); raises `LivrableNotFound` if it has none.
        storage_url: the identity (masked root URL) of the storage at a source URL, as
            `indexer.storages.open_storage(source).url` gives it.
        full: read every dalle again instead of reusing unchanged ones.

    A storage being scanned already is not queued twice; its livrable's document is updated all
    the same, and the running scan publishes with it. A livrable without stockage is left out; one
    whose stockage does not make a storage URL is refused, with the reason.
    """
    chosen = [liv for liv in projet.livrables if livrable_name is None or liv.nom == livrable_name]
    if livrable_name is not None and not chosen:
        raise LivrableNotFound(f"livrable {livrable_name!r} not found in projet {projet.nom or projet.id!r}")
    document = projet.model_dump(mode="json")
    queued = []
    for livrable in chosen:
        if not livrable.stockage:
            log.info("livrable without stockage", extra={"projet": projet.id, "livrable": livrable.nom})
            continue
        try:
            source = livrable_source(livrable)
            url = storage_url(source)
        except IndexerError as exc:
            prefix = f"livrable {livrable.nom!r}: "
            reason = str(exc) if str(exc).startswith(prefix) else prefix + str(exc)
            queued.append(Queued(None, None, None, livrable.nom, reason))
            continue
        storage = catalog.storage_id(engine, url)
        catalog.save_livrable(engine, storage, source, livrable.nom, projet.id, document)
        scan = scans.claim_scan(engine, storage, Trigger.PUBLISH, full)
        queued.append(Queued(storage, url, scan, livrable.nom))
        log.info("livrable published", extra={"storage": url, "livrable": livrable.nom, "scan": scan})
    return queued


def queue_due(engine: Engine, every_s: float, limit: int, at: datetime | None = None) -> list[Queued]:
    """Queue a scan of each published storage whose last scan started more than `every_s` ago.

    At most `limit` storages, the longest-waiting first.
    """
    before = (at or now()).timestamp() - every_s
    due = queries.due_storages(engine, datetime.fromtimestamp(before, UTC), limit)
    queued = []
    for storage in due:
        scan = scans.claim_scan(engine, storage, Trigger.SCHEDULE, False)
        if scan is not None:
            queued.append(Queued(storage, catalog.storage_url(engine, storage), scan))
    return queued
