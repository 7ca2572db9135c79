"""What the SFTP storage needs of sshfs that sshfs keeps private: one adapter, pinned, tested.

sshfs reads a whole file where a crawler wants its first bytes, waits for each file's close
before returning its bytes, lists a whole folder however large, and closes its SFTP channels and
SSH connection only when the file system is garbage-collected. `RangedSSHFileSystem` reads a byte
range on one of sshfs's pooled channels in two round trips (open, read; the close is sent then
and its answer not waited for), keeping no more than the bytes asked for, and lists a folder up
to a number of entries; `logout` waits for the closes still unanswered, then closes the channels
and the connection. Both are written against
the sshfs release `TESTED` names; ``tests/unit/test_adapters.py`` fails when sshfs changes under
them.
"""

from __future__ import annotations

import asyncio
import posixpath
from contextlib import suppress
from typing import Any

import asyncssh
from sshfs import SSHFileSystem
from sshfs.utils import wrap_exceptions

from indexer.storages.access import ResponseTooLarge

TESTED = "2026.8.0"
"""The sshfs release this adapter was written and tested against; ``pyproject.toml`` allows its year only."""

MAX_UNANSWERED_CLOSES = 256
"""Closes sent and not yet answered at most; past it a read waits for its own close."""


class RangedSSHFileSystem(SSHFileSystem):  # type: ignore[misc]
    """sshfs whose ``_cat_file`` reads bytes [start, end) only, and whose ``_ls_bounded`` stops."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._closing: set[asyncio.Task[None]] = set()
        super().__init__(*args, **kwargs)

    @wrap_exceptions  # type: ignore[untyped-decorator]
    async def _cat_file(self, path: str, start: int, end: int, **kwargs: Any) -> bytes:
        """Bytes [start, end) of a file: OPEN, then READ at `start`; CLOSE is sent without waiting
        for its answer (unless `MAX_UNANSWERED_CLOSES` are pending). Many such reads share one
        channel at once, their requests in flight together.

        Bound: ``end - start`` bytes kept, whatever the server sends.
        """
        wanted = max(0, end - start)
        async with self._pool.get() as channel:
            f = await channel.open(path, "rb")
            try:
                data: bytes = await f.read(wanted, start)
            except BaseException:
                self._close_later(f)  # never waited for: the read may be cancelled at its deadline
                raise
            if len(self._closing) >= MAX_UNANSWERED_CLOSES:
                await _close_quietly(f)
            else:
                self._close_later(f)
            return data[:wanted]

    def _close_later(self, f: asyncssh.SFTPClientFile) -> None:
        """Send CLOSE now and collect its answer in the background; past `MAX_UNANSWERED_CLOSES`
        the handle is left to end with its channel."""
        if len(self._closing) < MAX_UNANSWERED_CLOSES:
            task = asyncio.ensure_future(_close_quietly(f))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _closes_answered(self) -> None:
        """Wait until every close sent is answered."""
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    @wrap_exceptions  # type: ignore[untyped-decorator]
    async def _ls_bounded(self, path: str, max_entries: int) -> list[dict[str, Any]]:
        """sshfs's detailed ``_ls``, read a batch at a time. Bound: past `max_entries` entries,
        `ResponseTooLarge` (the crawl's limits would be passed anyway)."""
        infos: list[dict[str, Any]] = []
        async with self._pool.get() as channel:
            async for file_attr in channel.scandir(path):
                if file_attr.filename in ("", ".", ".."):
                    continue
                if len(infos) >= max_entries:
                    raise ResponseTooLarge(max_entries, "max_entries and max_folders", "entries")
                info: dict[str, Any] = self._decode_attributes(file_attr.attrs)
                info["name"] = posixpath.join(path, file_attr.filename)
                infos.append(info)
        return infos


async def _close_quietly(f: asyncssh.SFTPClientFile) -> None:
    """Close a remote file; a failure leaves nothing to do (the handle ends with its channel)."""
    with suppress(asyncssh.Error, OSError):
        await f.close()


async def logout(fs: SSHFileSystem) -> None:
    """Wait for the closes still unanswered, then close the SFTP channels and the SSH connection."""
    if isinstance(fs, RangedSSHFileSystem):
        await fs._closes_answered()
    await fs._pool.close()
    await fs._stack.aclose()
