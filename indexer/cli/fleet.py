"""The distributed service's commands: publish, unpublish, storages, status, requeue, export, worker, beat, db.

They read and queue through the state store, and send messages with `tasks` (imported inside the
commands: the core runs without Celery or a broker).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from tqdm import tqdm

from indexer import secrets
from indexer.cli.options import db_option, writable_folder
from indexer.cli.options import open_store as open_any_store
from indexer.errors import ConfigError, ScanRunning
from indexer.export import FORMATS, export_all
from indexer.models import Trigger
from indexer.projet import load_projet
from indexer.service import queueing
from indexer.settings import get_settings
from indexer.storages import AccessOptions
from indexer.store import queries, scans
from indexer.store.engine import migrate, schema_revision


def open_store(db_url: str | None) -> Engine:
    """The fleet's state store (`--db`, else ``PCRS_INDEXER_DB_URL``); never a new empty one.

    Without either, the default SQLite file of ``pcrs-indexer index`` is opened only if it
    exists: a fleet command run where the fleet's settings are missing must not create an empty
    store and report nothing from it.
    """
    settings = get_settings()
    if not db_url and not settings.db_url:
        url = settings.database_url()
        path = make_url(url).database
        if path is None or not Path(path).expanduser().exists():
            raise ConfigError(f"no state store: set PCRS_INDEXER_DB_URL (the fleet's PostgreSQL) or --db; "
                              f"the default SQLite store {path} does not exist")
    return open_any_store(db_url)


@click.command()
@click.argument("projet_location", metavar="PROJET_JSON_OR_URL")
@click.option("--livrable", "livrable_name", metavar="NAME", help="Only this livrable of the projet, by nom.")
@click.option("--full", is_flag=True, help="Read every dalle again, ignoring change detection.")
@db_option
def publish(projet_location: str, livrable_name: str | None, full: bool,
            db_url: str | None) -> None:
    """Queue a scan of each livrable of a projet that has a stockage, for the workers.

    The same as sending the task ``pcrs.publish`` with the projet document. A storage already
    being scanned is not queued twice; its livrable's document is updated all the same.
    """
    import tasks.jobs

    settings = get_settings()
    projet = load_projet(projet_location, AccessOptions.from_settings(settings),
                         settings.projet_token(projet_location))
    engine = open_store(db_url)
    queued = queueing.publish(engine, projet, livrable_name, tasks.jobs.storage_url, full, settings.secret_box(),
                              lease_s=settings.scan_lease_s)
    tasks.jobs.enqueue_scans(engine, [q.scan for q in queued if q.scan is not None])
    for q in queued:
        if q.scan is not None:
            click.echo(f"livrable {q.livrable!r}: scan {q.scan} of storage {q.storage} ({q.url}) queued", err=True)
        elif q.skipped is not None:
            click.echo(f"livrable {q.livrable!r} skipped: {q.skipped}", err=True)
        else:
            click.echo(f"pcrs-indexer: {q.refused}", err=True)
    click.echo(json.dumps(queueing.publish_summary(queued), ensure_ascii=False))


@click.command()
@click.argument("projet_id", metavar="PROJET_ID")
@click.argument("nom", metavar="LIVRABLE")
@db_option
def unpublish(projet_id: str, nom: str, db_url: str | None) -> None:
    """Remove the livrable LIVRABLE (its nom) of the projet PROJET_ID (its _id) from the export.

    The same as sending the task ``pcrs.unpublish``. Its storage, records and outputs folder stay.
    """
    storage = queueing.unpublish(open_store(db_url), projet_id, nom)
    click.echo(f"livrable {nom!r} of projet {projet_id!r} unpublished (storage {storage})", err=True)
    click.echo(json.dumps({"unpublished": {"projet": projet_id, "livrable": nom, "storage": storage}},
                          ensure_ascii=False))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per storage instead of a table.")
@db_option
def storages(as_json: bool, db_url: str | None) -> None:
    """List the storages: id, URL (without credentials), status, last success, dalles, skipped, last error."""
    rows = queries.storage_rows(open_store(db_url))
    sealed = [str(r.id) for r in rows if r.sealed]
    if sealed and not get_settings().secret_box().ready:
        click.echo(f"pcrs-indexer: storage{'s' if len(sealed) > 1 else ''} {', '.join(sealed)}: credentials kept "
                   "encrypted: a scan needs PCRS_INDEXER_SECRET_KEY", err=True)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.as_json(), ensure_ascii=False))
        return
    table = [("ID", "URL", "STATUS", "LAST SUCCESS", "DALLES", "SKIPPED", "LAST ERROR")]
    table += [(str(r.id), r.url, r.status,
               r.last_success_at.strftime("%Y-%m-%d %H:%M:%S") if r.last_success_at else "-",
               str(r.dalles), str(r.skipped), (r.last_error or "-").replace("\n", " ")) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    for line in table:
        click.echo("  ".join([*(cell.ljust(w) for cell, w in zip(line, widths, strict=False)), line[-1]]).rstrip())


def _describe(p: queries.Progress) -> str:
    to_read = "?" if p.to_read is None else str(p.to_read)
    chunks = "" if p.chunks is None else f", chunks {p.chunks_done}/{p.chunks}"
    lines = [f"storage {p.storage} {p.url}",
             f"scan {p.scan}: {p.status}" + (f", step {p.step}" if p.step else "") +
             (f" ({p.trigger})" if p.trigger else ""),
             f"listed {p.listed}, read {p.read}/{to_read}, reused {p.reused}, skipped {p.skipped}{chunks}"]
    if p.error:
        lines.append(f"error: {p.error}")
    return "\n".join(lines)


@click.command()
@click.argument("storage_ref", metavar="STORAGE")
@click.option("--watch", is_flag=True, help="Follow the scan with a progress bar until it ends.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds between two looks with --watch.")
@click.option("--json", "as_json", is_flag=True, help="Print the progress as JSON.")
@db_option
def status(storage_ref: str, watch: bool, interval: float, as_json: bool,
           db_url: str | None) -> None:
    """Show where the latest scan of STORAGE (id or URL) is: step, counts listed, read, reused, skipped."""
    engine = open_store(db_url)
    storage = queries.resolve_storage(engine, storage_ref)
    lease_s = get_settings().scan_lease_s
    scans.end_abandoned(engine, storage, lease_s)  # a killed `index` shows as failed, not running
    current = queries.progress(engine, storage)
    if watch and current.active:
        with tqdm(total=current.to_read, desc=current.step or "queued", unit="dalle", file=sys.stderr) as bar:
            while current.active:
                bar.set_description(current.step if current.status != "queued" else "queued")
                bar.total = current.to_read
                bar.n = current.read
                bar.set_postfix(listed=current.listed, reused=current.reused, skipped=current.skipped)
                bar.refresh()
                time.sleep(interval)
                scans.end_abandoned(engine, storage, lease_s)
                current = queries.progress(engine, storage)
            bar.n = current.read
            bar.refresh()
    click.echo(json.dumps(current.as_json(), ensure_ascii=False) if as_json else _describe(current))


@click.command()
@click.argument("storage_ref", metavar="[STORAGE]", required=False)
@click.option("--all", "all_storages", is_flag=True, help="Every storage of the store.")
@click.option("--failed", "failed_only", is_flag=True, help="Every storage whose last scan failed.")
@click.option("--full", is_flag=True, help="Read every dalle again, ignoring change detection.")
@db_option
def requeue(storage_ref: str | None, all_storages: bool, failed_only: bool, full: bool,
            db_url: str | None) -> None:
    """Queue a new scan of STORAGE (id or URL), of --all storages or of the --failed ones.

    A storage already queued or running is refused: exit code 5 for a single STORAGE.
    """
    if sum((storage_ref is not None, all_storages, failed_only)) != 1:
        raise click.UsageError("give one STORAGE, --all or --failed")
    queued: list[dict[str, Any]] = []
    refused: list[str] = []
    import tasks.jobs

    engine = open_store(db_url)
    if storage_ref is not None:
        targets = [queries.resolve_storage(engine, storage_ref)]
    else:
        targets = [row.id for row in queries.storage_rows(engine, failed_only=failed_only)]
    for storage in targets:
        try:
            scan = queueing.queue_scan(engine, storage, Trigger.REQUEUE, full, get_settings().scan_lease_s)
        except ScanRunning as exc:
            if storage_ref is not None:
                raise
            refused.append(str(exc))
            click.echo(f"pcrs-indexer: {exc}", err=True)
            continue
        tasks.jobs.enqueue_scans(engine, [scan])
        queued.append({"storage": storage, "scan": scan})
        click.echo(f"scan {scan} of storage {storage} queued", err=True)
    click.echo(json.dumps({"queued": queued, "refused": refused}, ensure_ascii=False))


@click.command()
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder receiving dalles.geojson and livrables.geojson of every published livrable.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="geojson", show_default=True,
              help="GeoJSON, FlatGeobuf (with its spatial index) or GeoParquet (GeoArrow geometry, bbox column).")
@db_option
def export(out: Path, fmt: str, db_url: str | None) -> None:
    """Write every published livrable's dalles and emprise into two files, streamed from the store."""
    # The objects the imports made stay alive to the end: out of the collector's reach, its full
    # passes (the export allocates millions of short-lived objects) no longer walk them.
    gc.freeze()
    summary = export_all(open_store(db_url), writable_folder(out), fmt)
    click.echo(f"{summary['livrables']} livrables, {summary['dalles']} dalles -> {out}", err=True)
    click.echo(json.dumps(summary, ensure_ascii=False))


def _celery(command: str, args: tuple[str, ...]) -> None:
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "tasks", command, *args])


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...]) -> None:
    """Run a worker: ``celery -A tasks worker [CELERY_ARGS]`` (e.g. ``--concurrency 4 -l INFO``)."""
    _celery("worker", celery_args)


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(celery_args: tuple[str, ...]) -> None:
    """Run the scheduler: ``celery -A tasks beat [CELERY_ARGS]``; one per fleet."""
    _celery("beat", celery_args)


@click.group()
def db() -> None:
    """Manage the state store's schema."""


@db.command()
@db_option
def upgrade(db_url: str | None) -> None:
    """Migrate the state store to the latest schema (Alembic; workers also do it when they start)."""
    engine = open_any_store(db_url)  # creates the store if need be, and says which
    migrate(engine)
    revision = schema_revision(engine)
    click.echo(f"state store {engine.url.render_as_string(hide_password=True)} at revision {revision}", err=True)


@db.command("new-key")
def new_key() -> None:
    """Print a new key for PCRS_INDEXER_SECRET_KEY (Fernet), which encrypts storage credentials in the store."""
    click.echo(secrets.new_key())
