"""What every command shares: options, the exit-code table, the one-line failure, the progress bar.

Each error class maps to one exit code here (`EXIT_CODES`). `ErrorBoundary`, the command group's
class, ends every command that raises with `fail`: one line on stderr, scrubbed of every
credential, the traceback only with ``-v``.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy import Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
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
from indexer.storages.access import parse_location, scrub
from indexer.store.engine import create_store

T = TypeVar("T")

STORE_FAILED = 6
"""Exit code of a state store that cannot be opened or used."""

EXIT_CODES: dict[type[BaseException], int] = {
    ConfigError: 2,
    InvalidSource: 2,
    StorageUnreachable: 3,
    LivrableNotFound: 4,
    StorageNotFound: 4,
    ScanRunning: 5,
    ArgumentError: 2,
    SQLAlchemyError: STORE_FAILED,
}
"""Exit code of each error class (the nearest class in its hierarchy); 1 for anything else."""


def exit_code(exc: BaseException) -> int:
    """The exit code of an error, by its nearest class in `EXIT_CODES`."""
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


def message(exc: BaseException) -> str:
    """The one line saying why a command failed, every known credential scrubbed from it."""
    if isinstance(exc, IndexerError):
        text = str(exc)
    elif isinstance(exc, DBAPIError):
        text = f"state store: {exc.orig}"
    elif isinstance(exc, SQLAlchemyError):
        text = f"state store: {str(exc).split(chr(10))[0]}"
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = f"unexpected {type(exc).__name__}: {exc} (-v shows the traceback)"
    return scrub(" ".join(text.split()))


def fail(ctx: click.Context, exc: BaseException) -> NoReturn:
    """End the command with one line on stderr (the traceback too with ``-v``) and its exit code."""
    if ctx.find_root().obj and ctx.find_root().obj.get("verbose"):
        logging.getLogger("indexer").error("failed", exc_info=exc)
    click.echo(f"pcrs-indexer: error: {message(exc)}", err=True)
    ctx.exit(exit_code(exc))


class ErrorBoundary(click.Group):
    """The command group whose every command ends on `fail` when it raises, whatever it raises."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; an error becomes one line and an exit code."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place every command's errors end
            fail(ctx, exc)


def progress_bar(enabled: bool, desc: str = "Reading headers") -> Any:
    """A `indexer.pipeline.Wrap` drawing a progress bar on stderr, or nothing."""

    def wrap(items: Iterator[T], total: int) -> Iterator[T]:
        if not enabled:
            return items
        return iter(tqdm(items, total=total, desc=desc, unit="dalle", file=sys.stderr))

    return wrap


db_option = click.option("--db", "db_url", metavar="URL",
                         help="State store URL (SQLite or PostgreSQL, as SQLAlchemy writes it). Default: "
                              "PCRS_INDEXER_DB_URL, else SQLite in the data dir.")


def store_url(db_url: str | None) -> str:
    """The state store's URL (`--db`, else the settings'), its password kept secret."""
    url = db_url or get_settings().database_url()
    with suppress(InvalidSource):
        parse_location(url)  # a port out of range is the store's to report; the password is kept all the same
    return url


def open_store(db_url: str | None) -> Engine:
    """The state store, its connections closed when the command ends."""
    engine = create_store(store_url(db_url))
    click.get_current_context().call_on_close(engine.dispose)
    return engine


def writable_folder(folder: Path) -> Path:
    """Check, before any work, that `folder` can receive the outputs; nothing is created in it.

    Raises `ConfigError` when it, or the nearest folder above it that exists, cannot be written.
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot write to {folder}: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".pcrs-indexer-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write to {folder}: {(exc.strerror or str(exc)).lower()}") from exc
    return folder

