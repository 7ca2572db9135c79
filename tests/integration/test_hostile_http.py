"""Hostile and misconfigured HTTP servers: every scan ends in bounded time and memory, says why.

Each scenario runs ``pcrs-indexer index`` as a child process against a loopback server written to
misbehave (`tests/servers/fault_server.py`) or a stock configuration, and asserts its exit code,
its one-line error, its wall time, its peak RSS (the child's own) and that the outputs of the
previous good scan are intact when the scan fails.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rasterio.crs import CRS

from indexer.pipeline import index_livrable
from indexer.sample import write_dalle
from indexer.settings import Settings
from tests.servers.measure import Run, pcrs_indexer, run_measured
from tests.servers.servers import FaultyHTTP, MotoS3, Nginx

pytestmark = pytest.mark.servers

RSS_BOUND_MB = 350.0
"""Peak RSS allowed to a scan whatever the server sends (a scan of the sample takes about 170 MB)."""
MARGIN_S = 3.0
"""Margin over a deadline, besides the time the child takes to start and stop (`startup_s`)."""
TIMEOUT_S, RETRIES = 1.5, 2
DEADLINE_S = TIMEOUT_S * (RETRIES + 1)

OUTPUT_FILES = ("dalles.geojson", "livrables.geojson", "report.json")


@pytest.fixture(scope="module")
def good_outputs(sample_livrable: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The outputs of a good scan of the sample, which a failed scan must leave as they are."""
    folder = tmp_path_factory.mktemp("good")
    settings = Settings(_env_file=None, data_dir=folder)  # type: ignore[call-arg]
    index_livrable(settings, str(sample_livrable), folder / "out", db_url=f"sqlite:///{folder / 'state.sqlite'}")
    return folder / "out"


@pytest.fixture
def out(good_outputs: Path, tmp_path: Path) -> Path:
    """An output folder holding the previous good outputs."""
    return Path(shutil.copytree(good_outputs, tmp_path / "out"))


def intact(out: Path, good: Path) -> bool:
    """Whether `out` still holds exactly the good outputs."""
    return all((out / name).read_bytes() == (good / name).read_bytes() for name in OUTPUT_FILES)


def child_env(tmp_path: Path, **settings: object) -> dict[str, str]:
    """The environment of a child scan: no AWS keys, loopback 127.0.0.1 allowed, small deadlines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PCRS_INDEXER_", "AWS_"))}
    env.update({"PCRS_INDEXER_DATA_DIR": str(tmp_path / "data"), "PCRS_INDEXER_ALLOWED_NETWORKS": "127.0.0.1/32",
                "PCRS_INDEXER_TIMEOUT_S": str(TIMEOUT_S), "PCRS_INDEXER_RETRIES": str(RETRIES),
                "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
                "AWS_EC2_METADATA_DISABLED": "true"})
    env.update({f"PCRS_INDEXER_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def index(source: str, out: Path, tmp_path: Path, *extra: str, kill_after_s: float = 90.0,
          **settings: object) -> Run:
    """``pcrs-indexer index SOURCE --out OUT`` in a child process, measured."""
    run = run_measured(pcrs_indexer("index", source, "--out", str(out), "--db",
                                    f"sqlite:///{tmp_path / 'state.sqlite'}", "--quiet", *extra),
                       child_env(tmp_path, **settings), tmp_path, kill_after_s=kill_after_s,
                       kill_above_mb=4 * RSS_BOUND_MB)
    print(f"measured: {run.wall_s:.2f} s, {run.peak_rss_mb:.0f} MB peak RSS, exit {run.code}")
    return run


@pytest.fixture
def startup_s(tmp_path: Path) -> float:
    """How long a child scan takes right now to start and fail at once (imports, store): the machine is shared."""
    run = index(str(tmp_path / "absent"), tmp_path / "no-out", tmp_path)
    assert run.code == 2
    return run.wall_s


def report(out: Path) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., FaultyHTTP]]:
    """Start the fault server on a folder (empty by default); stopped at the end of the test."""
    started: list[FaultyHTTP] = []

    def start(root: Path | None = None, host: str = "127.0.0.1", **options: Any) -> FaultyHTTP:
        work = tmp_path_factory.mktemp("fault")
        if root is None:
            root = work / "root"
            root.mkdir()
        server = FaultyHTTP(root, work, **options)
        server.host_address = host
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


# A standard server must just work.

def test_stock_nginx_with_gzip_gives_the_same_outputs_as_the_folder(
        sample_livrable: Path, good_outputs: Path, tmp_path: Path) -> None:
    # Debian's nginx.conf: gzip on, and the gzip_types line its comments suggest.
    server = Nginx(sample_livrable, tmp_path / "nginx", "gzip on; gzip_types text/plain text/css application/json "
                   "application/javascript text/xml application/xml text/javascript;").start()
    try:
        asked = urllib.request.Request(server.url + "/", headers={"Accept-Encoding": "gzip, deflate"})
        with urllib.request.urlopen(asked) as response:  # what the stock server sends a client asking for gzip
            assert response.headers["Content-Encoding"] == "gzip"
            assert b"lot 1" in gzip.decompress(response.read())
        run = index(server.url + "/", tmp_path / "out", tmp_path)
        pages = [r for r in server.requests()[1:] if r.path.endswith("/")]
    finally:
        server.stop()
    assert (run.code, run.stderr) == (0, "")
    assert run.peak_rss_mb < RSS_BOUND_MB
    assert json.loads(run.stdout)["indexed"] == report(good_outputs)["indexed"] == 15
    for name in ("dalles.geojson", "livrables.geojson"):
        assert (tmp_path / "out" / name).read_bytes() == (good_outputs / name).read_bytes()
    assert len(pages) == 5 and all(r.status == 200 for r in pages)


@pytest.mark.parametrize("mode", ["deflate", "raw-deflate"])
def test_deflated_listings_are_decoded(mode: str, sample_livrable: Path, good_outputs: Path,
                                       hostile: Callable[..., FaultyHTTP], tmp_path: Path) -> None:
    server = hostile(sample_livrable, hostile=mode)
    run = index(server.url + "/", tmp_path / "out", tmp_path)
    assert (run.code, run.stderr) == (0, "")
    for name in ("dalles.geojson", "livrables.geojson"):
        assert (tmp_path / "out" / name).read_bytes() == (good_outputs / name).read_bytes()
    assert run.peak_rss_mb < RSS_BOUND_MB


# Every listing ends within TIMEOUT_S × (RETRIES + 1), whatever the server does.

NO_RETRY = f"; no retry: it would end past the {DEADLINE_S:g} s deadline (timeout_s × (retries + 1))"


@pytest.mark.parametrize(("options", "cause"), [
    ({"stall": "/"}, f"timed out ({RETRIES} attempts){NO_RETRY}"),
    ({"hostile": "trickle-status"}, f"timed out ({RETRIES} attempts){NO_RETRY}"),
    ({"hostile": "trickle-listing"}, f"timed out ({RETRIES} attempts){NO_RETRY}"),
    ({"hostile": "retry-after"}, f"HTTP 429 Too Many Requests{NO_RETRY}"),
], ids=["never-answers", "trickled-status-line", "trickled-listing", "retry-after-999999"])
def test_a_listing_that_never_ends_fails_within_the_deadline(
        options: dict[str, Any], cause: str, hostile: Callable[..., FaultyHTTP], out: Path, good_outputs: Path,
        startup_s: float, tmp_path: Path) -> None:
    server = hostile(**options)
    run = index(server.url + "/", out, tmp_path)
    assert run.code == 3, run.stderr
    first = f"pcrs-indexer: error: cannot list {server.url}/: "
    assert run.stderr.startswith(first) and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr[len(first):].strip() == cause
    assert run.wall_s < startup_s + DEADLINE_S + MARGIN_S
    assert run.peak_rss_mb < RSS_BOUND_MB
    assert intact(out, good_outputs)


# Bounded memory: every response read up to what it can legitimately need.

@pytest.mark.parametrize("mode", ["endless-page", "endless-links", "gzip-bomb"])
def test_an_endless_listing_page_is_cut_at_the_cap(
        mode: str, hostile: Callable[..., FaultyHTTP], out: Path, good_outputs: Path, tmp_path: Path) -> None:
    server = hostile(hostile=mode)
    run = index(server.url + "/", out, tmp_path, TIMEOUT_S=30)
    assert run.code == 3, run.stderr
    assert run.stderr == (f"pcrs-indexer: error: cannot list {server.url}/: the response is larger than "
                          f"{16 * 1024 * 1024} bytes (the max_listing_bytes setting): reading stopped there\n")
    assert run.wall_s < 20
    assert run.peak_rss_mb < RSS_BOUND_MB
    assert intact(out, good_outputs)


def test_a_server_ignoring_range_costs_only_the_bytes_asked_for(
        make_dalle: Callable[..., Path], hostile: Callable[..., FaultyHTTP], tmp_path: Path) -> None:
    root = make_dalle("geo.tif").parent
    make_dalle("bare.tif", georeferenced=False, pixels=200, resolution_m=1.0)
    (root / "bare.tfw").write_text("1.0\n0.0\n0.0\n-1.0\n700000.5\n6600199.5\n")
    (root / "bare.prj").write_text(CRS.from_epsg(2154).to_wkt())
    server = hostile(root, hostile="ignore-range")  # 200 and an endless body to every file read
    run = index(server.url + "/", tmp_path / "out", tmp_path, TIMEOUT_S=30)
    assert (run.code, run.stderr) == (0, "")
    assert (report(tmp_path / "out")["indexed"], report(tmp_path / "out")["skipped"]) == (2, [])
    assert sorted(r.path for r in server.requests() if r.path != "/") == ["/bare.prj", "/bare.tfw", "/bare.tif",
                                                                          "/geo.tif"]
    assert run.wall_s < 20
    assert run.peak_rss_mb < RSS_BOUND_MB


def test_a_content_range_claiming_a_petabyte_is_a_problem_of_the_dalle(
        make_dalle: Callable[..., Path], hostile: Callable[..., FaultyHTTP], tmp_path: Path) -> None:
    root = make_dalle("a.tif").parent
    make_dalle("b.tif", origin=(700200.0, 6600200.0))
    server = hostile(root, hostile="huge-content-range")
    run = index(server.url + "/", tmp_path / "out", tmp_path)
    assert (run.code, run.stderr) == (0, "")
    skipped = report(tmp_path / "out")["skipped"]
    assert [(s["path"], s["reason"]) for s in skipped] == [("a.tif", "unreadable"), ("b.tif", "unreadable")]
    for entry in skipped:
        size = (root / entry["path"]).stat().st_size
        assert entry["detail"] == (f"{entry['path']}: sizes disagree: the listing says {size} bytes, "
                                   f"the Content-Range header {10**15}")
    assert run.wall_s < 15
    assert run.peak_rss_mb < RSS_BOUND_MB


def test_trickled_file_bodies_are_read_concurrently(
        sample_livrable: Path, good_outputs: Path, hostile: Callable[..., FaultyHTTP], tmp_path: Path) -> None:
    server = hostile(sample_livrable, hostile="slow-first-byte")  # 1 byte at once, the rest 1 s later
    run = index(server.url + "/", tmp_path / "out", tmp_path, TIMEOUT_S=30)
    assert (run.code, run.stderr) == (0, "")
    for name in ("dalles.geojson", "livrables.geojson"):
        assert (tmp_path / "out" / name).read_bytes() == (good_outputs / name).read_bytes()
    reads = [r for r in server.requests() if not r.path.endswith("/")]
    assert all(r.range == "bytes=0-16383" for r in reads)  # one read per dalle: no synchronous re-read
    assert run.wall_s < 12
    assert run.peak_rss_mb < RSS_BOUND_MB


# S3: an allowed endpoint redirecting to a refused address is refused; answers are bounded.

@pytest.fixture(scope="module")
def refused_s3(sample_livrable: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """moto on 127.0.0.2, an address the scans' settings refuse, with the sample in a public bucket."""
    server = MotoS3(tmp_path_factory.mktemp("moto"), host="127.0.0.2").start()
    try:
        server.upload(sample_livrable, "pcrs-public", "livrable", public=True)
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("status", [301, 302, 307])
def test_an_s3_endpoint_redirecting_to_a_refused_address_is_refused(
        status: int, refused_s3: MotoS3, hostile: Callable[..., FaultyHTTP], out: Path, good_outputs: Path,
        tmp_path: Path) -> None:
    redirector = hostile(redirect=refused_s3.url, redirect_status=status)
    source = f"s3://pcrs-public/livrable?endpoint_url={redirector.url}"
    run = index(source, out, tmp_path)
    assert run.code == 3, run.stderr
    assert run.stderr == (f"pcrs-indexer: error: cannot list {source}: 127.0.0.2 is a loopback address: refused "
                          "(allow it with the allowed_networks setting)\n")
    assert [r.status for r in redirector.requests()] == [status]  # the redirect was not followed
    assert not [r for r in refused_s3.requests() if r.method == "GET"]
    assert run.wall_s < 20
    assert run.peak_rss_mb < RSS_BOUND_MB
    assert intact(out, good_outputs)


def test_the_same_s3_endpoint_allowed_is_listed(refused_s3: MotoS3, hostile: Callable[..., FaultyHTTP],
                                                good_outputs: Path, tmp_path: Path) -> None:
    redirector = hostile(redirect=refused_s3.url, redirect_status=307)
    source = f"s3://pcrs-public/livrable?endpoint_url={redirector.url}"
    run = index(source, tmp_path / "out", tmp_path, ALLOWED_NETWORKS="127.0.0.1/32,127.0.0.2/32")
    assert (run.code, run.stderr) == (0, "")
    assert json.loads(run.stdout)["indexed"] == report(good_outputs)["indexed"]
    assert run.peak_rss_mb < RSS_BOUND_MB


@pytest.mark.parametrize(("mode", "cause"), [
    ("endless-s3-listing", f"the response is larger than {16 * 1024 * 1024} bytes (the max_listing_bytes setting): "
                           "reading stopped there"),
    ("trickle-listing", f"timed out ({RETRIES} attempts){NO_RETRY}"),
])
def test_an_s3_listing_that_never_ends_is_bounded(
        mode: str, cause: str, hostile: Callable[..., FaultyHTTP], out: Path, good_outputs: Path, startup_s: float,
        tmp_path: Path) -> None:
    server = hostile(hostile=mode)
    source = f"s3://pcrs/livrable?endpoint_url={server.url}"
    run = index(source, out, tmp_path)
    assert run.code == 3, run.stderr
    assert run.stderr == f"pcrs-indexer: error: cannot list {source}: {cause}\n"
    assert run.wall_s < startup_s + DEADLINE_S + MARGIN_S
    assert run.peak_rss_mb < RSS_BOUND_MB
    assert intact(out, good_outputs)


# Local storages: nothing outside the livrable's folder is read.

def test_symbolic_links_leading_outside_the_folder_are_skipped(
        make_dalle: Callable[..., Path], tmp_path: Path) -> None:
    root = make_dalle("a.tif").parent
    outside = write_dalle(tmp_path / "elsewhere" / "secret.tif", (700200.0, 6600200.0))
    (tmp_path / "elsewhere" / "lot").mkdir()
    write_dalle(tmp_path / "elsewhere" / "lot" / "b.tif", (700400.0, 6600200.0))
    (root / "secret.tif").symlink_to(outside)
    (root / "lot").symlink_to(tmp_path / "elsewhere" / "lot", target_is_directory=True)
    (root / "sub").mkdir()
    (root / "sub" / "again.tif").symlink_to(root / "a.tif")  # a link inside the folder is fine
    run = index(str(root), tmp_path / "out", tmp_path)
    assert run.code == 0, run.stderr
    assert run.stderr == (f"WARNING indexer.storages.local: symbolic links leading outside the livrable's folder "
                          f"skipped storage={root.as_uri()} skipped=1 links=secret.tif\n")
    dalles = json.loads((tmp_path / "out" / "dalles.geojson").read_text())["features"]
    assert sorted(f["properties"]["chemin"] for f in dalles) == ["a.tif", "sub/again.tif"]
    assert run.peak_rss_mb < RSS_BOUND_MB


# The projet URL is fetched as a storage is reached, and the document is bounded.

PROJET = {"_id": "p1", "nom": "Projet", "livrables": [{"nom": "Ortho", "nature": "geotiff", "stockage": "http",
                                                        "stockage_params": {"url": "https://example.fr/"}}]}


def test_a_projet_url_is_fetched_like_a_storage(
        sample_livrable: Path, hostile: Callable[..., FaultyHTTP], tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "projet.json").write_text(json.dumps(PROJET))
    server = hostile(root, fail_first=1)
    url = f"{server.url}/projet.json"
    run = index(str(sample_livrable), tmp_path / "out", tmp_path, "--projet", url)
    assert run.code == 0, run.stderr
    assert [(r.path, r.status) for r in server.requests()] == [("/projet.json", 503), ("/projet.json", 200)]
    livrable = json.loads((tmp_path / "out" / "livrables.geojson").read_text())["features"][0]["properties"]
    assert livrable["nom"] == "Ortho"
    refused = index(str(sample_livrable), tmp_path / "out", tmp_path, "--projet", url, ALLOWED_NETWORKS="")
    assert refused.code == 2
    assert refused.stderr == (f"pcrs-indexer: error: cannot read projet {url}: 127.0.0.1 is a loopback address: "
                              "refused (allow it with the allowed_networks setting)\n")
    assert len(server.requests()) == 2  # nothing asked of a refused address


@pytest.mark.parametrize("mode", ["gzip-bomb", "endless-json"])
def test_an_endless_projet_is_cut_at_the_cap(
        mode: str, sample_livrable: Path, hostile: Callable[..., FaultyHTTP], out: Path, good_outputs: Path,
        tmp_path: Path) -> None:
    server = hostile(hostile=mode)
    url = f"{server.url}/projet.json"
    run = index(str(sample_livrable), out, tmp_path, "--projet", url, TIMEOUT_S=30)
    assert run.code == 2, run.stderr
    assert run.stderr == (f"pcrs-indexer: error: cannot read projet {url}: the response is larger than "
                          f"{4 * 1024 * 1024} bytes (the max_document_bytes setting): reading stopped there\n")
    assert run.wall_s < 20
    assert run.peak_rss_mb < RSS_BOUND_MB
    assert intact(out, good_outputs)


def test_a_projet_nested_200000_levels_deep_is_refused_in_one_line(
        sample_livrable: Path, out: Path, good_outputs: Path, tmp_path: Path) -> None:
    projet = tmp_path / "projet.json"
    projet.write_text('{"nom": ' + "[" * 200_000 + "]" * 200_000 + "}")
    run = index(str(sample_livrable), out, tmp_path, "--projet", str(projet))
    assert run.code == 2, run.stderr
    assert run.stderr == (f"pcrs-indexer: error: projet {projet} nests arrays and objects 200001 levels deep, "
                          "more than 64 (the max_document_depth setting)\n")
    assert run.wall_s < 15
    assert run.peak_rss_mb < RSS_BOUND_MB
    assert intact(out, good_outputs)


# A listing fan-out without end stops at the folder cap.

def test_an_endless_fan_out_of_folders_stops_at_the_folder_cap(
        hostile: Callable[..., FaultyHTTP], out: Path, good_outputs: Path, tmp_path: Path) -> None:
    server = hostile(hostile="fan-out")  # every page links to four new folders, and no file
    run = index(server.url + "/", out, tmp_path, TIMEOUT_S=30)
    assert run.code == 3, run.stderr
    message = re.fullmatch(rf"pcrs-indexer: error: cannot list {server.url}/: more than 10000 folders \(the "
                           r"max_folders setting\), (d[0-3]+(?:/d[0-3]+)*)/ among them\n", run.stderr)
    assert message is not None, run.stderr
    assert message.group(1).count("/") == 6  # breadth first: 4 + 16 + … + 4^6 passes 10,000 at level 7
    assert len(server.requests()) == sum(4**level for level in range(7))  # 5,461 pages: levels 0 to 6, none more
    assert run.wall_s < 60
    assert run.peak_rss_mb < RSS_BOUND_MB
    assert intact(out, good_outputs)


def test_an_s3_error_with_an_endless_body_is_a_problem_of_the_dalle(
        hostile: Callable[..., FaultyHTTP], tmp_path: Path) -> None:
    server = hostile(hostile="s3-endless-error")  # lists d0.tif, answers its GetObject 500 and an endless body
    run = index(f"s3://pcrs/livrable?endpoint_url={server.url}", tmp_path / "out", tmp_path, TIMEOUT_S=30)
    assert (run.code, run.stderr) == (0, "")
    assert report(tmp_path / "out")["skipped"] == [{
        "path": "d0.tif", "reason": "unreadable",
        "detail": f"d0.tif: the response is larger than {16 * 1024 * 1024} bytes (the max_listing_bytes setting): "
                  "reading stopped there"}]
    assert run.wall_s < 30
    assert run.peak_rss_mb < RSS_BOUND_MB
