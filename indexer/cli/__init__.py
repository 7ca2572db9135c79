"""The ``pcrs-indexer`` command line: thin commands over the core.

Data goes to stdout (JSON), messages and progress to stderr. Exit codes (`options.EXIT_CODES`):
0 ok, 1 unexpected, 2 usage, 3 storage, 4 not found, 5 a scan already running.

- `index`: the one-machine job (`indexer.cli.index`);
- `quality`: a storage's livrable checked from the store (`indexer.cli.quality`);
- `publish`, `unpublish`, `storages`, `status`, `requeue`, `export`, `worker`, `beat`, `db`: the distributed
  service (`indexer.cli.fleet`);
- `sample`: the sample livrable of the demo (`indexer.cli.dev`);
- `serve`: the HTTP API (`indexer.cli.serve`, `indexer.api`).
"""

from __future__ import annotations

import json
import logging
import sys
import warnings

import click
from rasterio.errors import NotGeoreferencedWarning

from indexer import __version__
from indexer.cli import dev, fleet, serve
from indexer.cli import index as index_command
from indexer.cli import quality as quality_command
from indexer.cli.options import ErrorBoundary
from indexer.storages.access import ScrubFilter, log_extras


class TerminalFormatter(logging.Formatter):
    """``LEVEL logger: message key=value…``: the message, then its ``extra`` fields."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - the stdlib's name
        """The line without the traceback, the record's ``extra`` fields after the message."""
        fields = [f"{key}={_shown(value)}" for key, value in log_extras(record).items()]
        return " ".join([super().formatMessage(record), *fields])


def _shown(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if not text or any(c in text for c in ' "=\n') else text


def _configure_logging(verbose: int) -> None:
    """Log to stderr, scrubbed, ``key=value`` extras shown; the handler of an earlier call replaced."""
    root = logging.getLogger()
    for earlier in [h for h in root.handlers if isinstance(h.formatter, TerminalFormatter)]:
        root.removeHandler(earlier)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TerminalFormatter())
    handler.addFilter(ScrubFilter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING)


@click.group(cls=ErrorBoundary, context_settings={"help_option_names": ["-h", "--help"]})
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
main.add_command(quality_command.quality)
for command in (fleet.publish, fleet.unpublish, fleet.storages, fleet.status, fleet.requeue, fleet.export,
                fleet.worker, fleet.beat, fleet.db):
    main.add_command(command)
main.add_command(dev.sample)
main.add_command(serve.serve)
