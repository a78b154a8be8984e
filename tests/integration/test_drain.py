"""SIGTERM drains: in-flight requests finish, idle connections close, new ones are refused, exit 0."""
from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
from typing import Any

import pytest

from tests.support.gateway_proc import (  # noqa: F401 - gateway, upstream are fixtures
    gateway,
    http_get,
    routes_toml,
    upstream,
    wait_until,
)


def slow_request(port: int, ms: int, out: dict[str, Any]) -> threading.Thread:
    """GET /slow?ms=N through the gateway in a thread; the outcome lands in `out`."""

    def go() -> None:
        try:
            out["status"], _, out["body"] = http_get(port, f"/slow?ms={ms}", timeout=30)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            out["error"] = exc
        out["done"] = time.monotonic()

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_lets_the_slow_request_finish_and_exits_0(gateway, upstream, workers: str) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/"]),
                 env={"GATEWAY_DRAIN_TIMEOUT": "10", "GATEWAY_WORKERS": workers})
    if workers == "2":
        wait_until(lambda: gw.stderr.count("worker: listening on") >= 2)
    # An idle keep-alive connection, to see it closed by the drain.
    idle = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    assert http_get(gw.port, "/warm", conn=idle)[0] == 200
    out: dict[str, Any] = {}
    t = slow_request(gw.port, 1500, out)
    time.sleep(0.4)  # the request is now waiting on the upstream
    t0 = time.monotonic()
    gw.send_signal(signal.SIGTERM)
    # New connections are refused soon after SIGTERM, while the slow one is still in flight.
    wait_until(lambda: refused(gw.port), timeout=1.0)
    assert "done" not in out
    if workers == "1":
        # Draining: the admin listener stays up until the end and says not ready.
        status, _, body = http_get(gw.admin_port, "/ready")
        assert status == 503 and json.loads(body)["draining"] is True
    # The idle keep-alive connection was closed by the gateway.
    idle.sock.settimeout(2)
    assert idle.sock.recv(1) == b""
    t.join(15)
    assert out.get("status") == 200, out
    code = gw.wait(15)
    assert code == 0, gw.stderr
    assert time.monotonic() - t0 < 10
    assert "drained" in gw.stderr


def test_drain_timeout_bounds_the_shutdown(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/"]), env={"GATEWAY_DRAIN_TIMEOUT": "1"})
    out: dict[str, Any] = {}
    t = slow_request(gw.port, 8000, out)
    time.sleep(0.4)
    t0 = time.monotonic()
    assert gw.stop(signal.SIGTERM, timeout=10) == 0
    elapsed = time.monotonic() - t0
    assert 0.9 < elapsed < 4, elapsed
    t.join(10)
    assert "error" in out  # the connection was closed without a response after the timeout
    assert "drain timeout" in gw.stderr


def test_sigterm_when_idle_exits_at_once(gateway) -> None:  # noqa: F811
    gw = gateway(None, args=())  # no subcommand: `run` is the default
    gw.wait_stderr("worker: listening on")
    t0 = time.monotonic()
    assert gw.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 3
