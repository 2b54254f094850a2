"""End to end in a real browser: Debian's Chromium, driven by Playwright, against
`dlboost-search dashboard` served on loopback over a study made in the test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from test_dashboard import serve, stop

from conftest import TINY_SPACE
from dlboost_search import reports
from dlboost_search.spaces import space_from_dict
from dlboost_search.testing import synthetic_study

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytestmark = pytest.mark.slow


@pytest.fixture
def served_study(storage):
    """A published study, served with a token: (base URL, URL with the token, study id)."""
    study = synthetic_study(space_from_dict(TINY_SPACE, "test"), storage, 30)
    report = reports.build_report(study)
    reports.publish(study, report, reports.figures(study, report))
    process, url = serve(storage, "--token", "browser-token-for-tests")
    yield url.split("/dashboard")[0], url, study._study_id, report
    stop(process)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    if shutil.which(CHROMIUM) is None:
        pytest.fail(
            "Debian's chromium is missing: scripts/test installs it (apt-get install chromium)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def test_study_page_shows_the_importance_plots_and_the_report_note(browser, served_study, tmp_path):
    base, url, study_id, report = served_study
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    assert page.goto(url).status == 200  # the token, once; the cookie keeps it

    page.goto(f"{base}/dashboard/studies/{study_id}")
    for name in ("fANOVA", "PED-ANOVA"):
        figure = page.get_by_text(f"Parameter importances ({name})").first
        figure.wait_for(timeout=30_000)
        assert figure.is_visible()
    page.screenshot(path=tmp_path / "study.png", full_page=True)

    page.goto(f"{base}/dashboard/studies/{study_id}/note")
    best = page.get_by_text(f"Best val_loss: {report['best']['value']:.6g}")
    best.wait_for(timeout=30_000)
    assert best.is_visible()
    assert page.get_by_text("Best parameters").is_visible()
    page.screenshot(path=tmp_path / "note.png", full_page=True)
    assert (tmp_path / "note.png").stat().st_size > 10_000


def test_no_report_figure_is_wider_than_the_page(browser, storage, tmp_path):
    # Eight parameters: Optuna's own slice plot of them alone is 2,400 px wide.
    space = space_from_dict(
        yaml.safe_load(Path("search_spaces/diabetes_mlp.yaml").read_text()), "x"
    )
    study = synthetic_study(space, storage, 40)
    report = reports.build_report(study)
    page_file = tmp_path / "report.html"
    page_file.write_text(reports.to_html(report, reports.figures(study, report)))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(page_file.as_uri())
    page.locator(".js-plotly-plot").last.wait_for(timeout=30_000)
    widths = page.evaluate(
        "[...document.querySelectorAll('.js-plotly-plot')]"
        ".map(e => e.getBoundingClientRect().right)"
    )
    assert len(widths) == len(reports.figures(study, report)) >= 7
    assert max(widths) <= 1280
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280  # no sideways scrolling


def test_a_browser_without_the_token_is_refused(browser, served_study, tmp_path):
    base, _, study_id, _ = served_study
    page = browser.new_context().new_page()
    response = page.goto(f"{base}/dashboard/studies/{study_id}")
    assert response.status == 401
    assert "needs its token" in page.content()
    page.screenshot(path=tmp_path / "refused.png")
