"""``pcrs-indexer quality``: the quality checks of a storage's livrable, from the records of its last good scan."""

from __future__ import annotations

import json

import click

from indexer.cli.fleet import open_store
from indexer.cli.options import db_option
from indexer.errors import StorageNotFound
from indexer.quality import Quality, assess
from indexer.store import queries, records

SHOWN = 10
"""Findings of each kind the text report shows; ``--json`` gives them all."""


def _lines(quality: Quality) -> list[str]:
    lines = [quality.verdict()]
    for grid in quality.grids:
        holes = "unknown (grid too large)" if grid.holes is None else str(grid.holes)
        lines.append(f"grid {grid.crs}: {grid.dalles} dalles of {grid.size[0]:g} x {grid.size[1]:g}, origin "
                     f"{grid.origin[0]:g} {grid.origin[1]:g}, {grid.on_grid} on the grid, holes {holes}")
        lines += [f"  hole {' '.join(f'{v:.3f}' for v in b)}" for b in grid.hole_cells[:SHOWN]]
    lines += [f"duplicate {' '.join(d.chemins)} ("
              + ("identical" if d.identical else "differ: " + ", ".join(d.differences)) + ")"
              for d in quality.duplicates[:SHOWN]]
    lines += [f"off-grid {o.chemin} by {o.offset:.3f}" for o in quality.off_grid[:SHOWN]]
    lines += [f"overlap {' '.join(o.chemins)} ({o.area:.3f})" for o in quality.overlaps[:SHOWN]]
    lines += [f"rotated {r.chemin} ({r.angle:.4f}°)" for r in quality.rotated[:SHOWN]]
    lines += [f"outlier {o.chemin}: {o.parameter} {o.value} (majority {o.majority})" for o in quality.outliers[:SHOWN]]
    if quality.convention is not None:
        c = quality.convention
        lines.append(f"names: {c.unit}, {c.corner} corner, {'with' if c.separator else 'without'} separator "
                     f"(e.g. {c.example}); {quality.names_agreeing} agree")
    lines += [f"misnamed {m.chemin}" for m in quality.names_disagreeing[:SHOWN]]
    lines += [f"skipped {reason}: {len(paths)}" for reason, paths in quality.skipped]
    return lines


@click.command()
@click.argument("storage_ref", metavar="STORAGE")
@click.option("--json", "as_json", is_flag=True, help="Print quality.json's document instead of a report.")
@db_option
def quality(storage_ref: str, as_json: bool, db_url: str | None) -> None:
    """Check the livrable of STORAGE (id or URL): grid, holes, duplicates, off-grid, outliers, names.

    From the records of its last successful scan in the store, as ``quality.json`` beside the outputs.
    """
    engine = open_store(db_url)
    storage = queries.resolve_storage(engine, storage_ref)
    if next(r for r in queries.storage_rows(engine) if r.id == storage).last_success_at is None:
        raise StorageNotFound(f"storage {storage} has no successful scan yet: see `pcrs-indexer status {storage}`")
    found = assess(records.load_records(engine, storage))
    if as_json:
        click.echo(json.dumps(found.to_dict(), ensure_ascii=False, allow_nan=False))
        return
    for line in _lines(found):
        click.echo(line)
