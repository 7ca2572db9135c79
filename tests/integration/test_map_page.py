"""The map page in headless Chromium: ``GET /storages/{id}/preview`` from a real ``pcrs-indexer
serve``, and ``preview.html`` as ``pcrs-indexer index`` writes it, opened from disk. Each page
renders without a console message, draws the expected number of dalles in each outcome's colour,
counts them in its legend, and shows a dalle's properties on a click; a screenshot of each is kept
in the test's folder."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from click.testing import CliRunner
from pyproj import CRS
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from indexer.api.auth import issue_download_token
from indexer.cli import main
from indexer.models import Dalle, DalleProblem, FileEntry, ScanResult, SkipReason
from indexer.preview import CHECKS, LEAFLET, OUTCOMES, map_data, render_page
from indexer.sample import BAD_FILES, write_dalle
from tests.conftest import SMALL
from tests.servers.api_fixtures import ADMIN, DOWNLOAD_SECRET, ApiServer, ApiServers, module_api_server_fixture  # noqa: F401
from tests.servers.browser import chromium, load  # noqa: F401 - fixture

pytestmark = pytest.mark.servers

VALID = SMALL.cols * SMALL.rows - 1


def drawn(driver: webdriver.Chrome) -> Counter[tuple[str, str]]:
    """The SVG paths of the map, by (class, fill colour)."""
    paths = driver.execute_script(
        "return [...document.querySelectorAll('#pcrs-map path')]"
        ".map(p => [p.getAttribute('class').split(' ')[0], p.getAttribute('fill')]);")
    return Counter((cls, fill) for cls, fill in paths)


def legend(driver: webdriver.Chrome) -> dict[str, int]:
    """The counts the legend shows (as French numbers: 5 041), by layer and class."""
    rows = driver.find_elements(By.CSS_SELECTOR, "#pcrs-legend .pcrs-class")
    return {f"{r.get_attribute('data-layer')}.{r.get_attribute('data-class')}":
            int(r.find_element(By.CSS_SELECTOR, ".pcrs-count").text.replace("\u202f", "")) for r in rows}


def properties(driver: webdriver.Chrome) -> dict[str, str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#pcrs-properties tr")
    return {r.find_element(By.TAG_NAME, "th").text: r.find_element(By.TAG_NAME, "td").text for r in rows}


def index(source: Path, out: Path, db_url: str) -> None:
    result = CliRunner().invoke(main, ["index", str(source), "--out", str(out), "--quiet", "--db", db_url],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def server(module_api_server: ApiServers) -> ApiServer:  # noqa: F811
    """A server over a store of its own."""
    return module_api_server.start()


@pytest.fixture(scope="module")
def indexed(server: ApiServer, sample_livrable: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The outputs of ``pcrs-indexer index`` on the sample livrable, storage 1 of the server's store."""
    out = tmp_path_factory.mktemp("indexed") / "out"
    index(sample_livrable, out, server.db_url)
    return out



def assert_sample_drawn(browser: webdriver.Chrome) -> None:
    """The sample's map: its emprise, its valid dalles, its missing dalle as a hole, the legend's counts."""
    green = OUTCOMES["indexed"][1]
    assert drawn(browser) == {("pcrs-emprise-emprise", "#000091"): 1, ("pcrs-dalles-indexed", green): VALID,
                               ("pcrs-quality-hole", CHECKS["hole"][1]): 1}  # the sample's missing dalle
    reasons = Counter(BAD_FILES.values())
    assert legend(browser) == {"emprise.emprise": 1, "dalles.indexed": VALID, "quality.hole": 1,
                                **{f"dalles.{reason}": n for reason, n in reasons.items()}}


def test_the_served_page_in_chromium(chromium: webdriver.Chrome, server: ApiServer,  # noqa: F811
                                     indexed: Path, sample_livrable: Path, tmp_path: Path) -> None:
    with server.client() as client:
        page = client.get("/storages/1/preview")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert '<script src="../../static/leaflet/leaflet.js"></script>' in page.text
        leaflet = client.get("/static/leaflet/leaflet.js")
        assert leaflet.status_code == 200 and leaflet.content == (LEAFLET / "leaflet.js").read_bytes()
        assert leaflet.headers["content-type"] == "text/javascript; charset=utf-8"
        quality = client.get("/storages/1/quality")  # the document beside the outputs of index
        assert quality.status_code == 200
        assert quality.json() == json.loads((indexed / "quality.json").read_text(encoding="utf-8"))
        assert quality.json()["grids"][0]["hole_cells"] == [[651200.0, 6861600.0, 651400.0, 6861800.0]]
        for missing in ("/storages/7/preview", "/storages/x1/preview", "/storages/%2e%2e/preview",
                        "/storages/7/quality"):
            answer = client.get(missing)
            assert (answer.status_code, answer.json()["code"]) == (404, 404), missing
        for outside in ("/static/package.json", "/static/leaflet/..%2f..%2fpackage.json",
                        "/static/node_modules/leaflet/dist/leaflet.js"):
            answer = client.get(outside)
            assert (answer.status_code, answer.json()["code"]) == (404, 404), outside
            assert answer.json()["message"].startswith("no file "), outside

    token = issue_download_token(1, DOWNLOAD_SECRET, time.time())
    console = load(chromium, f"{server.url}/storages/1/preview?token={token}")
    assert console == []
    assert_sample_drawn(chromium)
    dalle = chromium.find_elements(By.CSS_SELECTOR, "#pcrs-map path.pcrs-dalles-indexed")[-1]
    ActionChains(chromium).move_to_element(dalle).click().perform()
    WebDriverWait(chromium, 5).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pcrs-properties a.pcrs-download"))
    path = properties(chromium)["chemin"]
    link = chromium.find_element(By.CSS_SELECTOR, "#pcrs-properties a.pcrs-download").get_attribute("href")
    assert link == f"{server.url}/storages/1/files/{quote(path)}?token={quote(token)}"
    download = httpx.get(link, timeout=10)
    assert download.status_code == 200 and download.content == (sample_livrable / path).read_bytes()
    chromium.save_screenshot(str(tmp_path / "served.png"))
    assert chromium.get_log("browser") == []


def test_a_storage_never_scanned_successfully_has_no_map(server: ApiServer, indexed: Path) -> None:
    with server.client() as client:
        posted = client.post("/storages", headers=ADMIN, json={"type": "http", "params": {"url": "http://127.0.0.1:1/"}})
        assert posted.status_code == 201, posted.text
        storage = posted.json()["_id"]
        answer = client.get(f"/storages/{storage}/preview")
    assert (answer.status_code, answer.json()) == (404, {"code": 404, "message": f"storage {storage} has no "
                                                                                  "successful scan yet"})


def test_file_names_show_as_text_never_as_markup(chromium: webdriver.Chrome, server: ApiServer,  # noqa: F811
                                                 indexed: Path, tmp_path: Path) -> None:
    hostile = "<img src=x onerror=\"document.title='pwned'\">"
    write_dalle(tmp_path / "livrable" / f"{hostile}.tif", (651000.0, 6862000.0), 64)
    (tmp_path / "livrable" / f"{hostile} vide.tif").write_bytes(b"")
    index(tmp_path / "livrable", tmp_path / "out", server.db_url)
    with server.client() as client:
        listed = client.get("/storages", headers=ADMIN).json()
    (storage,) = [row["_id"] for row in listed if row["url"] == (tmp_path / "livrable").as_uri()]
    console = load(chromium, f"{server.url}/storages/{storage}/preview")
    assert console == [] and chromium.title == "livrable — carte PCRS"
    assert chromium.find_elements(By.CSS_SELECTOR, "img") == []
    assert [li.text for li in chromium.find_elements(By.CSS_SELECTOR, "#pcrs-unplaced li")] == [f"{hostile} vide.tif"]
    ActionChains(chromium).move_to_element(
        chromium.find_element(By.CSS_SELECTOR, "#pcrs-map path.pcrs-dalles-indexed")).click().perform()
    WebDriverWait(chromium, 5).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pcrs-properties tr"))
    assert chromium.find_element(By.CSS_SELECTOR, "#pcrs-properties h3").text == f"{hostile}.tif"
    assert properties(chromium)["chemin"] == f"{hostile}.tif"
    assert chromium.title == "livrable — carte PCRS"


def test_preview_html_of_index_in_chromium(chromium: webdriver.Chrome, indexed: Path,  # noqa: F811
                                           tmp_path: Path) -> None:
    console = load(chromium, (indexed / "preview.html").as_uri())
    assert console == []
    assert_sample_drawn(chromium)
    unplaced = chromium.find_elements(By.CSS_SELECTOR, "#pcrs-unplaced li")
    assert Counter(li.get_attribute("data-class") for li in unplaced) == Counter(BAD_FILES.values())
    assert sorted(li.text for li in unplaced) == sorted(p.rsplit("/", 1)[1] for p in BAD_FILES)

    # A click on a dalle shows its properties (no download link: no token, no server).
    dalle = chromium.find_elements(By.CSS_SELECTOR, "#pcrs-map path.pcrs-dalles-indexed")[0]
    ActionChains(chromium).move_to_element(dalle).click().perform()
    WebDriverWait(chromium, 5).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pcrs-properties tr"))
    shown = properties(chromium)
    assert shown["chemin"].startswith(("lot 1/PCRS_", "lot 2/secteur été/PCRS_"))
    assert shown["epsg"] == "EPSG:2154" and shown["tailleImage"] == f"{SMALL.pixels}x{SMALL.pixels}"
    assert chromium.find_element(By.CSS_SELECTOR, "#pcrs-properties h3").text == shown["chemin"].rsplit("/", 1)[1]
    assert chromium.find_elements(By.CSS_SELECTOR, "#pcrs-properties a.pcrs-download") == []

    # A file without footprint shows its reason and detail when picked in the list.
    corrupt = next(li for li in unplaced if li.text == "illisible.tif")
    corrupt.click()
    assert properties(chromium)["chemin"] == "anomalies/illisible.tif"
    assert properties(chromium)["detail"] == "the first image directory lies past the end of the file"
    chromium.save_screenshot(str(tmp_path / "preview.png"))
    assert chromium.get_log("browser") == []


def test_a_large_livrable_is_drawn_on_a_canvas(chromium: webdriver.Chrome, tmp_path: Path) -> None:  # noqa: F811
    side, step = 71, 200.0  # 5,041 dalles: past the page's SVG limit
    crs = CRS.from_epsg(2154).to_wkt()
    dalles = []
    for k in range(side * side):
        x, y = 651000.0 + (k % side) * step, 6862000.0 - (k // side) * step
        dalles.append(Dalle(FileEntry(f"d/{k:05d}.tif", 1000), "image/tiff", 200, 200, ("Red(Byte)",), "JPEG", 2154,
                            crs, ((x, y), (x + step, y), (x + step, y - step), (x, y - step)), 100.0, True))
    empty = [DalleProblem(FileEntry(f"e/{k:03d}.tif", 0), SkipReason.EMPTY, "the file is empty") for k in range(502)]
    result = ScanResult(source="file:///big", listed_files=len(dalles), dalles=dalles, problems=empty)
    (tmp_path / "big.html").write_text(render_page(map_data(result, [], "big", "")), encoding="utf-8")
    started = time.monotonic()
    console = load(chromium, (tmp_path / "big.html").as_uri())
    drawn_s = time.monotonic() - started
    assert console == [] and drawn_s < 10
    assert chromium.find_elements(By.CSS_SELECTOR, "#pcrs-map path") == []
    assert len(chromium.find_elements(By.CSS_SELECTOR, "#pcrs-map canvas")) == 1
    assert legend(chromium) == {"dalles.indexed": side * side, "dalles.empty": 502}
    listed = chromium.execute_script(
        "return [...document.querySelectorAll('#pcrs-unplaced li')].map(li => li.textContent);")
    assert listed == [f"{k:03d}.tif" for k in range(500)] + ["… et 2 autres"]
    ActionChains(chromium).move_to_element(chromium.find_element(By.ID, "pcrs-map")).click().perform()
    WebDriverWait(chromium, 5).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pcrs-properties tr"))
    middle = side * side // 2
    assert properties(chromium)["chemin"] == f"d/{middle:05d}.tif"
    chromium.save_screenshot(str(tmp_path / "big.png"))
