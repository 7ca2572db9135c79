"""``pcrs-indexer index``: the one-machine job on a livrable's storage."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from indexer.cli.options import db_option, progress_bar, store_url, writable_folder
from indexer.pipeline import index_livrable
from indexer.settings import get_settings


@click.command()
@click.argument("source")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder receiving dalles.geojson, livrables.geojson, report.json and quality.json.")
@click.option("--projet", "projet_location", metavar="FILE_OR_URL",
              help="Projet document (JSON) as the PCRS API serves it.")
@click.option("--livrable", "livrable_name", metavar="NAME", help="Livrable of the projet, by nom.")
@db_option
@click.option("--concurrency", type=click.IntRange(1, 256), help="Header reads in flight at once.")
@click.option("--full", is_flag=True, help="Read every dalle again, ignoring change detection.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary on stderr.")
def index(source: str, out: Path, projet_location: str | None, livrable_name: str | None,
          db_url: str | None, concurrency: int | None, full: bool, quiet: bool) -> None:
    """Index the livrable stored at SOURCE: a folder, a file:// URL, an http(s):// listing,
    ftp://[user[:password]@]host[:port]/path, ftps://…, sftp://[user[:password]@]host[:port]/path or
    s3://bucket/prefix[?endpoint_url=…&region=…]."""
    writable_folder(out)
    indexed = index_livrable(get_settings(), source, out, projet_location, livrable_name, store_url(db_url),
                             concurrency, full, progress_bar(not quiet and sys.stderr.isatty()))
    summary = indexed.summary()
    if not quiet:
        if indexed.livrable is not None:
            click.echo(f"livrable {indexed.livrable!r} ({indexed.chosen})", err=True)
        click.echo(f"{summary['indexed']} dalles indexed, {summary['reused']} reused, "
                   f"{summary['skipped']} skipped, in {summary['duration_s']} s -> {out}", err=True)
        click.echo(f"quality: {summary['quality']}", err=True)
        if indexed.preview is not None:
            click.echo(f"map of the livrable: {indexed.preview}", err=True)
    click.echo(json.dumps(summary, ensure_ascii=False))
