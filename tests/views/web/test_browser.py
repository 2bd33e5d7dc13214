"""The dashboard in a real browser (Playwright driving the system Chromium, headless).

A training process (a subprocess) writes a run while the page watches it: a panel updates, a layer is
chosen, a finding is opened, the samples view shows the confusion matrix; a screenshot is saved to
``test-artifacts/dashboard.png``. The HTML report is opened offline the same way.

Needs ``pip install playwright`` and Chromium from the system (``apt-get install chromium``); no browser
is downloaded. Skipped, saying why, only where Chromium (or Playwright) is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainspect.views.report import write_report
from trainspect.views.web.server import DashboardServer

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium is not installed (apt-get install -y chromium); the browser tests need it")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _points(page: object, key: str) -> int:
    return int(page.get_attribute(f".panel[data-key='{key}']", "data-points") or 0)  # type: ignore[attr-defined]


def test_live_dashboard_follows_a_training_process(browser: object, full_run: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(full_run, runs / "finished")  # a second run to compare with
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    trainer = subprocess.Popen(  # trains 300 steps, 0.12 s apart (killed when the test is done)
        [sys.executable, "-m", "tests.views.views_support", str(runs / "live"), "300", "0.12"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    server = DashboardServer(runs, port=0).start()
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        deadline = time.time() + 60
        while not (runs / "live" / "trainspect.db").exists() or not server.dashboard.runs()[0].get("steps"):
            assert trainer.poll() is None, trainer.stderr.read().decode()  # type: ignore[union-attr]
            assert time.time() < deadline, "the training process wrote no step"
            time.sleep(0.2)
        page.goto(server.url + "?interval=400#run=live")
        assert sorted(page.locator("#run-select option").evaluate_all("os => os.map(o => o.value)")) == [
            "finished", "live"]
        page.wait_for_selector(".panel[data-key='loss'][data-points]:not([data-points='0'])", timeout=20000)
        first = _points(page, "loss")
        assert trainer.poll() is None, "training finished before the page could watch it; slow it down"
        # the panel updates while the run trains (no reload)
        page.wait_for_function(
            f"document.querySelector(\".panel[data-key='loss']\").dataset.points > {first}", timeout=20000
        )
        assert _points(page, "loss") > first
        assert page.locator(".status .live").count() == 1

        # choose a layer: the per-layer panels show that layer only
        page.select_option("#layer-select", "2")
        panel = page.locator(".panel[data-key='grad_norm']")
        page.wait_for_function("document.querySelector(\".panel[data-key='grad_norm']\").dataset.layer === '2'")
        assert panel.get_attribute("data-lines") == "2"  # total + the chosen layer
        assert "2.weight" in panel.locator("h3").inner_text()

        # compare with the finished run (named "full"): its loss is overlaid (one more line)
        page.select_option("#layer-select", "__all__")
        before = int(page.get_attribute(".panel[data-key='loss']", "data-lines"))
        page.select_option("#compare-select", "finished")
        page.wait_for_function(
            f"document.querySelector(\".panel[data-key='loss']\").dataset.lines > {before}", timeout=20000)
        assert "(full)" in page.locator(".panel[data-key='loss'] .u-legend").inner_text()

        # open a finding: its explanation and remedies show
        page.wait_for_selector("details.finding[data-code='views-test-finding']", timeout=20000)
        page.click("details.finding[data-code='views-test-finding'] summary")
        remedies = page.locator("details.finding[data-code='views-test-finding'] ul.remedies li")
        remedies.first.wait_for(state="visible")
        assert remedies.all_inner_texts() == ["Lower the learning rate by 10x", "Check the data pipeline"]

        # the samples view: examples ordered by loss and a confusion matrix
        page.wait_for_selector("#confusion td[data-count]", timeout=20000)
        losses = [float(x) for x in page.locator(".example").evaluate_all("els => els.map(e => e.dataset.loss)")]
        assert losses == sorted(losses, reverse=True) and losses
        assert page.locator(".example canvas").count() == len(losses)  # image inputs drawn

        # histograms and curves drawn
        assert page.locator(".panel[data-key='views_test_hist2d'] canvas").count() == 1
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
        assert not errors, errors
    finally:
        page.close()
        server.stop()
        trainer.kill()
        trainer.wait()


def test_report_opens_offline(browser: object, full_run: Path, tmp_path: Path) -> None:
    report = write_report(full_run, tmp_path / "report.html", figure=False)
    context = browser.new_context(offline=True)  # type: ignore[attr-defined]
    page = context.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(report.as_uri())
        page.wait_for_selector(".panel[data-key='loss'][data-points='16']", timeout=15000)
        page.select_option("#layer-select", "1")
        page.wait_for_function("document.querySelector(\".panel[data-key='grad_norm']\").dataset.layer === '1'")
        page.wait_for_selector("#confusion td[data-count]")
        assert requests == [report.as_uri()], "the report must not load anything else"
        assert not errors, errors
    finally:
        context.close()
