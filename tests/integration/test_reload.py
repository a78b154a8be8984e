"""SIGHUP reloads the TOML: new routes appear, nothing in flight or established is dropped, and a
bad file is refused with a logged reason while the old config keeps serving."""
from __future__ import annotations

import http.client
import json
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


def test_reload_adds_a_route_without_dropping_anything(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/a", "/slow"]))
    out: dict[str, Any] = {}

    def slow() -> None:
        out["status"], _, out["body"] = http_get(gw.port, "/slow?ms=1500", timeout=20)

    # A slow request in flight across the reload (it holds its own upstream connection).
    t = threading.Thread(target=slow, daemon=True)
    t.start()
    time.sleep(0.4)
    # An established keep-alive connection across the reload.
    keep = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    status, _, body = http_get(gw.port, "/a", conn=keep)
    assert status == 200
    upstream_conn = json.loads(body)["conn"]
    assert http_get(gw.port, "/b", conn=keep)[0] == 404
    gw.write_config(routes_toml(upstream.url, ["/a", "/slow", "/b"]))
    gw.reload()
    gw.wait_stderr("reloaded")
    # The keep-alive connection survives and its next request sees the new route ...
    status, _, body = http_get(gw.port, "/b", conn=keep)
    assert status == 200, body
    echo = json.loads(body)
    assert echo["target"] == "/b"
    # ... through the same pooled upstream connection: the pool was carried over, not rebuilt.
    assert echo["conn"] == upstream_conn
    t.join(10)
    assert out.get("status") == 200, out
    keep.close()
    assert gw.stop() == 0


@pytest.mark.parametrize("bad", [
    "[[routes]\nname = ",                                                        # not TOML
    '[[routes]]\nname = "x"\npath = "/x"\nservice = "missing"\n',                 # invalid value
])
def test_a_bad_file_is_refused_and_the_old_config_stays(gateway, upstream, bad: str) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/a"]))
    assert http_get(gw.port, "/a")[0] == 200
    gw.write_config(bad)
    gw.reload()
    err = gw.wait_stderr("reload refused")
    line = next(ln for ln in err.splitlines() if "reload refused" in ln)
    assert "keeping the previous config" in line
    assert ("routes[0].service" in line) or (str(gw.config_path) in line), line
    assert gw.alive()
    assert http_get(gw.port, "/a")[0] == 200
    assert http_get(gw.port, "/x")[0] == 404
    assert gw.stop() == 0


def test_reload_reaches_every_worker(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/a"]), env={"GATEWAY_WORKERS": "2"})
    wait_until(lambda: gw.stderr.count("worker: listening on") >= 2)
    gw.write_config(routes_toml(upstream.url, ["/a", "/b"]))
    gw.reload()
    wait_until(lambda: gw.stderr.count("reloaded") >= 2)
    # Fresh connections spread over both workers; every one must know /b.
    for _ in range(20):
        assert http_get(gw.port, "/b")[0] == 200
    assert gw.stop() == 0
