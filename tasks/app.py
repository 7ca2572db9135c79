"""The Celery app of the service, configured by `tasks.celeryconfig` and the environment.

``celery -A tasks worker`` and ``celery -A tasks beat`` run it. A Celery settings module named
by ``PCRS_INDEXER_CELERY_CONFIG`` (e.g. ``config/celeryconfig.py``) is applied over the
package's defaults. Workers log JSON lines on stderr, one object per record with its ``extra``
fields.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_init, worker_ready, worker_shutdown
from rasterio.errors import NotGeoreferencedWarning

from indexer.errors import ConfigError
from indexer.settings import get_fleet_settings
from indexer.storages.access import ScrubFilter
from indexer.store.engine import create_store
from tasks.visibility import VisibilityRenewer

_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Format a record as a JSON line."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        line.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS and not k.startswith("_")})
        if record.exc_info:
            line["traceback"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


@setup_logging.connect
def _json_logging(loglevel: int | str | None = None, **_: Any) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ScrubFilter())  # no credential in any line, tracebacks and extra fields included
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(loglevel or logging.INFO)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # A dalle without georeferencing is reported as data (not_georeferenced), not as a warning.
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)


@worker_init.connect
def _migrate(**_: Any) -> None:
    """Bring the state store's schema up to date before the worker takes messages.

    A worker needs the fleet's store: without ``PCRS_INDEXER_DB_URL`` it refuses to start
    rather than work on an empty SQLite file of its own.
    """
    settings = get_fleet_settings()
    if not settings.db_url:
        logging.getLogger(__name__).critical(
            "no state store: set PCRS_INDEXER_DB_URL to the fleet's PostgreSQL "
            "(postgresql+psycopg://user:password@host/database)")
        raise SystemExit(2)  # not an Exception: Celery would log it and start all the same
    create_store(settings.database_url()).dispose()


_renewers: list[VisibilityRenewer] = []


@worker_ready.connect
def _renew_visibility(**_: Any) -> None:
    """Keep the messages this worker holds from being given back while it lives (`tasks.visibility`)."""
    if str(app.conf.broker_url).startswith(("redis://", "rediss://", "unix://")):
        _renewers.append(VisibilityRenewer(app, get_fleet_settings().visibility_timeout_s / 4).start())


@worker_shutdown.connect
def _stop_renewing(**_: Any) -> None:
    while _renewers:
        _renewers.pop().stop()


def load_config(path: Path) -> ModuleType:
    """Import a Celery settings module from its file."""
    if not path.is_file():
        raise ConfigError(f"Celery settings {path} not found: set PCRS_INDEXER_CELERY_CONFIG")
    spec = importlib.util.spec_from_file_location("pcrs_celeryconfig", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"Celery settings {path} cannot be imported: name a .py file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def overrides(module: ModuleType) -> dict[str, Any]:
    """The Celery settings a module defines: its public lower-case names."""
    return {name: value for name, value in vars(module).items()
            if name.islower() and not name.startswith("_") and not isinstance(value, ModuleType)}


def create_app() -> Celery:
    """The Celery app, its tasks in `tasks.jobs`: the package's settings, then the override module's."""
    settings = get_fleet_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = Celery("pcrs", include=["tasks.jobs"])
    app.config_from_object("tasks.celeryconfig")
    if settings.celery_config is not None:
        app.conf.update(overrides(load_config(settings.celery_config)))
    return app


app = create_app()
