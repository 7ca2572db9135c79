"""What every command shares: options, the exit-code table, the one-line failure, the progress bar.

Each error class maps to one exit code here (`EXIT_CODES`); a command reports a failure with
`fail`, one line on stderr, the traceback only with ``-v``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import Any, TypeVar

import click
from sqlalchemy import Engine
from tqdm import tqdm

from indexer.errors import (
    ConfigError,
    IndexerError,
    InvalidSource,
    LivrableNotFound,
    ScanRunning,
    StorageNotFound,
    StorageUnreachable,
)
from indexer.settings import get_settings
from indexer.store.engine import create_store

T = TypeVar("T")

EXIT_CODES: dict[type[IndexerError], int] = {
    ConfigError: 2,
    InvalidSource: 2,
    StorageUnreachable: 3,
    LivrableNotFound: 4,
    StorageNotFound: 4,
    ScanRunning: 5,
}
"""Exit code of each error class (the nearest class in its hierarchy); 1 for anything else."""


def exit_code(exc: IndexerError) -> int:
    """The exit code of an error, by its nearest class in `EXIT_CODES`."""
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


def fail(ctx: click.Context, exc: BaseException, code: int | None = None) -> None:
    """End the command with one line on stderr (the traceback too with ``-v``) and its exit code."""
    if ctx.obj and ctx.obj.get("verbose"):
        logging.getLogger("indexer").exception("failed")
    click.echo(f"pcrs-indexer: error: {exc}", err=True)
    if code is None:
        code = exit_code(exc) if isinstance(exc, IndexerError) else 1
    ctx.exit(code)


def progress_bar(enabled: bool, desc: str = "Reading headers") -> Any:
    """A `indexer.pipeline.Wrap` drawing a progress bar on stderr, or nothing."""

    def wrap(items: Iterator[T], total: int) -> Iterator[T]:
        if not enabled:
            return items
        return iter(tqdm(items, total=total, desc=desc, unit="dalle", file=sys.stderr))

    return wrap


db_option = click.option("--db", "db_url", metavar="URL",
                         help="State store URL (SQLAlchemy). Default: PCRS_INDEXER_DB_URL, else SQLite in the "
                              "data dir.")


def open_store(db_url: str | None) -> Engine:
    """The state store, its connections closed when the command ends."""
    engine = create_store(db_url or get_settings().database_url())
    click.get_current_context().call_on_close(engine.dispose)
    return engine
