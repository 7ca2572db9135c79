"""What the S3 storage needs of s3fs that s3fs keeps private: one adapter, pinned, tested.

s3fs has no public way to stream a listing (``find`` and ``ls`` build it whole in memory and
cache it) nor to close a client that may not be connected yet. Both go through here, written
against the s3fs release `TESTED` names; ``tests/unit/test_adapters.py`` fails when s3fs changes
under them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fsspec.asyn import sync
from s3fs import S3FileSystem

TESTED = "2026.9.0"
"""The s3fs release this adapter was written and tested against; ``pyproject.toml`` allows its year only."""


def iter_objects(fs: S3FileSystem, bucket: str, prefix: str) -> AsyncIterator[dict[str, Any]]:
    """Every object under `prefix`, page by page as ListObjectsV2 returns them, nothing cached."""
    objects: AsyncIterator[dict[str, Any]] = fs._iterdir(bucket, delimiter="", prefix=prefix)
    return objects


def close(fs: S3FileSystem, timeout_s: float) -> None:
    """Close the HTTP sessions of a file system's S3 client, if it ever made one."""
    client = fs._s3
    if client is not None:
        sync(fs.loop, client.close, timeout=timeout_s)
