"""Publish a scan: its emprise and the files of the PCRS data API, one function for every job.

`publish_outputs` is what ``pcrs-indexer index``, the service's finalisation and the benchmark
write for one storage; `OutputSet` places files replaced together (`indexer.export` writes the
whole store's with it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import marshal
import os
import shutil
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from shapely.geometry.base import BaseGeometry

from indexer.emprise import check_footprints, compute_emprise
from indexer.geojson import dalle_features, livrable_feature, write_feature_collection
from indexer.models import Dalle, DalleProblem, ScanResult
from indexer.projet import Livrable, Projet
from indexer.quality import Quality, assess

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Publication:
    """The files written for one storage, and what they hold of its livrable."""

    result: ScanResult
    """The scan as published: its dalles that cannot be placed in WGS84 moved to its problems."""
    paths: dict[str, Path]
    """``dalles``, ``livrables``, ``report`` and ``quality``: where each file is."""
    emprise: BaseGeometry | None
    feature: dict[str, Any]
    """The livrable's feature of `livrables.geojson`."""
    emprise_s: float
    """Seconds computing the emprise."""
    quality: Quality
    """The livrable's quality checks, the content of ``quality.json``."""
    quality_s: float
    """Seconds computing them."""
    others: list[dict[str, Any]] = field(default_factory=list)
    """The features of the other livrables published on the storage, in the order given."""


def report(result: ScanResult, private: bool = False) -> dict[str, Any]:
    """The scan report: counts and every skipped file with its reason. Never a credential.

    ``indexed`` (valid, read by this scan) + ``reused`` (valid, from the previous scan) are the
    features written; ``skipped`` lists every other raster file: ``raster_files`` in all. A
    `private` storage's report names no connection detail: its ``source`` is null and its host
    never appears in a detail.
    """
    host = urlsplit(result.source).hostname if private else None

    def shown(detail: str) -> str:
        return detail.replace(result.source, "***").replace(host, "***") if host else detail

    return {
        "source": None if private else result.source,
        "listed_files": result.listed_files,
        "raster_files": result.raster_files,
        "indexed": result.indexed,
        "reused": result.reused,
        "skipped": [{"path": p.path, "reason": p.reason, "detail": shown(p.detail)}
                    for p in sorted(result.problems, key=lambda p: p.path)],
        "duration_s": round(result.duration_s, 3),
    }


def publish_outputs(out: Path, result: ScanResult, projet: Projet | None, livrable: Livrable | None,
                    today: date, others: Sequence[tuple[Projet | None, Livrable | None]] = ()) -> Publication:
    """Compute a scan's emprise and quality checks and write its four files into `out`, replaced together
    (`OutputSet`).

    A dalle that cannot be placed in WGS84 (a record of an earlier version) is published as the
    `not_georeferenced` problem it is. The files describe `livrable`; the features of `others`,
    livrables sharing the storage, are computed with the same emprise for the store's export.
    """
    checked = check_footprints(result.dalles)
    if any(a is not b for a, b in zip(checked, result.dalles, strict=True)):
        result = replace(result, dalles=[r for r in checked if isinstance(r, Dalle)],
                         problems=[*result.problems, *(r for r in checked if isinstance(r, DalleProblem))])
    dalles = sorted(result.dalles, key=lambda d: d.path)
    started = time.perf_counter()
    emprise = compute_emprise(dalles)
    emprise_s = time.perf_counter() - started
    feature = livrable_feature(dalles, emprise, projet, livrable, today)
    started = time.perf_counter()
    quality = assess([*dalles, *result.problems], placed=True)
    quality_s = time.perf_counter() - started
    digest = _dalles_digest(dalles)
    with OutputSet(out) as files:
        if not files.reuse("dalles.geojson", _key(digest, repr(projet), repr(livrable))):
            with files.open("dalles.geojson") as f:
                write_feature_collection(f, dalle_features(dalles, projet, livrable))
        with files.open("livrables.geojson") as f:
            write_feature_collection(f, [feature])
        with files.open("report.json") as f:
            json.dump(report(result, private=livrable is not None and livrable.stockage_public is False), f,
                      ensure_ascii=False, indent=2, allow_nan=False)
            f.write("\n")
        if not files.reuse("quality.json", _key(digest, *map(repr, result.problems))):
            with files.open("quality.json") as f:
                json.dump(quality.to_dict(), f, ensure_ascii=False, indent=2, allow_nan=False)
                f.write("\n")
    paths = {"dalles": out / "dalles.geojson", "livrables": out / "livrables.geojson",
             "report": out / "report.json", "quality": out / "quality.json"}
    return Publication(result, paths, emprise, feature, emprise_s, quality, quality_s,
                       [livrable_feature(dalles, emprise, p, liv, today) for p, liv in others])


@functools.cache
def _code_digest() -> str:
    """The code writing the files: a file reused from the previous release was written by the same."""
    import pyproj

    from indexer import emprise, geojson, models, quality

    h = hashlib.sha256(f"{pyproj.__version__} {pyproj.proj_version_str}".encode())
    for module in (emprise, geojson, models, quality, sys.modules[__name__]):
        h.update(Path(str(module.__file__)).read_bytes())
    return h.hexdigest()


def _dalles_digest(dalles: Sequence[Dalle]) -> str:
    """Every field of the dalles, in order (each CRS once): what their features and checks are made of."""
    crs: dict[str, int] = {}
    h = hashlib.sha256(_code_digest().encode())
    # marshal's version 0 writes values only (no shared references, no interning): equal fields, equal bytes.
    h.update(marshal.dumps([(d.file.path, d.file.size, d.file.mtime, d.file.etag, d.mime, d.width, d.height,
                             d.bands, d.compression, d.epsg, crs.setdefault(d.crs_wkt, len(crs)), d.corners,
                             d.resolution_cm, d.open) for d in dalles], 0))
    h.update(marshal.dumps(list(crs), 0))
    return h.hexdigest()


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


RELEASES = ".releases"
"""The folder of `out` holding each published set of files, one folder per publication."""
CURRENT = ".current"
"""The link of `out` naming the release being served."""
INPUTS = ".inputs.json"
"""In a release, the key of the inputs each file reused or written was made from (`OutputSet.reuse`)."""


class OutputSet:
    """The files of one publication into `out`, replaced all together, never one without the others.

    The files are written into a new folder ``out/.releases/<id>/`` (created with the process's
    umask, so 0644 by default, and each synced to disk); then the link ``out/.current`` is
    replaced, in one rename, to name that folder, and ``out/<name>`` is a link to
    ``.current/<name>``. A reader opening ``out/dalles.geojson`` and then
    ``out/livrables.geojson`` could straddle two publications; one that resolves ``out/.current``
    once and reads the files from there always gets one set. The previous release is kept for
    readers still on it, older ones are removed. Nothing in `out` changes when writing fails.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.release = out / RELEASES / f"{time.time_ns():020d}-{os.getpid()}"
        self.names: list[str] = []
        self.keys: dict[str, str] = {}

    def reuse(self, name: str, key: str) -> bool:
        """Take the served release's file `name` into this set, unwritten (a hard link), when it was
        made from inputs of the same `key` (`INPUTS`) and has the mode a new file would get; else
        False, and the key goes with the file written instead."""
        self.keys[name] = key
        served = self.out / CURRENT
        try:
            if json.loads((served / INPUTS).read_text(encoding="utf-8")).get(name) != key:
                return False
            if stat.S_IMODE((served / name).stat().st_mode) != stat.S_IMODE(self.release.stat().st_mode) & 0o666:
                return False
            os.link(served / name, self.release / name)
        except (OSError, ValueError, AttributeError):
            return False
        self.names.append(name)
        return True

    def __enter__(self) -> OutputSet:
        """Create the release folder."""
        self.release.mkdir(parents=True)
        return self

    @contextmanager
    def open(self, name: str) -> Iterator[IO[str]]:
        """A file of the set to write, synced to disk when the block ends."""
        fd = os.open(self.release / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        self.names.append(name)

    @contextmanager
    def place(self, name: str) -> Iterator[Path]:
        """Where to write a file of the set with a writer opening it itself; synced to disk when the block ends."""
        path = self.release / name
        yield path
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.names.append(name)

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        """Publish the set (or forget it, when writing failed)."""
        if kind is not None:
            shutil.rmtree(self.release, ignore_errors=True)
            return
        if self.keys:
            with self.open(INPUTS) as f:
                json.dump({k: v for k, v in self.keys.items() if k in self.names}, f, sort_keys=True)
            self.names.remove(INPUTS)
        _fsync_dir(self.release)
        _replace_link(self.out / CURRENT, f"{RELEASES}/{self.release.name}")
        for name in self.names:
            link = self.out / name
            if not (link.is_symlink() and os.readlink(link) == f"{CURRENT}/{name}"):
                _replace_link(link, f"{CURRENT}/{name}")
        _fsync_dir(self.out)
        kept = sorted(p for p in (self.out / RELEASES).iterdir() if p.name < self.release.name)[-1:]
        for old in (self.out / RELEASES).iterdir():
            if old != self.release and old not in kept:
                shutil.rmtree(old, ignore_errors=True)


def _replace_link(path: Path, target: str) -> None:
    """Make `path` a symbolic link to `target` in one rename, whatever it was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
