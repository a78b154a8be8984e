"""The error log (issue 13.1): one line per failed exchange with the request id the client got,
over real sockets against a real upstream process; refused heads reported to the metrics, the
access log, the error log and the audit log alike (issue 12/11 gaps); the rate limit; the node
metrics of issue 12's gaps (gateway_connections, gateway_redis_errors_total)."""
from __future__ import annotations

import json
import logging
import re
import socket
import time

import pytest

from gateway.observability.errorlog import ErrorLog
from gateway.pipeline.context import RequestContext
from tests.breakers.conftest import FaultUpstream
from tests.support.gateway_proc import (  # noqa: F401 - gateway is a fixture
    free_port,
    gateway,
    http_get,
    wait_until,
)


@pytest.fixture
def fault():
    up = FaultUpstream()
    yield up
    up._ctl.close()
    up.stop()


def exchange(port: int, raw: bytes, *, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read until the gateway closes (every request here ends with a close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


def error_line(gw, rid: str) -> str:
    found = wait_until(lambda: next((ln for ln in gw.stderr.splitlines()
                                     if "failed exchange:" in ln and f"request_id={rid} " in ln), None), timeout=10)
    assert isinstance(found, str)
    return found


def fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line.split("failed exchange:", 1)[1]))


def json_lines(path) -> list[dict]:
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except FileNotFoundError:
        return []


TOML = """
[[services]]
name = "flaky"
targets = [{{ url = "{fault}" }}]

[[services]]
name = "dead"
targets = [{{ url = "http://127.0.0.1:{dead}" }}]

[[routes]]
name = "flaky"
path = "/flaky"
service = "flaky"
timeout = 1

[[routes]]
name = "dead"
path = "/dead"
service = "dead"
"""


@pytest.fixture
def node(gateway, fault, tmp_path):  # noqa: F811
    env = {"GATEWAY_HEADER_TIMEOUT": "1", "GATEWAY_MAX_BODY_BYTES": "1000", "GATEWAY_MAX_URI_BYTES": "512",
           "GATEWAY_MAX_HEADER_BYTES": "2048", "GATEWAY_ACCESS_LOG": str(tmp_path / "access.log"),
           "GATEWAY_AUDIT_LOG": str(tmp_path / "audit.log"), "GATEWAY_METRICS_ALLOW": "127.0.0.0/8"}
    gw = gateway(TOML.format(fault=fault.url, dead=free_port()), env=env)
    return gw, fault, tmp_path


UPSTREAM_CASES = [
    # (fault mode, path, status, kind)
    (None, "/dead/x", 502, "upstream_connect"),
    ("reset", "/flaky/x", 502, "upstream_reset"),
    ("hang", "/flaky/x", 504, "upstream_timeout"),
]


def test_each_upstream_failure_is_one_warning_line_with_the_request_id_the_client_got(node) -> None:
    gw, fault, tmp = node
    for mode, path, status, kind in UPSTREAM_CASES:
        if mode is not None:
            fault.mode(mode)
        got, headers, body = exchange(gw.port, f"GET {path}?secret=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        assert got == status, (kind, got, body)
        rid = headers["x-request-id"]
        assert json.loads(body)["request_id"] == rid
        line = error_line(gw, rid)
        assert " WARNING error: " in line, line
        f = fields(line)
        assert f["status"] == str(status) and f["kind"] == kind, line
        route = path.split("/")[1]
        assert f["route"] == route and f["service"] == ("dead" if route == "dead" else "flaky"), line
        assert f["target"].startswith("http://127.0.0.1:") and f["method"] == "GET" and f["path"] == path, line
        assert f["client"] == "127.0.0.1"
        assert float(f["duration"]) >= float(f["upstream_duration"]) > 0, line
        if kind == "upstream_timeout":
            assert float(f["upstream_duration"]) >= 0.4, line      # the route's 1 s timeout (ticker: 0.5 s resolution)
        assert "secret" not in line
    fault.mode("ok")
    ok_status, ok_headers, _ = http_get(gw.port, "/flaky/fine")
    assert ok_status == 200
    time.sleep(0.3)
    assert ok_headers["x-request-id"] not in gw.stderr      # a successful exchange leaves no line
    assert gw.stop() == 0


# Heads refused before any exchange exists: (raw request, status, kind)
def _refused_cases() -> list[tuple[str, bytes, int, str]]:
    return [
        ("garbage", b"\x16\x03\x01 not http at all\r\n\r\n", 400, "bad_request"),
        ("bad_host", b"GET /flaky/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad_request"),
        ("uri", b"GET /" + b"u" * 600 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, "uri_too_long"),
        ("head", b"GET /flaky/a HTTP/1.1\r\nHost: a\r\nX-Big: " + b"h" * 3000 + b"\r\n\r\n", 431,
         "request_header_fields_too_large"),
        ("body", b"POST /flaky/a HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + b"b" * 5000, 413,
         "payload_too_large"),
    ]


def test_refused_heads_reach_metrics_access_log_error_log_and_audit_with_one_request_id(node) -> None:
    gw, _, tmp = node
    seen: dict[str, tuple[str, int, str]] = {}
    for name, raw, status, kind in _refused_cases():
        got, headers, body = exchange(gw.port, raw)
        assert got == status, (name, got, body)
        rid = headers["x-request-id"]
        assert json.loads(body)["request_id"] == rid
        seen[rid] = (name, status, kind)
        line = error_line(gw, rid)
        assert " INFO error: " in line, line            # the client's fault: INFO, as nginx
        f = fields(line)
        assert f["status"] == str(status) and f["kind"] == kind, line
    # A head that never completes: 408 once GATEWAY_HEADER_TIMEOUT (1 s) passes.
    got, headers, _ = exchange(gw.port, b"GET /flaky/slow HTTP/1.1\r\nHost: a\r\n")
    assert got == 408
    rid = headers["x-request-id"]
    seen[rid] = ("timeout", 408, "request_timeout")
    f = fields(error_line(gw, rid))
    assert f["kind"] == "request_timeout" and f["path"] == "/flaky/slow" and f["method"] == "GET"
    assert float(f["duration"]) >= 0.4      # the head's wait, at the ticker's resolution

    # The access log: one line per refusal, same request id and status.
    access = wait_until(lambda: len(x := [r for r in json_lines(tmp / "access.log") if r["request_id"] in seen]) == len(seen) and x)
    assert isinstance(access, list)
    for rec in access:
        assert rec["status"] == seen[rec["request_id"]][1] and rec["client_ip"] == "127.0.0.1"
    # The audit log: the malformed ones (400, 414, 431), not the 408 or the 413.
    malformed = {rid for rid, (_, st, _) in seen.items() if st in (400, 414, 431)}

    def audited() -> dict[str, dict]:
        return {r["request_id"]: r for r in json_lines(tmp / "audit.log") if r["event"] == "request_rejected"}
    wait_until(lambda: set(audited()) >= malformed)
    audited_now = audited()
    assert set(audited_now) & set(seen) == malformed
    for rid in malformed:
        assert audited_now[rid]["client_ip"] == "127.0.0.1"
        assert audited_now[rid]["details"]["status"] == seen[rid][1]
    # The metrics: counted under the unrouted series, by status.
    body = http_get(gw.admin_port, "/metrics")[2].decode()
    for status, n in ((400, 2), (414, 1), (431, 1), (413, 1), (408, 1)):
        pattern = rf'gateway_requests_total\{{[^}}]*code="{status}"[^}}]*route=""[^}}]*\}} (\S+)'
        alt = rf'gateway_requests_total\{{[^}}]*route=""[^}}]*code="{status}"[^}}]*\}} (\S+)'
        total = sum(float(v) for v in re.findall(pattern, body) + re.findall(alt, body))
        assert total == n, (status, [ln for ln in body.splitlines() if "gateway_requests_total" in ln and 'route=""' in ln])
    assert re.search(r'gateway_error_log_lines_total\{result="logged"\} ([0-9.]+)', body)
    assert gw.stop() == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_connections_gauge_counts_open_client_connections_of_the_node(gateway, fault, workers: str) -> None:  # noqa: F811
    gw = gateway(TOML.format(fault=fault.url, dead=free_port()),
                 env={"GATEWAY_WORKERS": workers, "GATEWAY_METRICS_ALLOW": "127.0.0.0/8"})
    wait_until(lambda: gw.stderr.count("listening on") >= int(workers))

    def gauge(side: str = "downstream", state: str = "open") -> float:
        body = http_get(gw.admin_port, "/metrics")[2].decode()
        m = re.search(rf'gateway_connections\{{side="{side}",state="{state}"\}} (\S+)', body)
        assert m, body
        return float(m.group(1))

    assert gauge() == 0 and gauge("upstream", "idle") == 0
    # A proxied request leaves its upstream connection in the pool: counted idle (on the next
    # heartbeat of a supervised worker, at scrape time in a lone process).
    assert http_get(gw.port, "/flaky/pooled")[0] == 200
    wait_until(lambda: gauge("upstream", "idle") == 1)
    socks = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(6)]
    try:
        wait_until(lambda: gauge() == 6)
    finally:
        for s in socks:
            s.close()
    wait_until(lambda: gauge() == 0)
    body = http_get(gw.admin_port, "/metrics")[2].decode()
    for op in ("ratelimit", "load", "heartbeat", "subscribe"):
        assert f'gateway_redis_errors_total{{op="{op}"}} 0.0' in body
    assert gw.stop() == 0


# --- the rate limit, without processes ---------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _failed(i: int) -> RequestContext:
    from gateway.http import replies

    ctx = RequestContext()
    ctx.request_id = b"rid-%d" % i
    ctx.method = b"GET"
    ctx.path = b"/p"
    ctx.start = time.monotonic()
    ctx.status = 502
    ctx.local_reply = replies.UPSTREAM_CONNECT
    ctx.upstream_error = "connect"
    return ctx


def test_the_rate_limit_counts_what_it_suppressed_and_says_so(caplog) -> None:
    clock = _Clock()
    elog = ErrorLog(max_lines=5, window=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="gateway.error"):
        for i in range(12):
            elog.report(_failed(i), 502)
        clock.t += 10.0          # the window is over: the next line first reports the suppressed count
        elog.report(_failed(99), 502)
    msgs = [r.getMessage() for r in caplog.records if r.name == "gateway.error"]
    assert sum("failed exchange:" in m for m in msgs) == 6
    assert [m for m in msgs if "more not logged" in m] == [msgs[5]]
    assert "7 more not logged in the last 10 s" in msgs[5]
    assert "request_id=rid-99 " in msgs[6]


def test_path_bytes_are_escaped_onto_one_token() -> None:
    ctx = _failed(1)
    ctx.path = b'/a b\n"\xff'
    line = ErrorLog().line(ctx, 502, "upstream_connect")
    assert "path=/a\\x20b\\x0a\\x22\\xff " in line and "\n" not in line


def test_policy_refusals_and_upstream_answers_are_not_failures() -> None:
    from gateway.pipeline.reply import LocalReply

    ctx = _failed(1)
    ctx.upstream_error = None
    ctx.local_reply = LocalReply(429, "rate_limited", "Too many requests.")
    ctx.status = 429
    elog = ErrorLog()
    assert elog.classify(ctx, 429) is None
    ctx.local_reply = None
    ctx.status = 500             # the upstream's own 500 was proxied: the exchange worked
    assert elog.classify(ctx, 500) is None
    ctx.status = 0               # the client left before the answer
    assert elog.classify(ctx, 499) == ("client_closed", logging.INFO)
    from gateway.http import replies

    ctx.status = 505             # the client's HTTP version: its fault, INFO
    ctx.local_reply = replies.VERSION_NOT_SUPPORTED
    assert elog.classify(ctx, 505) == ("http_version_not_supported", logging.INFO)
    ctx.local_reply = replies.NO_TARGET   # ours: WARNING
    assert elog.classify(ctx, 503) == ("no_healthy_target", logging.WARNING)


def test_redis_errors_of_every_link_in_the_process_count_into_node_memory() -> None:
    from types import SimpleNamespace

    from gateway.observability import node_metrics
    from gateway.state import redis_link
    from gateway.state.memory import NodeMemory
    from gateway.state.node import Placer

    memory = NodeMemory.private(1 << 20)
    saved = redis_link.error_sink, node_metrics._gauge
    try:
        placer = Placer(memory, 0)
        node_metrics.bind_process_cells(lambda name, size: placer.place(name, size, kind="metrics"), 0)
        a = redis_link.RedisLink("redis://127.0.0.1:1")
        b = redis_link.RedisLink("redis://127.0.0.1:1")
        a.count_error("ratelimit")
        b.count_error("ratelimit")
        b.count_error("load")
        a.count_error("an op nobody declared")     # a label value is never made up at run time
        samples = node_metrics.metric_samples(SimpleNamespace(state=SimpleNamespace(memory=memory)))
        errors = {labels["op"]: v for name, _, _, labels, v in samples if name == "gateway_redis_errors_total"}
        assert errors["ratelimit"] == 2 and errors["load"] == 1 and errors["other"] == 1
        assert set(errors) == set(node_metrics.REDIS_OPS)
        assert a.errors == {"ratelimit": 1, "an op nobody declared": 1}   # the link's own view is kept
    finally:
        redis_link.error_sink, node_metrics._gauge = saved


class ScriptedUpstream:
    """A one-thread upstream that reads a request head and answers with the bytes of the mode set
    for the path's first segment: `garbage` (not HTTP), `cut` (a head promising 1000 bytes, 10 of
    them, then a TCP RST), `slow` (nothing for 2 s)."""

    def __init__(self) -> None:
        import threading

        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import struct

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                if b" /garbage" in head:
                    conn.sendall(b"this is not an HTTP response\r\n\r\n")
                elif b" /cut" in head:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
                    time.sleep(0.2)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                elif b" /slow" in head:
                    time.sleep(2)       # (never answered in time: the client leaves first)

    def close(self) -> None:
        self.sock.close()


SCRIPTED_TOML = """
[[services]]
name = "scripted"
targets = [{{ url = "{url}" }}]

[[routes]]
name = "scripted"
path = "/"
service = "scripted"
timeout = 30
"""


def test_protocol_errors_cut_responses_and_clients_that_leave_are_logged_with_their_request_id(gateway) -> None:  # noqa: F811
    up = ScriptedUpstream()
    try:
        gw = gateway(SCRIPTED_TOML.format(url=up.url))
        # An upstream answering garbage: 502, kind upstream_protocol.
        status, headers, _ = exchange(gw.port, b"GET /garbage HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert status == 502
        f = fields(error_line(gw, headers["x-request-id"]))
        assert f["kind"] == "upstream_protocol" and f["status"] == "502" and f["target"] == up.url
        # A response cut after its head: the client got 200 and a short body; the line says so.
        status, headers, body = exchange(gw.port, b"GET /cut HTTP/1.1\r\nHost: a\r\nX-Request-Id: cut-1\r\n\r\n")
        assert status == 200 and len(body) < 1000 and headers["x-request-id"] == "cut-1"
        line = error_line(gw, "cut-1")
        assert " WARNING " in line and fields(line)["kind"] == "upstream_reset" and fields(line)["status"] == "200"
        # A client that leaves before the answer (a reset: a FIN alone is a half-close, and a
        # half-closed client still gets its response): its own request id, INFO, client_closed.
        import struct

        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Request-Id: gone-1\r\n\r\n")
            time.sleep(0.5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        line = error_line(gw, "gone-1")
        assert " INFO " in line and fields(line)["kind"] == "client_closed", line
        assert gw.stop() == 0
    finally:
        up.close()


def test_redis_errors_of_the_workers_reach_the_nodes_metric(gateway, fault) -> None:  # noqa: F811
    from tests.support.redis_server import RedisProcess

    with RedisProcess() as redis:
        toml = (f'[[services]]\nname = "up"\ntargets = [{{ url = "{fault.url}" }}]\n'
                f'[[routes]]\nname = "api"\npath = "/"\nservice = "up"\n'
                f'[[routes.rate_limits]]\nkey = "ip"\nlimit = 50\nwindow = 3600\n')
        gw = gateway(toml, env={"GATEWAY_WORKERS": "2", "GATEWAY_REDIS_URL": redis.url, "GATEWAY_REDIS_TIMEOUT": "0.2",
                                "GATEWAY_METRICS_ALLOW": "127.0.0.0/8"})
        wait_until(lambda: gw.stderr.count("worker: listening on") >= 2)
        wait_until(lambda: http_get(gw.admin_port, "/ready")[0] == 200)

        def ratelimit_errors() -> float:
            body = http_get(gw.admin_port, "/metrics")[2].decode()
            m = re.search(r'gateway_redis_errors_total\{op="ratelimit"\} (\S+)', body)
            assert m, body
            return float(m.group(1))

        for _ in range(10):
            assert http_get(gw.port, "/x")[0] == 200
        assert ratelimit_errors() == 0
        redis.kill()
        # Every request is still answered (the local fallback decides); the failed calls count.
        # (A small limit: a lease is 1 % of it, so requests keep asking Redis.)
        def counted() -> bool:
            for _ in range(10):
                assert http_get(gw.port, "/x")[0] in (200, 429)
            return ratelimit_errors() > 0
        wait_until(counted, timeout=20, interval=0.2)
        assert gw.stop() == 0
