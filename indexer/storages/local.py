"""A livrable in a folder of a local or mounted file system.

Nothing outside the folder is read: a symbolic link leading outside it is skipped (and said so),
one leading to a file inside it is read as that file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

from indexer.errors import InvalidSource, ReadError, StorageUnreachable
from indexer.models import FileEntry
from indexer.storages.access import AccessOptions
from indexer.storages.base import Storage

log = logging.getLogger(__name__)

SHOWN_LINKS = 5
"""Links skipped that the warning names; it counts them all."""


@dataclass
class LocalStorage(Storage):
    """A folder on a local or mounted file system."""

    root: Path

    def __post_init__(self) -> None:
        self.url = self.root.as_uri()

    @classmethod
    def from_url(cls, url: str, options: AccessOptions) -> LocalStorage:
        """The storage of a ``file://`` URL (not checked: listing it says if it is no folder)."""
        return cls(Path(unquote(urlsplit(url).path)))

    @classmethod
    def from_path(cls, source: str) -> LocalStorage:
        """The storage of a folder given as a path; raises `InvalidSource` when it is none."""
        path = Path(source).expanduser()
        if not path.exists():
            raise InvalidSource(f"{source}: no such folder")
        if not path.is_dir():
            raise InvalidSource(f"{source}: not a folder")
        return cls(path.resolve())

    def list_files(self) -> list[FileEntry]:
        """Walk the folder; symbolic links to folders are not followed (no loops), links to files
        outside the folder are skipped with a warning."""
        if not self.root.is_dir():
            raise StorageUnreachable(f"{self.root}: not a folder")
        entries = []
        outside: list[str] = []
        for folder, dirs, files in os.walk(self.root, onerror=_raise_unreachable):
            dirs.sort()
            for name in sorted(files):
                full = Path(folder, name)
                if full.is_symlink() and self._outside(full):
                    outside.append(full.relative_to(self.root).as_posix())
                    continue
                try:
                    st = full.stat()
                except OSError:
                    continue
                mtime = datetime.fromtimestamp(st.st_mtime, tz=UTC).isoformat()
                entries.append(FileEntry(full.relative_to(self.root).as_posix(), st.st_size, mtime))
        if outside:
            shown = ", ".join(outside[:SHOWN_LINKS]) + (", …" if len(outside) > SHOWN_LINKS else "")
            log.warning("symbolic links leading outside the livrable's folder skipped",
                        extra={"storage": self.url, "skipped": len(outside), "links": shown})
        return entries

    def _outside(self, path: Path) -> bool:
        """Whether `path`, links resolved, lies outside the root."""
        root = Path(os.path.realpath(self.root))
        real = Path(os.path.realpath(path))
        return real != root and root not in real.parents

    def _path(self, path: str) -> Path:
        """The file at `path` below the root; `ReadError` when a link leads it outside."""
        full = self.root / path
        if self._outside(full):
            raise ReadError(path, "a symbolic link leading outside the livrable's folder: not read")
        return full

    def read_start(self, entry: FileEntry, length: int) -> tuple[bytes, FileEntry]:
        """Read the start of the file from disk; the size is the file's own."""
        try:
            with open(self._path(entry.path), "rb") as f:
                data = f.read(length)
                size = os.fstat(f.fileno()).st_size
        except OSError as exc:
            raise ReadError(entry.path, str(exc.strerror or exc)) from exc
        return data, replace(entry, size=size)

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """Read bytes from disk."""
        try:
            with open(self._path(path), "rb") as f:
                f.seek(start)
                return f.read(end - start)
        except OSError as exc:
            raise ReadError(path, str(exc.strerror or exc)) from exc


def _raise_unreachable(exc: OSError) -> None:
    raise StorageUnreachable(f"{exc.filename}: {exc.strerror}")
