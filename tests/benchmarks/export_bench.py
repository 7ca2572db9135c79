"""The export benchmark: ``pcrs-indexer export`` of synthetic dalles in each format, then read back.

```sh
python -m tests.benchmarks.export_bench [--count 1000000] [--per-livrable 100000] [--workdir DIR] [--keep]
```

A SQLite store is filled with `count` dalle records (200 m Lambert-93 tiles, livrables of
`per_livrable` dalles, each on its own storage, its emprise computed as a scan does); then each
format is exported by the real command in a process of its own (wall seconds, peak RSS of that
process, file size), and read back: pyogrio (GDAL) counts the features of the GeoJSON and
FlatGeobuf files and reads one dalle; the GeoParquet file (pyogrio's GDAL has no Parquet driver)
is read with pyarrow (count, that dalle) and counted by DuckDB. The dalle read back must equal
what the store gives for it: properties and ring.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import click

from tests.servers.measure import pcrs_indexer, run_measured

FORMATS = ("geojson", "fgb", "parquet")
TILE_M = 200.0
TODAY = date(2026, 1, 15)


def projet_document(index: int) -> dict[str, Any]:
    """The projet of synthetic livrable `index`."""
    return {"_id": f"synthetic-{index:03d}", "nom": f"Synthétique {index}",
            "etapes": [{"statut": "disponible", "date_debut": "2025-09-15"}],
            "acteurs": [{"nom": "Département test", "role": "porteur"}], "subventions": [{"nature": "feder"}],
            "livrables": [{"nom": f"Ortho {index}", "nature": "geotiff", "licence": "ouvert_lo", "focale": 100.0,
                           "stockage": "http", "stockage_params": {"url": f"http://synthetic-{index}.test/"}}]}


def synthetic_dalles(index: int, count: int, wkt: str) -> Iterator[Any]:
    """`count` dalles of livrable `index`: a square grid of 200 m tiles, one folder per grid row."""
    from indexer.models import Dalle, FileEntry

    side = math.ceil(math.sqrt(count))
    x0, y0 = 200_000.0 + (index % 5) * 200_000.0, 6_400_000.0 + (index // 5 % 3) * 250_000.0
    for n in range(count):
        row, col = divmod(n, side)
        x, y = x0 + col * TILE_M, y0 - row * TILE_M
        yield Dalle(file=FileEntry(f"{row:04d}/{col:04d}.tif", 30_000_000 + n, "2026-01-01T00:00:00"),
                    mime="image/tiff", width=4000, height=4000, bands=("Red(Byte)", "Green(Byte)", "Blue(Byte)"),
                    compression="JPEG", epsg=2154, crs_wkt=wkt,
                    corners=((x, y), (x + TILE_M, y), (x + TILE_M, y - TILE_M), (x, y - TILE_M)),
                    resolution_cm=5.0, open=True)


def fill_store(path: Path, count: int, per_livrable: int) -> None:
    """A SQLite store at `path` of `count` dalles, published as livrables of `per_livrable`."""
    from pyproj import CRS
    from sqlalchemy import update

    from indexer.emprise import compute_emprise
    from indexer.geojson import livrable_feature
    from indexer.projet import Projet, published_document
    from indexer.store import catalog, scans
    from indexer.store.engine import create_store
    from indexer.store.schema import livrables

    wkt = CRS.from_epsg(2154).to_wkt()
    engine = create_store(f"sqlite:///{path}")
    try:
        for index in range(math.ceil(count / per_livrable)):
            projet = Projet.from_document(projet_document(index))
            (livrable,) = projet.livrables
            url = f"http://synthetic-{index}.test/"
            storage = catalog.publish_livrable(engine, url, url, None, str(projet.id), livrable.nom,
                                               published_document(projet, livrable))
            dalles = list(synthetic_dalles(index, min(per_livrable, count - index * per_livrable), wkt))
            scan = scans.start_scan(engine, storage)
            assert scan is not None
            scans.finish_scan(engine, storage, scan, dalles, [], {"listed": len(dalles), "read": len(dalles)})
            feature = livrable_feature(sorted(dalles, key=lambda d: d.path), compute_emprise(dalles), projet,
                                       livrable, TODAY)
            with engine.begin() as conn:
                conn.execute(update(livrables).where(livrables.c.storage_id == storage).values(feature=feature))
    finally:
        engine.dispose()


def sample(count: int, per_livrable: int) -> dict[str, Any]:
    """The GeoJSON feature of the last dalle of the store `fill_store` makes, as the export must give it."""
    from pyproj import CRS

    from indexer import geojson
    from indexer.projet import Projet

    index = math.ceil(count / per_livrable) - 1
    projet = Projet.from_document(projet_document(index))
    dalles = sorted(synthetic_dalles(index, count - index * per_livrable, CRS.from_epsg(2154).to_wkt()),
                    key=lambda d: d.path)
    (feature,) = geojson.dalle_features(dalles[-1:], projet, projet.livrables[0])
    return feature


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def read_back(path: Path, fmt: str, feature: dict[str, Any]) -> dict[str, Any]:
    """The features a file holds, and the file's feature of `feature`'s dalle: (properties, ring)."""
    properties = feature["properties"]
    if fmt == "parquet":
        import duckdb
        import pyarrow.parquet as pq

        table = pq.read_table(path, filters=[("idPCRS", "==", properties["idPCRS"]),
                                             ("chemin", "==", properties["chemin"])])
        (row,) = table.to_pylist()
        ring = [[v["x"], v["y"]] for v in row.pop("geometry")[0]]
        row.pop("bbox")
        ((counted,),) = duckdb.connect().execute("SELECT count(*) FROM read_parquet(?)", [str(path)]).fetchall()
        return {"features": pq.read_metadata(path).num_rows, "duckdb_features": counted,
                "properties": row, "ring": ring}
    import pyogrio
    import shapely

    where = f"idPCRS = '{properties['idPCRS']}' AND chemin = '{properties['chemin']}'"
    meta, _, geometry, fields = pyogrio.raw.read(path, where=where)
    assert len(geometry) == 1, f"{len(geometry)} features match {where}"
    found = {name: _plain(values[0]) for name, values in zip(meta["fields"], fields, strict=True)}
    ring = shapely.get_coordinates(shapely.from_wkb(geometry[0])).tolist()
    return {"features": pyogrio.read_info(path, force_feature_count=True)["features"], "properties": found,
            "ring": ring}


@dataclass(frozen=True, slots=True)
class ExportRow:
    """One format's export: what it cost and what reading it back found."""

    fmt: str
    dalles: int
    wall_s: float
    export_s: float
    """The export itself, as the command reports it (start-up and imports left out)."""
    cpu_s: float
    """CPU seconds of the whole process (start-up included)."""
    peak_rss_mb: float
    size_bytes: int
    read_back: dict[str, Any]
    equal: bool
    """The file holds every dalle, and the sample dalle's properties and ring are the store's."""


CHILD = """
import json, sys
from pathlib import Path
from indexer.export import export_all
from indexer.store.engine import create_store
print(json.dumps(export_all(create_store(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], page=int(sys.argv[4]))))
"""
"""`export_all` with pages of a given size, alone in a process (the command has no page option)."""


def measure(store: Path, out: Path, fmt: str, count: int, feature: dict[str, Any], page: int | None = None
            ) -> ExportRow:
    """Run ``pcrs-indexer export --format fmt`` on `store` in a process of its own (with `page`: `export_all`
    with pages of that size), then read it back."""
    db = f"sqlite:///{store}"
    args = (pcrs_indexer("export", "--db", db, "--out", str(out), "--format", fmt) if page is None
            else [sys.executable, "-c", CHILD, db, str(out), fmt, str(page)])
    run = run_measured(args, env={**os.environ, "PCRS_INDEXER_DATA_DIR": str(out.parent)}, cwd=out.parent,
                       kill_after_s=3600, kill_above_mb=4096)
    if run.code != 0:
        raise RuntimeError(f"export --format {fmt} failed ({run.killed or run.code}): {run.stderr.strip()}")
    path = out / f"dalles.{fmt}"
    found = read_back(path, fmt, feature)
    ring = feature["geometry"]["coordinates"][0]
    equal = (found["features"] == count and found.get("duckdb_features", count) == count
             and found["properties"] == feature["properties"] and found["ring"] == ring)
    export_s = float(json.loads(run.stdout)["duration_s"])
    return ExportRow(fmt, count, run.wall_s, export_s, run.cpu_s, run.peak_rss_mb, path.resolve().stat().st_size,
                     found, equal)


def run_export_bench(count: int, per_livrable: int, workdir: Path, formats: tuple[str, ...] = FORMATS,
                     progress: Any = None, page: int | None = None) -> list[ExportRow]:
    """Fill a store of `count` dalles in `workdir`, export it in each format (`measure`) and read each back."""
    say = progress or (lambda _message: None)
    store = workdir / f"export-{count}.sqlite"
    if not store.exists():
        say(f"export: filling a store of {count:,} dalles")
        fill_store(store, count, per_livrable)
    feature = sample(count, per_livrable)
    rows = []
    for fmt in formats:
        say(f"export: {count:,} dalles as {fmt}")
        rows.append(measure(store, workdir / f"export-{count}-{fmt}", fmt, count, feature, page))
    return rows


def table(rows: list[ExportRow]) -> str:
    """The rows as one plain-text table."""
    lines = ["| export | dalles | wall s | export s | dalles/s | CPU s | CPU µs/dalle | peak RSS MB | file MB "
             "| read back |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        rate = r.dalles / r.export_s if r.export_s else 0.0
        lines.append(f"| {r.fmt} | {r.dalles:,} | {r.wall_s:.2f} | {r.export_s:.2f} | {rate:,.0f} | {r.cpu_s:.2f} "
                     f"| {r.cpu_s / r.dalles * 1e6:.1f} | {r.peak_rss_mb:.0f} | {r.size_bytes / 2**20:.1f} "
                     f"| {'equal' if r.equal else 'DIFFERENT'} |")
    lines.append("wall s, CPU s and peak RSS: the whole `pcrs-indexer export` process (start-up included); export s "
                 "and dalles/s: the export itself, both files; read back: feature count and one dalle's properties "
                 "and ring (pyogrio; GeoParquet: pyarrow and DuckDB).")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--count", default=1_000_000, show_default=True, type=click.IntRange(1), help="Dalles in the store.")
@click.option("--per-livrable", default=100_000, show_default=True, type=click.IntRange(1),
              help="Dalles per livrable (each on its own storage).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the store and the exports (a store already there is reused). Default: a temporary one.")
@click.option("--keep", is_flag=True, help="Keep the temporary folder.")
def main(count: int, per_livrable: int, workdir: Path | None, keep: bool) -> None:
    """Export synthetic dalles in each format, measured, and read each file back."""
    folder = workdir or Path(tempfile.mkdtemp(prefix="pcrs-export-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        rows = run_export_bench(count, per_livrable, folder, progress=lambda m: click.echo(m, err=True))
    finally:
        if workdir is None and not keep:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
    click.echo(table(rows))
    if not all(r.equal for r in rows):
        click.echo(json.dumps([r.read_back for r in rows if not r.equal], default=str), err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
