"""The ``pcrs-indexer`` command line: thin commands over the core.

Data goes to stdout (JSON), messages and progress to stderr. Exit codes (`options.EXIT_CODES`):
0 ok, 1 unexpected, 2 usage, 3 storage, 4 not found, 5 a scan already running.

- `index`: the one-machine job (`indexer.cli.index`);
- `publish`, `storages`, `status`, `requeue`, `export`, `worker`, `beat`, `db`: the distributed
  service (`indexer.cli.fleet`);
- `sample`: the sample livrable of the demo (`indexer.cli.dev`).
"""

from __future__ import annotations

import logging
import sys
import warnings

import click
from rasterio.errors import NotGeoreferencedWarning

from indexer import __version__
from indexer.cli import dev, fleet
from indexer.cli import index as index_command


def _configure_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pcrs-indexer")
@click.option("-v", "--verbose", count=True, help="More detail on stderr; -v also shows tracebacks.")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """Index PCRS orthophoto livrables: crawl a storage, read dalle headers, publish the PCRS files."""
    _configure_logging(verbose)
    # A dalle without georeferencing is reported as data (not_georeferenced), not as a warning.
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    ctx.obj = {"verbose": verbose}


main.add_command(index_command.index)
for command in (fleet.publish, fleet.storages, fleet.status, fleet.requeue, fleet.export, fleet.worker, fleet.beat,
                fleet.db):
    main.add_command(command)
main.add_command(dev.sample)
