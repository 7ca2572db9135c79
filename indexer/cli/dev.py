"""``pcrs-indexer sample``: the sample livrable the demo and the tests index."""

from __future__ import annotations

from pathlib import Path

import click

from indexer.sample import SampleSpec, make_sample_livrable


@click.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--cols", default=7, show_default=True, help="Dalles per row of the grid.")
@click.option("--rows", default=7, show_default=True, help="Rows of the grid.")
def sample(folder: Path, cols: int, rows: int) -> None:
    """Write a sample livrable into FOLDER: a grid of dalles with a hole, sub-folders and bad files."""
    valid = make_sample_livrable(folder, SampleSpec(cols=cols, rows=rows))
    click.echo(f"sample livrable written to {folder}: {len(valid)} valid dalles and a few bad files", err=True)
