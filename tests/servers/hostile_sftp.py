"""An SFTP server that misbehaves on purpose, run as a child process by `tests.servers.servers.HostileSFTP`.

    python tests/servers/hostile_sftp.py PORT --log FILE --mode MODE

An asyncssh server accepting any user and password, whose SFTP subsystem makes everything up:

- ``endless-folder``: every folder lists files (``f000000000001.tif``…, 1,000 bytes each) without end;
- ``big-read``: every folder holds one ``a.tif`` of 1,000 bytes, and each read of it answers 1 MiB
  of zeros, whatever size was asked;
- ``files``: a well-behaved server whose every folder holds `FILES` files ``d000.tif``… of 1,000
  zero bytes each, for counting requests.

Every SFTP request it serves is logged to FILE as ``time|REQUEST|path`` (a read as
``READ|path@offset+size``), and every login as ``LOGIN|user``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh

FILE_ATTRS = asyncssh.SFTPAttrs(type=asyncssh.FILEXFER_TYPE_REGULAR, size=1000, permissions=stat.S_IFREG | 0o644,
                                mtime=1_700_000_000)
FILES = 40
DIR_ATTRS = asyncssh.SFTPAttrs(type=asyncssh.FILEXFER_TYPE_DIRECTORY, permissions=stat.S_IFDIR | 0o755,
                               mtime=1_700_000_000)


def log(request: str, path: bytes) -> None:
    """One line of the request log."""
    with open(MadeUp.log_path, "a") as out:
        out.write(f"{time.time()}|{request}|{path.decode(errors='replace')}\n")


class AnyLogin(asyncssh.SSHServer):
    """Every user, every password."""

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        log("LOGIN", username.encode())
        return True


class MadeUp(asyncssh.SFTPServer):
    """Folders and files as the mode says (see the module's docstring)."""

    mode = ""
    log_path: Path

    def stat(self, path: bytes) -> asyncssh.SFTPAttrs:
        return FILE_ATTRS if path.endswith(b".tif") else DIR_ATTRS

    lstat = stat

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        log("READDIR", path)
        if self.mode == "endless-folder":
            for n in itertools.count(1):
                yield asyncssh.SFTPName(f"f{n:012d}.tif".encode(), attrs=FILE_ATTRS)
        elif self.mode == "files":
            for n in range(FILES):
                yield asyncssh.SFTPName(f"d{n:03d}.tif".encode(), attrs=FILE_ATTRS)
        else:
            yield asyncssh.SFTPName(b"a.tif", attrs=FILE_ATTRS)

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        log("OPEN", path)
        return path

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        assert isinstance(file_obj, bytes)
        log("READ", file_obj + f"@{offset}+{size}".encode())
        if self.mode == "files":
            return b"\0" * max(0, min(size, 1000 - offset))
        return b"\0" * (1024 * 1024) if offset < 1000 else b""

    def close(self, file_obj: object) -> None:
        assert isinstance(file_obj, bytes)
        log("CLOSE", file_obj)


async def serve(port: int) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    await asyncssh.listen("127.0.0.1", port, server_host_keys=[key], server_factory=AnyLogin,
                          sftp_factory=MadeUp, allow_scp=False)
    await asyncio.Event().wait()


def main() -> None:
    """Parse the command line and serve until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--mode", required=True, choices=["endless-folder", "big-read", "files"])
    args = parser.parse_args()
    args.log.touch()
    MadeUp.mode = args.mode
    MadeUp.log_path = args.log
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
