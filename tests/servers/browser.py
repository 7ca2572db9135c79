"""Headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by selenium, for pages
the tests load: no browser download, no network beyond loopback, a fresh profile per session."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--disable-dev-shm-usage", "--window-size=1280,860")


def start_chromium(profile: Path) -> webdriver.Chrome:
    """A headless Chromium whose console messages the tests can read (``get_log("browser")``)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    return driver


@pytest.fixture(scope="session")
def chromium() -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the session (its profile a fresh folder, removed at the end)."""
    if shutil.which(CHROMEDRIVER) is None:
        pytest.fail(f"{CHROMEDRIVER} is missing: run tests/servers/install-servers.sh")
    profile = Path(tempfile.mkdtemp(prefix="pcrs-chromium-"))
    driver = start_chromium(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def load(driver: webdriver.Chrome, url: str, ready: str = "document.body.dataset.ready === 'true'",
         timeout_s: float = 15) -> list[dict[str, Any]]:
    """Open `url`, wait until `ready` (a JS expression) holds, and return the console messages it logged."""
    driver.get_log("browser")  # forget what an earlier page said
    driver.get(url)
    WebDriverWait(driver, timeout_s).until(lambda d: d.execute_script(f"return {ready};"))
    logs: list[dict[str, Any]] = driver.get_log("browser")
    return logs
