"""Publish a scan: its emprise and the files of the PCRS data API, one function for every job.

`publish_outputs` is what ``pcrs-indexer index``, the service's finalisation and the benchmark
write for one storage; `export_all` writes every published livrable of the store at once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shapely.geometry.base import BaseGeometry
from sqlalchemy import Engine

from indexer.emprise import check_footprints, compute_emprise
from indexer.geojson import atomic_writer, dalle_features, livrable_feature, write_feature_collection
from indexer.models import Dalle, DalleProblem, ScanResult
from indexer.projet import Livrable, Projet
from indexer.store import queries, records

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Publication:
    """The files written for one storage, and what they hold of its livrable."""

    result: ScanResult
    """The scan as published: its dalles that cannot be placed in WGS84 moved to its problems."""
    paths: dict[str, Path]
    """``dalles``, ``livrables`` and ``report``: where each file is."""
    emprise: BaseGeometry | None
    feature: dict[str, Any]
    """The livrable's feature of `livrables.geojson`."""
    emprise_s: float
    """Seconds computing the emprise."""
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
    """Compute a scan's emprise and write its three files into `out`, each atomically.

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
    paths = {"dalles": out / "dalles.geojson", "livrables": out / "livrables.geojson",
             "report": out / "report.json"}
    with atomic_writer(paths["dalles"]) as f:
        write_feature_collection(f, dalle_features(dalles, projet, livrable))
    with atomic_writer(paths["livrables"]) as f:
        write_feature_collection(f, [feature])
    with atomic_writer(paths["report"]) as f:
        json.dump(report(result, private=livrable is not None and livrable.stockage_public is False), f,
                  ensure_ascii=False, indent=2, allow_nan=False)
        f.write("\n")
    return Publication(result, paths, emprise, feature, emprise_s,
                       [livrable_feature(dalles, emprise, p, liv, today) for p, liv in others])


def _valid_dalles(engine: Engine, storage: int) -> Iterator[Dalle]:
    for record in records.load_records(engine, storage):
        if isinstance(record, Dalle):
            yield record


def export_all(engine: Engine, out: Path) -> dict[str, Any]:
    """Write ``dalles.geojson`` and ``livrables.geojson`` of every published livrable into `out`.

    Livrables are taken by storage id, dalles by path within each: the two files hold what each
    storage's own published files hold, in one FeatureCollection each. Streamed: only one row is
    held at a time, whatever the number of dalles.
    """
    published = queries.published(engine)

    def features() -> Iterator[dict[str, Any]]:
        for storage, document, nom, _feature in published:
            projet = Projet.model_validate(document)
            livrable: Livrable | None = next((liv for liv in projet.livrables if liv.nom == nom), None)
            yield from dalle_features(_valid_dalles(engine, storage), projet, livrable)

    paths = {"dalles": out / "dalles.geojson", "livrables": out / "livrables.geojson"}
    with atomic_writer(paths["dalles"]) as f:
        dalles = write_feature_collection(f, features())
    with atomic_writer(paths["livrables"]) as f:
        livrables = write_feature_collection(f, (feature for *_, feature in published))
    log.info("exported", extra={"livrables": livrables, "dalles": dalles})
    return {"livrables": livrables, "dalles": dalles, "outputs": {k: str(v) for k, v in paths.items()}}
