"""A cap on the connections to one storage host, shared by every worker of the fleet through Redis.

Each host has a Redis sorted set of slots, a random token scored by its expiry time (Redis's own
clock, so the machines' clocks do not matter). Taking a slot is one Lua script: drop the expired
slots, add ours if fewer than `cap` remain. While a process holds slots a thread renews them, so
a slot outlives a worker that died by at most `lease_s`.

A slot stands for a connection, not for a request: connections are pooled and kept alive between
requests, so `LimitedStorage` keeps the slots it took until the storage is closed (at the end of
each task), and never has more requests in flight than slots held. The storage's connection pool
then never holds more connections than slots, and the host never sees more than `cap`
connections from the whole fleet.
"""

from __future__ import annotations

import asyncio
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
from indexer.storages import AsyncReads, Storage
from indexer.storages.crawl import LISTING_CONCURRENCY

log = logging.getLogger(__name__)

_ACQUIRE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
local wanted = #ARGV - 2
if redis.call('ZCARD', KEYS[1]) + wanted <= tonumber(ARGV[1]) then
    for i = 3, #ARGV do
        redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[i])
    end
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
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


class SlotsUnavailable(StorageUnreachable):
    """The fleet's connection slots cannot be taken (Redis unreachable): the task is retried later,
    its dalles not recorded as problems of their own."""


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

    def try_acquire(self, host: str, count: int = 1) -> list[str] | None:
        """Take `count` slots of the host at once if so many are free (renewed until released).

        All or nothing, so that two workers each waiting for a second slot never hold each
        other's. Returns their tokens, None when not enough were free.
        """
        key = self.key(host)
        tokens = [uuid.uuid4().hex for _ in range(count)]
        try:
            taken = self._acquire(keys=[key], args=[self.cap, self.lease_ms, *tokens])
        except redis.RedisError as exc:
            raise SlotsUnavailable(f"cannot take a connection slot for {host}: Redis: {exc}") from exc
        if not taken:
            return None
        with self._lock:
            self._held.update(dict.fromkeys(tokens, key))
            self._start_renewer()
        return tokens

    def release(self, host: str, token: str) -> None:
        """Give a slot back."""
        with self._lock:
            self._held.pop(token, None)
        try:
            self.client.zrem(self.key(host), token)
        except redis.RedisError as exc:  # the lease lapses by itself
            log.warning("host slot not released", extra={"host": host, "error": str(exc)})

    def acquire(self, host: str, count: int = 1) -> list[str]:
        """Wait until `count` slots of the host are free and take them; raises `HostBusy` after `wait_s`."""
        deadline = time.monotonic() + self.wait_s
        delay = 0.01
        while (tokens := self.try_acquire(host, count)) is None:
            if time.monotonic() >= deadline:
                raise self.busy(host)
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.25)
        return tokens

    def busy(self, host: str) -> HostBusy:
        """The error of a wait for a slot that lasted too long."""
        return HostBusy(f"no connection to {host} free after {self.wait_s:g} s "
                        f"({self.cap} at most, all workers together)")

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        """Hold one of the host's slots for the duration of the block."""
        (token,) = self.acquire(host)
        try:
            yield
        finally:
            self.release(host, token)

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
    """A storage that never has more connections open than host slots it holds.

    Slots are taken as calls need them, up to `max_slots`, and kept until `close`: a call uses a
    held slot that is free, else takes one more from the fleet, else waits for one of its own to
    free. A listing first holds as many slots as the crawl opens connections (`listing_slots`).
    """

    def __init__(self, inner: Storage, limiter: HostLimiter, host: str, max_slots: int = 1,
                 listing_slots: int = LISTING_CONCURRENCY) -> None:
        self.inner = inner
        self.limiter = limiter
        self.host = host
        self.url = inner.url
        self.max_slots = max(1, min(max_slots, limiter.cap))
        self.listing_slots = max(1, min(listing_slots, limiter.cap))
        self._held: list[str] = []
        self._free = 0
        self._cond = threading.Condition()

    @property
    def held(self) -> int:
        """Slots this storage holds."""
        with self._cond:
            return len(self._held)

    def _give(self, count: int = 1) -> None:
        with self._cond:
            self._free += count
            self._cond.notify(count)

    @contextmanager
    def _connection(self) -> Iterator[None]:
        self.take()
        try:
            yield
        finally:
            self.give()

    def list_files(self) -> list[FileEntry]:
        """List the storage holding `listing_slots` slots at once: a crawl fetches several pages at once."""
        with self._cond:
            missing = max(0, self.listing_slots - len(self._held))
        if missing:
            tokens = self.limiter.acquire(self.host, missing)
            with self._cond:
                self._held.extend(tokens)
                self._free += len(tokens)
        with self._cond:
            self._cond.wait_for(lambda: self._free >= self.listing_slots)
            self._free -= self.listing_slots
        try:
            return self.inner.list_files()
        finally:
            self._give(self.listing_slots)

    def read_start(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        """Read the start of a file on a connection of a held slot, as the wrapped storage does."""
        with self._connection():
            return self.inner.read_start(entry, length)

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """Read bytes of a file on a connection of a held slot."""
        with self._connection():
            return self.inner.read_range(path, start, end)

    def stat(self, entry: FileEntry) -> FileEntry:
        """Complete an entry on a connection of a held slot."""
        with self._connection():
            return self.inner.stat(entry)

    def async_reads(self) -> AsyncReads | None:
        """The wrapped storage's coroutine reader, each read on a connection of a held slot."""
        reads = self.inner.async_reads()
        return None if reads is None else _LimitedReads(self, reads)

    def take_free(self) -> bool:
        """Take a held slot that is free, without waiting; False when none is."""
        with self._cond:
            if self._free > 0:
                self._free -= 1
                return True
        return False

    def take(self) -> None:
        """Take a slot for one call: a free held one, one more from the fleet (up to `max_slots`), or
        wait for one of its own to free; raises `HostBusy` after the limiter's wait."""
        deadline = time.monotonic() + self.limiter.wait_s
        delay = 0.01
        while True:
            with self._cond:
                if self._free > 0:
                    self._free -= 1
                    return
                can_grow = len(self._held) < self.max_slots
            if can_grow:
                tokens = self.limiter.try_acquire(self.host)
                if tokens is not None:
                    with self._cond:
                        self._held.extend(tokens)
                    return
            if time.monotonic() >= deadline:
                raise self.limiter.busy(self.host)
            with self._cond:
                self._cond.wait(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.25)

    def give(self) -> None:
        """Give back the slot a call took."""
        self._give()

    def close(self) -> None:
        """Close the wrapped storage's connections, then give its slots back to the fleet."""
        try:
            self.inner.close()
        finally:
            with self._cond:
                held, self._held, self._free = self._held, [], 0
            for token in held:
                self.limiter.release(self.host, token)


class _LimitedReads:
    """A coroutine reader whose reads each hold one of a `LimitedStorage`'s slots.

    A free held slot is taken at once, on the loop; waiting for one (or taking one more from the
    fleet, a Redis call) happens in a thread, so the loop never blocks.
    """

    def __init__(self, storage: LimitedStorage, reads: AsyncReads) -> None:
        self._storage = storage
        self._reads = reads

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The wrapped reader's loop."""
        return self._reads.loop

    async def read_start(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        """The wrapped reader's `read_start`, on a connection of a held slot."""
        if not self._storage.take_free():
            await asyncio.get_running_loop().run_in_executor(None, self._storage.take)
        try:
            return await self._reads.read_start(entry, length)
        finally:
            # A connection the read closed (a body not read to its end) is closed on the loop's next
            # turn: let it run before the slot is free, or the next read connects while it is open.
            await asyncio.sleep(0)
            self._storage.give()


def limited(storage: Storage, limiter: HostLimiter | None, max_slots: int = 1) -> Storage:
    """The storage behind the host limiter, unless there is no limiter or no host (a local folder).

    `max_slots` is how many connections one storage may hold at once: the scan's read concurrency.
    """
    host = host_of(storage.url)
    if limiter is None or host is None:
        return storage
    return LimitedStorage(storage, limiter, host, max_slots)
