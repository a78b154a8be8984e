"""Request metrics across a SIGHUP reload: kept routes keep counting in the same cells, a new
route appears, a removed one leaves /metrics; a request in flight during the reload is counted."""
from __future__ import annotations

import threading
import time

from tests.observability.test_metrics_workers import scrape, value
from tests.support.gateway_proc import (  # noqa: F401 - gateway, upstream are fixtures
    gateway,
    http_get,
    routes_toml,
    upstream,
    wait_until,
)


def stripped(url: str, paths: list[str]) -> str:
    return routes_toml(url, paths).replace('service = "up"\n', 'service = "up"\nstrip_prefix = true\n')


def test_counts_survive_a_reload_and_follow_the_routes(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(stripped(upstream.url, ["/a", "/b"]), env={"GATEWAY_WORKERS": "2"})
    wait_until(lambda: gw.stderr.count("worker: listening on") >= 2)
    for _ in range(6):
        assert http_get(gw.port, "/a/x")[0] == 200
        assert http_get(gw.port, "/b/x")[0] == 200
    # A slow request in flight while the config changes: it finishes on the old route.
    slow: dict[str, int] = {}
    t = threading.Thread(target=lambda: slow.setdefault("status", http_get(gw.port, "/a/slow?ms=1500")[0]))
    t.start()
    time.sleep(0.3)                         # the slow request is at the upstream by now
    gw.write_config(stripped(upstream.url, ["/a", "/c"]))
    gw.reload()
    wait_until(lambda: gw.stderr.count("reloaded") >= 2, 10)
    assert t.is_alive()                     # still in flight after both workers reloaded
    t.join(10)
    assert slow["status"] == 200
    for _ in range(3):
        assert http_get(gw.port, "/a/x")[0] == 200
        assert http_get(gw.port, "/c/x")[0] == 200
    samples = scrape(gw.admin_port)
    assert value(samples, "gateway_requests_total", route="a", code="200") == 6 + 1 + 3
    assert value(samples, "gateway_requests_total", route="c", code="200") == 3
    assert not [lab for lab, _ in samples["gateway_requests_total"] if lab["route"] == "b"]
    assert value(samples, "gateway_request_duration_seconds_count", route="a") == 10
