"""The scan benchmark: a département-sized livrable, a distant server, our scan against the reference.

``make bench`` (``python -m tests.benchmarks``) generates a livrable of real 4000×4000 dalles (tiled JPEG and DEFLATE
GeoTIFF, lossy and lossless JPEG 2000) in 1,000-file folders, serves it from `latency_server`
(every request delayed, 20 ms by default), then for each size:

1. runs the reference approach, the way the current PCRS scanner reads: the file list from the
   listing pages, then every dalle opened as ``/vsicurl/URL`` with GDAL's default configuration,
   8 at a time (8 worker processes, since rasterio holds the GIL while GDAL waits);
2. runs our scan: `open_storage`, `scan_storage` on a fresh SQLite store, then `publish_outputs`
   (emprise and files), as ``pcrs-indexer index`` does;
3. re-runs our scan on the same store with nothing changed: only listing pages are requested.

Each run is a child process, so its wall time, CPU time and peak RSS are its own; requests and
bytes are counted by the server. A last row times the emprise, the store and the export of
100,000 synthetic dalles, without any I/O. The result is one plain-text table.

Generation is fast: one template per kind is written with rasterio, then each dalle is the
template's bytes with its georeferencing patched in place (the GeoTIFF ModelTiepoint doubles, the
GeoJP2 box's, and the GMLJP2 coordinates, rewritten at the same length).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from indexer.storages import Storage

log = logging.getLogger(__name__)

DALLE_PIXELS = 4000
RESOLUTION_M = 0.05
TILE_M = DALLE_PIXELS * RESOLUTION_M
TEMPLATE_ORIGIN = (500000.0, 6600000.0)
"""Upper-left corner of the templates; every coordinate near it is rewritten for each dalle."""
GRID_ORIGIN = (600000.0, 6900000.0)
"""Upper-left corner of the generated grid (Lambert-93, six-digit eastings, seven-digit northings)."""
PER_FOLDER = 1000
REFERENCE_PROCESSES = 8
SYNTHETIC_DALLES = 100_000
CHILD_TIMEOUT_S = 4 * 3600
REPO = Path(__file__).resolve().parents[2]
"""The repository's root: child runs import `tests.benchmarks` from there."""


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of dalle: how its template is written."""

    name: str
    ext: str
    profile: dict[str, Any]
    gradient_step: int
    """Pixels per grey level of the diagonal gradient: larger steps make smaller files."""


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("tiff-jpeg", ".tif", {"driver": "GTiff", "tiled": True, "blockxsize": 256, "blockysize": 256,
                               "compress": "jpeg", "photometric": "YCbCr", "jpeg_quality": 80}, 64),
    Kind("tiff-deflate", ".tif", {"driver": "GTiff", "tiled": True, "blockxsize": 256, "blockysize": 256,
                                  "compress": "deflate", "photometric": "RGB"}, 256),
    Kind("jp2-lossy", ".jp2", {"driver": "JP2OpenJPEG", "reversible": "NO", "quality": 10,
                               "blockxsize": 1024, "blockysize": 1024}, 64),
    Kind("jp2-lossless", ".jp2", {"driver": "JP2OpenJPEG", "reversible": "YES", "quality": 100,
                                  "blockxsize": 1024, "blockysize": 1024}, 256),
)}
KIND_CYCLE = ("tiff-jpeg",) * 5 + ("tiff-deflate",) + ("jp2-lossy",) * 3 + ("jp2-lossless",)
"""The mix of a generated livrable, repeated: half tiled JPEG GeoTIFF, 40 % JPEG 2000."""


# --------------------------------------------------------------------------------------------
# Livrable generation
# --------------------------------------------------------------------------------------------


def write_template(kind: Kind, path: Path, pixels: int = DALLE_PIXELS) -> Path:
    """Write the template dalle of a kind at `TEMPLATE_ORIGIN`: RGB bytes, a smooth gradient, `TILE_M` wide.

    Fewer `pixels` than a PCRS dalle's 4000 make a coarser dalle of the same extent (for tests).
    """
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.add.outer(np.arange(pixels), np.arange(pixels))
    gradient = (ramp // kind.gradient_step % 256).astype("uint8")
    transform = from_origin(*TEMPLATE_ORIGIN, TILE_M / pixels, TILE_M / pixels)
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(
            path, "w", width=pixels, height=pixels, count=3, dtype="uint8", crs="EPSG:2154",
            transform=transform, **kind.profile) as dst:
        dst.write(np.stack([gradient, gradient[::-1], gradient.T]))
    return path


_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?")


@dataclass(frozen=True, slots=True)
class Template:
    """A template dalle's bytes and where its georeferencing lies in them.

    `doubles` are (offset, struct format, axis) of binary coordinates (GeoTIFF ModelTiepoint,
    also inside a GeoJP2 box); `texts` are (offset, length, axis, offset from the origin,
    decimals) of coordinates written as text (GMLJP2).
    """

    kind: str
    ext: str
    data: bytes
    doubles: tuple[tuple[int, str, str], ...]
    texts: tuple[tuple[int, int, str, float, int], ...]

    @classmethod
    def of(cls, kind: Kind, data: bytes) -> Template:
        """Locate the template origin's coordinates in a template file's bytes."""
        doubles: list[tuple[int, str, str]] = []
        for axis, value in zip("xy", TEMPLATE_ORIGIN, strict=True):
            for fmt in ("<d", ">d"):
                packed = struct.pack(fmt, value)
                start = data.find(packed)
                while start != -1:
                    doubles.append((start, fmt, axis))
                    start = data.find(packed, start + 1)
        if {axis for _, _, axis in doubles} != {"x", "y"}:
            raise RuntimeError(f"{kind.name} template: the origin is not stored as binary doubles")
        texts: list[tuple[int, int, str, float, int]] = []
        if kind.ext == ".jp2":
            header_end = data.find(b"jp2c")
            for match in _NUMBER.finditer(data, 0, header_end if header_end > 0 else len(data)):
                token = match.group()
                value = float(token)
                decimals = len(token.split(b".")[1]) if b"." in token else 0
                for axis, origin in zip("xy", TEMPLATE_ORIGIN, strict=True):
                    if abs(value - origin) < 10 * TILE_M:
                        texts.append((match.start(), len(token), axis, value - origin, decimals))
        return cls(kind.name, kind.ext, data, tuple(doubles), tuple(texts))

    def render(self, origin: tuple[float, float]) -> bytearray:
        """The bytes of a dalle whose upper-left corner is `origin`."""
        out = bytearray(self.data)
        shift = {"x": origin[0] - TEMPLATE_ORIGIN[0], "y": origin[1] - TEMPLATE_ORIGIN[1]}
        for offset, fmt, axis in self.doubles:
            out[offset:offset + 8] = struct.pack(fmt, TEMPLATE_ORIGIN["xy".index(axis)] + shift[axis])
        for offset, length, axis, delta, decimals in self.texts:
            text = f"{origin['xy'.index(axis)] + delta:.{decimals}f}".encode()
            if len(text) != length:
                raise ValueError(f"coordinate {text!r} does not fit the template's {length} characters")
            out[offset:offset + length] = text
        return out


def load_templates(folder: Path, pixels: int = DALLE_PIXELS) -> dict[str, Template]:
    """The template of every kind, written into `folder` when missing."""
    templates = {}
    for kind in KINDS.values():
        path = folder / f"template-{kind.name}-{pixels}{kind.ext}"
        if not path.exists():
            write_template(kind, path, pixels)
        templates[kind.name] = Template.of(kind, path.read_bytes())
    return templates


def dalle_origin(index: int, count: int) -> tuple[float, float]:
    """Upper-left corner of the `index`-th dalle of a square-ish grid of `count` dalles."""
    cols = max(1, math.ceil(math.sqrt(count)))
    row, col = divmod(index, cols)
    return GRID_ORIGIN[0] + col * TILE_M, GRID_ORIGIN[1] - row * TILE_M


def dalle_relpath(index: int, count: int) -> str:
    """Where the `index`-th dalle goes: 1,000 per folder, named by its corner in km like PCRS."""
    x, y = dalle_origin(index, count)
    ext = KINDS[KIND_CYCLE[index % len(KIND_CYCLE)]].ext
    return f"lot_{index // PER_FOLDER:03d}/PCRS_{x / 1000:07.3f}_{y / 1000:08.3f}_L93_5cm{ext}"


@dataclass(frozen=True, slots=True)
class GeneratedLivrable:
    """A generated livrable: where, how many dalles, how many bytes, how long it took."""

    root: Path
    count: int
    total_bytes: int
    seconds: float


def generate_livrable(root: Path, count: int, templates: dict[str, Template]) -> GeneratedLivrable:
    """Write `count` dalles under `root`, reusing a complete earlier generation of the same size."""
    manifest = root.with_name(root.name + ".json")
    signature = {"count": count, "kinds": list(KIND_CYCLE), "sizes": {k: len(t.data) for k, t in templates.items()}}
    if manifest.exists() and root.is_dir():
        previous = json.loads(manifest.read_text())
        if previous.get("signature") == signature:
            return GeneratedLivrable(root, count, int(previous["total_bytes"]), 0.0)
    if root.exists():
        shutil.rmtree(root)
    started = time.perf_counter()
    total = 0
    folder = ""
    for index in range(count):
        rel = dalle_relpath(index, count)
        if not rel.startswith(folder + "/"):
            folder = rel.split("/", 1)[0]
            (root / folder).mkdir(parents=True, exist_ok=True)
        data = templates[KIND_CYCLE[index % len(KIND_CYCLE)]].render(dalle_origin(index, count))
        fd = os.open(root / rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        total += len(data)
    seconds = time.perf_counter() - started
    check_livrable(root, count)
    manifest.write_text(json.dumps({"signature": signature, "total_bytes": total}))
    return GeneratedLivrable(root, count, total, seconds)


def check_livrable(root: Path, count: int) -> None:
    """Open a few generated dalles of each kind with GDAL and check where they lie and their CRS."""
    import rasterio

    picks = sorted({*range(min(count, len(KIND_CYCLE))), count - 1, count // 2})
    for index in picks:
        x, y = dalle_origin(index, count)
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(root / dalle_relpath(index, count)) as src:
            bounds = tuple(round(v, 6) for v in src.bounds)
            epsg = src.crs.to_epsg() if src.crs else None
        expected = (x, y - TILE_M, x + TILE_M, y)
        if bounds != expected or epsg != 2154:
            raise RuntimeError(f"generated dalle {index} is wrong: bounds {bounds}, EPSG {epsg}, "
                               f"expected {expected}, EPSG 2154")


# --------------------------------------------------------------------------------------------
# Runs, each in a child process
# --------------------------------------------------------------------------------------------


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """This process's peak resident set size, in MiB.

    ``VmHWM`` belongs to the process's own memory map, so unlike ``ru_maxrss`` (which Linux
    carries across ``exec``) it does not include the parent's size at the time of the fork.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reference_listing(root_url: str, max_pages: int = 100_000) -> tuple[list[str], list[int | None]]:
    """The raster URLs below a listing URL and their sizes, crawled page by page as a script would."""
    import urllib.request

    from indexer.read.formats import raster_mime
    from indexer.storages.html_listing import parse_listing

    pending = [root_url]
    urls: list[str] = []
    sizes: list[int | None] = []
    for _ in range(max_pages):
        if not pending:
            break
        page = pending.pop(0)
        with urllib.request.urlopen(page, timeout=60) as response:
            text = response.read().decode("utf-8", "replace")
        for link in parse_listing(text, page):
            if link.is_dir:
                pending.append(link.url)
            elif raster_mime(link.url):
                urls.append(link.url)
                sizes.append(link.size)
    return urls, sizes


GDAL_TUNED = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_INGESTED_BYTES_AT_OPEN": "16384",
              "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.jp2", "GDAL_HTTP_MULTIPLEX": "YES"}
"""What an expert sets for GDAL to open many remote headers: no folder listing, one 16 KiB first read."""
GDAL_TUNED_PROCESSES = (8, 32, 64)
"""The tuned peer runs in each of these numbers of processes; the best is kept."""


def reference_read(path: str) -> dict[str, Any]:
    """What the reference collects from one dalle, opened by GDAL as `path` (``/vsicurl/URL``, ``/vsis3/…``)."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as src:
            crs = src.crs
            compression = (src.compression.name if src.compression
                           else src.tags(ns="IMAGE_STRUCTURE").get("COMPRESSION_REVERSIBILITY"))
            meta: dict[str, Any] = {
                "width": src.width, "height": src.height, "count": src.count, "dtypes": list(src.dtypes),
                "epsg": crs.to_epsg() if crs else None, "transform": list(src.transform)[:6],
                "bounds": list(src.bounds), "compression": compression,
            }
    except RasterioError as exc:
        meta = {"error": str(exc)[:200]}
    meta["pid"] = os.getpid()
    meta["maxrss_mb"] = peak_rss_mb()
    return meta


def _gdal_worker(env: dict[str, str]) -> None:
    os.environ.update(env)  # GDAL reads its configuration from the environment at each use


def run_gdal_pool(paths: list[str], processes: int, env: dict[str, str]) -> dict[str, Any]:
    """`reference_read` of every path in `processes` forked workers (rasterio holds the GIL while GDAL
    waits), with `env` as GDAL's configuration: dalles, errors, CPU and the summed peak RSS."""
    import multiprocessing

    import rasterio  # noqa: F401 - imported before the workers fork, as a long-running scanner would

    cpu0 = _cpu_s(resource.RUSAGE_CHILDREN)
    pool = multiprocessing.get_context("fork").Pool(processes, initializer=_gdal_worker, initargs=(env,))
    try:
        records = list(pool.imap_unordered(reference_read, paths, chunksize=1))
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    worker_rss: dict[int, float] = {}
    for record in records:
        worker_rss[record["pid"]] = max(worker_rss.get(record["pid"], 0.0), record["maxrss_mb"])
    return {"dalles": sum(1 for r in records if "error" not in r),
            "errors": sum(1 for r in records if "error" in r),
            "cpu_s": _cpu_s(resource.RUSAGE_CHILDREN) - cpu0, "rss_mb": sum(worker_rss.values())}


def run_reference(params: dict[str, Any]) -> dict[str, Any]:
    """GDAL opening every dalle in worker processes: the file list from the listing pages (HTTP) or
    from boto3 (S3), then `run_gdal_pool` with GDAL's defaults or the configuration given."""
    cpu0 = _cpu_s(resource.RUSAGE_SELF)
    started = time.perf_counter()
    if params.get("s3_endpoint"):
        from tests.benchmarks.remote import s3_listing

        paths = [f"/vsis3/{params['bucket']}/{key}" for key in s3_listing(params["s3_endpoint"], params["prefix"])]
    else:
        urls, _sizes = reference_listing(params["url"])
        paths = ["/vsicurl/" + url for url in urls]
    listed = time.perf_counter()
    pool = run_gdal_pool(paths, int(params.get("processes", REFERENCE_PROCESSES)), params.get("env", {}))
    wall = time.perf_counter() - started
    return {**pool, "wall_s": wall, "list_s": listed - started,
            "cpu_s": _cpu_s(resource.RUSAGE_SELF) - cpu0 + pool["cpu_s"],
            "rss_mb": peak_rss_mb() + pool["rss_mb"], "read": len(paths), "reused": 0,
            "processes": int(params.get("processes", REFERENCE_PROCESSES))}


def loopback_storage(url: str, connections: int = 32, key_file: str | None = None) -> Storage:
    """Our storage for a URL on 127.0.0.1: the address policy lets loopback through; as many
    connections as reads in flight, as ``pcrs-indexer index --concurrency`` opens."""
    from indexer.storages import AccessOptions, open_storage
    from indexer.storages.addresses import AddressPolicy

    return open_storage(url, options=AccessOptions(addresses=AddressPolicy.of(["127.0.0.0/8"]),
                                                   connections=connections,
                                                   sftp_key_file=Path(key_file) if key_file else None))


def run_ours(params: dict[str, Any]) -> dict[str, Any]:
    """Our scan as ``pcrs-indexer index`` runs it: scan, emprise, outputs; phases timed."""
    from datetime import date

    from indexer.pipeline import ScanOptions, scan_storage
    from indexer.publish import publish_outputs
    from indexer.store.engine import create_store

    defaults = ScanOptions()
    options = ScanOptions(concurrency=int(params.get("concurrency") or defaults.concurrency),
                          header_bytes=int(params.get("header_bytes") or defaults.header_bytes),
                          full=bool(params.get("full", False)))
    cpu0 = _cpu_s(resource.RUSAGE_SELF) + _cpu_s(resource.RUSAGE_CHILDREN)  # any child process included
    started = time.perf_counter()
    storage = loopback_storage(params["url"], options.concurrency, params.get("key"))
    engine = create_store(f"sqlite:///{params['store']}")
    list_files = storage.list_files
    listing_s: list[float] = []

    listing_cpu_s: list[float] = []

    def timed_list_files() -> Any:
        begin, begin_cpu = time.perf_counter(), _cpu_s(resource.RUSAGE_SELF)
        try:
            return list_files()
        finally:
            listing_s.append(time.perf_counter() - begin)
            listing_cpu_s.append(_cpu_s(resource.RUSAGE_SELF) - begin_cpu)

    setattr(storage, "list_files", timed_list_files)  # noqa: B010 - time the listing stage alone
    try:
        result = scan_storage(storage, engine, options)
    finally:
        storage.close()
    scanned = time.perf_counter()
    scan_cpu = _cpu_s(resource.RUSAGE_SELF) + _cpu_s(resource.RUSAGE_CHILDREN) - cpu0
    publication = publish_outputs(Path(params["out"]), result, None, None, date.today())
    emprised = scanned + publication.emprise_s
    wall = time.perf_counter() - started
    return {
        "dalles": len(result.dalles), "errors": len(result.problems),
        "problems": sorted({p.reason for p in result.problems}),
        "wall_s": wall, "list_s": sum(listing_s), "scan_s": scanned - started,
        "emprise_s": emprised - scanned, "export_s": wall - (emprised - started),
        "cpu_s": _cpu_s(resource.RUSAGE_SELF) + _cpu_s(resource.RUSAGE_CHILDREN) - cpu0, "scan_cpu_s": scan_cpu,
        "list_cpu_s": sum(listing_cpu_s), "rss_mb": peak_rss_mb(),
        "read": result.raster_files - result.reused, "reused": result.reused,
        "concurrency": options.concurrency, "header_bytes": options.header_bytes,
    }


def synthetic_dalles(count: int) -> Iterator[Any]:
    """`count` valid Lambert-93 dalles on the benchmark grid, as a scan makes them (one shared WKT string)."""
    from pyproj import CRS

    from indexer.models import Dalle, FileEntry

    wkt = CRS.from_epsg(2154).to_wkt()
    kinds = [KINDS[name] for name in KIND_CYCLE]
    for index in range(count):
        x, y = dalle_origin(index, count)
        kind = kinds[index % len(kinds)]
        jp2 = kind.ext == ".jp2"
        yield Dalle(
            file=FileEntry(dalle_relpath(index, count), 300_000 + index, "2026-01-01T00:00:00"),
            mime="image/jp2" if jp2 else "image/tiff",
            width=DALLE_PIXELS, height=DALLE_PIXELS,
            bands=("Red(Byte)", "Green(Byte)", "Blue(Byte)"),
            compression=("LOSSY" if kind.profile.get("reversible") == "NO" else "LOSSLESS") if jp2
            else str(kind.profile["compress"]).upper(),
            epsg=2154, crs_wkt=wkt,
            corners=((x, y), (x + TILE_M, y), (x + TILE_M, y - TILE_M), (x, y - TILE_M)),
            resolution_cm=5.0, open=True)


def run_synthetic(params: dict[str, Any]) -> dict[str, Any]:
    """Emprise, store and export of synthetic dalles, no I/O but the local files: timed, peak RSS."""
    from datetime import date

    from indexer.models import ScanResult
    from indexer.publish import publish_outputs
    from indexer.store import catalog, scans
    from indexer.store.engine import create_store

    count = int(params["count"])
    cpu0 = _cpu_s(resource.RUSAGE_SELF)
    started = time.perf_counter()
    dalles = list(synthetic_dalles(count))
    made = time.perf_counter()
    engine = create_store(f"sqlite:///{params['store']}")
    storage = catalog.storage_id(engine, "http://synthetic/")
    scan = scans.start_scan(engine, storage)
    scans.finish_scan(engine, storage, scan, dalles, [], {"listed": count, "read": count})
    stored = time.perf_counter()
    result = ScanResult(source="http://synthetic/", listed_files=count, dalles=dalles)
    publication = publish_outputs(Path(params["out"]), result, None, None, date.today())
    wall = time.perf_counter() - started
    emprise = publication.emprise
    return {
        "dalles": count, "errors": 0, "wall_s": wall, "records_s": made - started,
        "emprise_s": publication.emprise_s, "store_s": stored - made,
        "export_s": wall - (stored - started) - publication.emprise_s,
        "cpu_s": _cpu_s(resource.RUSAGE_SELF) - cpu0, "rss_mb": peak_rss_mb(),
        "emprise_parts": len(getattr(emprise, "geoms", [emprise])) if emprise is not None else 0,
    }


def _remote_runner(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def run(params: dict[str, Any]) -> dict[str, Any]:
        from tests.benchmarks import remote

        return getattr(remote, name)(params)  # type: ignore[no-any-return]

    return run


RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "reference": run_reference, "ours": run_ours, "synthetic": run_synthetic,
    "ftp-reference": _remote_runner("run_ftp_reference"),
    "sftp-reference": _remote_runner("run_sftp_gateway_reference"),
    "sftp-peer": _remote_runner("run_sftp_peer")}


def run_child(runner: str, params: dict[str, Any], workdir: Path, timeout_s: float = CHILD_TIMEOUT_S
              ) -> dict[str, Any]:
    """Run one of `RUNNERS` in a fresh Python process and return what it measured.

    With ``PCRS_BENCH_IN_PROCESS=1`` (the tiny CI run) it runs in this process instead: the paths
    are the same, but CPU and RSS are then this whole process's, and no import is paid again.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("PCRS_BENCH_IN_PROCESS") == "1":
        return RUNNERS[runner](json.loads(json.dumps(params)))
    params_path = workdir / f"{runner}-params.json"
    result_path = workdir / f"{runner}-result.json"
    params_path.write_text(json.dumps(params))
    result_path.unlink(missing_ok=True)
    completed = subprocess.run([sys.executable, "-m", "tests.benchmarks.benchmark", runner, str(params_path),
                                str(result_path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, timeout=timeout_s, check=False, cwd=REPO)
    if completed.returncode != 0 or not result_path.exists():
        (workdir / f"{runner}-stderr.txt").write_bytes(completed.stderr)
        tail = completed.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise RuntimeError(f"benchmark run {runner!r} failed (exit {completed.returncode}): " + " | ".join(tail))
    return json.loads(result_path.read_text())  # type: ignore[no-any-return]


def _child_main(argv: list[str]) -> int:
    """Entry point of a child run: ``python -m tests.benchmarks.benchmark RUNNER PARAMS.json RESULT.json``."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    runner, params_path, result_path = argv
    result = RUNNERS[runner](json.loads(Path(params_path).read_text()))
    Path(result_path).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------
# The benchmark: generate, serve, run, tabulate
# --------------------------------------------------------------------------------------------


STORAGES = ("http", "ftp", "sftp", "s3")
FTP_REFERENCE_DALLES = 500


@dataclass(frozen=True, slots=True)
class BenchmarkConfig:
    """What the benchmark runs.

    Args:
        sizes: livrable sizes, in dalles, each scanned by the reference and by us.
        latency_ms: round trip of the delay line in front of every server.
        workdir: where the livrables, templates and stores go; a temporary folder when None.
        keep: keep what was generated (a later run in the same workdir reuses the livrables).
        concurrency: our header reads in flight; None for the scan's default.
        header_bytes: our prefix read; None for the scan's default.
        synthetic_dalles: size of the no-I/O emprise/store/export row; 0 leaves it out.
        reference_processes: the HTTP and SFTP references' reads in flight.
        storages: the storages measured, among `STORAGES`.
        tuned_processes: the process counts the GDAL tuned peers try; the best is kept.
        ftp_reference_dalles: the FTP reference reads the first dalles only (one at a time, several
            logins each, it would take hours at 10,000): its rate is theirs.
    """

    sizes: tuple[int, ...] = (1000, 10_000)
    latency_ms: float = 20.0
    workdir: Path | None = None
    keep: bool = False
    concurrency: int | None = None
    header_bytes: int | None = None
    synthetic_dalles: int = SYNTHETIC_DALLES
    reference_processes: int = REFERENCE_PROCESSES
    template_pixels: int = DALLE_PIXELS
    storages: tuple[str, ...] = STORAGES
    tuned_processes: tuple[int, ...] = GDAL_TUNED_PROCESSES
    ftp_reference_dalles: int = FTP_REFERENCE_DALLES


@dataclass(slots=True)
class Row:
    """One measured run: what the child process measured and what the server counted."""

    label: str
    size: int
    measured: dict[str, Any]
    server: dict[str, Any] = field(default_factory=dict)
    reference: Row | None = None
    peer: Row | None = None
    storage: str = ""

    @property
    def dalles(self) -> int:
        """Dalles indexed (or collected, for a reference or a peer)."""
        return int(self.measured["dalles"])

    @property
    def count(self) -> int:
        """The dalles the figures are per: the livrable's, or those a sampled run read."""
        return self.dalles if self.measured.get("sampled") else self.size

    @property
    def per_second(self) -> float:
        """Dalles per second of wall time."""
        return self.count / self.measured["wall_s"] if self.measured["wall_s"] else 0.0

    @property
    def requests_per_dalle(self) -> float | None:
        """Requests per dalle, listing included, as the server counts them."""
        return self.server["requests"] / self.count if self.server.get("requests") is not None else None

    @property
    def kb_per_dalle(self) -> float | None:
        """KiB sent by the server per dalle, headers and listing included."""
        return self.server["bytes_sent"] / 1024 / self.count if self.server else None

    @property
    def cpu_ms_per_dalle(self) -> float:
        """CPU time of the run's processes (not the server's) per dalle."""
        return 1000 * float(self.measured["cpu_s"]) / self.count


@dataclass(slots=True)
class BenchmarkResult:
    """Every row measured, the generation times and the table."""

    config: BenchmarkConfig
    rows: list[Row]
    generation: list[GeneratedLivrable]
    failures: list[str] = field(default_factory=list)
    """Runs that failed (the storage and size, and why): their storage's other rows are missing."""

    def row(self, label: str, size: int) -> Row:
        """The row of a run, by label and size."""
        for row in self.rows:
            if row.label == label and row.size == size:
                return row
        raise KeyError((label, size))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready results."""
        return {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.config).items()},
            "generation": [{"count": g.count, "total_bytes": g.total_bytes, "seconds": round(g.seconds, 3)}
                           for g in self.generation],
            "failures": self.failures,
            "rows": [{"label": r.label, "storage": r.storage, "size": r.size, "measured": r.measured,
                      "server": r.server, "dalles_per_s": r.per_second, "requests_per_dalle": r.requests_per_dalle,
                      "kb_per_dalle": r.kb_per_dalle, "cpu_ms_per_dalle": r.cpu_ms_per_dalle,
                      "vs_reference": r.per_second / r.reference.per_second if r.reference else None,
                      "vs_peer": r.per_second / r.peer.per_second if r.peer else None}
                     for r in self.rows],
        }

    def table(self) -> str:
        """The plain-text table, one line per row, with a legend and the failed runs."""
        return "\n".join([format_table(self.rows, self.config), *(f"FAILED: {f}" for f in self.failures)])


def _ratio(value: float | None, reference: float | None, inverse: bool = False) -> str:
    if value is None or reference is None or value == 0 or reference == 0:
        return "-"
    ratio = reference / value if inverse else value / reference
    return f"{ratio:.1f}x" if ratio < 100 else f"{ratio:.0f}x"


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def format_table(rows: list[Row], config: BenchmarkConfig) -> str:
    """The benchmark table: one line per run, ratios to the reference and the peer of the same size."""
    header = ("run", "dalles", "wall s", "dalles/s", "vs ref", "vs peer", "req/dalle", "vs ref", "KiB/dalle",
              "vs ref", "raster req", "CPU ms/dalle", "peak RSS MB", "list s", "emprise s")
    lines = [header]
    for row in rows:
        ref, peer = row.reference, row.peer
        m = row.measured
        lines.append((
            row.label, f"{row.dalles:,} of {row.size:,}" if row.measured.get("sampled") else f"{row.size:,}",
            _num(m["wall_s"], 2), _num(row.per_second, 0),
            _ratio(row.per_second, ref.per_second) if ref else "-",
            _ratio(row.per_second, peer.per_second) if peer else "-",
            _num(row.requests_per_dalle, 3),
            _ratio(row.requests_per_dalle, ref.requests_per_dalle, inverse=True) if ref else "-",
            _num(row.kb_per_dalle, 1),
            _ratio(row.kb_per_dalle, ref.kb_per_dalle, inverse=True) if ref else "-",
            f"{row.server['raster_requests']:,}" if row.server.get("raster_requests") is not None else "-",
            _num(row.cpu_ms_per_dalle, 2), _num(m["rss_mb"], 0),
            _num(m.get("list_s"), 2), _num(m.get("emprise_s"), 2),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = []
    for n, line in enumerate(lines):
        text.append("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                              for i, cell in enumerate(line)))
        if n == 0:
            text.append("  ".join("-" * w for w in widths))
    text.append("")
    text.append(
        f"Every server behind a TCP delay line of {config.latency_ms:g} ms round trip. 'vs ref', 'vs peer': "
        "ours/theirs for dalles/s, theirs/ours for requests and KiB, against the run of the same storage and size. "
        "References (the current scanner's ways): HTTP, /vsicurl/ with GDAL's defaults in "
        f"{config.reference_processes} processes; FTP, one dalle at a time, each 16 KiB block through a fresh login "
        f"(the whole listing, then the first {config.ftp_reference_dalles:,} dalles: 'N of M'); "
        f"SFTP, GDAL's default /vsicurl/ through an HTTP gateway on one cached SFTP connection, "
        f"{config.reference_processes} processes. Peers: 'GDAL tuned' (/vsicurl/ or /vsis3/ with "
        "GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR, GDAL_INGESTED_BYTES_AT_OPEN=16384, CPL_VSIL_CURL_ALLOWED_EXTENSIONS, "
        "GDAL_HTTP_MULTIPLEX=YES; the best of its process counts, in brackets); SFTP, rasterio through sshfs file "
        "objects, 8 threads. Requests: HTTP and S3 requests and FTP commands, counted by the servers, "
        "listing included (OpenSSH logs no SFTP request); KiB: what the server sent. Peak RSS sums a run's "
        "processes; CPU is the run's own, not the server's. 'synthetic': emprise, store and export of records "
        "made in memory, no network.")
    return "\n".join(text)


@contextmanager
def _workdir(path: Path | None, keep: bool) -> Iterator[Path]:
    owned = path is None
    root = Path(tempfile.mkdtemp(prefix="pcrs-bench-")) if path is None else path
    root.mkdir(parents=True, exist_ok=True)
    try:
        yield root
    finally:
        if not keep:
            if owned:
                shutil.rmtree(root, ignore_errors=True)
            else:
                for name in ("templates", "livrables", "runs"):
                    shutil.rmtree(root / name, ignore_errors=True)


def run_benchmark(config: BenchmarkConfig, progress: Callable[[str], None] = log.info) -> BenchmarkResult:
    """Generate the livrables, serve them from every storage behind the delay line, and measure each size.

    Every server, delay line and child process is stopped before returning, also on error.
    """
    rows: list[Row] = []
    failures: list[str] = []
    generation: list[GeneratedLivrable] = []
    with _workdir(config.workdir, config.keep) as workdir:
        livrables = workdir / "livrables"
        runs = workdir / "runs"
        progress(f"workdir {workdir}")
        templates = load_templates(workdir / "templates", config.template_pixels)
        for size in config.sizes:
            started = time.perf_counter()
            generated = generate_livrable(livrables / f"livrable-{size}", size, templates)
            generation.append(generated)
            progress(f"livrable of {size:,} dalles ({generated.total_bytes / 1e9:.2f} GB) ready in "
                     f"{time.perf_counter() - started:.1f} s")
        with _storages(config, workdir, livrables) as storages:
            for name in config.storages:
                for size in config.sizes:
                    try:
                        rows.extend(MEASURES[name](storages[name], size, runs / f"{name}-{size}", config, progress))
                    except RuntimeError as exc:  # one storage's failed run leaves the others measured
                        progress(f"{name} at {size:,} dalles: {exc}")
                        failures.append(f"{name} at {size:,} dalles: {exc}")
        if config.synthetic_dalles:
            progress(f"synthetic: emprise, store and export of {config.synthetic_dalles:,} dalles")
            folder = runs / f"synthetic-{config.synthetic_dalles}"
            shutil.rmtree(folder, ignore_errors=True)
            measured = run_child("synthetic", {"count": config.synthetic_dalles,
                                               "store": str(folder / "state.sqlite"),
                                               "out": str(folder / "out")}, folder)
            rows.append(Row("synthetic", config.synthetic_dalles, measured))
            from tests.benchmarks.quality_bench import quality_row  # the quality checks of as many dalles

            rows.append(quality_row(config.synthetic_dalles, runs / f"quality-{config.synthetic_dalles}"))
        result = BenchmarkResult(config, rows, generation, failures)
        if config.keep:
            (workdir / "results.json").write_text(json.dumps(result.as_dict(), indent=2))
    return result


@contextmanager
def _storages(config: BenchmarkConfig, workdir: Path, livrables: Path) -> Iterator[dict[str, Any]]:
    """The servers of the storages measured, each behind its delay line, stopped on the way out."""
    from contextlib import ExitStack

    from tests.benchmarks import remote
    from tests.benchmarks.latency_server import LatencyServer

    latency_s = config.latency_ms / 1000
    servers: dict[str, Any] = {}
    with ExitStack() as stack:
        if "http" in config.storages:
            servers["http"] = stack.enter_context(LatencyServer(livrables, config.latency_ms))
        remote_names = [name for name in ("ftp", "sftp", "s3") if name in config.storages]
        if remote_names:
            remote.public_root(workdir)
            lines = remote.LineThread()
            stack.callback(lines.close)
            kinds = {"ftp": remote.FTPStorage, "sftp": remote.SFTPStorage, "s3": remote.S3Storage}
            for name in remote_names:
                server = kinds[name](livrables, workdir / "servers" / name, lines, latency_s)
                stack.callback(server.stop)
                servers[name] = server
        yield servers


class _Measure:
    """Runs of one storage and size: each a child process, the server's counters reset before and read after."""

    def __init__(self, storage: str, server: Any, size: int, folder: Path, progress: Callable[[str], None]) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        self.storage, self.server, self.size, self.folder, self.progress = storage, server, size, folder, progress

    def __call__(self, label: str, runner: str, params: dict[str, Any]) -> Row:
        label = f"{self.storage} {label}"
        self.progress(f"{label}: {self.size:,} dalles")
        self.server.reset()
        measured = run_child(runner, params, self.folder / label.replace(" ", "-").replace("/", ""))
        row = Row(label, self.size, measured, self.server.stats(), storage=self.storage)
        if measured["dalles"] != min(self.size, int(params.get("limit") or self.size)):
            raise RuntimeError(f"{label} indexed {measured['dalles']} of {self.size} dalles: {measured}")
        self.progress(f"{label}: {row.per_second:,.0f} dalles/s, {_num(row.requests_per_dalle, 3)} requests/dalle, "
                      f"{_num(row.kb_per_dalle, 1)} KiB/dalle")
        return row

    def ours(self, url: str, config: BenchmarkConfig, reference: Row | None, peer: Row | None,
             key: Path | None = None) -> list[Row]:
        """Our scan on a fresh store, then the re-scan with nothing changed."""
        params = {"url": url, "store": str(self.folder / "state.sqlite"), "out": str(self.folder / "out"),
                  "concurrency": config.concurrency, "header_bytes": config.header_bytes,
                  "key": str(key) if key else None}
        first = self("ours", "ours", params)
        again = self("ours re-scan", "ours", params)
        for row in (first, again):
            row.reference, row.peer = reference, peer
        return [first, again]

    def best_tuned(self, params: dict[str, Any], config: BenchmarkConfig, env: dict[str, str] | None = None) -> Row:
        """GDAL tuned in each process count; the fastest run is kept, labelled with its count."""
        env = {**GDAL_TUNED, **(env or {})}
        runs = [self(f"GDAL tuned ({n})", "reference", {**params, "processes": n, "env": env})
                for n in config.tuned_processes]
        best = max(runs, key=lambda r: r.per_second)
        best.measured["tried"] = {r.measured["processes"]: round(r.per_second, 1) for r in runs}
        return best


def _measure_http(server: Any, size: int, folder: Path, config: BenchmarkConfig,
                  progress: Callable[[str], None]) -> list[Row]:
    measure = _Measure("http", server, size, folder, progress)
    url = f"{server.url}livrable-{size}/"
    reference = measure("reference", "reference", {"url": url, "processes": config.reference_processes})
    tuned = measure.best_tuned({"url": url}, config)
    return [reference, tuned, *measure.ours(url, config, reference, tuned)]


def _measure_ftp(server: Any, size: int, folder: Path, config: BenchmarkConfig,
                 progress: Callable[[str], None]) -> list[Row]:
    measure = _Measure("ftp", server, size, folder, progress)
    reference = measure("reference", "ftp-reference", {"port": server.line.port, "folder": f"livrable-{size}",
                                                       "limit": config.ftp_reference_dalles})
    return [reference, *measure.ours(server.url(size), config, reference, None)]


def _measure_sftp(server: Any, size: int, folder: Path, config: BenchmarkConfig,
                  progress: Callable[[str], None]) -> list[Row]:
    measure = _Measure("sftp", server, size, folder, progress)
    params = {"port": server.line.port, "user": server.user, "key": str(server.server.client_key),
              "folder": f"{server.livrables}/livrable-{size}", "processes": config.reference_processes}
    reference = measure("reference", "sftp-reference", params)
    peer = measure("sshfs", "sftp-peer", params)
    ours = measure.ours(server.url(size), config, reference, peer, key=server.server.client_key)
    return [reference, peer, *ours]


def _measure_s3(server: Any, size: int, folder: Path, config: BenchmarkConfig,
                progress: Callable[[str], None]) -> list[Row]:
    progress(f"s3: uploading the livrable of {size:,} dalles")
    server.upload(size)
    measure = _Measure("s3", server, size, folder, progress)
    from tests.benchmarks.remote import BUCKET, s3_gdal_env

    tuned = measure.best_tuned({"s3_endpoint": server.endpoint, "bucket": BUCKET, "prefix": f"livrable-{size}"},
                               config, s3_gdal_env(server.endpoint))
    return [tuned, *measure.ours(server.url(size), config, None, tuned)]


MEASURES: dict[str, Callable[[Any, int, Path, BenchmarkConfig, Callable[[str], None]], list[Row]]] = {
    "http": _measure_http, "ftp": _measure_ftp, "sftp": _measure_sftp, "s3": _measure_s3}


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
