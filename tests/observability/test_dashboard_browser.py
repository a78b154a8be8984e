"""GET /dashboard in a real headless browser (Debian's chromium, driven by Selenium): the page
loads with no external resource, then shows a target go down and come back as live traffic sees
it, refreshing itself from GET /status. Screenshots are saved (DASHBOARD_SCREENSHOTS or tmp_path)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gateway_proc import (  # noqa: F401 - gateway is a fixture
    REPO,
    free_port,
    gateway,
    http_get,
    routes_toml,
    wait_until,
)

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromedriver are not "
                                "installed (.ci/run installs them: apt-get install chromium chromium-driver)")


def start_upstream(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "support" / "upstream.py"), "--port", str(port)],
                            cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None and proc.stdout.readline().startswith("listening ")
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--no-first-run"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def health_of(driver, url: str) -> str | None:
    # One script call: the page re-renders its rows every poll, so an element found in one call
    # may be gone by the next (a stale reference).
    return driver.execute_script(
        "const r = [...document.querySelectorAll('tr[data-target]')].find(e => e.dataset.target === arguments[0]);"
        "return r ? r.dataset.healthy : null;", url)


def route_requests(driver, route: str) -> str | None:
    return driver.execute_script(
        "const r = [...document.querySelectorAll('tr[data-route]')].find(e => e.dataset.route === arguments[0]);"
        "return r ? r.cells[6].textContent : null;", route)


def test_dashboard_watches_a_target_go_down_and_come_back(gateway, browser, tmp_path) -> None:  # noqa: F811
    shots = Path(os.environ.get("DASHBOARD_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    up = start_upstream(port)
    try:
        # Health as an operator watching a dashboard configures it: active checks, node-wide.
        health = ('[services.health]\npath = "/healthz"\ninterval = 1.0\ntimeout = 0.5\n'
                  'healthy_threshold = 1\nunhealthy_threshold = 1\nmax_backoff = 1.0\n')
        toml = routes_toml(url, ["/api"]).replace("\n\n[[routes]]", "\n" + health + "\n[[routes]]", 1)
        gw = gateway(toml, env={"GATEWAY_WORKERS": "2"})
        wait_until(lambda: gw.stderr.count("worker: listening on") >= 2)
        browser.get(f"http://127.0.0.1:{gw.admin_port}/dashboard")
        assert browser.title == "Gateway dashboard"
        # Targets start healthy (discovery's gateway_target_healthy); traffic fills the route row.
        wait_until(lambda: health_of(browser, url) == "healthy", 15)
        for _ in range(5):
            assert http_get(gw.port, "/api/x")[0] == 200
        wait_until(lambda: health_of(browser, url) == "healthy", 15)
        wait_until(lambda: route_requests(browser, "api") == "5", 15)
        browser.save_screenshot(str(shots / "dashboard-healthy.png"))

        stop(up)                                    # the target goes down
        def failing() -> bool:
            assert http_get(gw.port, "/api/x")[0] in (502, 503)   # refused, then out of rotation
            return health_of(browser, url) == "down"
        wait_until(failing, 15, interval=0.3)
        browser.save_screenshot(str(shots / "dashboard-down.png"))

        up = start_upstream(port)                   # and comes back
        def recovered() -> bool:
            http_get(gw.port, "/api/x")
            return health_of(browser, url) == "healthy"
        wait_until(recovered, 15, interval=0.3)
        browser.save_screenshot(str(shots / "dashboard-recovered.png"))
        for name in ("healthy", "down", "recovered"):
            assert (shots / f"dashboard-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # Self-contained: the page fetched nothing but itself and /status.
        fetched = {e["message"] for e in browser.get_log("performance") if '"Network.requestWillBeSent"' in e["message"]}
        urls = {json.loads(m)["message"]["params"]["request"]["url"] for m in fetched}
        base = f"http://127.0.0.1:{gw.admin_port}/"
        assert urls and all(u in (base + "dashboard", base + "status") for u in urls), urls
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        stop(up)
