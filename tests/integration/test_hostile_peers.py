"""Issue 7 section A over real sockets: the real `gateway` process against hostile or unlucky peers.

The hostile upstream is a raw TCP server in a thread of the test, so each connection's bytes are
exactly what the test says. Waits poll with deadlines; nothing depends on a sleep being long enough.
"""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.gateway_proc import GatewayProcess, UpstreamProcess

ENV = {
    "GATEWAY_UPSTREAM_TIMEOUT": "1",
    "GATEWAY_BODY_TIMEOUT": "5",
    "GATEWAY_KEEPALIVE_TIMEOUT": "5",
}


class RawUpstream:
    """A TCP server running `handler(sock)` in a thread per connection (the test's hostile peer)."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.handler = handler
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(sock,), daemon=True).start()

    def _run(self, sock: socket.socket) -> None:
        try:
            self.handler(sock)
        except OSError:
            pass
        finally:
            sock.close()

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()


def endless_head(sock: socket.socket) -> None:
    """Read a request, then send header lines for ever (until the gateway hangs up)."""
    sock.recv(65536)
    sock.sendall(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Endless: " + b"v" * 100 + b"\r\n"
    for _ in range(100_000):  # 11 MB at most, far over any limit
        sock.sendall(line * 10)


@pytest.fixture(scope="module")
def gw() -> Iterator[tuple[GatewayProcess, RawUpstream]]:
    raw = RawUpstream(endless_head)
    up = UpstreamProcess()
    config = f"""
[[services]]
name = "endless"
targets = [{{ url = "http://127.0.0.1:{raw.port}" }}]
[[services]]
name = "up"
targets = [{{ url = "{up.url}" }}]
[[routes]]
name = "endless"
path = "/endless"
service = "endless"
[[routes]]
name = "root"
path = "/"
service = "up"
"""
    g = GatewayProcess(config, env=ENV)
    try:
        yield g, raw
    finally:
        g.kill()
        raw.stop()
        up.stop()


def read_response(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Bytes until the peer closes or a complete Content-Length response arrived."""
    sock.settimeout(timeout)
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        buf += chunk
        head, sep, body = buf.partition(b"\r\n\r\n")
        if sep:
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:") and len(body) >= int(line.split(b":")[1]):
                    return buf
    return buf


def test_endless_upstream_head_is_502_and_logged_once(gw: tuple[GatewayProcess, RawUpstream]) -> None:
    g, _ = gw
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as c:
        t0 = time.monotonic()
        c.sendall(b"GET /endless HTTP/1.1\r\nHost: a\r\n\r\n")
        out = read_response(c)
        assert out.startswith(b"HTTP/1.1 502 "), out[:200]
        assert time.monotonic() - t0 < 4
        c.sendall(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")  # the client connection is still good
        assert read_response(c).startswith(b"HTTP/1.1 200 ")
    err = g.wait_stderr("response head over the limit")
    assert err.count("response head over the limit") == 1


def test_half_closed_client_gets_its_response(gw: tuple[GatewayProcess, RawUpstream]) -> None:
    g, _ = gw
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as c:
        c.sendall(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        c.shutdown(socket.SHUT_WR)  # "no more requests", as `nc -N` or a shell script does
        c.settimeout(10)
        buf = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            buf += chunk
    assert buf.count(b"HTTP/1.1 200 ") == 2 and b'"target": "/b"' in buf


def test_slow_upload_longer_than_the_upstream_timeout_succeeds(gw: tuple[GatewayProcess, RawUpstream]) -> None:
    """SPEC §8: GATEWAY_UPSTREAM_TIMEOUT (1 s here) runs from the last request byte, not the first."""
    g, _ = gw
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as c:
        c.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
        for b in b"abcde":  # 2.5 s of upload, each pause well within the 5 s body timeout
            time.sleep(0.5)
            c.sendall(bytes([b]))
        out = read_response(c)
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]
    assert b'"body_length": 5' in out
