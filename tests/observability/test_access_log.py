"""GATEWAY_ACCESS_LOG: JSON lines parsed back, several workers into one file, reopen for rotation,
a bounded backlog with drops counted."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from gateway.config.env import EnvError, load_settings
from gateway.observability import access as access_mod
from gateway.observability.metrics import build_recorder
from gateway.pipeline.context import RequestContext
from tests.support.gateway_proc import (  # noqa: F401 - gateway, upstream are fixtures
    gateway,
    http_get,
    routes_toml,
    upstream,
    wait_until,
    worker_pids,
)


def lines(path) -> list[dict]:
    try:
        text = open(path).read()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines()]


def test_every_request_is_one_parsed_line_from_two_workers(gateway, upstream, tmp_path) -> None:  # noqa: F811
    path = tmp_path / "access.log"
    gw = gateway(routes_toml(upstream.url, ["/api"]), env={"GATEWAY_WORKERS": "2", "GATEWAY_ACCESS_LOG": str(path)})
    wait_until(lambda: gw.stderr.count("worker: listening on") >= 2)
    ids = []
    for i in range(20):
        conn_status, headers, _ = http_get(gw.port, f"/api/item/{i}?token=secret")
        assert conn_status == 200
        ids.append(headers["x-request-id"])
    assert http_get(gw.port, "/missing")[0] == 404
    got = wait_until(lambda: len(x := lines(path)) == 21 and x, timeout=10)
    assert isinstance(got, list)
    by_id = {rec["request_id"]: rec for rec in got}
    for i, rid in enumerate(ids):
        rec = by_id[rid]
        assert rec["method"] == "GET" and rec["status"] == 200
        assert rec["path"] == f"/api/item/{i}"              # never the query string
        assert rec["route"] == "api" and rec["service"] == "up" and rec["target"] == upstream.url
        assert rec["client_ip"] == "127.0.0.1"
        assert len(rec["trace_id"]) == 32
        assert rec["bytes_out"] > 0 and 0 <= rec["upstream_duration"] <= rec["duration"] < 10
        assert rec["time"].endswith("Z")
    assert "secret" not in path.read_text()
    missing = [r for r in got if r["status"] == 404]
    assert len(missing) == 1 and missing[0]["route"] is None
    body = http_get(gw.admin_port, "/metrics")[2].decode()
    assert 'gateway_access_log_lines_total{result="logged"} 21.0' in body
    assert 'gateway_access_log_lines_total{result="dropped"} 0.0' in body
    assert gw.stop() == 0


def test_sighup_and_sigusr1_reopen_the_file_for_rotation(gateway, upstream, tmp_path) -> None:  # noqa: F811
    path = tmp_path / "access.log"
    gw = gateway(routes_toml(upstream.url, ["/"]), env={"GATEWAY_WORKERS": "2", "GATEWAY_ACCESS_LOG": str(path)})
    wait_until(lambda: gw.stderr.count("worker: listening on") >= 2)
    for sig, name in ((signal.SIGHUP, "rot1"), (signal.SIGUSR1, "rot2")):
        assert http_get(gw.port, f"/{name}-before")[0] == 200
        wait_until(lambda name=name: path.exists() and f"{name}-before" in path.read_text())
        os.rename(path, tmp_path / name)
        gw.send_signal(sig)
        # After the signal every worker writes to a fresh file under the configured name.
        def after(name: str = name) -> bool:
            http_get(gw.port, f"/{name}-after")
            return path.exists() and f"{name}-after" in path.read_text()
        wait_until(after, timeout=10, interval=0.3)
        assert f"{name}-after" not in (tmp_path / name).read_text().split(f"{name}-before")[0]
    assert gw.stop() == 0


def test_a_bad_destination_exits_2_naming_the_variable() -> None:
    with pytest.raises(EnvError) as exc:
        load_settings({"GATEWAY_ACCESS_LOG": "stdrr"})
    assert "GATEWAY_ACCESS_LOG" in str(exc.value)
    for ok in ("off", "stdout", "stderr", "/tmp/x.log"):
        assert load_settings({"GATEWAY_ACCESS_LOG": ok}).access_log == ok


def test_an_unopenable_file_stops_startup_naming_the_variable(gateway, upstream, tmp_path) -> None:  # noqa: F811
    from tests.support.gateway_proc import GatewayError
    with pytest.raises(GatewayError) as exc:
        gateway(routes_toml(upstream.url, ["/"]), env={"GATEWAY_ACCESS_LOG": str(tmp_path / "no" / "dir.log")})
    assert "GATEWAY_ACCESS_LOG" in str(exc.value)


def _ctx(i: int, path: bytes = b"/p") -> RequestContext:
    ctx = RequestContext()
    ctx.traceparent = b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"
    ctx.start = time.monotonic()
    ctx.request_id = b"r%d" % i
    ctx.client_ip = "10.0.0.1"
    ctx.method = b"GET"
    ctx.path = path
    ctx.status = 200
    ctx.bytes_out = 10
    return ctx


def test_lines_are_valid_json_whatever_the_path_bytes(tmp_path) -> None:
    path = tmp_path / "a.log"
    log = access_mod.AccessLog(str(path))
    rec = build_recorder([], [], None)
    rec.access = log
    nasty = [b'/a"b\\c', b"/\x00\x1f\x7f", b"/caf\xc3\xa9", b"/\xff\xfe", b"/ok"]
    for i, p in enumerate(nasty):
        rec.observe(_ctx(i, p))
    log.close()
    got = lines(path)
    assert [r["path"] for r in got] == [p.decode("latin-1") for p in nasty]
    assert got[0]["route"] is None and got[0]["target"] is None and got[0]["status"] == 200
    assert got[0]["trace_id"] == "a" * 32 and got[0]["request_id"] == "r0"


def test_a_reader_that_never_reads_costs_bounded_memory_and_counted_drops(monkeypatch) -> None:
    # stdout is a pipe nobody reads: the writer thread blocks on it; the loop never does, the
    # backlog stops at MAX_PENDING and every line beyond is dropped and counted.
    r, w = os.pipe()
    monkeypatch.setattr(access_mod, "MAX_PENDING", 256 * 1024)
    monkeypatch.setattr(access_mod, "_open", lambda dest: (w, False))
    log = access_mod.AccessLog("stdout")
    rec = build_recorder([], [], None)
    rec.access = log
    try:
        started = time.monotonic()
        for i in range(20000):
            rec.observe(_ctx(i))
        log.flush()
        assert time.monotonic() - started < 10       # never waited on the pipe
        assert log.dropped > 0 and log.written > 0
        assert log.writer.pending <= access_mod.MAX_PENDING
        assert log.written + log.dropped == 20000
    finally:
        os.close(r)       # the blocked write fails (EPIPE): the thread ends
        log.close(timeout=5)
        os.close(w)


def test_a_regular_file_is_appended_from_the_loop_until_a_write_stalls(tmp_path, monkeypatch) -> None:
    path = tmp_path / "a.log"
    log = access_mod.AccessLog(str(path))
    rec = build_recorder([], [], None)
    rec.access = log
    assert log.direct and not log.writer.is_alive()
    rec.observe(_ctx(1))
    log.flush()
    assert [r["request_id"] for r in lines(path)] == ["r1"]      # written by the flush itself
    monkeypatch.setattr(access_mod, "STALL", 0.0)                 # every write now counts as a stall
    rec.observe(_ctx(2))
    log.flush()
    assert not log.direct and log.writer.is_alive()               # moved to the writer thread
    rec.observe(_ctx(3))
    log.close()
    assert [r["request_id"] for r in lines(path)] == ["r1", "r2", "r3"]
    assert log.written == 3 and log.dropped == 0
