"""Redraw docs/explore.png: the explore page over the pipeline's outputs, one query, in
headless Chromium (Debian's chromium and chromedriver, through selenium).

    python docs/explore_screenshot.py [--data data] [--query "right upper lobe consolidation"]
"""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--query", default="right upper lobe consolidation")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("explore.png"))
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from limitr.use import Explorer, load, load_gallery
    from limitr.use.page import launch

    model = load(args.data / "model", tokenizer=args.data / "tokens" / "tokenizer")
    gallery = load_gallery(args.data / "embeddings", "test", args.data / "shards", model.fingerprint, model.crop_size)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page = launch(Explorer(model, gallery), port=port, k=args.k, block=False)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1250"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"), options=options)
    try:
        driver.get(page.local_url)
        wait = WebDriverWait(driver, 180)
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#query textarea"))
        box.send_keys(args.query)
        driver.find_element(By.CSS_SELECTOR, "#search-button").click()
        wait.until(lambda d: "rank" in d.find_element(By.ID, "hit-table").text)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#hits img")) >= min(args.k, len(gallery)))
        time.sleep(2)
        driver.save_screenshot(str(args.out))
        print(f"written {args.out}")
    finally:
        driver.quit()
        page.close()


if __name__ == "__main__":
    main()
