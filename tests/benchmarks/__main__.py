"""``python -m tests.benchmarks`` (``make bench``): the speed benchmark, see `tests.benchmarks.benchmark`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tests.benchmarks.benchmark import (
    DALLE_PIXELS,
    FTP_REFERENCE_DALLES,
    GDAL_TUNED_PROCESSES,
    STORAGES,
    BenchmarkConfig,
    run_benchmark,
)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--sizes", default="1000,10000", show_default=True, metavar="N,N,...",
              help="Livrable sizes in dalles, comma-separated.")
@click.option("--with-100k", "with_100k", is_flag=True, help="Also scan a 100,000-dalle livrable (about 26 GB).")
@click.option("--latency-ms", default=20.0, show_default=True, type=click.FloatRange(0, 10_000),
              help="Round trip of the delay line in front of every server.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the livrables and stores. Default: a temporary folder.")
@click.option("--keep", is_flag=True, help="Keep the generated livrables, stores and results.json.")
@click.option("--concurrency", type=click.IntRange(1, 1024), help="Our header reads in flight (default: the scan's).")
@click.option("--header-bytes", type=click.IntRange(1024), help="Our prefix read per dalle (default: the scan's).")
@click.option("--synthetic", "synthetic_dalles", default=100_000, show_default=True, type=click.IntRange(0),
              help="Dalles of the no-network emprise/store/export row; 0 leaves it out.")
@click.option("--storages", default=",".join(STORAGES), show_default=True, metavar="NAME,...",
              help="Storages measured, comma-separated.")
@click.option("--tuned-processes", default=",".join(map(str, GDAL_TUNED_PROCESSES)), show_default=True,
              metavar="N,...", help="Process counts the GDAL tuned peers try; the best is kept.")
@click.option("--template-pixels", default=DALLE_PIXELS, show_default=True, type=click.IntRange(64),
              help="Width of the generated dalles (smaller: smaller files, for a quick check).")
@click.option("--ftp-reference-dalles", default=FTP_REFERENCE_DALLES, show_default=True, type=click.IntRange(1),
              help="The FTP reference reads only the first N dalles (one at a time, it would take hours).")
def benchmark(sizes: str, with_100k: bool, latency_ms: float, workdir: Path | None, keep: bool,
              concurrency: int | None, header_bytes: int | None, synthetic_dalles: int, storages: str,
              tuned_processes: str, template_pixels: int, ftp_reference_dalles: int) -> None:
    """Measure a scan against the reference /vsicurl/ approach, on a generated livrable behind a slow server."""
    try:
        counts = tuple(int(s) for s in sizes.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(f"{sizes!r} is not a comma-separated list of numbers", param_hint="--sizes") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter("sizes must be positive", param_hint="--sizes")
    names = tuple(name.strip() for name in storages.split(",") if name.strip())
    if not names or set(names) - set(STORAGES):
        raise click.BadParameter(f"choose among {', '.join(STORAGES)}", param_hint="--storages")
    try:
        processes = tuple(int(n) for n in tuned_processes.split(",") if n.strip())
    except ValueError:
        raise click.BadParameter(f"{tuned_processes!r} is not a list of numbers",
                                 param_hint="--tuned-processes") from None
    if with_100k and 100_000 not in counts:
        counts = (*counts, 100_000)
    config = BenchmarkConfig(sizes=counts, latency_ms=latency_ms, workdir=workdir, keep=keep,
                             concurrency=concurrency, header_bytes=header_bytes, synthetic_dalles=synthetic_dalles,
                             storages=names, tuned_processes=processes or GDAL_TUNED_PROCESSES,
                             template_pixels=template_pixels, ftp_reference_dalles=ftp_reference_dalles)
    try:
        result = run_benchmark(config, progress=lambda message: click.echo(message, err=True))
    except (RuntimeError, OSError) as exc:
        click.echo(f"benchmark: error: {exc}", err=True)
        sys.exit(1)
    click.echo(result.table())
    if result.failures:
        sys.exit(1)


if __name__ == "__main__":
    benchmark()
