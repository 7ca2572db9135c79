"""Queue scans for the workers: on publication of a projet, on request, on schedule.

Each function records what was asked in the store and returns the scans queued; sending the
messages that start them is the door's (`tasks.jobs.enqueue_scans`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from indexer.errors import ConfigError, IndexerError, LivrableNotFound, ScanRunning
from indexer.models import Trigger
from indexer.projet import Livrable, Projet, livrable_source, projet_key, published_document
from indexer.secrets import SecretBox
from indexer.storages.access import mask_url
from indexer.store import catalog, queries, scans
from indexer.store.engine import now

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Queued:
    """A scan asked for: the storage and the scan queued, or why none was, or why the livrable was skipped."""

    storage: int | None
    url: str | None
    scan: int | None
    livrable: str | None = None
    reason: str | None = None
    skipped: str | None = None
    """Why the livrable has nothing to scan (no stockage, vector data, an external URL)."""

    @property
    def refused(self) -> str | None:
        """Why no scan was queued, for the user; None when one was, or the livrable was skipped."""
        if self.scan is not None or self.skipped is not None:
            return None
        if self.reason is not None:
            return self.reason
        return (f"livrable {self.livrable!r}: " if self.livrable else "") + \
            f"storage {self.storage} ({self.url}) is already being scanned"


def queue_scan(engine: Engine, storage: int, trigger: str, full: bool = False,
               lease_s: float = scans.INDEX_LEASE_S) -> int:
    """Queue a scan of a storage; raises `ScanRunning` when one is queued or running already.

    A scan of ``pcrs-indexer index`` whose process is gone (no heartbeat for `lease_s`) does not
    count: it is ended as failed.
    """
    scan = scans.claim_scan(engine, storage, trigger, full, lease_s)
    if scan is None:
        running = queries.active_scan(engine, storage)
        raise ScanRunning(f"storage {storage} is already being scanned (scan {running}): "
                          "wait for it to end, see `pcrs-indexer status`")
    return scan


def publish(engine: Engine, projet: Projet, livrable_name: str | None, storage_url: Callable[[str], str],
            full: bool = False, box: SecretBox | None = None, lease_s: float = scans.INDEX_LEASE_S) -> list[Queued]:
    """Record the livrables of a projet that have dalles to scan, and queue a scan of each.

    Args:
        engine: the state store.
        projet: the projet document.
        livrable_name: only this livrable (by ``nom``); raises `LivrableNotFound` if it has none.
        storage_url: the identity (masked root URL) of the storage at a source URL, as
            `indexer.storages.open_storage(source).url` gives it.
        full: read every dalle again instead of reusing unchanged ones.
        box: seals the credentials of a stockage that has some; without a key such a livrable
            refuses the projet.
        lease_s: a scan of ``pcrs-indexer index`` without heartbeat for so long is abandoned.

    All or nothing: every livrable is checked before anything is recorded, and one whose
    stockage makes no storage URL refuses the whole projet (`ConfigError`, one line giving each
    livrable's reason). A livrable without dalles to scan (no stockage, vector data, an external
    URL) is skipped, with the reason. A storage being scanned already is not queued twice; its
    livrable's document is updated all the same, and the running scan publishes with it.
    """
    chosen = [liv for liv in projet.livrables if livrable_name is None or liv.nom == livrable_name]
    if livrable_name is not None and not chosen:
        raise LivrableNotFound(f"livrable {livrable_name!r} not found in projet {projet.nom or projet.id!r}")
    skipped = [Queued(None, None, None, liv.nom, skipped=why) for liv in chosen
               if (why := liv.unscannable()) is not None]
    key = projet_key(projet)
    planned = _plan(projet, [liv for liv in chosen if liv.unscannable() is None], storage_url, box or SecretBox(None))
    queued = []
    for livrable, url, source, sealed in planned:
        storage = catalog.publish_livrable(engine, url, source, sealed, key, livrable.nom,
                                           published_document(projet, livrable))
        scan = scans.claim_scan(engine, storage, Trigger.PUBLISH, full, lease_s)
        queued.append(Queued(storage, url, scan, livrable.nom))
        log.info("livrable published", extra={"storage": url, "livrable": livrable.nom, "scan": scan})
    for q in skipped:
        log.info("livrable skipped", extra={"projet": projet.id, "livrable": q.livrable, "reason": q.skipped})
    return queued + skipped


def publish_summary(queued: list[Queued]) -> dict[str, list[Any]]:
    """What a publication did, as the command prints it and the task returns it."""
    return {"queued": [{"storage": q.storage, "scan": q.scan, "url": q.url, "livrable": q.livrable}
                       for q in queued if q.scan is not None],
            "refused": [q.refused for q in queued if q.refused],
            "skipped": [{"livrable": q.livrable, "reason": q.skipped} for q in queued if q.skipped]}


def _plan(projet: Projet, livrables: list[Livrable], storage_url: Callable[[str], str], box: SecretBox
          ) -> list[tuple[Livrable, str, str | None, str | None]]:
    """(livrable, storage identity, source URL, sealed source URL) of each livrable, the source clear when it
    has no credential, else sealed; `ConfigError` if any makes no storage, or has credentials and no key."""
    planned, refused = [], []
    for livrable in livrables:
        prefix = f"livrable {livrable.nom!r}: "
        try:
            source = livrable_source(livrable)
            url = storage_url(source)
            secret = mask_url(source) != source
            planned.append((livrable, url, None if secret else source, box.seal(source) if secret else None))
        except IndexerError as exc:
            refused.append(str(exc) if str(exc).startswith(prefix) else prefix + str(exc))
        except ValueError as exc:  # a URL the transport cannot parse
            refused.append(f"{prefix}its storage URL is not valid ({exc})")
    if refused:
        raise ConfigError(f"projet {projet.nom or projet.id!r} not published, nothing queued: " + "; ".join(refused))
    return planned


def unpublish(engine: Engine, projet_id: str, nom: str) -> int:
    """Remove a livrable from the export; returns its storage's id. Raises `LivrableNotFound`."""
    storage = catalog.unpublish(engine, projet_id, nom)
    if storage is None:
        raise LivrableNotFound(f"livrable {nom!r} of projet {projet_id!r} is not published")
    log.info("livrable unpublished", extra={"projet": projet_id, "livrable": nom, "storage": storage})
    return storage


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
