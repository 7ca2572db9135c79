"""SFTP storages, through sshfs (fsspec over asyncssh), extended for a crawler.

One SSH login per storage, whose SFTP channels (a few) serve every listing and read at once.
Header reads are coroutines on the connection's event loop (`async_reads`): the scan's window of
reads is in flight together on that one connection, each costing two round trips (OPEN, then
READ; its CLOSE goes out without being waited for). What sshfs lacks, reading a byte range
instead of the whole file, not waiting for closes, and logging out, comes from
`indexer.storages.sshfs_adapter`.
The connection itself is made to the address checked by `indexer.addresses`, with the password
and/or the key file given, and nothing taken from the user's ``~/.ssh`` or SSH agent.
The server's host key is not checked (a crawler has no known_hosts to trust).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import asyncssh
from fsspec.asyn import FSTimeoutError, get_loop, sync

from indexer.errors import ForbiddenAddress, NotFound, ReadError
from indexer.models import FileEntry
from indexer.storages.access import (
    AccessOptions,
    Failure,
    RetryPolicy,
    describe_os_error,
    parse_location,
    retry_async,
    retry_sync,
)
from indexer.storages.addresses import AddressPolicy
from indexer.storages.base import AsyncReads, CoroutineReads, Storage
from indexer.storages.crawl import LISTING_CONCURRENCY, Child, Crawl, CrawlLimits, crawl_in_threads
from indexer.storages.sshfs_adapter import RangedSSHFileSystem, logout

log = logging.getLogger(__name__)

T = TypeVar("T")

_FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
"""Preferred to asyncssh's first choice, ChaCha20-Poly1305, which it runs partly in Python: AES-GCM
is one call per packet, in hardware, and halves the client's CPU per read."""

_LOST = (asyncssh.DisconnectError, asyncssh.ConnectionLost, ConnectionError, FSTimeoutError)
"""Failures after which the connection is dropped and the next call logs in again."""

class LoginRefused(Exception):
    """The server refused the user's password or key."""


def classify_sftp(exc: BaseException) -> Failure:
    """Transient: timeouts, lost or refused connections; not: authentication, permissions, SFTP errors."""
    if isinstance(exc, LoginRefused | asyncssh.PermissionDenied):
        return Failure(False, "authentication failed (wrong user name, password or key)")
    if isinstance(exc, PermissionError):
        return Failure(False, f"permission denied{': ' + str(exc) if str(exc) else ''}")
    if isinstance(exc, asyncssh.DisconnectError):
        return Failure(True, f"disconnected: {exc.reason}")
    if isinstance(exc, asyncssh.SFTPError):
        return Failure(False, f"SFTP {exc.reason}")
    if isinstance(exc, asyncssh.ChannelOpenError):
        return Failure(True, f"SSH channel refused: {exc.reason}")
    if isinstance(exc, FSTimeoutError | TimeoutError):
        return Failure(True, "timed out")
    if isinstance(exc, OSError):
        return Failure(True, describe_os_error(exc))
    return Failure(False, str(exc) or type(exc).__name__)


@dataclass(frozen=True, slots=True)
class SFTPServer:
    """Where and how to log in."""

    host: str
    port: int = 22
    username: str = ""
    password: str | None = field(default=None, repr=False)
    key_file: Path | None = None
    addresses: AddressPolicy = field(default_factory=AddressPolicy)


class SFTPStorage(Storage):
    """A livrable on an SSH server, read over SFTP through one logged-in connection."""

    def __init__(self, server: SFTPServer, root: str, url: str, policy: RetryPolicy,
                 limits: CrawlLimits | None = None) -> None:
        """`url` is the form shown (`Location.shown`), without the password."""
        self.server = server
        self.root = root.rstrip("/") or "/"
        self.url = url
        self.policy = policy
        self.limits = limits or CrawlLimits()
        self._fs: RangedSSHFileSystem | None = None
        self._lock = threading.Lock()
        self._attempt = threading.local()
        """The deadline of the current thread's attempt (`_call`)."""

    @classmethod
    def from_url(cls, url: str, options: AccessOptions) -> SFTPStorage:
        """The storage of an ``sftp://[user[:password]@]host[:port]/path`` URL.

        The path is absolute; ``/~/path`` is relative to the user's home folder.
        """
        location = parse_location(url)
        path = unquote(location.path) or "/"
        if path == "/~" or path.startswith("/~/"):
            path = path[3:] or "."
        server = SFTPServer(host=location.host, port=location.port or 22, username=location.username,
                            password=location.password, key_file=options.sftp_key_file, addresses=options.addresses)
        return cls(server, path, location.shown, options.retry, options.crawl)

    def _connection(self) -> RangedSSHFileSystem:
        with self._lock:
            if self._fs is None:
                server = self.server
                address = server.addresses.resolve(server.host, server.port)[0]
                try:
                    self._fs = RangedSSHFileSystem(
                        address, port=server.port, username=server.username or None, password=server.password,
                        client_keys=[str(server.key_file)] if server.key_file else None, agent_path=None,
                        config=[], known_hosts=None, encryption_algs=_encryption_algs(),
                        connect_timeout=self.policy.timeout_s,
                        login_timeout=self.policy.timeout_s, timeout=self.policy.timeout_s, skip_instance_cache=True)
                except PermissionError as exc:
                    raise LoginRefused(str(exc)) from exc
            return self._fs

    def _call(self, what: str, operation: Callable[[RangedSSHFileSystem], T]) -> T:
        """`operation` retried under the policy; each attempt, logging in included, has ``timeout_s`` in all."""
        def attempt() -> T:
            self._attempt.deadline = time.monotonic() + self.policy.timeout_s
            fs = self._connection()
            try:
                return operation(fs)
            except _LOST:
                self._drop(fs)
                raise

        return retry_sync(self.policy, what, attempt, classify_sftp)

    def _drop(self, fs: RangedSSHFileSystem) -> None:
        """Forget a connection that failed; the next call logs in again."""
        with self._lock:
            if self._fs is fs:
                self._fs = None

    def _path(self, relative: str) -> str:
        return f"{self.root.rstrip('/')}/{relative}" if relative else self.root

    def _sync(self, fs: RangedSSHFileSystem, method: Callable[..., Any], *args: Any) -> Any:
        """Run `method` on the connection's loop, within what is left of the attempt's time."""
        deadline = getattr(self._attempt, "deadline", time.monotonic() + self.policy.timeout_s)
        return sync(fs.loop, method, *args, timeout=max(0.001, deadline - time.monotonic()))

    def list_files(self) -> list[FileEntry]:
        """List the folders level by level, a few at once on the one connection."""
        return crawl_in_threads(Crawl(self.url, self.limits), self._list_folder, LISTING_CONCURRENCY)

    def _list_folder(self, folder: str) -> list[Child]:
        """One folder's entries; symbolic links are not followed."""
        path = self._path(folder.rstrip("/"))
        try:
            infos = self._call(folder or "/", lambda fs: self._sync(fs, fs._ls_bounded, path,
                                                                    self.limits.max_listing_entries))
        except FileNotFoundError:
            raise NotFound(where=path) from None  # "not found" says it all
        children = []
        for info in infos:
            if info["type"] not in ("file", "directory"):
                continue
            mtime = info["mtime"].isoformat() if info.get("mtime") else None
            children.append(Child(info["name"].rsplit("/", 1)[-1], info["type"] == "directory",
                                  None if info["type"] == "directory" else info["size"], mtime))
        return children

    def read_start(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        """One SFTP read of the first `length` bytes; the size comes from the listing (else a stat)."""
        full = self._path(entry.path)

        def read(fs: RangedSSHFileSystem) -> tuple[bytes, FileEntry]:
            size = entry.size
            if size is None:
                size = int(self._sync(fs, fs._info, full)["size"])
            data = self._sync(fs, fs._cat_file, full, 0, min(length, size)) if size else b""
            return data, replace(entry, size=size)

        return self._read(entry.path, read)

    def async_reads(self) -> AsyncReads:
        """Header reads as coroutines on the loop of the connection, all in flight on it at once."""
        return CoroutineReads(get_loop(), self._read_start_async)

    async def _read_start_async(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        full = self._path(entry.path)

        async def read(fs: RangedSSHFileSystem) -> tuple[bytes, FileEntry]:
            size = entry.size if entry.size is not None else int((await fs._info(full))["size"])
            data = await fs._cat_file(full, 0, min(length, size)) if size else b""
            return data, replace(entry, size=size)

        return await self._read_async(entry.path, read)

    async def _read_async(self, path: str, operation: Callable[[RangedSSHFileSystem], Awaitable[T]]) -> T:
        """`operation` on the connection's loop, retried under the policy (each attempt, logging in
        included, within ``timeout_s``); failures end as `ReadError`, as `_read` does."""
        async def attempt() -> T:
            fs = self._fs
            if fs is None:  # log in from a thread: the connection is made on this loop, which must not wait
                fs = await asyncio.get_running_loop().run_in_executor(None, self._connection)
            try:
                return await operation(fs)
            except _LOST:
                self._drop(fs)
                raise

        try:
            return await retry_async(self.policy, path, attempt, classify_sftp)
        except FileNotFoundError as exc:
            raise ReadError(path, "not found") from exc
        except ForbiddenAddress as exc:
            raise ReadError(path, str(exc)) from exc

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """An SFTP read at an offset."""
        full = self._path(path)
        return self._read(path, lambda fs: self._sync(fs, fs._cat_file, full, start, end))  # type: ignore[no-any-return]

    def _read(self, path: str, operation: Callable[[RangedSSHFileSystem], T]) -> T:
        try:
            return self._call(path, operation)
        except FileNotFoundError as exc:
            raise ReadError(path, "not found") from exc
        except ForbiddenAddress as exc:
            raise ReadError(path, str(exc)) from exc

    def close(self) -> None:
        """Log out."""
        with self._lock:
            fs, self._fs = self._fs, None
        if fs is not None:
            with suppress(OSError, asyncssh.Error, FSTimeoutError):
                sync(fs.loop, logout, fs, timeout=self.policy.timeout_s)



def _encryption_algs() -> list[str]:
    """asyncssh's ciphers, AES-GCM first (`_FAST_CIPHERS`); the server picks the first it has."""
    defaults = [name.decode() for name in asyncssh.encryption.get_default_encryption_algs()]
    return [*(name for name in _FAST_CIPHERS if name in defaults),
            *(name for name in defaults if name not in _FAST_CIPHERS)]
