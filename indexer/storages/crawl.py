"""The rules every remote listing follows, whatever the transport, and the level-by-level crawl.

Folders are visited breadth first. A folder whose listing repeats one of its ancestors' is a
link looping back up (a symbolic link to ``..``): it is skipped. A listing of bare names (Python's
``http.server`` shows no size nor date) proves nothing by itself, a real folder may hold the
names of its parent (``dalles/dalles/``): such a folder is crawled, and dropped with what was found
below it only when the folder one more turn of the loop down repeats the ancestor again. Going deeper than `max_depth`
folders, past `max_entries` files or past `max_folders` folders (a server making up new folders
without end) ends the listing with `ListingLimitReached` rather than a crawl without end
(`CrawlLimits`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from indexer.errors import ForbiddenAddress, ListingLimitReached, NotFound, ReadError, StorageUnreachable
from indexer.models import FileEntry

log = logging.getLogger(__name__)

LISTING_CONCURRENCY = 4
"""Folders listed at once from one server (HTTP pages, SFTP channels of one connection)."""


@dataclass(frozen=True, slots=True)
class Child:
    """One entry of a folder as a remote listing shows it."""

    name: str
    is_dir: bool
    size: int | None = None
    mtime: str | None = None
    etag: str | None = None
    ref: str | None = None
    """How the transport addresses it when that is not derived from the path (a listing's href)."""


@dataclass(frozen=True, slots=True)
class CrawlLimits:
    """The bounds of one storage's listing, whatever the transport."""

    max_depth: int = 32
    """Folder levels below the root."""
    max_entries: int = 2_000_000
    """Files listed."""
    max_folders: int = 10_000
    """Folders visited, the root included."""

    @property
    def max_listing_entries(self) -> int:
        """The most entries one folder's listing can hold without going past a limit."""
        return self.max_entries + self.max_folders


class Crawl:
    """The files found so far in a crawl below `url`, and its rules (see the module's docstring)."""

    def __init__(self, url: str, limits: CrawlLimits) -> None:
        self.url = url
        self.limits = limits
        self.entries: list[FileEntry] = []
        self.refs: dict[str, str] = {}
        self.folders = 1
        """Folders visited or queued, the root included."""
        self._prints: dict[str, int] = {}
        self._suspects: dict[str, tuple[str, int]] = {}
        """Folder one turn of a possible loop further down -> (the folder repeating bare names, their print)."""
        self._loops: list[str] = []
        """Folders found to be links looping back up: nothing below them is kept."""

    def visit(self, folder: str, children: list[Child]) -> list[tuple[str, Child]]:
        """Record the files of `folder` ('' for the root, else ending in '/'); its sub-folders to visit.

        Returns (path, child) pairs, the path ending in '/'.
        """
        if any(folder.startswith(loop) for loop in self._loops):
            return []
        fingerprint = hash(tuple(sorted((c.name, c.is_dir, c.size, c.mtime) for c in children)))
        suspect = self._suspects.pop(folder, None)
        if suspect is not None and suspect[1] == fingerprint:
            self._drop_loop(suspect[0])
            return []
        ancestor = folder
        while ancestor:
            ancestor = ancestor[: ancestor.rstrip("/").rfind("/") + 1]
            if self._prints.get(ancestor) != fingerprint:
                continue
            if any(c.size is not None or c.mtime is not None for c in children):
                log.warning("folder skipped: it repeats an ancestor (a link looping back up)",
                            extra={"storage": self.url, "folder": folder})
                return []
            self._suspects[folder + folder[len(ancestor):]] = (folder, fingerprint)  # bare names: look one turn on
            break
        self._prints[folder] = fingerprint
        return self._record(folder, children)

    def _drop_loop(self, folder: str) -> None:
        """Forget what was found below a folder seen to loop back up, and go no further in it."""
        log.warning("folder skipped: it repeats an ancestor twice (a link looping back up)",
                    extra={"storage": self.url, "folder": folder})
        self._loops.append(folder)
        self.entries = [e for e in self.entries if not e.path.startswith(folder)]
        self.refs = {path: ref for path, ref in self.refs.items() if not path.startswith(folder)}

    def _record(self, folder: str, children: list[Child]) -> list[tuple[str, Child]]:
        depth = folder.count("/")
        limits = self.limits
        folders = []
        for child in sorted(children, key=lambda c: c.name):
            path = folder + child.name
            if child.is_dir:
                if depth >= limits.max_depth:
                    raise ListingLimitReached(f"cannot list {self.url}: {path}/ is more than {limits.max_depth} "
                                              "folder levels deep (the max_depth setting)")
                self.folders += 1
                if self.folders > limits.max_folders:
                    raise ListingLimitReached(f"cannot list {self.url}: more than {limits.max_folders} folders "
                                              f"(the max_folders setting), {path}/ among them")
                folders.append((path + "/", child))
                continue
            self.entries.append(FileEntry(path, child.size, child.mtime, child.etag))
            if child.ref is not None:
                self.refs[path] = child.ref
            if len(self.entries) > limits.max_entries:
                raise ListingLimitReached(f"cannot list {self.url}: more than {limits.max_entries} files "
                                          "(the max_entries setting)")
        return folders

    def result(self) -> list[FileEntry]:
        """The files found, sorted by path."""
        return sorted(self.entries, key=lambda e: e.path)


def listing_failure(url: str, where: str, exc: BaseException) -> BaseException:
    """The error ending a listing that failed at `where` ('' for the root), one line naming the cause.

    `exc` is a `ReadError`, a `FileNotFoundError` (a `NotFound` says how the server put it) or a
    `ForbiddenAddress`; anything else is returned as is.
    """
    prefix = f"cannot list {url}: {where}: " if where else f"cannot list {url}: "
    if isinstance(exc, ForbiddenAddress):
        return ForbiddenAddress(f"cannot list {url}: {exc}")
    if isinstance(exc, ReadError):
        return StorageUnreachable(prefix + exc.detail, permanent=exc.permanent)
    if isinstance(exc, FileNotFoundError):
        how = exc.how if isinstance(exc, NotFound) else ""
        # A root that does not exist stays so; a folder gone during the listing may be back.
        return StorageUnreachable(prefix + (f"not found ({how})" if how else "not found"), permanent=not where)
    return exc


def crawl_in_threads(crawl: Crawl, list_folder: Callable[[str], list[Child]], workers: int) -> list[FileEntry]:
    """Crawl level by level, listing up to `workers` folders of a level at once with `list_folder`.

    `list_folder` takes a folder ('' for the root, else ending in '/') and raises what
    `listing_failure` describes; the first failure ends the listing.
    """
    level = [""]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="list") as pool:
        while level:
            futures = [pool.submit(list_folder, folder) for folder in level]
            next_level = []
            for folder, future in zip(level, futures, strict=True):
                try:
                    children = future.result()
                except (ReadError, FileNotFoundError, ForbiddenAddress) as exc:
                    for pending in futures:
                        pending.cancel()
                    raise listing_failure(crawl.url, folder, exc) from None
                next_level += [path for path, _ in crawl.visit(folder, children)]
            level = next_level
    return crawl.result()
