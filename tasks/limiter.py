"""A cap on the connections to one storage host, shared by every worker of the fleet through Redis.

Each host has a Redis sorted set of leases, a random token scored by its expiry time (Redis's
own clock, so the machines' clocks do not matter). A worker takes a lease before each call that
opens a connection to the storage (listing, header read, ranged read) and gives it back right
after; while it holds leases a thread renews them, so a lease outlives its worker by at most
`lease_s` when the worker dies. Taking a lease is one Lua script: drop the expired leases, add
ours if fewer than `cap` remain.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import redis

from indexer.errors import StorageUnreachable
from indexer.models import FileEntry
from indexer.storage import Storage

log = logging.getLogger(__name__)

_ACQUIRE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[3]), ARGV[2])
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
    return 1
end
return 0
"""

_RENEW = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
    redis.call('ZADD', KEYS[1], 'XX', ms + tonumber(ARGV[2]), ARGV[1])
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
    return 1
end
return 0
"""


class HostBusy(StorageUnreachable):
    """No connection slot to a storage host was free for the whole wait: the task is retried later."""


def host_of(url: str) -> str | None:
    """The host a storage URL connects to, lower-case; None for local folders."""
    host = urlsplit(url).hostname
    return host.lower() if host else None


class HostLimiter:
    """At most `cap` leases per host at once, across every process sharing the Redis server."""

    def __init__(self, client: redis.Redis, cap: int, lease_s: float = 60.0, wait_s: float = 1800.0,
                 prefix: str = "pcrs:host:") -> None:
        if cap < 1:
            raise ValueError("a host limiter needs a cap of at least 1")
        self.client = client
        self.cap = cap
        self.lease_ms = int(lease_s * 1000)
        self.wait_s = wait_s
        self.prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    def key(self, host: str) -> str:
        """The Redis key of a host's leases."""
        return self.prefix + host

    def holders(self, host: str) -> int:
        """Leases of a host not yet expired (for status and tests)."""
        key = self.key(host)
        now_s, now_us = self.client.time()
        return int(self.client.zcount(key, now_s * 1000 + now_us // 1000 + 1, "+inf"))

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        """Hold one of the host's `cap` slots for the duration of the block."""
        key = self.key(host)
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.wait_s
        delay = 0.01
        while not self._acquire(keys=[key], args=[self.cap, token, self.lease_ms]):
            if time.monotonic() >= deadline:
                raise HostBusy(f"no connection to {host} free after {self.wait_s:g} s "
                               f"({self.cap} at most, all workers together)")
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.25)
        with self._lock:
            self._held[token] = key
            self._start_renewer()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(token, None)
            try:
                self.client.zrem(key, token)
            except redis.RedisError as exc:  # the lease expires by itself
                log.warning("host slot not released", extra={"host": host, "error": str(exc)})

    def _start_renewer(self) -> None:
        if self._renewer is None or not self._renewer.is_alive():
            self._renewer = threading.Thread(target=self._renew_loop, name="host-leases", daemon=True)
            self._renewer.start()

    def _renew_loop(self) -> None:
        while True:
            time.sleep(self.lease_ms / 3000)
            with self._lock:
                held = list(self._held.items())
            for token, key in held:
                try:
                    if not self._renew(keys=[key], args=[token, self.lease_ms]):
                        log.warning("host slot lease lost", extra={"key": key})
                except redis.RedisError as exc:
                    log.warning("host slot lease not renewed", extra={"key": key, "error": str(exc)})


class LimitedStorage(Storage):
    """A storage whose every connecting call holds a slot of its host's limiter."""

    def __init__(self, inner: Storage, limiter: HostLimiter, host: str) -> None:
        self.inner = inner
        self.limiter = limiter
        self.host = host
        self.url = inner.url

    def list_files(self) -> list[FileEntry]:
        """List the storage, holding one slot (a crawl's pages are fetched inside it)."""
        with self.limiter.slot(self.host):
            return self.inner.list_files()

    def read_prefix(self, entry: FileEntry, length: int) -> tuple[bytes, int]:
        """Read the start of a file, holding one slot."""
        with self.limiter.slot(self.host):
            return self.inner.read_prefix(entry, length)

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """Read bytes of a file, holding one slot."""
        with self.limiter.slot(self.host):
            return self.inner.read_range(path, start, end)

    def stat(self, entry: FileEntry) -> FileEntry:
        """Complete an entry, holding one slot."""
        with self.limiter.slot(self.host):
            return self.inner.stat(entry)

    def close(self) -> None:
        """Close the wrapped storage's connections."""
        self.inner.close()


def limited(storage: Storage, limiter: HostLimiter | None) -> Storage:
    """The storage behind the host limiter, unless there is no limiter or no host (a local folder)."""
    host = host_of(storage.url)
    if limiter is None or host is None:
        return storage
    return LimitedStorage(storage, limiter, host)
