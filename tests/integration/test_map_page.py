"""The map page in headless Chromium: ``preview.html`` as ``pcrs-indexer index`` writes it, opened
from disk. Each page renders without a console message, draws the expected number of dalles in
each outcome's colour, counts them in its legend, and shows a dalle's properties on a click; a
screenshot of each is kept in the test's folder."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from indexer.cli import main
from indexer.preview import OUTCOMES
from indexer.sample import BAD_FILES
from tests.conftest import SMALL
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
    rows = driver.find_elements(By.CSS_SELECTOR, "#pcrs-legend .pcrs-class")
    return {f"{r.get_attribute('data-layer')}.{r.get_attribute('data-class')}":
            int(r.find_element(By.CSS_SELECTOR, ".pcrs-count").text) for r in rows}


def properties(driver: webdriver.Chrome) -> dict[str, str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#pcrs-properties tr")
    return {r.find_element(By.TAG_NAME, "th").text: r.find_element(By.TAG_NAME, "td").text for r in rows}


def test_preview_html_of_index_in_chromium(chromium: webdriver.Chrome, sample_livrable: Path,  # noqa: F811
                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["index", str(sample_livrable), "--out", str(out), "--quiet",
                                       "--db", f"sqlite:///{tmp_path / 'state.sqlite'}"], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    console = load(chromium, (out / "preview.html").as_uri())
    assert console == []
    green = OUTCOMES["indexed"][1]
    assert drawn(chromium) == {("pcrs-emprise-emprise", "#000091"): 1, ("pcrs-dalles-indexed", green): VALID}
    reasons = Counter(BAD_FILES.values())
    assert legend(chromium) == {"emprise.emprise": 1, "dalles.indexed": VALID,
                                **{f"dalles.{reason}": n for reason, n in reasons.items()}}
    unplaced = chromium.find_elements(By.CSS_SELECTOR, "#pcrs-unplaced li")
    assert Counter(li.get_attribute("data-class") for li in unplaced) == reasons
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
