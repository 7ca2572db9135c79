"""Storages: where a livrable's files are, and how to list and read them.

`open_storage(source, options)` turns a SOURCE into a `Storage` by its URL scheme, through a
registry of transports imported only when used (as fsspec's ``registry`` does): a local folder or
``file://`` URL, an ``http(s)://`` directory listing, ``ftp://`` or ``ftps://`` (explicit TLS),
``sftp://`` or ``s3://bucket/prefix``. Nothing is contacted until the storage is listed or read.
"""

from __future__ import annotations

import importlib
from typing import Protocol, cast

from indexer.errors import InvalidSource
from indexer.storages.access import AccessOptions, mask_url, parse_location
from indexer.storages.base import AsyncReads, Storage
from indexer.storages.local import LocalStorage

__all__ = ["REGISTRY", "AccessOptions", "AsyncReads", "Storage", "open_storage"]

REGISTRY: dict[str, str] = {
    "file": "indexer.storages.local.LocalStorage",
    "http": "indexer.storages.http.HTTPListingStorage",
    "https": "indexer.storages.http.HTTPListingStorage",
    "ftp": "indexer.storages.ftp.FTPStorage",
    "ftps": "indexer.storages.ftp.FTPStorage",
    "sftp": "indexer.storages.sftp.SFTPStorage",
    "s3": "indexer.storages.s3.S3Storage",
}
"""URL scheme -> the ``module.Class`` of its transport."""

_REMOTE = frozenset(REGISTRY) - {"file"}


class _FromURL(Protocol):
    def from_url(self, url: str, options: AccessOptions) -> Storage: ...


def storage_class(scheme: str) -> _FromURL:
    """The transport registered for a URL scheme, imported now."""
    module, _, name = REGISTRY[scheme].rpartition(".")
    return cast(_FromURL, getattr(importlib.import_module(module), name))


def open_storage(source: str, options: AccessOptions | None = None) -> Storage:
    """The storage a SOURCE names; nothing is contacted until it is listed or read.

    SOURCE is a folder, a ``file://`` URL, an ``http(s)://`` listing, ``ftp://[user[:password]@]host[:port]/path``,
    ``ftps://…`` (explicit TLS), ``sftp://[user[:password]@]host[:port]/path`` or ``s3://bucket/prefix``
    (``?endpoint_url=…&region=…`` for an S3-compatible store).
    """
    options = options or AccessOptions()
    if "://" not in source:
        return LocalStorage.from_path(source)
    location = parse_location(source)  # checked, its credentials kept secret, before anything else
    if location.scheme in _REMOTE and not location.host:
        raise InvalidSource(f"{mask_url(source)}: no {'bucket' if location.scheme == 's3' else 'host'} in the URL")
    if location.scheme in REGISTRY:
        # Credentials written unencoded ("Pa/ss#word") reach the transport percent-encoded.
        return storage_class(location.scheme).from_url(location.url if location.password else source, options)
    raise InvalidSource(f"{mask_url(source)}: unsupported scheme {location.scheme!r} "
                        "(use a folder, file://, http(s)://, ftp(s)://, sftp:// or s3://)")
