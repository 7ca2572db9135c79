"""What the S3 storage needs of s3fs and aiobotocore that they keep private: one adapter, pinned, tested.

s3fs has no public way to stream a listing (``find`` and ``ls`` build it whole in memory and
cache it), to read a range without reading the whole answer, nor to close a client that may not
be connected yet; aiobotocore reads a whole response before botocore parses it. All go through
here, written against the s3fs release `TESTED` names (and the aiobotocore it pins);
``tests/unit/test_adapters.py`` fails when they change under them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import botocore.exceptions
from aiobotocore.httpsession import AIOHTTPSession
from fsspec.asyn import sync
from s3fs import S3FileSystem

from indexer.errors import ForbiddenAddress
from indexer.storages.access import ResponseTooLarge

TESTED = "2026.9.0"
"""The s3fs release this adapter was written and tested against; ``pyproject.toml`` allows its year only."""

_CHUNK = 64 * 1024


def iter_objects(fs: S3FileSystem, bucket: str, prefix: str) -> AsyncIterator[dict[str, Any]]:
    """Every object under `prefix`, page by page as ListObjectsV2 returns them, nothing cached."""
    objects: AsyncIterator[dict[str, Any]] = fs._iterdir(bucket, delimiter="", prefix=prefix)
    return objects


async def get_range(fs: S3FileSystem, bucket: str, key: str, start: int, end: int) -> tuple[bytes, str | None]:
    """Bytes [start, end) of an object, and the answer's ``Content-Range`` (None when the server
    ignored the range and sent the whole object, of which only the bytes asked for are read).

    Bound: the bytes asked for, and one more to see the answer's end (its connection is then
    reused)."""
    answer = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")
    body = answer["Body"]
    try:
        content_range = answer.get("ContentRange")
        skip = 0 if content_range else start
        while skip > 0:
            skipped = await body.read(min(skip, _CHUNK))
            if not skipped:
                break
            skip -= len(skipped)
        data = bytearray()
        while len(data) < end - start:
            chunk = await body.read(min(end - start - len(data), _CHUNK))
            if not chunk:
                break
            data += chunk
        if content_range and len(data) == end - start:
            # Reading the end of the answer gives its connection back to the pool, kept alive;
            # closing an answer not read to its end closes the connection too.
            await body.read(1)
        return bytes(data), content_range
    finally:
        body.close()


def capped_session(max_bytes: int, setting: str) -> type[AIOHTTPSession]:
    """aiobotocore's HTTP session reading a whole answer (not streamed, or an error) only up to
    `max_bytes` (`ResponseTooLarge` past it), and letting the address policy's refusal through unwrapped."""

    class CappedSession(AIOHTTPSession):  # type: ignore[misc]
        async def send(self, request: Any) -> Any:
            streamed = request.stream_output
            request.stream_output = True  # the body is read here, bounded, not by aiobotocore
            try:
                response = await super().send(request)
            except botocore.exceptions.HTTPClientError as exc:
                if isinstance(exc.kwargs.get("error"), ForbiddenAddress):
                    raise exc.kwargs["error"] from None
                raise
            finally:
                request.stream_output = streamed
            if not streamed or response.status_code >= 300:  # botocore reads an error's body whole
                response._content = await _read_capped(response.raw, max_bytes, setting)
            return response

    return CappedSession


async def _read_capped(raw: Any, max_bytes: int, setting: str) -> bytes:
    if raw.content_length is not None and raw.content_length > max_bytes:
        raise ResponseTooLarge(max_bytes, setting)
    body = bytearray()
    async for chunk in raw.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise ResponseTooLarge(max_bytes, setting)
    return bytes(body)


def close(fs: S3FileSystem, timeout_s: float) -> None:
    """Close the HTTP sessions of a file system's S3 client, if it ever made one."""
    client = fs._s3
    if client is not None:
        sync(fs.loop, client.close, timeout=timeout_s)
