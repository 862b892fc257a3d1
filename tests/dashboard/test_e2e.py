"""End to end: the real `mixlab dashboard` server, loaded in headless Debian Chromium through Playwright.

Needs `/usr/bin/chromium` (Debian: `apt-get install -y chromium`); skipped when it is absent. Saves
`test-artifacts/dashboard.png` (the trade-off view) and `test-artifacts/dashboard-run.png` (the run opened by a click).
"""

from __future__ import annotations

from pathlib import Path

import pytest


CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no /usr/bin/chromium")]


def test_tradeoff_chart_draws_every_run_and_the_front_then_click_opens_run(dashboard_server):
    server, _ = dashboard_server
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1300}, device_scale_factor=1)
            page.goto(server, wait_until="domcontentloaded")
            dots = page.locator(".vega-embed svg g.mark-symbol.role-mark path")
            page.wait_for_selector(".vega-embed svg g.mark-symbol.role-mark path", timeout=90_000)
            metrics = dict(zip(page.locator('[data-testid="stMetricLabel"]').all_inner_texts(),
                               page.locator('[data-testid="stMetricValue"]').all_inner_texts()))
            n_runs, n_front = int(metrics["runs plotted"]), int(metrics["on the Pareto front"])
            page.wait_for_function(f"document.querySelectorAll('.vega-embed svg g.mark-symbol.role-mark path').length >= {n_runs}")
            assert dots.count() == n_runs and 2 <= n_front < n_runs
            # The Pareto front: one staircase line and one label per front run.
            assert page.locator(".vega-embed svg g.mark-line.role-mark path").count() == 1
            labels = page.locator(".vega-embed svg g.mark-text.role-mark text")
            texts = page.eval_on_selector_all(".vega-embed svg g.mark-text.role-mark text", "els => els.map(e => e.textContent)")
            assert 1 <= labels.count() <= n_front and all(t.strip() for t in texts)
            # Whiskers: an x and a y CI rule per run.
            assert page.locator(".vega-embed svg g.mark-rule.role-mark line").count() == 2 * n_runs
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=False)

            # Clicking a run on the front opens its Run detail.
            labels.first.wait_for()
            box = _front_dot_box(page)
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.get_by_role("heading", name="Run detail").wait_for(timeout=60_000)
            assert "view=Run+detail" in page.url or "view=Run%20detail" in page.url
            page.wait_for_selector(".vega-embed svg", timeout=60_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "dashboard-run.png"), full_page=False)
        finally:
            browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 20_000


def _front_dot_box(page) -> dict:
    """Bounding box of the largest dot (front runs are drawn larger), whose centre is a click on that run."""
    boxes = [b for b in (d.bounding_box() for d in page.locator(".vega-embed svg g.mark-symbol.role-mark path").all()) if b]
    return max(boxes, key=lambda b: b["width"] * b["height"])
