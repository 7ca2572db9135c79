"""What the SFTP storage needs of sshfs that sshfs keeps private: one adapter, pinned, tested.

sshfs reads a whole file where a crawler wants its first bytes, and closes its SFTP channels and
SSH connection only when the file system is garbage-collected. `RangedSSHFileSystem` reads a
byte range on one of sshfs's pooled channels; `logout` closes them now. Both are written against
the sshfs release `TESTED` names; ``tests/unit/test_adapters.py`` fails when sshfs changes under
them.
"""

from __future__ import annotations

from typing import Any

from sshfs import SSHFileSystem
from sshfs.utils import wrap_exceptions

TESTED = "2026.8.0"
"""The sshfs release this adapter was written and tested against; ``pyproject.toml`` allows its year only."""


class RangedSSHFileSystem(SSHFileSystem):  # type: ignore[misc]
    """sshfs whose ``_cat_file`` honours `start` and `end` (sshfs reads the whole file)."""

    @wrap_exceptions  # type: ignore[untyped-decorator]
    async def _cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        async with self._pool.get() as channel, channel.open(path, "rb") as f:
            if start:
                await f.seek(start)
            data: bytes = await f.read(-1 if end is None else max(0, end - (start or 0)))
            return data


async def logout(fs: SSHFileSystem) -> None:
    """Close a file system's SFTP channels, then its SSH connection."""
    await fs._pool.close()
    await fs._stack.aclose()
