"""The leaderboard's web page (``LEADERBOARD_site/index.html``, ``tgbench.reporting.site``), opened in a real browser.

Two tiny suites on two datasets (``mnist-5k`` and the same digits registered under a second name) are run into one
store with their reports where ``tgbench run`` puts them by default; ``tgbench leaderboard`` then writes the page.
Headless Debian ``chromium``, driven through Selenium and Debian's ``chromium-driver``, opens it from disk: a header
click sorts the rows, the dataset select hides the other dataset's rows, a label with HTML in it shows as text,
every image loads and every report link points at a file, and a screenshot is not blank.

Without chromium, chromedriver or selenium the browser test is skipped with the reason, except under CI (``CI``
set), where it fails: CI installs them (``scripts/install_chromium.sh``).
"""
from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest
import torch

from tgbench.cli import main
from tgbench.data import load_mnist_5k
from tgbench.registry import datasets
from tgbench.reporting.leaderboard import COLUMNS, INTRO, PAGE_PROVENANCE, tables
from tgbench.reporting.site import render_page
from tgbench.runner import RunOptions, run_suite

SECOND_DATASET = "mnist-5k-again"
HOSTILE_LABEL = "<script>window.injected = 1</script> & co"   # must show as this text, not run

PROTOCOL = """
learner: {conv_channels: [[4, 8]], fc_hidden: [[16]]}
inner: {steps: 4, batch_size: 20}
outer: {iterations: 2, lr: 0.01, meta_batch_size: 32}
evaluation: {seeds: 1, eval_every: 2, eval_learners: 1, final_learners: 1, held_out: {}}
profiles: {smoke: {}}
"""
SUITES = {
    "first": "dataset: {name: mnist-5k}\n" + PROTOCOL + f"""
sources:
  - method: real
    label: "{HOSTILE_LABEL}"
  - method: dataset_distillation
  - method: real
    label: real_small_lr
    inner: {{lr: 0.001}}
""",
    "second": f"dataset: {{name: {SECOND_DATASET}}}\n" + PROTOCOL + """
sources:
  - method: real
""",
}


def second_dataset(data_root=None, download=False, seed=0):
    """The same digits under another name: a second dataset (its own table) at no download."""
    return load_mnist_5k(data_root, download, seed)


@pytest.fixture(scope="module")
def board(tmp_path_factory) -> Path:
    """The leaderboard of both suites, written under ``<tmp>/results/`` beside the suites' reports; the page."""
    tmp = tmp_path_factory.mktemp("page")
    old_threads, old_cwd = torch.get_num_threads(), os.getcwd()
    torch.set_num_threads(1)
    datasets.register(SECOND_DATASET, second_dataset)
    os.chdir(tmp)  # reports go to results/<suite>/smoke, as `tgbench run` puts them by default
    try:
        url = f"sqlite:///{tmp}/store.db"
        for name, text in SUITES.items():
            (tmp / f"{name}.yaml").write_text(f"name: {name}\n" + text)
            run_suite(str(tmp / f"{name}.yaml"), RunOptions(profile="smoke", storage=url, progress=False),
                      log=lambda *a, **k: None)
        assert main(["leaderboard", "--storage", url, "--out", str(tmp / "results" / "LEADERBOARD.md")]) == 0
    finally:
        os.chdir(old_cwd)
        datasets.unregister(SECOND_DATASET)
        torch.set_num_threads(old_threads)
    return tmp / "results" / "LEADERBOARD_site" / "index.html"


@pytest.mark.system
def test_page_is_self_contained_and_escapes_user_text(board):
    page = board.read_text(encoding="utf-8")
    assert "<script>window" not in page and "&lt;script&gt;window.injected = 1&lt;/script&gt; &amp; co" in page
    # nothing is fetched at view time: no absolute URL in any src/href, no stylesheet or script file
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<link" not in page and "<script src" not in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 2 and all((board.parent / src).is_file() for src in images)
    assert {p.name for p in board.parent.iterdir()} == {"index.html", *images}
    # the page holds what the CSV holds: every arm once, under its table
    csv = pd.read_csv(board.parent.parent / "LEADERBOARD.csv")
    assert len(csv) == 4 and page.count("<tr class") + page.count("<tr data-") == 4
    # each row links its run's report (derived at render time; the CSV keeps its data columns only)
    assert "report" not in csv
    assert set(re.findall(r'href="\.\./([a-z]+/smoke/report\.md)"', page)) == {"first/smoke/report.md",
                                                                              "second/smoke/report.md"}


@pytest.mark.system
def test_from_csv_rebuilds_the_same_page_without_the_store(board, tmp_path):
    """``--from-csv``: the page of a leaderboard whose stores are gone, from its CSV and Markdown alone."""
    results = tmp_path / "results"
    shutil.copytree(board.parent.parent, results)
    shutil.rmtree(results / "LEADERBOARD_site")
    old = os.getcwd()
    os.chdir(tmp_path)  # the run reports are found where the leaderboard found them
    try:
        assert main(["leaderboard", "--from-csv", "results/LEADERBOARD.csv", "--out", "results/LEADERBOARD.md"]) == 0
    finally:
        os.chdir(old)
    rebuilt = (results / "LEADERBOARD_site" / "index.html").read_text(encoding="utf-8")
    original = board.read_text(encoding="utf-8")
    body = lambda page: page[page.index('<form id="filters"'):]  # noqa: E731  (the provenance list differs)
    assert body(rebuilt) == body(original)
    assert "page rendered by" in rebuilt and "page rendered by" not in original


@pytest.mark.system
def test_keep_adds_only_the_tables_the_stores_do_not_hold(board, tmp_path):
    """``--keep``: an earlier leaderboard's tables stay on the board when their stores are gone; a table the
    stores hold is ranked from the stores, never duplicated from the CSV."""
    store = f"sqlite:///{board.parent.parent.parent}/store.db"
    old = pd.read_csv(board.parent.parent / "LEADERBOARD.csv", keep_default_na=False, na_values=[""])
    gone = old[old["dataset"] == SECOND_DATASET].assign(table="gone-table")   # a table no store holds any more
    earlier = tmp_path / "earlier.csv"
    pd.concat([old, gone]).to_csv(earlier, index=False)
    out = tmp_path / "LEADERBOARD.md"
    assert main(["leaderboard", "--storage", store, "--keep", str(earlier), "--out", str(out)]) == 0
    merged = pd.read_csv(tmp_path / "LEADERBOARD.csv", keep_default_na=False, na_values=[""])
    assert len(merged) == len(old) + len(gone) and list(merged["table"]).count("gone-table") == len(gone)
    assert merged["table"].tolist()[-len(gone):] == ["gone-table"] * len(gone)   # after the stores' tables
    md = out.read_text(encoding="utf-8")
    assert "protocol `gone-table`" in md and "kept from" in md and "1 table(s) the stores do not hold" in md


def test_every_user_text_of_the_frame_is_escaped():
    """Each text column and provenance value carries markup; none reaches the page as markup (no store needed)."""
    text_columns = ["table", "dataset", "profile", "suite", "source", "method", "variant", "config_hash", "finished",
                    "revision", "device", "protocol", "report"]
    row = {c: f"<i>{c}</i>" for c in text_columns}
    row.update(rank=1, test_acc_mean=0.5, test_acc_ci_low=0.4, test_acc_ci_high=0.6, seeds_complete=2, diverged=0,
               meta_train_seconds=1.0, meta_train_flops=1e9, pareto=True)
    frame = pd.DataFrame([row], columns=COLUMNS)
    meta = {key: f"<i>{key}</i>" for _, key in PAGE_PROVENANCE}
    page = render_page(frame, tables(frame), ["<i>figure</i>.png"], meta, INTRO, PAGE_PROVENANCE)
    assert "<i>" not in page
    for value in [*text_columns, *(key for _, key in PAGE_PROVENANCE)]:
        assert f"&lt;i&gt;{value}&lt;/i&gt;" in page or f"%3Ci%3E{value}%3C/i%3E" in page, value


# ------------------------------------------------------------------------------------------------ in a browser
def browser():
    """A headless chromium driven by Selenium, or a skip (a failure under CI) naming what is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    missing = [name for name, found in (("chromium", chromium), ("chromedriver (Debian: chromium-driver)", driver_path),
                                        ("the selenium package (pip install -e '.[test]')", webdriver)) if not found]
    if missing:
        reason = f"no {', no '.join(missing)}: scripts/install_chromium.sh installs them"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1500,1100"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def column(driver, section, header: str) -> list[str]:
    """The ``data-value`` sort keys of one column of the visible rows of a table, top to bottom."""
    index = [th.text.strip(" ▲▼") for th in section.find_elements("css selector", "thead th")].index(header)
    return [row.find_elements("css selector", "td")[index].get_attribute("data-value")
            for row in section.find_elements("css selector", "tbody tr") if row.is_displayed()]


def header(section, name: str):
    return next(th for th in section.find_elements("css selector", "thead th") if th.text.strip(" ▲▼") == name)


@pytest.mark.system
def test_the_page_in_a_browser_sorts_filters_and_renders(board, tmp_path):
    driver = browser()
    try:
        driver.get(board.as_uri())
        sections = driver.find_elements("css selector", "section.protocol-table")
        assert len(sections) == 2
        first = next(s for s in sections if "mnist-5k ·" in s.find_element("css selector", "h2").text)
        ranks = [int(v) for v in column(driver, first, "rank")]
        assert ranks == [1, 2, 3]

        # a click on a header sorts by it; a second click turns the order round
        header(first, "rank").find_element("css selector", "button").click()
        assert [int(v) for v in column(driver, first, "rank")] == [3, 2, 1]
        assert header(first, "rank").get_attribute("aria-sort") == "descending"
        header(first, "GFLOP/seed").find_element("css selector", "button").click()
        flops = [float(v) for v in column(driver, first, "GFLOP/seed")]
        assert flops == sorted(flops) and len(set(flops)) > 1
        header(first, "source").find_element("css selector", "button").click()
        sources = [v.lower() for v in column(driver, first, "source")]
        assert sources == sorted(sources) and HOSTILE_LABEL.lower() in sources
        # the hostile label is text in its cell, and nothing ran
        assert HOSTILE_LABEL in [td.text for td in first.find_elements("css selector", "tbody td")]
        assert driver.execute_script("return window.injected === undefined")

        # the dataset filter leaves the rows of that dataset only
        everything = driver.find_elements("css selector", "tbody tr")
        assert len([r for r in everything if r.is_displayed()]) == 4
        select = driver.find_element("id", "filter-dataset")
        select.find_element("css selector", f"option[value='{SECOND_DATASET}']").click()
        shown = [r for r in driver.find_elements("css selector", "tbody tr") if r.is_displayed()]
        assert len(shown) == 1 and {r.get_attribute("data-dataset") for r in shown} == {SECOND_DATASET}
        assert not first.is_displayed()
        assert driver.find_element("id", "shown").text == "1 of 4 rows shown"
        select.find_element("css selector", "option[value='']").click()
        assert len([r for r in driver.find_elements("css selector", "tbody tr") if r.is_displayed()]) == 4

        # every figure loaded from disk, every report link points at a report
        assert driver.execute_script("return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        links = [a.get_attribute("href") for a in driver.find_elements("css selector", "tbody a")]
        assert len(links) == 4 and all(Path(unquote(urlparse(h).path)).is_file() for h in links)

        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    (tmp_path / "page.png").write_bytes(png)
    import matplotlib.image
    pixels = matplotlib.image.imread(io.BytesIO(png))
    assert pixels.shape[0] > 500 and pixels.shape[1] > 500
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
    assert len(colours) > 50  # text, table rules and a plot, not one flat colour
