"""The quality benchmark row: `indexer.quality.assess` on a synthetic livrable with known defects.

```sh
python -m tests.benchmarks.quality_bench [--count 100000]
```

The livrable is a square grid of 200 m Lambert-93 dalles at 5 cm, named in km with decimals
after their upper-left corner as PCRS producers do, its outline cut on one side, and defects
placed at random (seeded) inside: holes, copies in another folder, dalles shifted by 0.5 m, a
rotated one, a batch at 10 cm, misnamed dalles, a few dalles in EPSG:3948 and skipped files.
The records are made in memory (not timed); the run times `assess` alone, in a child process
of its own (its CPU and peak RSS its own), and checks every count it knows the answer of.
`make bench` adds the row to its table (`quality_row`).
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from indexer.models import Record
    from tests.benchmarks.benchmark import Row

TILE_M = 200.0
X0, Y0 = 600_000.0, 6_800_000.0
"""Lower-left corner of the grid's cell (0, 0)."""
CHILD_TIMEOUT_S = 600
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Defects:
    """How many of each defect a synthetic livrable of `count` dalles holds."""

    holes: int
    duplicates: int
    shifted: int
    batch: int
    misnamed: int
    cc48: int = 10
    skipped: int = 10
    rotated: int = 1

    @classmethod
    def of(cls, count: int) -> Defects:
        """About 1 per 1,000 dalles of each, at least 1."""
        n = max(1, count // 1000)
        return cls(holes=n, duplicates=n // 2 or 1, shifted=n // 5 or 1, batch=n, misnamed=n // 5 or 1)

    @property
    def outliers(self) -> int:
        """Dalles off the majority: the batch (resolution and size) and the EPSG:3948 ones (CRS)."""
        return self.batch + self.cc48


def _name(x: float, y: float) -> str:
    """PCRS-style name of a dalle whose upper-left corner is (x, y): km with three decimals."""
    return f"PCRS_{x / 1000:07.3f}_{y / 1000:08.3f}_L93_5cm.tif"


def synthetic_livrable(count: int, seed: int = 15) -> tuple[list[Record], Defects]:
    """The records of a livrable of about `count` valid dalles, and the defects placed in it."""
    import numpy as np
    from pyproj import CRS

    from indexer.models import Dalle, DalleProblem, FileEntry, SkipReason

    defects = Defects.of(count)
    side = math.ceil(math.sqrt(count * 1.15))
    cut = side // 4  # the cells with col + row < cut are outside the outline
    cells = [(c, r) for r in range(side) for c in range(side) if c + r >= cut][:count + defects.holes]
    inner = [k for k, (c, r) in enumerate(cells) if 1 <= c < side - 1 and 1 <= r < side - 1 and c + r >= cut + 2]
    picks = np.random.default_rng(seed).choice(inner, size=defects.holes + defects.duplicates + defects.shifted
                                               + defects.batch + defects.misnamed + defects.rotated, replace=False)
    cuts = np.cumsum([defects.holes, defects.duplicates, defects.shifted, defects.batch, defects.misnamed])
    holes, duplicates, shifted, batch, misnamed, rotated = (set(p.tolist()) for p in np.split(picks, cuts))
    lambert, cc48 = CRS.from_epsg(2154).to_wkt(), CRS.from_epsg(3948).to_wkt()
    bands = ("Red(Byte)", "Green(Byte)", "Blue(Byte)")

    def dalle(path: str, x: float, y: float, epsg: int = 2154, pixels: int = 4000, angle: float = 0.0) -> Dalle:
        ulx, uly = x, y + TILE_M
        cos, sin = math.cos(math.radians(angle)) * TILE_M, math.sin(math.radians(angle)) * TILE_M
        return Dalle(FileEntry(path, 24_000_000, "2026-01-01T00:00:00"), "image/tiff", pixels, pixels, bands, "JPEG",
                     epsg, lambert if epsg == 2154 else cc48,
                     ((ulx, uly), (ulx + cos, uly + sin), (ulx + cos + sin, uly + sin - cos), (ulx + sin, uly - cos)),
                     5.0 * 4000 / pixels, True)

    records: list[Record] = []
    for k, (c, r) in enumerate(cells):
        if k in holes:
            continue
        x, y = X0 + c * TILE_M, Y0 + r * TILE_M
        path = f"lot_{r // 50:03d}/{_name(x + 10_000 if k in misnamed else x, y + TILE_M)}"
        records.append(dalle(path, x + (0.5 if k in shifted else 0.0), y, pixels=2000 if k in batch else 4000,
                             angle=0.3 if k in rotated else 0.0))
        if k in duplicates:
            records.append(dalle(f"livraison_2/{_name(x, y + TILE_M)}", x, y))
    for n in range(defects.cc48):
        x, y = 1_650_000.0 + n * TILE_M, 7_200_000.0
        records.append(dalle(f"cc48/{_name(x, y + TILE_M).replace('L93', 'CC48')}", x, y, epsg=3948))
    records += [DalleProblem(FileEntry(f"anomalies/{n:03d}.tif", 0), SkipReason.EMPTY, "the file is empty")
                for n in range(defects.skipped)]
    return records, defects


def run_quality(count: int) -> dict[str, Any]:
    """Time `assess` on a synthetic livrable; what it found, checked against what was placed."""
    from indexer.quality import assess

    records, defects = synthetic_livrable(count)
    cpu0 = _cpu_s()
    started = time.perf_counter()
    quality = assess(records)
    wall = time.perf_counter() - started
    cpu = _cpu_s() - cpu0
    counts = quality.counts()
    expected = {"holes": defects.holes, "duplicates": defects.duplicates, "off_grid": defects.shifted,
                "rotated": defects.rotated, "outliers": defects.outliers, "names": defects.misnamed,
                "skipped": defects.skipped}
    wrong = {k: (counts[k], v) for k, v in expected.items() if counts[k] != v}
    if wrong:
        raise RuntimeError(f"quality benchmark: found, expected: {wrong}")
    return {"dalles": quality.dalles, "errors": 0, "wall_s": wall, "cpu_s": cpu, "rss_mb": _peak_rss_mb(),
            "counts": counts, "verdict": quality.verdict()}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(count: int, workdir: Path) -> dict[str, Any]:
    """`run_quality` in a fresh Python process: what it measured.

    With ``PCRS_BENCH_IN_PROCESS=1`` (the tiny CI run of the whole benchmark) it runs in this process.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("PCRS_BENCH_IN_PROCESS") == "1":
        return run_quality(count)
    result = workdir / "quality-result.json"
    result.unlink(missing_ok=True)
    completed = subprocess.run([sys.executable, "-m", "tests.benchmarks.quality_bench", "--child", str(result),
                                "--count", str(count)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, timeout=CHILD_TIMEOUT_S, check=False, cwd=REPO)
    if completed.returncode != 0 or not result.exists():
        tail = completed.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise RuntimeError(f"quality benchmark failed (exit {completed.returncode}): " + " | ".join(tail))
    return json.loads(result.read_text())  # type: ignore[no-any-return]


def quality_row(count: int, workdir: Path) -> Row:
    """The benchmark table's ``quality`` row: `assess` of `count` synthetic dalles."""
    from tests.benchmarks.benchmark import Row

    return Row("quality", count, measure(count, workdir))


@click.command()
@click.option("--count", default=100_000, show_default=True, type=click.IntRange(10), help="Valid dalles.")
@click.option("--child", "child", type=click.Path(dir_okay=False, path_type=Path), hidden=True)
def main(count: int, child: Path | None) -> None:
    """Time the quality checks of a synthetic livrable of COUNT dalles with known defects."""
    if child is not None:
        child.write_text(json.dumps(run_quality(count)))
        return
    with tempfile.TemporaryDirectory(prefix="pcrs-quality-bench-") as folder:
        measured = measure(count, Path(folder))
    click.echo(f"quality of {measured['dalles']:,} dalles: {measured['wall_s']:.2f} s, CPU {measured['cpu_s']:.2f} s, "
               f"peak RSS {measured['rss_mb']:.0f} MB: {measured['verdict']}")


if __name__ == "__main__":
    main()
