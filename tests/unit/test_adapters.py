"""The adapters reaching into s3fs and sshfs: they fail here first when those libraries change."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import s3fs
import sshfs

from indexer.storages import s3fs_adapter, sshfs_adapter


def test_s3fs_is_the_release_the_adapter_was_tested_with() -> None:
    assert version("s3fs") == s3fs_adapter.TESTED


def test_s3fs_streams_listings_and_creates_its_client_lazily() -> None:
    iterdir = s3fs.S3FileSystem._iterdir
    assert inspect.isasyncgenfunction(iterdir)
    assert list(inspect.signature(iterdir).parameters) == ["self", "bucket", "max_items", "delimiter", "prefix",
                                                           "versions"]
    fs = s3fs.S3FileSystem(anon=True, skip_instance_cache=True)
    assert fs._s3 is None  # nothing to close before the first request
    s3fs_adapter.close(fs, 1.0)


def test_sshfs_is_the_release_the_adapter_was_tested_with() -> None:
    assert version("sshfs") == sshfs_adapter.TESTED


def test_sshfs_keeps_its_channel_pool_and_exit_stack() -> None:
    source = inspect.getsource(sshfs.SSHFileSystem.__init__)
    assert "self._stack = AsyncExitStack()" in source
    assert "self._client, self._pool = self.connect(" in source
    assert inspect.iscoroutinefunction(sshfs.SSHFileSystem._cat_file)
    assert issubclass(sshfs_adapter.RangedSSHFileSystem, sshfs.SSHFileSystem)
    pool_get = inspect.getsource(sshfs.SSHFileSystem._cat_file)
    assert "async with self._pool.get() as channel:" in pool_get


def test_aiobotocore_reads_only_unstreamed_answers_and_caches_their_content() -> None:
    from aiobotocore.awsrequest import AioAWSResponse
    from aiobotocore.httpsession import AIOHTTPSession

    send = inspect.getsource(AIOHTTPSession.send)
    assert "if not request.stream_output:" in send and "await http_response.content" in send
    assert "if self._content is None:" in inspect.getsource(AioAWSResponse._content_prop)
    assert issubclass(s3fs_adapter.capped_session(1024, "max_listing_bytes"), AIOHTTPSession)
    assert inspect.iscoroutinefunction(s3fs.S3FileSystem._call_s3)
