"""Circuit breakers against a real fault upstream, through a real gateway process (issue 9).

Every state, for every kind of fault (refused, reset, 500s, timeouts; slow answers that stay under
the timeout are successes), the open circuit answered without any upstream connection, the route's
fallback, exact probe counts in half-open across 2 workers, and a worker killed mid-probe.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from typing import Any

import pytest

from tests.breakers.conftest import FaultUpstream
from tests.support.gateway_proc import http_get, socket_owner, wait_until, worker_pids


def config(up: FaultUpstream, breaker: str, fallback: str = "") -> str:
    return f'''
[[services]]
name = "up"
targets = ["{up.url}"]
[services.breaker]
{breaker}

[[routes]]
name = "api"
path = "/api"
service = "up"
{fallback}
'''


def get(gw: Any, path: str = "/api/x") -> tuple[int, dict[str, str], bytes]:
    return http_get(gw.port, path, timeout=15)


def breakers(gw: Any) -> dict[str, Any]:
    status, _, body = http_get(gw.admin_port, "/breakers")
    assert status == 200
    services = json.loads(body)["services"]
    return {s["name"] + "/" + t["id"]: t for s in services for t in s["targets"]}


def circuit(gw: Any, up: FaultUpstream) -> dict[str, Any]:
    return breakers(gw)[f"up/{up.id}"]


FAULTS = [("refuse", None, 502), ("reset", None, 502), ("status", 500, 500), ("hang", None, 504)]


@pytest.mark.parametrize(("mode", "arg", "status"), FAULTS, ids=[f[0] for f in FAULTS])
def test_each_fault_opens_then_probes_close_it(gateway: Any, fault: FaultUpstream, mode: str,
                                               arg: int | None, status: int) -> None:
    gw = gateway(config(fault, "failure_threshold = 3\nopen_timeout = 1.0\nhalf_open_requests = 2\n"
                               "success_threshold = 2\nmin_requests = 1000\n"),
                 env={"GATEWAY_WORKERS": "1", "GATEWAY_UPSTREAM_TIMEOUT": "0.5"})
    assert get(gw)[0] == 200
    fault.mode(mode, arg)
    for i in range(3):
        assert get(gw)[0] == status, f"failure {i + 1}"
        if i < 2:
            assert circuit(gw, fault)["state"] == "closed"
    c = circuit(gw, fault)
    assert c["state"] == "open" and c["code"] == 2 and c["forced"] is False
    assert c["next_probe"] is not None and c["since"] is not None
    # Open: answered at once, without touching the upstream.
    fault.mode("ok")
    fault.zero()
    for _ in range(5):
        st, headers, body = get(gw)
        assert st == 503 and headers["x-gateway-fallback"] == "circuit-open"
        assert json.loads(body)["error"] == "circuit_open"
    assert fault.stats()["requests"] == 0 and fault.stats()["connections"] == 0
    # After open_timeout: two probes, both succeed, closed again.
    time.sleep(1.1)
    assert get(gw)[0] == 200
    assert circuit(gw, fault)["state"] == "half_open"
    assert get(gw)[0] == 200
    c = circuit(gw, fault)
    assert c["state"] == "closed"
    assert c["transitions"] == {"open": 1, "half_open": 1, "closed": 1}
    assert fault.stats()["requests"] == 2


def test_a_probe_failure_reopens_with_a_doubled_timeout(gateway: Any, fault: FaultUpstream) -> None:
    gw = gateway(config(fault, "failure_threshold = 2\nopen_timeout = 1.0\nhalf_open_requests = 1\n"),
                 env={"GATEWAY_WORKERS": "1"})
    fault.mode("status", 503)
    assert [get(gw)[0] for _ in range(2)] == [503, 503]
    assert circuit(gw, fault)["open_timeout"] == 1.0
    time.sleep(1.1)
    assert get(gw)[0] == 503                               # the probe, answered by the upstream
    c = circuit(gw, fault)
    assert c["state"] == "open" and c["open_timeout"] == 2.0 and c["trips"] == 2
    st, headers, _ = get(gw)
    assert st == 503 and headers["x-gateway-fallback"] == "circuit-open"


def test_slow_answers_under_the_timeout_are_successes_and_error_rate_opens(gateway: Any,
                                                                          fault: FaultUpstream) -> None:
    gw = gateway(config(fault, "failure_threshold = 100\nerror_rate = 0.5\nmin_requests = 4\nwindow = 30.0\n"
                               "failure_statuses = [502, 503]\n"),
                 env={"GATEWAY_WORKERS": "1", "GATEWAY_UPSTREAM_TIMEOUT": "2"})
    fault.mode("slow", 300)
    assert [get(gw)[0] for _ in range(3)] == [200] * 3
    fault.mode("status", 500)                      # not in failure_statuses: a success here
    assert [get(gw)[0] for _ in range(2)] == [500] * 2
    assert circuit(gw, fault)["state"] == "closed"
    fault.mode("status", 502)
    # 5 successes so far; failures 1..4 bring the ratio to 4/9 < 0.5, the 5th to 5/10.
    assert [get(gw)[0] for _ in range(5)] == [502] * 5
    c = circuit(gw, fault)
    assert c["state"] == "open", c
    assert c["window_requests"] == 0 or c["failure_ratio"] >= 0.5


def test_route_fallback_is_sent_as_configured(gateway: Any, fault: FaultUpstream) -> None:
    fb = 'fallback = { status = 200, body = \'{"items":[],"stale":true}\', content_type = "application/json; charset=utf-8" }'
    gw = gateway(config(fault, "failure_threshold = 1\nopen_timeout = 60.0\n", fb), env={"GATEWAY_WORKERS": "1"})
    fault.mode("refuse")
    assert get(gw)[0] == 502
    st, headers, body = get(gw)
    assert (st, body) == (200, b'{"items":[],"stale":true}')
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert headers["x-gateway-fallback"] == "circuit-open" and headers["x-request-id"]
    # HEAD gets the same head and no body; keep-alive survives the fallback.
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    for method in ("HEAD", "GET", "GET"):
        st, headers, body = http_get(gw.port, "/api/y", conn=conn, method=method)
        assert st == 200 and headers["content-length"] == "25"
        assert body == (b"" if method == "HEAD" else b'{"items":[],"stale":true}')
    conn.close()


def _burst(port: int, n: int) -> list[tuple[int, str | None]]:
    """n requests at once, each on its own connection (spread over the workers by SO_REUSEPORT)."""
    out: list[tuple[int, str | None]] = []
    lock = threading.Lock()
    go = threading.Event()

    def one() -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        c.connect()
        go.wait()
        c.request("GET", "/api/probe")
        r = c.getresponse()
        r.read()
        with lock:
            out.append((r.status, r.getheader("x-gateway-fallback")))
        c.close()

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    time.sleep(0.3)     # every connection accepted and idle in its worker
    go.set()
    for t in threads:
        t.join(30)
    return out


def test_half_open_admits_exactly_the_probe_quota_across_two_workers(gateway: Any, fault: FaultUpstream) -> None:
    gw = gateway(config(fault, "failure_threshold = 2\nopen_timeout = 3.0\nhalf_open_requests = 3\n"
                               "success_threshold = 3\n"), env={"GATEWAY_WORKERS": "2"})
    assert len(worker_pids(gw.admin_port)) == 2
    fault.mode("status", 500)
    while circuit(gw, fault)["state"] != "open":
        assert get(gw)[0] in (500, 503)
    # Probes stay in flight for 1.5 s while the burst arrives (a late thread on a loaded box still
    # finds them out), well inside the 3 s probe deadline.
    fault.mode("slow", 1500)
    fault.zero()
    time.sleep(3.2)
    results = _burst(gw.port, 24)
    assert len(results) == 24
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert len(ok) == 3, results
    assert refused and all(h == "circuit-open" for _, h in refused) and len(ok) + len(refused) == 24
    assert fault.stats()["requests"] == 3
    c = circuit(gw, fault)
    assert c["state"] == "closed" and c["transitions"]["half_open"] == 1
    assert get(gw)[0] == 200


def test_a_worker_killed_mid_probe_does_not_leave_the_circuit_half_open(gateway: Any,
                                                                     fault: FaultUpstream) -> None:
    gw = gateway(config(fault, "failure_threshold = 2\nopen_timeout = 1.0\nhalf_open_requests = 1\n"
                               "success_threshold = 1\n"), env={"GATEWAY_WORKERS": "2"})
    pids = worker_pids(gw.admin_port)
    fault.mode("status", 500)
    while circuit(gw, fault)["state"] != "open":
        get(gw)
    fault.mode("hang")
    fault.zero()
    time.sleep(1.1)
    probe = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    probe.sendall(b"GET /api/probe HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_until(lambda: fault.stats()["requests"] == 1)
    assert circuit(gw, fault)["state"] == "half_open"
    owner = socket_owner(gw.port, probe.getsockname()[1], pids)
    assert owner in pids
    os.kill(owner, signal.SIGKILL)
    fault.mode("ok")
    # The dead worker's probe never reports: past its deadline the circuit counts it as failed
    # (open again, doubled timeout), then probes again and closes.
    def answered_200() -> bool:
        try:
            return get(gw)[0] == 200
        except OSError:
            return False    # queued on the killed worker's socket as it died: reset, not ours

    start = time.monotonic()
    wait_until(answered_200, timeout=20, interval=0.2)
    assert time.monotonic() - start < 15
    c = circuit(gw, fault)
    assert c["state"] == "closed", c
    probe.close()


def test_a_reload_keeps_an_unchanged_circuit_and_renews_a_changed_one(gateway: Any, fault: FaultUpstream) -> None:
    text = config(fault, "failure_threshold = 2\nopen_timeout = 60.0\n")
    gw = gateway(text, env={"GATEWAY_WORKERS": "2"})
    fault.mode("status", 500)
    while circuit(gw, fault)["state"] != "open":
        get(gw)
    fault.mode("ok")
    gw.write_config(text + "\n# touched\n")
    gw.reload()
    time.sleep(1.5)
    assert circuit(gw, fault)["state"] == "open"
    assert all(get(gw)[0] == 503 for _ in range(6))      # every worker, after the reload
    gw.write_config(text.replace("open_timeout = 60.0", "open_timeout = 30.0"))
    gw.reload()
    wait_until(lambda: circuit(gw, fault)["open_timeout"] == 30.0, timeout=10)
    assert circuit(gw, fault)["state"] == "closed"
    wait_until(lambda: all(get(gw)[0] == 200 for _ in range(6)), timeout=10)
