"""The ``pcrs-indexer`` command line: thin commands over the core.

Data goes to stdout (JSON), messages and progress to stderr. Exit codes: 0 ok, 1 unexpected,
2 usage, 3 storage, 4 not found.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import click
from rasterio.errors import NotGeoreferencedWarning
from tqdm import tqdm

from indexer import __version__
from indexer.emprise import compute_emprise
from indexer.errors import ConfigError, IndexerError, InvalidSource, LivrableNotFound, StorageUnreachable
from indexer.export import write_outputs
from indexer.projet import Livrable, Projet, load_projet, select_livrable
from indexer.scan import ScanOptions, scan_storage
from indexer.settings import Settings, get_settings
from indexer.state import create_store
from indexer.storage import AccessOptions, open_storage

T = TypeVar("T")

EXIT_CODES: dict[type[IndexerError], int] = {
    ConfigError: 2,
    InvalidSource: 2,
    StorageUnreachable: 3,
    LivrableNotFound: 4,
}


def _exit_code(exc: IndexerError) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


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


def _fail(ctx: click.Context, exc: BaseException, code: int) -> None:
    if ctx.obj and ctx.obj.get("verbose"):
        logging.getLogger("indexer").exception("failed")
    click.echo(f"pcrs-indexer: error: {exc}", err=True)
    ctx.exit(code)


def _progress(enabled: bool) -> Any:
    def wrap(items: Iterator[T], total: int) -> Iterator[T]:
        if not enabled:
            return items
        return iter(tqdm(items, total=total, desc="Reading headers", unit="dalle", file=sys.stderr))

    return wrap


@main.command()
@click.argument("source")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder receiving dalles.geojson, livrables.geojson and report.json.")
@click.option("--projet", "projet_location", metavar="FILE_OR_URL",
              help="Projet document (JSON) as the PCRS API serves it.")
@click.option("--livrable", "livrable_name", metavar="NAME", help="Livrable of the projet, by nom.")
@click.option("--db", "db_url", metavar="URL", help="State store URL (SQLAlchemy). Default: SQLite in the data dir.")
@click.option("--concurrency", type=click.IntRange(1, 256), help="Header reads in flight at once.")
@click.option("--full", is_flag=True, help="Read every dalle again, ignoring change detection.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary on stderr.")
@click.pass_context
def index(ctx: click.Context, source: str, out: Path, projet_location: str | None, livrable_name: str | None,
          db_url: str | None, concurrency: int | None, full: bool, quiet: bool) -> None:
    """Index the livrable stored at SOURCE: a folder, a file:// URL, an http(s):// listing,
    ftp://[user[:password]@]host[:port]/path, ftps://…, sftp://[user[:password]@]host[:port]/path or
    s3://bucket/prefix[?endpoint_url=…&region=…]."""
    settings = get_settings()
    try:
        summary = run_index(settings, source, out, projet_location, livrable_name, db_url, concurrency, full,
                            progress=not quiet and sys.stderr.isatty())
    except IndexerError as exc:
        _fail(ctx, exc, _exit_code(exc))
        return
    if not quiet:
        click.echo(f"{summary['indexed']} dalles indexed, {summary['reused']} reused, "
                   f"{summary['skipped']} skipped, in {summary['duration_s']} s -> {out}", err=True)
    click.echo(json.dumps(summary, ensure_ascii=False))


def run_index(settings: Settings, source: str, out: Path, projet_location: str | None, livrable_name: str | None,
              db_url: str | None = None, concurrency: int | None = None, full: bool = False,
              progress: bool = False) -> dict[str, Any]:
    """Scan a livrable's storage and write its PCRS files; returns a small summary."""
    projet: Projet | None = None
    livrable: Livrable | None = None
    if projet_location:
        projet = load_projet(projet_location, settings.timeout_s)
        livrable = select_livrable(projet, livrable_name, source)
    concurrency = concurrency or settings.concurrency
    storage = open_storage(source, options=replace(AccessOptions.from_settings(settings), connections=concurrency))
    engine = create_store(db_url or settings.database_url())
    options = ScanOptions(concurrency=concurrency, header_bytes=settings.header_bytes, full=full)
    with storage:
        result = scan_storage(storage, engine, options, _progress(progress))
    emprise = compute_emprise(result.dalles)
    paths = write_outputs(out, result, emprise, projet, livrable, date.today())
    return {"source": result.source, "indexed": len(result.dalles), "reused": result.reused,
            "skipped": len(result.problems), "duration_s": round(result.duration_s, 3),
            "outputs": {name: str(path) for name, path in paths.items()}}


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--cols", default=7, show_default=True, help="Dalles per row of the grid.")
@click.option("--rows", default=7, show_default=True, help="Rows of the grid.")
def sample(folder: Path, cols: int, rows: int) -> None:
    """Write a sample livrable into FOLDER: a grid of dalles with a hole, sub-folders and bad files."""
    from indexer.sample import SampleSpec, make_sample_livrable

    valid = make_sample_livrable(folder, SampleSpec(cols=cols, rows=rows))
    click.echo(f"sample livrable written to {folder}: {len(valid)} valid dalles and a few bad files", err=True)


@main.command()
@click.option("--sizes", default="1000,10000", show_default=True, metavar="N,N,...",
              help="Livrable sizes in dalles, comma-separated.")
@click.option("--with-100k", "with_100k", is_flag=True, help="Also scan a 100,000-dalle livrable (about 26 GB).")
@click.option("--latency-ms", default=20.0, show_default=True, type=click.FloatRange(0, 10_000),
              help="Delay the server adds to every request.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the livrables and stores. Default: a temporary folder.")
@click.option("--keep", is_flag=True, help="Keep the generated livrables, stores and results.json.")
@click.option("--concurrency", type=click.IntRange(1, 1024), help="Our header reads in flight (default: the scan's).")
@click.option("--header-bytes", type=click.IntRange(1024), help="Our prefix read per dalle (default: the scan's).")
@click.option("--synthetic", "synthetic_dalles", default=100_000, show_default=True, type=click.IntRange(0),
              help="Dalles of the no-network emprise/store/export row; 0 leaves it out.")
@click.pass_context
def benchmark(ctx: click.Context, sizes: str, with_100k: bool, latency_ms: float, workdir: Path | None, keep: bool,
              concurrency: int | None, header_bytes: int | None, synthetic_dalles: int) -> None:
    """Measure a scan against the reference /vsicurl/ approach, on a generated livrable behind a slow server."""
    from indexer.benchmark import BenchmarkConfig, run_benchmark

    try:
        counts = tuple(int(s) for s in sizes.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(f"{sizes!r} is not a comma-separated list of numbers", param_hint="--sizes") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter("sizes must be positive", param_hint="--sizes")
    if with_100k and 100_000 not in counts:
        counts = (*counts, 100_000)
    config = BenchmarkConfig(sizes=counts, latency_ms=latency_ms, workdir=workdir, keep=keep,
                             concurrency=concurrency, header_bytes=header_bytes, synthetic_dalles=synthetic_dalles)
    try:
        result = run_benchmark(config, progress=lambda message: click.echo(message, err=True))
    except (RuntimeError, OSError) as exc:
        _fail(ctx, exc, 1)
        return
    click.echo(result.table())


# The distributed service's commands: they read and queue through the state store, and send
# messages with `tasks` (imported inside the commands: the core runs without Celery or a broker).

def _service_exit_codes() -> None:
    from indexer.jobs import ScanRunning, StorageNotFound

    EXIT_CODES.update({StorageNotFound: 4, ScanRunning: 5})


_service_exit_codes()

db_option = click.option("--db", "db_url", metavar="URL",
                         help="State store URL (SQLAlchemy). Default: PCRS_INDEXER_DB_URL, else SQLite in the "
                              "data dir.")


def _store(db_url: str | None) -> Any:
    """The state store, its connections closed when the command ends."""
    engine = create_store(db_url or get_settings().database_url())
    click.get_current_context().call_on_close(engine.dispose)
    return engine


@main.command()
@click.argument("projet_location", metavar="PROJET_JSON_OR_URL")
@click.option("--livrable", "livrable_name", metavar="NAME", help="Only this livrable of the projet, by nom.")
@click.option("--full", is_flag=True, help="Read every dalle again, ignoring change detection.")
@db_option
@click.pass_context
def publish(ctx: click.Context, projet_location: str, livrable_name: str | None, full: bool,
            db_url: str | None) -> None:
    """Queue a scan of each livrable of a projet that has a stockage, for the workers.

    The same as sending the task ``pcrs.publish`` with the projet document. A storage already
    being scanned is not queued twice; its livrable's document is updated all the same.
    """
    from indexer import jobs

    settings = get_settings()
    try:
        import tasks.jobs

        projet = load_projet(projet_location, settings.timeout_s)
        queued = jobs.publish(_store(db_url), projet, livrable_name, tasks.jobs.storage_url, full)
        tasks.jobs.enqueue_scans(q.scan for q in queued if q.scan is not None)
    except IndexerError as exc:
        _fail(ctx, exc, _exit_code(exc))
        return
    for q in queued:
        click.echo(f"livrable {q.livrable!r}: scan {q.scan} of storage {q.storage} ({q.url}) queued"
                   if q.scan is not None else f"pcrs-indexer: {q.refused}", err=True)
    click.echo(json.dumps({"queued": [{"storage": q.storage, "scan": q.scan, "url": q.url, "livrable": q.livrable}
                                      for q in queued if q.scan is not None],
                           "refused": [q.refused for q in queued if q.refused]}, ensure_ascii=False))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per storage instead of a table.")
@db_option
def storages(as_json: bool, db_url: str | None) -> None:
    """List the storages: id, URL (without credentials), status, last success, dalles, skipped, last error."""
    from indexer.admin import storage_rows

    rows = storage_rows(_store(db_url))
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


def _describe(p: Any) -> str:
    to_read = "?" if p.to_read is None else str(p.to_read)
    chunks = "" if p.chunks is None else f", chunks {p.chunks_done}/{p.chunks}"
    lines = [f"storage {p.storage} {p.url}",
             f"scan {p.scan}: {p.status}" + (f", step {p.step}" if p.step else "") +
             (f" ({p.trigger})" if p.trigger else ""),
             f"listed {p.listed}, read {p.read}/{to_read}, reused {p.reused}, skipped {p.skipped}{chunks}"]
    if p.error:
        lines.append(f"error: {p.error}")
    return "\n".join(lines)


@main.command()
@click.argument("storage_ref", metavar="STORAGE")
@click.option("--watch", is_flag=True, help="Follow the scan with a progress bar until it ends.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds between two looks with --watch.")
@click.option("--json", "as_json", is_flag=True, help="Print the progress as JSON.")
@db_option
@click.pass_context
def status(ctx: click.Context, storage_ref: str, watch: bool, interval: float, as_json: bool,
           db_url: str | None) -> None:
    """Show where the latest scan of STORAGE (id or URL) is: step, counts listed, read, reused, skipped."""
    import time

    from indexer.admin import progress, resolve_storage

    try:
        engine = _store(db_url)
        storage = resolve_storage(engine, storage_ref)
        current = progress(engine, storage)
        if watch and current.active:
            with tqdm(total=current.to_read, desc=current.step or "queued", unit="dalle", file=sys.stderr) as bar:
                while current.active:
                    bar.set_description(current.step if current.status != "queued" else "queued")
                    bar.total = current.to_read
                    bar.n = current.read
                    bar.set_postfix(listed=current.listed, reused=current.reused, skipped=current.skipped)
                    bar.refresh()
                    time.sleep(interval)
                    current = progress(engine, storage)
                bar.n = current.read
                bar.refresh()
    except IndexerError as exc:
        _fail(ctx, exc, _exit_code(exc))
        return
    click.echo(json.dumps(current.as_json(), ensure_ascii=False) if as_json else _describe(current))


@main.command()
@click.argument("storage_ref", metavar="[STORAGE]", required=False)
@click.option("--all", "all_storages", is_flag=True, help="Every storage of the store.")
@click.option("--failed", "failed_only", is_flag=True, help="Every storage whose last scan failed.")
@click.option("--full", is_flag=True, help="Read every dalle again, ignoring change detection.")
@db_option
@click.pass_context
def requeue(ctx: click.Context, storage_ref: str | None, all_storages: bool, failed_only: bool, full: bool,
            db_url: str | None) -> None:
    """Queue a new scan of STORAGE (id or URL), of --all storages or of the --failed ones.

    A storage already queued or running is refused: exit code 5 for a single STORAGE.
    """
    from indexer import jobs
    from indexer.admin import resolve_storage, storage_rows

    if sum((storage_ref is not None, all_storages, failed_only)) != 1:
        raise click.UsageError("give one STORAGE, --all or --failed")
    queued: list[dict[str, Any]] = []
    refused: list[str] = []
    try:
        import tasks.jobs

        engine = _store(db_url)
        if storage_ref is not None:
            targets = [resolve_storage(engine, storage_ref)]
        else:
            targets = [row.id for row in storage_rows(engine, failed_only=failed_only)]
        for storage in targets:
            try:
                scan = jobs.queue_scan(engine, storage, "requeue", full)
            except jobs.ScanRunning as exc:
                if storage_ref is not None:
                    raise
                refused.append(str(exc))
                click.echo(f"pcrs-indexer: {exc}", err=True)
                continue
            tasks.jobs.enqueue_scans([scan])
            queued.append({"storage": storage, "scan": scan})
            click.echo(f"scan {scan} of storage {storage} queued", err=True)
    except IndexerError as exc:
        _fail(ctx, exc, _exit_code(exc))
        return
    click.echo(json.dumps({"queued": queued, "refused": refused}, ensure_ascii=False))


@main.command()
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder receiving dalles.geojson and livrables.geojson of every published livrable.")
@db_option
def export(out: Path, db_url: str | None) -> None:
    """Write every published livrable's dalles and emprise into two files, streamed from the store."""
    from indexer.admin import export_all

    summary = export_all(_store(db_url), out)
    click.echo(f"{summary['livrables']} livrables, {summary['dalles']} dalles -> {out}", err=True)
    click.echo(json.dumps(summary, ensure_ascii=False))


def _celery(command: str, args: tuple[str, ...]) -> None:
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "tasks", command, *args])


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...]) -> None:
    """Run a worker: ``celery -A tasks worker [CELERY_ARGS]`` (e.g. ``--concurrency 4 -l INFO``)."""
    _celery("worker", celery_args)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(celery_args: tuple[str, ...]) -> None:
    """Run the scheduler: ``celery -A tasks beat [CELERY_ARGS]``; one per fleet."""
    _celery("beat", celery_args)


@main.group()
def db() -> None:
    """Manage the state store's schema."""


@db.command()
@db_option
def upgrade(db_url: str | None) -> None:
    """Migrate the state store to the latest schema (Alembic; workers also do it when they start)."""
    from indexer.state import migrate

    engine = _store(db_url)
    migrate(engine)
    with engine.connect() as conn:
        revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    click.echo(f"state store at revision {revision}", err=True)
