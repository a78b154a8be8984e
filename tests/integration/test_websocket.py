"""WebSocket tunnelling over real sockets (SPEC §4, issue 7 C1): a real WebSocket client (the
`websockets` package) through the real gateway process to a real WebSocket server
(tests/support/ws_upstream.py), and hostile peers played with raw sockets: a client that never
reads a flooding upstream, a client that floods an upstream that never reads. The gateway's
memory is read from /proc (VmRSS) of its only process (GATEWAY_WORKERS=1)."""
from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.support.gateway_proc import REPO, GatewayProcess

MiB = 1024 * 1024
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


class WsUpstream:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "support" / "ws_upstream.py"), "--port", "0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening "), line
        self.url = "http://" + line.split()[1]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def config(url: str) -> str:
    return f"""
[[services]]
name = "ws"
targets = [{{ url = "{url}" }}]
[[routes]]
name = "ws"
path = "/ws"
service = "ws"
websocket = true
timeout = 30.0
[[routes]]
name = "short"
path = "/short"
strip_prefix = true
service = "ws"
websocket = true
timeout = 1.0
[[routes]]
name = "plain"
path = "/plain"
service = "ws"
"""


@pytest.fixture(scope="module")
def ws_up() -> Iterator[WsUpstream]:
    up = WsUpstream()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gw(ws_up: WsUpstream) -> Iterator[GatewayProcess]:
    g = GatewayProcess(config(ws_up.url), env={"GATEWAY_WORKERS": "1"})
    try:
        yield g
    finally:
        g.kill()


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_messages_both_ways_through_the_tunnel(gw: GatewayProcess) -> None:
    with connect(f"ws://127.0.0.1:{gw.port}/ws/echo", ping_interval=None, max_size=2 ** 22) as ws:
        for text in ("hello", "ü" * 1000, ""):
            ws.send(text)
            assert ws.recv(timeout=10) == text
        big = os.urandom(3 * MiB)
        ws.send(big)
        assert ws.recv(timeout=30) == big
        for i in range(200):
            ws.send(b"%d" % i)
        assert [ws.recv(timeout=10) for _ in range(200)] == [b"%d" % i for i in range(200)]
        assert ws.response is not None and ws.response.headers["X-Request-Id"]
    # a clean close handshake went through both ways
    assert ws.close_code == 1000


def test_an_upgrade_on_a_route_without_websocket_is_refused(gw: GatewayProcess) -> None:
    with pytest.raises(InvalidStatus) as info:
        connect(f"ws://127.0.0.1:{gw.port}/plain/ws/echo", open_timeout=10)
    assert info.value.response.status_code == 400
    assert b"upgrade_not_allowed" in info.value.response.body


def test_a_non_101_answer_reaches_the_client_as_it_is(gw: GatewayProcess) -> None:
    with pytest.raises(InvalidStatus) as info:
        connect(f"ws://127.0.0.1:{gw.port}/ws-nothing", open_timeout=10)
    assert info.value.response.status_code == 404


def test_the_idle_timeout_closes_a_silent_tunnel(gw: GatewayProcess) -> None:
    # route timeout = 1.0: no byte either way for a second closes both sides
    with connect(f"ws://127.0.0.1:{gw.port}/short/ws/hello", ping_interval=None) as ws:
        assert ws.recv(timeout=10) == "hello"
        t0 = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=20)
        waited = time.monotonic() - t0
    assert 0.4 <= waited < 15, waited   # (deadlines have the 0.5 s resolution of the loop's Ticker)


def handshake(port: int, path: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path.encode(), KEY))
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)   # one byte at a time: nothing of what follows the head is read
    assert head.startswith(b"HTTP/1.1 101 "), head
    return s


def test_a_client_that_never_reads_does_not_grow_the_gateway(gw: GatewayProcess) -> None:
    """The upstream sends 64 KiB messages as fast as it may; the client reads nothing. Without
    backpressure the gateway would buffer all of it (hundreds of MiB a second on loopback)."""
    before = rss(gw.pid)
    socks = [handshake(gw.port, "/ws/flood") for _ in range(4)]
    try:
        peak = before
        for _ in range(30):
            time.sleep(0.1)
            peak = max(peak, rss(gw.pid))
        print(f"\nflooded tunnels, client not reading: VmRSS before {before / MiB:.1f} MiB, "
              f"peak {peak / MiB:.1f} MiB (4 connections)")
        assert peak - before < 24 * MiB
        # still a working tunnel: reading now gets the flood
        got = socks[0].recv(65536)
        assert got
    finally:
        for s in socks:
            s.close()


def test_an_upstream_that_never_reads_does_not_grow_the_gateway(gw: GatewayProcess) -> None:
    """The client sends masked 64 KiB frames as fast as the gateway takes them; the upstream reads
    none after its first few. The gateway stops reading the client: the bytes it accepts are
    bounded by socket buffers, and its memory does not grow."""
    before = rss(gw.pid)
    s = handshake(gw.port, "/ws/sink")
    frame = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 65536) + b"\0\0\0\0" + b"y" * 65536
    s.setblocking(False)
    sent = 0
    peak = before
    deadline = time.monotonic() + 3
    try:
        while time.monotonic() < deadline:
            try:
                sent += s.send(frame)
            except BlockingIOError:
                time.sleep(0.05)
                peak = max(peak, rss(gw.pid))
        peak = max(peak, rss(gw.pid))
        print(f"\nupstream not reading: client got {sent / MiB:.1f} MiB in, gateway VmRSS before "
              f"{before / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB")
        assert sent < 64 * MiB          # stopped: kernel buffers and one transport buffer at most
        assert peak - before < 24 * MiB
    finally:
        s.close()


def test_drain_keeps_an_established_tunnel_until_the_drain_timeout(ws_up: WsUpstream) -> None:
    g = GatewayProcess(config(ws_up.url), env={"GATEWAY_WORKERS": "1", "GATEWAY_DRAIN_TIMEOUT": "3"})
    try:
        with connect(f"ws://127.0.0.1:{g.port}/ws/echo", ping_interval=None) as ws:
            ws.send("before")
            assert ws.recv(timeout=10) == "before"
            t0 = time.monotonic()
            g.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            ws.send("during the drain")              # the tunnel still works while draining
            assert ws.recv(timeout=10) == "during the drain"
            with pytest.raises(ConnectionClosed):   # ... until the drain timeout closes it
                ws.recv(timeout=30)
            waited = time.monotonic() - t0
        assert 2.5 <= waited < 20, waited
        assert g.wait(30) == 0
    finally:
        g.kill()


def test_reload_keeps_an_established_tunnel(ws_up: WsUpstream) -> None:
    g = GatewayProcess(config(ws_up.url), env={"GATEWAY_WORKERS": "1"})
    try:
        with connect(f"ws://127.0.0.1:{g.port}/ws/echo", ping_interval=None) as ws:
            ws.send("before")
            assert ws.recv(timeout=10) == "before"
            # a reload that drops the route altogether: the tunnel it admitted goes on
            g.write_config(config(ws_up.url).replace('path = "/ws"', 'path = "/elsewhere"'))
            g.reload()
            g.wait_stderr("reloaded", timeout=20)
            with pytest.raises(InvalidStatus):   # new handshakes see the new routes ...
                connect(f"ws://127.0.0.1:{g.port}/ws/echo", open_timeout=10)
            ws.send("after the reload")           # ... the established tunnel is untouched
            assert ws.recv(timeout=10) == "after the reload"
    finally:
        g.kill()
