"""`limitr explore`'s page in a real browser: headless Chromium (Debian's chromium and
chromedriver) drives one query through it and reads the rendered results."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (CI installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def browser(profile: Path):
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1300"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={profile}")  # the browser's files in the test's folder
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)


def test_page_answers_a_query_in_a_browser(tiny_run, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from limitr.use import Explorer, load, load_gallery
    from limitr.use.page import launch

    model = load(tiny_run["model"])
    gallery = load_gallery(tiny_run["embeddings"], "test", tiny_run["shards"], model.fingerprint, model.crop_size)
    page = launch(Explorer(model, gallery), port=free_port(), k=4, block=False)
    driver = None
    try:
        assert page.local_url.startswith("http://127.0.0.1:")
        driver = browser(tmp_path / "chromium")
        driver.get(page.local_url)
        wait = WebDriverWait(driver, 120)
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#query textarea"))
        box.send_keys("right upper lobe consolidation")
        driver.find_element(By.CSS_SELECTOR, "#search-button").click()
        wait.until(lambda d: "rank" in d.find_element(By.ID, "hit-table").text)
        rows = driver.find_elements(By.CSS_SELECTOR, "#hit-table tr")
        assert len(rows) == 1 + 4  # header and four hits
        table = driver.find_element(By.ID, "hit-table").text
        keys = {str(50000000 + i) for i in range(12)}
        assert sum(key in table for key in keys) == 4
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#hits img")) >= 4)
        images = driver.find_elements(By.CSS_SELECTOR, "#hits img")
        assert all(driver.execute_script("return arguments[0].naturalWidth", img) > 0 for img in images[:4])
        # an empty query is a message on the page, not an error page
        box.clear()
        box.send_keys(" ")
        driver.find_element(By.CSS_SELECTOR, "#search-button").click()
        wait.until(lambda d: "empty query" in d.find_element(By.ID, "search-message").text)
        # second tab: an uploaded study -> ranked reports and the phrase's heatmap
        tabs = driver.find_elements(By.XPATH, "//button[contains(., 'Read an image')]")
        next(tab for tab in tabs if tab.is_displayed()).click()
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#frontal input[type=file]"))
        upload.send_keys(str(tiny_run["files"][1][0]))
        phrase = driver.find_element(By.CSS_SELECTOR, "#phrase textarea")
        phrase.send_keys("left pleural effusion")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#frontal img"))
        driver.find_element(By.CSS_SELECTOR, "#read-button").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#report-table tr")) == 1 + 4)
        assert "case" in driver.find_element(By.ID, "report-table").text
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#heatmap img"))
        driver.save_screenshot(str(tmp_path / "explore.png"))
    finally:
        if driver is not None:
            driver.quit()
        page.close()
