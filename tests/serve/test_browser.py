"""The search page in headless Chromium: upload an image, see the grid, click a result, get its neighbours.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package; skipped without them,
except on CI (``CI=true``), where they are installed and a missing one is a failure.
"""

import os
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest

pytestmark = pytest.mark.browser

ON_CI = os.environ.get("CI") == "true"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _require(condition: bool, what: str) -> None:
    if not condition:
        if ON_CI:
            pytest.fail(f"{what} is missing on CI (.ci/run installs it)")
        pytest.skip(f"{what} is not installed")


def _import(name: str):
    try:
        return __import__(name)
    except ImportError:
        _require(False, f"the Python package {name}")


@pytest.fixture(scope="module")
def browser():
    _import("fastapi")
    _import("uvicorn")
    try:
        __import__("python_multipart")
    except ImportError:
        _import("multipart")
    _import("selenium")
    _require(os.path.exists(CHROMIUM), "chromium")
    _require(os.path.exists(CHROMEDRIVER), "chromium-driver (chromedriver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from serve_support import build_collection

    from deeprank.index import Index
    from deeprank.serve import serve_in_thread

    root = tmp_path_factory.mktemp("browser")
    index_dir = build_collection(root, count=40)
    with serve_in_thread(index_dir) as url:
        yield url, Index.load(index_dir)


def grid(driver):
    """``[(id, distance), ...]`` of the result cards shown (read in one script: no stale elements)."""
    cards = driver.execute_script(
        "return Array.from(document.querySelectorAll('#results .hit'))"
        ".map(c => [c.dataset.id, c.dataset.distance]);"
    )
    return [(i, float(d)) for i, d in cards]


def wait_for_query(driver, query: str, timeout: float = 20):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script(
            "const r = document.getElementById('results');"
            "return r.dataset.query === arguments[0] && r.children.length > 0"
            " && !document.body.classList.contains('busy');",
            query,
        )
    )


def test_upload_then_click_a_result(browser, served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, index = served
    browser.get(url + "/")
    WebDriverWait(browser, 20).until(lambda d: "images" in d.find_element(By.ID, "facts").text)
    assert f"{len(index)} images" in browser.find_element(By.ID, "facts").text

    # Upload: the file input takes a path; the grid shows the k nearest, the image itself first.
    query_item = index.ids[7]
    browser.find_element(By.ID, "file").send_keys(str(Path(index.path_of(query_item))))
    wait_for_query(browser, f"image:{Path(index.path_of(query_item)).name}")
    shown = grid(browser)
    expected = index.search(index.path_of(query_item), k=12)
    assert [i for i, _ in shown] == expected.ids[0]
    assert shown[0][0] == query_item and shown[0][1] < 1e-5
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
    images = browser.find_elements(By.CSS_SELECTOR, "#results .hit img")
    WebDriverWait(browser, 20).until(
        lambda d: all(d.execute_script("return arguments[0].naturalWidth", img) == 28 for img in images)
    )

    # Click the third result: the grid becomes that item's neighbours, itself first at distance 0.
    clicked = shown[2][0]
    browser.find_elements(By.CSS_SELECTOR, "#results .hit")[2].click()
    wait_for_query(browser, f"id:{clicked}")
    shown = grid(browser)
    expected = index.search(index.vector(clicked), k=12)
    assert [i for i, _ in shown] == expected.ids[0]
    assert shown[0] == (clicked, pytest.approx(0.0, abs=1e-5))
    assert clicked in browser.find_element(By.ID, "query-caption").text

    # K is adjustable: a smaller k re-runs the same query.
    slider = browser.find_element(By.ID, "k")
    browser.execute_script(
        "arguments[0].value = '5'; arguments[0].dispatchEvent(new Event('change'));", slider
    )
    WebDriverWait(browser, 20).until(lambda d: len(grid(d)) == 5)
    assert [i for i, _ in grid(browser)] == expected.ids[0][:5]

    # A file that is not an image: a clear message, and the page keeps working.
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "not an image" in browser.find_element(By.ID, "error").text
    browser.find_elements(By.CSS_SELECTOR, "#results .hit")[1].click()
    wait_for_query(browser, f"id:{expected.ids[0][1]}")
    assert not browser.find_element(By.ID, "error").is_displayed()

    # Id queries live in the address: Back returns to the clicked item, a link opens it directly.
    browser.back()
    wait_for_query(browser, f"id:{clicked}")
    assert grid(browser)[0][0] == clicked
    browser.get(url + "/#id=" + quote(index.ids[0], safe=""))
    wait_for_query(browser, f"id:{index.ids[0]}")
    assert grid(browser)[0][0] == index.ids[0]

    if os.environ.get("DEEPRANK_SCREENSHOT"):
        browser.save_screenshot(os.environ["DEEPRANK_SCREENSHOT"])
    logs = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE" and "notes.png" not in str(e)]
    assert not [e for e in logs if "/search" not in e.get("message", "")], logs


def test_odd_ids_work_in_the_page(browser, tmp_path):
    """Ids with newlines, slashes, percent signs, unicode and dot segments: linked, shown, clicked."""
    import numpy as np
    from PIL import Image

    from deeprank.index import Index
    from deeprank.serve import serve_in_thread

    ids = ["new\nline.png", "a/b/c.png", "100%.png", "ünïcödé 画像", "..", ".", "a/../b", "+&=?#"]
    paths = []
    for j in range(len(ids)):
        paths.append(str(tmp_path / f"{j}.png"))
        Image.new("L", (6, 6), 30 * j).save(paths[-1])
    vectors = np.random.default_rng(0).standard_normal((len(ids), 8)).astype(np.float32)
    index = Index.from_vectors(vectors, ids=ids, paths=paths)
    with serve_in_thread(index) as url:
        browser.get(url + "/#id=" + quote(ids[0], safe=""))
        wait_for_query(browser, f"id:{ids[0]}")
        shown = grid(browser)
        assert [i for i, _ in shown] == index.search(index.vector(ids[0]), k=len(shown)).ids[0]
        _wait_images_loaded(browser)
        target = next(j for j, (i, _) in enumerate(shown) if i == "..")
        from selenium.webdriver.common.by import By

        browser.find_elements(By.CSS_SELECTOR, "#results .hit")[target].click()
        wait_for_query(browser, "id:..")
        assert grid(browser)[0][0] == ".."
        _wait_images_loaded(browser)
        browser.back()
        wait_for_query(browser, f"id:{ids[0]}")
        assert not browser.find_element(By.ID, "error").is_displayed()


def _wait_images_loaded(driver, timeout: float = 20):
    """Every result image and the query image loaded (a 404 leaves naturalWidth at 0)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script(
            "const imgs = [document.getElementById('query-image'),"
            " ...document.querySelectorAll('#results .hit img')];"
            "return imgs.every(i => i.complete && i.naturalWidth === 6);"
        )
    )
