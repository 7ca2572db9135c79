"""S3 storages (AWS or S3-compatible: OVH, Scaleway, MinIO…), through s3fs.

``s3://bucket/prefix``, with ``?endpoint_url=…&region=…`` or the ``s3_endpoint_url`` and
``s3_region`` settings for an S3-compatible store. Keys come from the usual AWS environment
variables, shared credentials and config files; without any, requests are anonymous (unsigned),
as public buckets expect. The instance metadata service (169.254.169.254) is never asked: a
crawler must not reach it.

A listing is one paginated ListObjectsV2 over the prefix; a header read is one ranged GetObject,
as a coroutine on s3fs's event loop (`async_reads`): the scan's window of reads is in flight at
once, over as many kept-alive connections (``connections``, the scan's concurrency).
Retries are this module's, s3fs's and botocore's own being turned off so the bound holds: every
call with its retries ends within the retry policy's deadline. Every connection, redirects
included, is checked by the address policy where it is made (the resolver and the socket
factory of its aiohttp connector, as HTTP storages do), so the address checked is the one
connected to. A listing answer is read up to ``max_listing_bytes``; a ranged read takes the bytes
asked for and no more.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import botocore.exceptions
import botocore.session
from fsspec.asyn import FSTimeoutError, get_loop, sync
from s3fs import S3FileSystem

from indexer.errors import ForbiddenAddress, InvalidSource, ListingLimitReached, ReadError, StorageUnreachable
from indexer.models import FileEntry
from indexer.storages import s3fs_adapter
from indexer.storages.access import (
    AccessOptions,
    Failure,
    RetryPolicy,
    keep_secret,
    mask_url,
    parse_location,
    retry_async,
)
from indexer.storages.addresses import AddressPolicy
from indexer.storages.base import AsyncReads, CoroutineReads, Storage
from indexer.storages.crawl import CrawlLimits, listing_failure
from indexer.storages.http import GuardedResolver, guarded_socket_factory

log = logging.getLogger(__name__)

T = TypeVar("T")

_TRANSIENT_ERRNOS = (errno.EBUSY, errno.EAGAIN, getattr(errno, "EREMOTEIO", errno.EIO))
_TRANSIENT_BOTOCORE = (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError,
                       botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError)


def classify_s3(exc: BaseException) -> Failure:
    """Transient: 5xx and throttling replies, timeouts and connection errors; not: access denied."""
    if isinstance(exc, PermissionError):
        return Failure(False, f"access denied ({exc})" if str(exc) else "access denied")
    if isinstance(exc, _TRANSIENT_BOTOCORE):
        return Failure(True, "timed out" if "timeout" in type(exc).__name__.lower() else "cannot connect")
    if isinstance(exc, FSTimeoutError | TimeoutError):
        return Failure(True, "timed out")
    if isinstance(exc, OSError):
        return Failure(exc.errno in _TRANSIENT_ERRNOS, exc.strerror or str(exc))
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return Failure(False, "incomplete AWS credentials")
    return Failure(False, str(exc) or type(exc).__name__)


@dataclass(frozen=True, slots=True)
class Credentials:
    """AWS keys, never shown."""

    key: str = field(repr=False)
    secret: str = field(repr=False)
    token: str | None = field(default=None, repr=False)


def aws_credentials() -> Credentials | None:
    """Keys from the AWS environment variables, shared files or configured profile; None without.

    The instance-metadata provider is removed from botocore's chain, so nothing is asked of
    169.254.169.254.
    """
    session = botocore.session.Session()
    resolver = session.get_component("credential_provider")
    resolver.remove("iam-role")
    found = session.get_credentials()
    if found is None:
        return None
    frozen = found.get_frozen_credentials()
    if not frozen.access_key or not frozen.secret_key:
        return None
    keep_secret(frozen.access_key, frozen.secret_key, frozen.token)
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token)


def aws_region() -> str | None:
    """The region of the AWS environment or config, if any."""
    region = botocore.session.Session().get_config_variable("region")
    return str(region) if region else None


class S3Storage(Storage):
    """A livrable under a prefix of an S3 bucket."""

    def __init__(self, bucket: str, prefix: str, policy: RetryPolicy, endpoint_url: str | None = None,
                 region: str | None = None, addresses: AddressPolicy | None = None,
                 limits: CrawlLimits | None = None, max_listing_bytes: int = 16 * 1024 * 1024,
                 connections: int = 32) -> None:
        """`connections`: HTTP connections kept to the endpoint, as many as reads in flight."""
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.policy = policy
        self.endpoint_url = endpoint_url
        self.region = region
        self.addresses = addresses or AddressPolicy()
        self.limits = limits or CrawlLimits()
        self.max_listing_bytes = max_listing_bytes
        self.connections = connections
        query = f"?{urlencode({'endpoint_url': endpoint_url}, safe=':/')}" if endpoint_url else ""
        self.url = mask_url(f"s3://{bucket}/{self.prefix}{query}")
        self._fs: S3FileSystem | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, options: AccessOptions) -> S3Storage:
        """The storage of ``s3://bucket/prefix[?endpoint_url=…&region=…]``; settings fill what the URL lacks."""
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint_url", "region"}
        if unknown:
            raise InvalidSource(f"{mask_url(url)}: unknown parameter {sorted(unknown)[0]!r} "
                                "(use endpoint_url and region)")
        endpoint_url = query.get("endpoint_url") or options.s3_endpoint_url
        endpoint = parse_location(endpoint_url) if endpoint_url else None
        if endpoint is not None and (endpoint.username or endpoint.password is not None):
            raise InvalidSource(f"{mask_url(url)}: the endpoint URL must not hold credentials "
                                "(give AWS keys the usual way)")
        return cls(parts.netloc, unquote(parts.path), options.retry, endpoint_url,
                   query.get("region") or options.s3_region, options.addresses, options.crawl,
                   options.max_listing_bytes, options.connections)

    def _filesystem(self) -> S3FileSystem:
        with self._lock:
            if self._fs is None:
                if self.endpoint_url:
                    endpoint = urlsplit(self.endpoint_url)
                    if endpoint.scheme not in ("http", "https") or not endpoint.hostname:
                        raise InvalidSource(f"{self.url}: the endpoint URL must be http(s)://host")
                    self.addresses.resolve(endpoint.hostname,
                                           endpoint.port or (443 if endpoint.scheme == "https" else 80))
                credentials = aws_credentials()
                timeout = self.policy.timeout_s
                client_kwargs: dict[str, Any] = {"region_name": self.region or aws_region() or "us-east-1"}
                if self.endpoint_url:
                    client_kwargs["endpoint_url"] = self.endpoint_url
                fs = S3FileSystem(
                    anon=credentials is None,
                    key=credentials.key if credentials else None,
                    secret=credentials.secret if credentials else None,
                    token=credentials.token if credentials else None,
                    client_kwargs=client_kwargs,
                    config_kwargs={"connect_timeout": timeout, "read_timeout": timeout,
                                   "retries": {"max_attempts": 1, "mode": "standard"},
                                   "max_pool_connections": self.connections,
                                   "connector_args": {"resolver": GuardedResolver(self.addresses),
                                                      "socket_factory": guarded_socket_factory(self.addresses)},
                                   "http_session_cls": s3fs_adapter.capped_session(self.max_listing_bytes,
                                                                                   "max_listing_bytes")},
                    skip_instance_cache=True, use_listings_cache=False)
                fs.retries = 1  # one attempt per call: retry_async does the retrying
                self._fs = fs
            return self._fs

    def _call(self, what: str, operation: Callable[[S3FileSystem], Awaitable[T]]) -> T:
        """Run `operation` on the file system's loop, retried within the policy's deadline."""
        fs = self._filesystem()
        return sync(fs.loop, retry_async, self.policy, what, lambda: operation(fs),  # type: ignore[no-any-return]
                    classify_s3, timeout=self.policy.deadline_s + 5)

    def async_reads(self) -> AsyncReads:
        """Ranged GetObjects as coroutines on s3fs's loop, where its HTTP sessions live."""
        return CoroutineReads(get_loop(), self._read_start_async)

    def list_files(self) -> list[FileEntry]:
        """Every object under the prefix, one paginated listing. No object at all is "not found"."""
        try:
            objects = self._call(self.url, self._list)
        except FileNotFoundError:
            raise StorageUnreachable(f"cannot list {self.url}: no such bucket", permanent=True) from None
        except (ReadError, ForbiddenAddress) as exc:
            raise listing_failure(self.url, "", exc) from None
        if not objects:
            raise StorageUnreachable(f"cannot list {self.url}: not found (no object under this prefix)")
        return sorted(objects, key=lambda e: e.path)

    async def _list(self, fs: S3FileSystem) -> list[FileEntry]:
        start = f"{self.prefix}/" if self.prefix else ""
        entries = []
        async for item in s3fs_adapter.iter_objects(fs, self.bucket, start):
            key = item["Key"][len(self.bucket) + 1 + len(start):]
            if item.get("type") != "file" or not key or key.endswith("/"):
                continue
            if key.count("/") > self.limits.max_depth:
                raise ListingLimitReached(f"cannot list {self.url}: {key.rsplit('/', 1)[0]}/ is more than "
                                          f"{self.limits.max_depth} folder levels deep (the max_depth setting)")
            modified = item.get("LastModified")
            etag = str(item.get("ETag") or "").strip('"') or None
            entries.append(FileEntry(key, int(item["size"]), modified.isoformat() if modified else None, etag))
            if len(entries) > self.limits.max_entries:
                raise ListingLimitReached(f"cannot list {self.url}: more than {self.limits.max_entries} files "
                                          "(the max_entries setting)")
        return entries

    def _key(self, path: str) -> str:
        return f"{self.bucket}/{self.prefix}/{path}" if self.prefix else f"{self.bucket}/{path}"

    def read_start(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        """One ranged GetObject; the size comes from the listing, checked against the answer's
        ``Content-Range`` and the bytes received."""
        return self._read(entry.path, self._read_start_op(entry, length))

    def _read_start_op(self, entry: FileEntry, length: int) -> Callable[[S3FileSystem], Awaitable[
            tuple[bytes, FileEntry]]]:
        key = self._key(entry.path)

        async def read(fs: S3FileSystem) -> tuple[bytes, FileEntry]:
            size = entry.size if entry.size is not None else int((await fs._info(key))["size"])
            if not size:
                return b"", replace(entry, size=0)
            data, content_range = await s3fs_adapter.get_range(fs, self.bucket, key[len(self.bucket) + 1:], 0,
                                                              min(length, size))
            _check_sizes(entry.path, size, content_range, len(data), min(length, size))
            return data, replace(entry, size=size)

        return read

    async def _read_start_async(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        """`read_start` on the file system's loop: its failures end as `_read`'s do."""
        try:
            fs = self._fs or await asyncio.get_running_loop().run_in_executor(None, self._filesystem)
            operation = self._read_start_op(entry, length)
            return await retry_async(self.policy, entry.path, lambda: operation(fs), classify_s3)
        except FileNotFoundError as exc:
            raise ReadError(entry.path, "not found") from exc
        except (ForbiddenAddress, InvalidSource) as exc:
            raise ReadError(entry.path, str(exc)) from exc

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """A ranged GetObject, read up to the bytes asked for."""
        key = self._key(path)[len(self.bucket) + 1:]

        async def read(fs: S3FileSystem) -> bytes:
            return (await s3fs_adapter.get_range(fs, self.bucket, key, start, end))[0]

        return self._read(path, read)

    def _read(self, path: str, operation: Callable[[S3FileSystem], Awaitable[T]]) -> T:
        try:
            return self._call(path, operation)
        except FileNotFoundError as exc:
            raise ReadError(path, "not found") from exc
        except (ForbiddenAddress, InvalidSource) as exc:
            raise ReadError(path, str(exc)) from exc

    def close(self) -> None:
        """Close the HTTP sessions of the S3 client."""
        with self._lock:
            fs, self._fs = self._fs, None
        if fs is not None:
            s3fs_adapter.close(fs, self.policy.timeout_s)


def _check_sizes(path: str, size: int, content_range: str | None, received: int, asked: int) -> None:
    """The listing's size, the ``Content-Range`` total and the bytes received must agree (`ReadError`)."""
    total = content_range.rpartition("/")[2] if content_range else ""
    if total.isdigit() and int(total) != size:
        raise ReadError(path, f"sizes disagree: the listing says {size} bytes, the Content-Range header {total}")
    if received != asked:
        raise ReadError(path, f"sizes disagree: received {received} bytes of the first {asked} of a "
                              f"{size}-byte file")
