"""The dashboard and /metrics over real HTTP on 127.0.0.1, and the page in real headless Chromium
against the two-round ledger: the numbers shown, the plots loaded, the self-refresh; a screenshot is
saved to test-artifacts/dashboard.png."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import requests

from loop import status
from loop.config import load_settings
from ml_backend.app import create_app
from tests.support import status_ledger
from tests.support.webserve import serve

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
AUTH = ("pm", "dashboard-pass-123")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def dashboard(tmp_path, monkeypatch):
    monkeypatch.setenv("BASIC_AUTH_USER", AUTH[0])
    monkeypatch.setenv("BASIC_AUTH_PASS", AUTH[1])
    settings = load_settings(data_dir=str(tmp_path))
    ledger = status_ledger.build(settings.ledger_path)
    app = create_app(settings, ledger)
    app.config["DASHBOARD_REFRESH_S"] = 1
    with serve(app) as url:
        yield url, ledger


def test_dashboard_and_metrics_sit_behind_the_backends_auth(dashboard):
    url, _ = dashboard
    for path in ("/dashboard", "/dashboard/facts.json", "/dashboard/plot/progress.svg", "/metrics"):
        assert requests.get(url + path, timeout=10).status_code == 401, path
        assert requests.get(url + path, auth=AUTH, timeout=10).status_code == 200, path


def test_facts_json_and_plots(dashboard):
    url, ledger = dashboard
    facts = requests.get(f"{url}/dashboard/facts.json", auth=AUTH, timeout=10).json()
    assert facts["current"]["remaining"] == 1 and facts["teacher_fit"][1]["flagged"] is True
    assert [r["verified"] for r in facts["rounds"]] == [6, 4]
    for name in ("progress", "verdicts", "learner", "coverage"):
        reply = requests.get(f"{url}/dashboard/plot/{name}.svg", auth=AUTH, timeout=30)
        assert reply.headers["Content-Type"].startswith("image/svg+xml") and b"<svg" in reply.content
    assert requests.get(f"{url}/dashboard/plot/nope.svg", auth=AUTH, timeout=10).status_code == 404


def metric(text: str, line_start: str) -> float:
    """The value of the one exposition line starting with `line_start`."""
    [line] = [ln for ln in text.splitlines() if ln.startswith(line_start + " ")]
    return float(line.rsplit(" ", 1)[1])


def test_metrics_expose_rounds_progress_verdicts_teacher_and_latency(dashboard):
    url, _ = dashboard
    requests.post(f"{url}/predict", json={"tasks": [{"id": 101, "data": {}}]}, auth=AUTH, timeout=10)
    text = requests.get(f"{url}/metrics", auth=AUTH, timeout=10).text
    assert metric(text, 'labelloop_rounds{state="done"}') == 1
    assert metric(text, 'labelloop_rounds{state="verifying"}') == 1
    assert metric(text, "labelloop_current_round") == 2
    assert metric(text, 'labelloop_batch_items{stage="remaining"}') == 1
    assert metric(text, 'labelloop_batch_items{stage="verified"}') == 4
    assert metric(text, 'labelloop_verdicts{verdict="reject"}') == 4
    assert metric(text, "labelloop_teacher_calls_total") == 12
    assert metric(text, "labelloop_teacher_failures_total") == 1
    assert metric(text, 'labelloop_request_seconds_count{endpoint="predict",method="POST"}') == 1


def _browser(tmp_path: Path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"the browser test needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1900"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def wait_for(check, what: str, timeout: float = 20.0):
    """Poll `check` until it returns something truthy; fail naming `what` at the deadline."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except WebDriverException:  # the page was mid-reload: its elements went stale
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def test_dashboard_in_headless_chromium(dashboard, tmp_path):
    import base64

    from selenium.webdriver.common.by import By

    url, ledger = dashboard
    driver = _browser(tmp_path)
    try:
        token = base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
        driver.get(f"{url}/dashboard")

        def text(element_id: str) -> str:
            return driver.find_element(By.ID, element_id).text.strip()

        assert text("current-round") == "2" and text("current-state") == "verifying"
        assert text("current-verified") == "4 / 5" and text("current-remaining") == "1"
        assert text("flagged-clusters") == "1"  # the teacher does not suit cluster 1 (4 of 5 rejected)
        assert text("teacher-cost") == "$0.0120" and text("median-lead") == "20 s"
        rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                for tr in driver.find_elements(By.CSS_SELECTOR, "#rounds tr[data-round]")]
        # round, state, closed, learner, selected, imported, verified, skipped, returned, remaining, verdicts
        assert rows == [["1", "done", "", "v0", "6", "6", "6", "0", "0", "0", "2", "2", "2"],
                        ["2", "verifying", "", "v1", "6", "5", "4", "0", "0", "1", "1", "1", "2"]]
        shown = driver.find_element(By.ID, "annotators").text
        assert status.anonymise("bob@example.org", ledger.annotator_salt()) in shown and "example.org" not in shown
        images = driver.find_elements(By.CSS_SELECTOR, ".plots img")
        assert len(images) == 4
        wait_for(lambda: all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0;",
                                                   img) for img in images), "the four plots to load")

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000  # a rendered page with plots, not a blank one

        # the last open item gets verified: the page shows it without anyone reloading it
        row = {"annotation_id": 12, "task_id": 106, "round_id": 2, "pool_id": 6, "verdict": "accept",
               "target": status_ledger.draft(6), "draft": status_ledger.draft(6), "comment": None,
               "annotator": "alice@example.org", "updated_at": "2026-03-02T11:10:00Z"}
        ledger.record_verifications([row])
        wait_for(lambda: text("current-remaining") == "0", "the page to refresh itself to 0 remaining")
        assert text("current-verified") == "5 / 5" and text("eta") == "done"
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
