"""The data plane over real sockets: the real `gateway` process in front of the real echo upstream
(tests/support/upstream.py). One gateway and one upstream per module; each test opens its own
client connections and speaks raw HTTP/1.1 so that framing is under the test's control."""
from __future__ import annotations

import hashlib
import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.gateway_proc import GatewayProcess, UpstreamProcess, free_port

ENV = {
    "GATEWAY_UPSTREAM_TIMEOUT": "1",
    "GATEWAY_HEADER_TIMEOUT": "1",
    "GATEWAY_BODY_TIMEOUT": "1",
    "GATEWAY_KEEPALIVE_TIMEOUT": "2",
    "GATEWAY_UPSTREAM_CONNECT_TIMEOUT": "1",
    "GATEWAY_MAX_BODY_BYTES": str(8 * 1024 * 1024),
}


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayProcess]:
    up = UpstreamProcess()
    dead = free_port()
    config = f"""
[[services]]
name = "up"
targets = [{{ url = "{up.url}" }}]
[[services]]
name = "dead"
targets = [{{ url = "http://127.0.0.1:{dead}" }}]
[[routes]]
name = "dead"
path = "/dead"
service = "dead"
[[routes]]
name = "root"
path = "/"
service = "up"
"""
    g = GatewayProcess(config, env=ENV)
    try:
        yield g
    finally:
        g.kill()
        up.stop()


class Conn:
    """A raw client connection that reads responses with http.client from one shared buffer."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        r = http.client.HTTPResponse(self, method=method)  # type: ignore[arg-type]
        r.begin()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body

    def makefile(self, mode: str) -> Any:  # http.client.HTTPResponse calls this
        return _NoClose(self.file)

    def closed_by_peer(self, timeout: float = 3.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return False

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class _NoClose:
    """HTTPResponse closes its file after each body; the connection's buffer must outlive it."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def close(self) -> None:
        pass


@pytest.fixture
def conn(gw: GatewayProcess) -> Iterator[Conn]:
    c = Conn(gw.port)
    yield c
    c.close()


def echo(body: bytes) -> dict[str, Any]:
    return json.loads(body)


def hdr(e: dict[str, Any], name: str) -> list[str]:
    return [v for n, v in e["headers"] if n.lower() == name.lower()]


def test_get_forwarded_canonically(conn: Conn, gw: GatewayProcess) -> None:
    conn.send(b"GET /a/./b/../c?q=1#frag HTTP/1.1\r\nHost: Client.Example\r\nX-Forwarded-For: 6.6.6.6\r\n"
              b"X-Consumer-Id: admin\r\nContent_Length: 9\r\nX-Request-Id: rid-1\r\n\r\n")
    status, headers, body = conn.response()
    assert status == 200
    e = echo(body)
    assert e["target"] == "/a/c?q=1"
    assert hdr(e, "host") == [f"127.0.0.1:{e['headers'][0][1].split(':')[1]}"]
    assert hdr(e, "x-forwarded-for") == ["127.0.0.1"]
    assert hdr(e, "x-forwarded-host") == ["client.example"]
    assert hdr(e, "x-forwarded-proto") == ["http"]
    assert hdr(e, "x-consumer-id") == [] and hdr(e, "content_length") == []
    assert hdr(e, "x-request-id") == ["rid-1"] and headers["x-request-id"] == "rid-1"
    assert len(hdr(e, "traceparent")) == 1
    assert "server" not in headers and "x-powered-by" not in headers and "keep-alive" not in headers
    assert headers["x-content-type-options"] == "nosniff"


def test_keep_alive_reuses_both_sides(conn: Conn) -> None:
    seen = []
    for _ in range(3):
        conn.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        status, _, body = conn.response()
        assert status == 200
        seen.append(echo(body)["conn"])
    assert len(set(seen)) == 1  # one pooled upstream connection served all three


def test_pipelined_responses_in_order(conn: Conn) -> None:
    conn.send(b"".join(b"GET /p%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5)))
    targets = [echo(conn.response()[2])["target"] for _ in range(5)]
    assert targets == [f"/p{i}" for i in range(5)]


def test_large_content_length_body_streams(conn: Conn) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    conn.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body))
    for i in range(0, len(body), 65536):
        conn.send(body[i:i + 65536])
    status, _, out = conn.response()
    e = echo(out)
    assert status == 200 and e["body_length"] == len(body)
    assert e["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert hdr(e, "content-length") == [str(len(body))]


def test_chunked_request_body(conn: Conn) -> None:
    conn.send(b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=x\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n")
    status, _, out = conn.response()
    e = echo(out)
    assert status == 200 and e["body_length"] == 11
    assert e["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()
    assert hdr(e, "transfer-encoding") == ["chunked"] and hdr(e, "x-t") == []


def test_expect_100_continue(conn: Conn) -> None:
    conn.send(b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    line = conn.file.readline()
    assert line == b"HTTP/1.1 100 Continue\r\n" and conn.file.readline() == b"\r\n"
    conn.send(b"abcd")
    status, _, out = conn.response()
    assert status == 200 and echo(out)["body_length"] == 4 and hdr(echo(out), "expect") == []


def test_chunked_large_head_204_304_1xx(conn: Conn) -> None:
    conn.send(b"GET /chunked?n=4&size=1000 HTTP/1.1\r\nHost: a\r\n\r\n")
    status, headers, out = conn.response()
    assert status == 200 and headers.get("transfer-encoding") == "chunked" and len(out) == 4000
    conn.send(b"GET /large?bytes=3000000 HTTP/1.1\r\nHost: a\r\n\r\n")
    status, headers, out = conn.response()
    assert status == 200 and len(out) == 3000000 and headers["content-length"] == "3000000"
    conn.send(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
    status, headers, out = conn.response("HEAD")
    assert status == 200 and out == b"" and int(headers["content-length"]) > 0
    for code in (204, 304):
        conn.send(b"GET /status/%d HTTP/1.1\r\nHost: a\r\n\r\n" % code)
        status, _, out = conn.response()
        assert status == code and out == b""
    conn.send(b"GET /1xx HTTP/1.1\r\nHost: a\r\n\r\n")
    status, _, out = conn.response()
    assert status == 200 and echo(out)["target"] == "/1xx"
    conn.send(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")  # the connection survived all of it
    assert conn.response()[0] == 200


def test_http10_close_delimited_chunked(conn: Conn) -> None:
    conn.send(b"GET /chunked?n=2&size=5 HTTP/1.0\r\n\r\n")
    status, headers, out = conn.response()
    assert status == 200 and out == b"0000011111" and "transfer-encoding" not in headers
    assert conn.closed_by_peer()


@pytest.mark.parametrize("path,status", [("/garbage", 502), ("/close", 502), ("/slow?ms=3000", 504), ("/dead/x", 502)])
def test_upstream_failures(conn: Conn, path: str, status: int) -> None:
    conn.send(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path.encode())
    got, headers, out = conn.response()
    assert got == status and json.loads(out)["request_id"] == headers["x-request-id"]
    conn.send(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")  # the client connection is still good
    assert conn.response()[0] == 200


def test_reset_mid_response_closes_client(conn: Conn) -> None:
    conn.send(b"GET /reset HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(http.client.IncompleteRead):
        conn.response()


def test_ambiguous_framing_400_and_close(conn: Conn) -> None:
    conn.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    status, headers, out = conn.response()
    assert status == 400 and json.loads(out)["error"] == "bad_request"
    assert conn.closed_by_peer()


def test_header_timeout_408(conn: Conn) -> None:
    conn.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
    t0 = time.monotonic()
    status, _, _ = conn.response()
    assert status == 408 and 0.9 < time.monotonic() - t0 < 3.0
    assert conn.closed_by_peer()


def test_keepalive_idle_close(conn: Conn) -> None:
    conn.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert conn.response()[0] == 200
    t0 = time.monotonic()
    assert conn.closed_by_peer(timeout=5)
    assert 1.5 < time.monotonic() - t0 < 4.0


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_slow_client_bounds_gateway_memory(gw: GatewayProcess) -> None:
    """A 64 MiB response to a client that is not reading stays in the kernel and the upstream,
    not in the gateway: upstream reading pauses while the client's socket is full."""
    size = 64 * 1024 * 1024
    c = Conn(gw.port)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    try:
        before = rss_mib(gw.pid)
        c.send(b"GET /large?bytes=%d HTTP/1.1\r\nHost: a\r\n\r\n" % size)
        time.sleep(0.6)  # not reading (below GATEWAY_BODY_TIMEOUT=1, which would cut us off)
        grown = rss_mib(gw.pid) - before
        assert grown < 16, f"gateway RSS grew {grown:.1f} MiB while the client was not reading"
        status, headers, body = c.response()
        assert status == 200 and len(body) == size
    finally:
        c.close()
