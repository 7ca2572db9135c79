"""A live worker renews the visibility of every message it holds, so a short visibility timeout is safe.

Celery's Redis transport keeps each message a worker took (running, waiting for a process, or
held until its retry countdown) in the ``unacked`` hash, indexed by the time it was taken in the
``unacked_index`` sorted set; any worker gives back to its queue a message held for longer than
the visibility timeout. That timeout had to outlast the longest task and retry countdown (two
hours), so the messages of a worker that died waited that long. Here a thread of each worker's
main process moves the time of every message the worker holds to now, every quarter of the
timeout: a live worker's messages are never given back, and a dead worker's are within the
timeout (a minute by default) and the restore sweep.

The only private detail of the transport used is the index's name (``unacked_index``, or the
``unacked_index_key`` transport option, with the ``global_keyprefix`` option before it).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from celery import Celery
from celery.worker import state

log = logging.getLogger(__name__)


def index_key(transport_options: dict[str, Any]) -> str:
    """The Redis key of the transport's index of unacknowledged messages."""
    return str(transport_options.get("global_keyprefix", "")) + str(
        transport_options.get("unacked_index_key", "unacked_index"))


def held_tags() -> list[str]:
    """The delivery tags of the messages this worker holds: running, reserved, or waiting for their ETA."""
    tags = []
    for request in list(state.requests.values()):
        message = getattr(request, "message", None)
        tag = getattr(message, "delivery_tag", None)
        if tag is not None:
            tags.append(str(tag))
    return tags


def renew(client: redis.Redis, key: str, tags: list[str], at: float) -> int:
    """Move the time of the messages still unacknowledged among `tags` to `at`; returns how many."""
    if not tags:
        return 0
    changed = client.zadd(key, dict.fromkeys(tags, at), xx=True, ch=True)
    return int(changed or 0)


class VisibilityRenewer:
    """The thread renewing a worker's messages every `every_s` seconds until the worker stops."""

    def __init__(self, app: Celery, every_s: float) -> None:
        options = dict(app.conf.broker_transport_options or {})
        self.key = index_key(options)
        self.client = redis.Redis.from_url(app.conf.broker_url, socket_timeout=10, socket_connect_timeout=10)
        self.every_s = every_s
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="visibility", daemon=True)

    def start(self) -> VisibilityRenewer:
        """Start renewing."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop renewing (the worker is shutting down and gives its messages back itself)."""
        self.stopped.set()

    def _run(self) -> None:
        while not self.stopped.wait(self.every_s):
            try:
                renew(self.client, self.key, held_tags(), time.time())
            except redis.RedisError as exc:  # Redis restarting: the next round tries again
                log.warning("message visibility not renewed", extra={"error": str(exc)})
