"""``leaderboard.html`` in a real headless browser: it loads without console errors, a header click sorts the
rows and a filter hides rows. Needs Chromium and its driver (``apt-get install chromium chromium-driver``, which
``.ci/run`` does) and selenium; skipped with that message where they are missing."""
from __future__ import annotations

import shutil

import pytest

from benchmark.grid.report import publish
from benchmark.grid.store import CellStore
from test_results import make_cell

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the test extra) for the page test")
if not (shutil.which("chromium") and shutil.which("chromedriver")):
    pytest.skip("no chromium/chromedriver: apt-get install chromium chromium-driver", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402


@pytest.fixture
def page(tmp_path):
    store = CellStore(tmp_path / "run")
    for backbone, rows in (("uvit", {"dense": 18.0, "asp": 25.0, "dipgo@0.3": 21.0}), ("ddpm", {"dense": 22.0, "ste": 30.0})):
        for method, fid in rows.items():
            store.write(make_cell(backbone, method, fid=fid), {f"samples/{backbone}__{method}__seed0.png": b"\x89PNG"})
    paths = publish(store.out_dir)
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=options)
    try:
        driver.get(paths["html"].as_uri())
        yield driver
    finally:
        driver.quit()


def visible_methods(driver) -> list[str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")
    return [row.find_elements(By.TAG_NAME, "td")[1].text for row in rows if row.is_displayed()]


def test_the_page_loads_sorts_and_filters(page):
    assert [entry for entry in page.get_log("browser") if entry["level"] == "SEVERE"] == []
    assert visible_methods(page) == ["dense", "ste", "dense", "asp", "dipgo@0.3"]  # the leaderboard's order
    fid = next(h for h in page.find_elements(By.CSS_SELECTOR, "#leaderboard th") if h.text.startswith("fid@"))
    fid.click()
    assert visible_methods(page) == ["dense", "dipgo@0.3", "dense", "asp", "ste"]  # 18, 21, 22, 25, 30
    fid.click()
    assert visible_methods(page)[0] == "ste"
    Select(page.find_element(By.ID, "filter-backbone")).select_by_value("ddpm")
    assert sorted(visible_methods(page)) == ["dense", "ste"]
    Select(page.find_element(By.ID, "filter-family")).select_by_value("dense")
    assert visible_methods(page) == ["dense"]
    assert page.find_elements(By.CSS_SELECTOR, "img.plot")  # the Pareto plots, inline


def test_the_page_is_a_plain_table_without_javascript(tmp_path):
    store = CellStore(tmp_path / "run")
    store.write(make_cell("uvit", "dense", fid=18.0))
    text = publish(store.out_dir)["html"].read_text()
    assert "<table" in text and "http://" not in text and "https://" not in text  # nothing fetched at view time
