"""The HTML page in a real headless browser (Debian's chromium through Playwright).

Skipped, with the reason, where Playwright or chromium is missing; `.ci/run` installs both.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .conftest import CLASSIFICATION, FAKE, MINILM

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM} (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, published):
    """The page opened from file:// with networking off; problems are collected, not ignored."""
    context = browser.new_context(offline=True)
    page = context.new_page()
    page.problems = []
    page.on("console", lambda m: m.type in ("error", "warning") and page.problems.append(m.text))
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    page.on(
        "request",
        lambda r: r.url.startswith(("file:", "data:")) or page.problems.append(r.url),
    )
    page.goto((published / "tiny.html").as_uri())
    yield page
    context.close()


def _table(page, model: str):
    prefix = "fake-deep-model-r1-mean-True-last-" if model == FAKE else "sentence-transformers"
    slug = next(
        s
        for s in page.eval_on_selector_all("section.model", "els => els.map(e => e.id)")
        if s.startswith(prefix)
    )
    return page.locator(f'table.layer-table[data-model="{slug}"]')


def _tasks(table) -> list[str]:
    return table.locator("tbody tr td:first-child").all_inner_texts()


def test_page_opens_offline_with_the_expected_rows_and_no_errors(page):
    page.wait_for_load_state("load")
    assert page.problems == []  # no request left the disk, no console error
    assert page.title() == "tiny: main score by layer"
    assert page.locator("#summary-table tbody tr").count() == 2
    assert page.locator("table.layer-table").count() == 2
    for model in (FAKE, MINILM):
        assert sorted(_tasks(_table(page, model))) == sorted([CLASSIFICATION, "BIOSSES", "STS12"])
        assert _table(page, model).locator("tfoot tr").count() == 3  # two types + overall
    assert "pytest" in page.locator("#provenance").inner_text()
    assert page.locator("img").count() == 5
    assert all(page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth > 0)"))
    assert page.problems == []


def test_the_best_layer_is_highlighted_and_missing_shown(page):
    table = _table(page, MINILM)
    best = table.locator("tbody td.best")
    assert best.count() == 3  # one per task row
    row = table.locator("tbody tr", has_text="BIOSSES")
    assert row.locator("td.best").get_attribute("data-v") == "0.812539"
    sts12 = table.locator("tbody tr", has_text="STS12").locator("td.missing")
    assert sts12.inner_text() == "—"
    assert page.problems == []


def test_clicking_a_header_re_sorts_the_rows(page):
    table = _table(page, MINILM)
    header = table.locator("th", has_text="L0 (emb)")
    header.click()
    assert _tasks(table) == [CLASSIFICATION, "BIOSSES", "STS12"]  # 70.00, 56.64, 47.78
    assert header.get_attribute("aria-sort") == "descending"
    header.click()
    assert _tasks(table) == ["STS12", "BIOSSES", CLASSIFICATION]
    assert header.get_attribute("aria-sort") == "ascending"
    # a missing value sorts last both ways
    l3 = table.locator("th", has_text="L3")
    l3.click()
    assert _tasks(table)[-1] == "STS12"
    l3.click()
    assert _tasks(table)[-1] == "STS12"
    summary = page.locator("#summary-table")
    summary.locator("th", has_text="best layer avg").click()
    summary.locator("th", has_text="best layer avg").click()  # ascending: the weaker model first
    first = summary.locator("tbody tr").first.locator("td").nth(1).inner_text()
    assert first.startswith(MINILM)
    assert page.problems == []


def test_the_type_filter_hides_rows_of_other_types(page):
    table = _table(page, FAKE)
    page.select_option("#type-filter", "STS")
    visible = [r.inner_text().split("\t")[0] for r in table.locator("tbody tr:visible").all()]
    assert visible == ["BIOSSES", "STS12"]
    assert not table.locator("tbody tr", has_text=CLASSIFICATION).is_visible()
    feet = [r.locator("td").first.inner_text() for r in table.locator("tfoot tr:visible").all()]
    assert feet == ["avg STS", "average"]
    page.select_option("#type-filter", "Classification")
    assert _visible_tasks(table) == [CLASSIFICATION]
    page.select_option("#type-filter", "")
    assert len(_visible_tasks(table)) == 3
    assert page.problems == []


def _visible_tasks(table) -> list[str]:
    return [r.locator("td").first.inner_text() for r in table.locator("tbody tr:visible").all()]


@pytest.fixture(scope="module")
def long_names(tmp_path_factory, frames_of) -> Path:
    """The tiny board with the names a real run records: a long configuration label (run
    settings), a 40-hex revision, and a long model name."""
    from mteb_midlayer.leaderboard import publish

    scores, metrics = frames_of
    scores = scores.assign(
        model=scores["model"].str.replace("fake/", "some-organisation/a-rather-long-model-name-"),
        revision="0123456789abcdef0123456789abcdef01234567",
        max_length=256,
        dtype="float32",
        prompts="none",
    )
    out = tmp_path_factory.mktemp("long")
    publish(scores, metrics, out, benchmark="long", with_plots=False)
    return out / "long.html"


def test_the_summary_fits_a_laptop_screen_without_scrolling(browser, long_names):
    """At a 1,400 px window the summary table used to be 1,873 px wide (one-line labels)."""
    context = browser.new_context(offline=True, viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto(long_names.as_uri())
    label = page.locator("#summary-table td.name a").first.inner_text()
    assert "max_length=256" in label and "dtype=float32" in label
    width = page.eval_on_selector("#summary-table", "t => t.scrollWidth")
    viewport = page.evaluate("() => document.documentElement.clientWidth")
    assert viewport == 1400 and width <= viewport, width
    assert page.evaluate("() => document.documentElement.scrollWidth") <= viewport
    context.close()
