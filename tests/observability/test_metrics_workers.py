"""/metrics against a real 2-worker gateway: the node's totals equal the requests actually made."""
from __future__ import annotations

import http.client
import re

from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway_proc import (  # noqa: F401 - gateway, upstream are fixtures
    gateway,
    http_get,
    upstream,
    wait_until,
    worker_pids,
)


def scrape(admin_port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    status, headers, body = http_get(admin_port, "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(samples, name: str, **labels: str) -> float:
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == w for k, w in labels.items())]
    return sum(found)


CONFIG = """
[[services]]
name = "up"
targets = [{{ url = "{url}" }}]

[[services]]
name = "dead"
targets = [{{ url = "http://127.0.0.1:{dead}" }}]

[[routes]]
name = "api"
path = "/api"
service = "up"
strip_prefix = true

[[routes]]
name = "other"
path = "/other"
service = "up"
strip_prefix = true

[[routes]]
name = "broken"
path = "/broken"
service = "dead"
"""


def _dead_port() -> int:
    from tests.support.gateway_proc import free_port
    return free_port()


def test_counts_across_two_workers_equal_the_requests_made(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(CONFIG.format(url=upstream.url, dead=_dead_port()), env={"GATEWAY_WORKERS": "2"})
    wait_until(lambda: (p := worker_pids(gw.admin_port)) and len(p) == 2)
    wait_until(lambda: gw.stderr.count("worker: listening on") >= 2)
    # Fresh connections spread over both workers (SO_REUSEPORT hashes each connection).
    made = {("api", "GET", "200"): 0, ("api", "POST", "404"): 0, ("other", "GET", "503"): 0,
            ("broken", "GET", "502"): 0, ("", "GET", "404"): 0}
    for i in range(30):
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        assert http_get(gw.port, "/api/x", conn=conn)[0] == 200
        made[("api", "GET", "200")] += 1
        if i % 3 == 0:
            assert http_get(gw.port, "/api/status/404", conn=conn, method="POST")[0] == 404
            made[("api", "POST", "404")] += 1
        if i % 5 == 0:
            assert http_get(gw.port, "/other/status/503", conn=conn)[0] == 503
            made[("other", "GET", "503")] += 1
            assert http_get(gw.port, "/nowhere", conn=conn)[0] == 404
            made[("", "GET", "404")] += 1
        conn.close()
    for _ in range(4):
        assert http_get(gw.port, "/broken")[0] == 502
        made[("broken", "GET", "502")] += 1

    # A request is counted after its last byte went out (the end of the exchange): the client may
    # read its response and scrape before the worker's next instruction counts it. Wait for the
    # total, then every count must be exact (never more).
    total = sum(made.values())
    wait_until(lambda: sum(v for _, v in scrape(gw.admin_port).get("gateway_requests_total", [])) >= total)
    samples = scrape(gw.admin_port)
    for (route, method, code), n in made.items():
        assert value(samples, "gateway_requests_total", route=route, method=method, code=code) == n, (route, method, code)
    assert sum(v for _, v in samples["gateway_requests_total"]) == total
    # Histogram counts: one observation per request, per route.
    for route in ("api", "other", "broken"):
        n = sum(v for (r, _, _), v in made.items() if r == route)
        assert value(samples, "gateway_request_duration_seconds_count", route=route) == n
        assert value(samples, "gateway_request_duration_seconds_bucket", route=route, le="+Inf") == n
        assert value(samples, "gateway_request_duration_seconds_bucket", route=route, le="0.0001") <= n
    # Upstream: every answered request to "up" is one upstream observation; "dead" only errors.
    answered = sum(v for (r, _, _), v in made.items() if r in ("api", "other"))
    assert value(samples, "gateway_upstream_duration_seconds_count", service="up", target=upstream.url) == answered
    assert value(samples, "gateway_upstream_errors_total", service="dead", kind="connect") == 4
    assert value(samples, "gateway_upstream_duration_seconds_count", service="dead") == 0
    # The labels are the configured names, bounded vocabularies, never a path or a header.
    for name, rows in samples.items():
        for labels, _ in rows:
            for k, v in labels.items():
                assert "/x" not in v and "status" not in v and "nowhere" not in v, (name, k, v)
    assert value(samples, "gateway_node_processes") >= 3      # supervisor + 2 workers
    assert samples["process_cpu_seconds_total"]


def test_unknown_methods_and_codes_stay_in_bounded_labels(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(CONFIG.format(url=upstream.url, dead=_dead_port()))
    assert http_get(gw.port, "/api/status/299")[0] == 299
    assert http_get(gw.port, "/api/x", method="PROPFIND")[0] == 200
    samples = scrape(gw.admin_port)
    assert value(samples, "gateway_requests_total", route="api", method="GET", code="2xx") == 1
    assert value(samples, "gateway_requests_total", route="api", method="other", code="200") == 1
    for labels, _ in samples["gateway_requests_total"]:
        assert labels["method"] != "PROPFIND"
        assert re.fullmatch(r"[1-5]\d\d|[1-5]xx|other", labels["code"])


def test_metrics_refused_outside_the_allow_list(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(CONFIG.format(url=upstream.url, dead=_dead_port()),
                 env={"GATEWAY_METRICS_ALLOW": "10.0.0.0/8"})
    status, _, body = http_get(gw.admin_port, "/metrics")
    assert status == 403 and b"GATEWAY_METRICS_ALLOW" in body
