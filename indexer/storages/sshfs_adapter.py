"""What the SFTP storage needs of sshfs that sshfs keeps private: one adapter, pinned, tested.

sshfs reads a whole file where a crawler wants its first bytes, lists a whole folder however
large, and closes its SFTP channels and SSH connection only when the file system is
garbage-collected. `RangedSSHFileSystem` reads a byte range on one of sshfs's pooled channels,
keeping no more than the bytes asked for, and lists a folder up to a number of entries;
`logout` closes them now. Both are written against
the sshfs release `TESTED` names; ``tests/unit/test_adapters.py`` fails when sshfs changes under
them.
"""

from __future__ import annotations

import posixpath
from typing import Any

from sshfs import SSHFileSystem
from sshfs.utils import wrap_exceptions

from indexer.storages.access import ResponseTooLarge

TESTED = "2026.8.0"
"""The sshfs release this adapter was written and tested against; ``pyproject.toml`` allows its year only."""


class RangedSSHFileSystem(SSHFileSystem):  # type: ignore[misc]
    """sshfs whose ``_cat_file`` reads bytes [start, end) only, and whose ``_ls_bounded`` stops."""

    @wrap_exceptions  # type: ignore[untyped-decorator]
    async def _cat_file(self, path: str, start: int, end: int, **kwargs: Any) -> bytes:
        """Bytes [start, end) of a file. Bound: ``end - start`` bytes kept, whatever the server sends."""
        wanted = max(0, end - start)
        async with self._pool.get() as channel, channel.open(path, "rb") as f:
            if start:
                await f.seek(start)
            data: bytes = await f.read(wanted)
            return data[:wanted]

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


async def logout(fs: SSHFileSystem) -> None:
    """Close a file system's SFTP channels, then its SSH connection."""
    await fs._pool.close()
    await fs._stack.aclose()
