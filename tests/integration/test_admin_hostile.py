"""The admin listener against hostile peers: real sockets against a real listener.

Peers that pipeline without reading, send endless heads, stall, hold connections, speak Upgrade or
CONNECT, lie about the Host, or send credentials in odd bytes. Memory is measured on the real
serving process (/proc/<pid>/status VmRSS), tracebacks on its real stderr.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import resource
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from gateway.admin.api import AdminRequest, AdminResponse, AdminRoutes, json_response
from gateway.admin.server import AdminServer, base_routes
from gateway.config import Settings
from tests.support.gateway_proc import free_port, gateway, wait_until  # noqa: F401 - `gateway` is a fixture

MiB = 1 << 20
STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def rss(pid: int) -> int:
    """Resident set size of `pid` in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def get(path: str = "/health", host: str = "127.0.0.1", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def read_until_closed(s: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes; fails if it does not close within `timeout`."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"the server did not close within {timeout}s; got {data[:300]!r}"
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def statuses(data: bytes) -> list[int]:
    return [int(m) for m in STATUS.findall(data)]


def exchange(port: int, data: bytes, timeout: float = 5.0, half_close: bool = False) -> bytes:
    """Send `data` on a new connection (then half-close), return everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        return read_until_closed(s, timeout)


CLOSE = "Connection: close\r\n"


class Listener:
    """A real AdminServer on its own uvloop loop in a thread: real sockets, custom routes.

    For what the gateway process cannot show yet (write routes, broken handlers). Everything the
    loop's exception handler receives (an exception escaping a protocol callback or a task) is
    kept in `loop_errors`.
    """

    def __init__(self, routes: AdminRoutes, settings: Settings, host: str = "127.0.0.1") -> None:
        self.loop = uvloop.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(ctx))
        self.server = AdminServer(routes, settings)
        self.port = free_port()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self.server.start(self.loop, host, self.port))
            except BaseException as exc:  # noqa: BLE001 - reported to the test thread
                failure.append(exc)
                started.set()
                return
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10), "the admin listener did not start"
        if failure:
            raise failure[0]

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.close)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        if not self.loop.is_closed() and not self.thread.is_alive():
            self.loop.close()


def test_routes() -> tuple[AdminRoutes, dict[str, int]]:
    """/health and friends plus write routes that count their calls and handlers that misbehave."""
    routes = base_routes(lambda: (True, {}), lambda: {"pid": 0})
    calls = {"writes": 0}

    def write(req: AdminRequest) -> AdminResponse:
        calls["writes"] += 1
        return json_response({"written": calls["writes"]}, 201)

    async def slow(req: AdminRequest) -> AdminResponse:
        await asyncio.sleep(0.05)
        return json_response({"slow": True})

    def returns_none(req: AdminRequest) -> Any:
        return None

    async def async_none(req: AdminRequest) -> Any:
        return None

    def bad_header(req: AdminRequest) -> AdminResponse:
        return json_response({}, headers=[("X-Price", "10 \u20ac")])  # not latin-1: cannot be rendered

    routes.add("POST", "/write", write)
    routes.add("GET", "/slow", slow)
    routes.add("GET", "/none", returns_none)
    routes.add("GET", "/async-none", async_none)
    routes.add("GET", "/bad-header", bad_header)
    return routes, calls


test_routes.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture
def listener() -> Iterator[Any]:
    """Factory: listener(host=..., **settings) → a started Listener over test_routes(); stopped at
    teardown."""
    started: list[Listener] = []

    def make(host: str = "127.0.0.1", **settings: Any) -> Listener:
        routes, calls = test_routes()
        lst = Listener(routes, dataclasses.replace(Settings(), **settings), host)
        lst.calls = calls  # type: ignore[attr-defined]
        started.append(lst)
        return lst

    yield make
    for lst in started:
        lst.stop()


# --- 1. pipelining without reading ------------------------------------------------------------------
def test_pipelining_without_reading_keeps_memory_bounded(gateway) -> None:  # noqa: F811
    """A client pipelines GET /health for 10 s and never reads a reply: the supervisor (which serves
    the admin API with GATEWAY_WORKERS=2) must not buffer the replies: RSS grows < 64 MiB."""
    gw = gateway(None, env={"GATEWAY_WORKERS": "2"})
    pid = gw.pid
    before = rss(pid)
    batch = get() * 512
    peak = before
    sent = 0
    with socket.create_connection(("127.0.0.1", gw.admin_port)) as hog:
        hog.setblocking(False)
        start = time.monotonic()
        next_sample = start
        while (now := time.monotonic()) < start + 10.0:
            if now >= next_sample:
                peak = max(peak, rss(pid))
                next_sample = now + 0.1
                # Stop early on the unbounded behaviour: the bound is already broken and the
                # process would go on growing by hundreds of MiB per second.
                if peak - before >= 64 * MiB:
                    break
            _, writable, _ = select.select([], [hog], [], 0.05)
            if writable:
                try:
                    sent += hog.send(batch)
                except BlockingIOError:
                    pass
        peak = max(peak, rss(pid))
        # While the hog is connected and backed up, the admin API still answers others.
        with socket.create_connection(("127.0.0.1", gw.admin_port), timeout=5) as other:
            other.sendall(get(extra="Connection: close\r\n"))
            assert statuses(read_until_closed(other)) == [200]
    after = rss(pid)
    print(f"\nadmin pipelining without reading: VmRSS before {before / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB, "
          f"after {after / MiB:.1f} MiB; {sent / MiB:.1f} MiB of requests sent in {time.monotonic() - start:.1f}s")
    assert peak - before < 64 * MiB, f"RSS grew by {(peak - before) / MiB:.0f} MiB"
    assert gw.alive()


# --- 5b. every complete request is answered before the error --------------------------------------
def test_requests_before_garbage_are_answered_first(gateway) -> None:  # noqa: F811
    gw = gateway(None)
    data = exchange(gw.admin_port, get() + get("/ready") + b"\x00garbage\r\n\r\n" + get())
    assert statuses(data) == [200, 200, 400], data
    assert data.index(b'"status":"ok"') < data.index(b'"status":"ready"') < data.index(b'"bad_request"')


def test_pipelined_replies_stay_in_order_across_async_handlers(listener) -> None:
    lst = listener()
    data = exchange(lst.port, get("/slow") + get("/health") + get("/slow") + b"BAD\r\n\r\n")
    assert statuses(data) == [200, 200, 200, 400], data
    assert data.index(b'"slow"') < data.index(b'"status":"ok"') < data.rindex(b'"slow"')


def test_half_closed_client_gets_all_its_replies(listener) -> None:
    lst = listener()
    data = exchange(lst.port, get("/slow") + get("/health"), half_close=True)
    assert statuses(data) == [200, 200], data


# --- no exception escapes a protocol callback ----------------------------------------------------
@pytest.mark.parametrize("path", ["/none", "/async-none", "/bad-header"])
def test_a_broken_handler_answers_500_and_logs_once(listener, caplog, path: str) -> None:
    lst = listener()
    with caplog.at_level(logging.ERROR, logger="gateway.admin"):
        data = exchange(lst.port, get(path) + get("/health", extra=CLOSE))
    assert statuses(data) == [500, 200], data
    assert b'"internal_error"' in data
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert lst.loop_errors == []


# --- 4. Upgrade and CONNECT ------------------------------------------------------------------------
UPGRADE = get(extra="Connection: Upgrade\r\nUpgrade: websocket\r\n")
CONNECT = b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n"


def test_upgrade_and_connect_are_refused_without_a_traceback(gateway) -> None:  # noqa: F811
    gw = gateway(None)
    for _ in range(10):
        # An Upgrade is never switched to: 400 and close (what follows it is not HTTP/1.1).
        data = exchange(gw.admin_port, UPGRADE + get())
        assert statuses(data) == [400], data
        assert b"Connection: close" in data
        # CONNECT is a method the admin API does not implement: 501 and close.
        data = exchange(gw.admin_port, CONNECT + get())
        assert statuses(data) == [501], data
    # Pipelined behind a valid request: that one is answered first.
    assert statuses(exchange(gw.admin_port, get() + UPGRADE)) == [200, 400]
    assert gw.stop() == 0
    assert "Traceback" not in gw.stderr, gw.stderr[-3000:]


# --- 3a. timeouts ---------------------------------------------------------------------------------
TIMEOUTS = {"GATEWAY_HEADER_TIMEOUT": "1", "GATEWAY_KEEPALIVE_TIMEOUT": "1", "GATEWAY_BODY_TIMEOUT": "1"}


def wait_closed(s: socket.socket, within: float) -> tuple[bytes, float]:
    """(bytes received, seconds) until the server closes `s`; fails if it does not within `within`."""
    start = time.monotonic()
    data = read_until_closed(s, within)
    return data, time.monotonic() - start


def trickled_head(port: int) -> tuple[bytes, float]:
    """A head sent one byte every 0.2 s: the deadline is absolute, trickling does not extend it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        start = time.monotonic()
        s.sendall(b"GET /health HTTP/1.1\r\n")
        data = b""
        while time.monotonic() - start < 5:
            if select.select([s], [], [], 0.2)[0]:
                return read_until_closed(s), time.monotonic() - start
            try:
                s.sendall(b"X")
            except OSError:
                break
        return data, time.monotonic() - start


def idle_after_reply(port: int) -> tuple[bytes, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(get())
        first = b""
        while b'"status":"ok"' not in first:
            first += s.recv(65536)
        return wait_closed(s, 4)


def silent_client(port: int) -> tuple[bytes, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        return wait_closed(s, 4)


def stalled_body(port: int) -> tuple[bytes, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n0123456789")
        return wait_closed(s, 4)


def slow_but_moving_body(port: int) -> tuple[bytes, float]:
    """A body byte every 0.3 s for 2.4 s (longer than the 1 s body timeout): progress, no 408."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        start = time.monotonic()
        s.sendall(b"POST /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 8\r\nConnection: close\r\n\r\n")
        for _ in range(8):
            time.sleep(0.3)
            s.sendall(b"x")
        return read_until_closed(s), time.monotonic() - start


def test_header_body_and_keepalive_timeouts(gateway) -> None:  # noqa: F811
    gw = gateway(None, env=TIMEOUTS)
    port = gw.admin_port
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(5) as pool:
        head = pool.submit(trickled_head, port)
        idle = pool.submit(idle_after_reply, port)
        silent = pool.submit(silent_client, port)
        body = pool.submit(stalled_body, port)
        moving = pool.submit(slow_but_moving_body, port)
        data, took = head.result()
        assert statuses(data) == [408] and took < 3, (data, took)
        data, took = idle.result()
        assert data == b"" and took < 3, (data, took)
        data, took = silent.result()
        assert data == b"" and took < 3, (data, took)
        data, took = body.result()
        assert statuses(data) == [408] and took < 3, (data, took)
        data, took = moving.result()
        assert statuses(data) == [405] and took > 2, (data, took)


def test_a_client_that_stops_reading_is_dropped(gateway) -> None:  # noqa: F811
    """Replies it never reads back up the transport: after GATEWAY_BODY_TIMEOUT without the buffer
    draining, the connection is aborted (it must not hold a connection slot forever)."""
    gw = gateway(None, env=TIMEOUTS)
    batch = get() * 512
    with socket.create_connection(("127.0.0.1", gw.admin_port)) as hog:
        hog.setblocking(False)
        start = time.monotonic()
        dropped = False
        while time.monotonic() - start < 6 and not dropped:
            _, writable, errored = select.select([], [hog], [hog], 0.05)
            try:
                if writable:
                    hog.send(batch)
            except BlockingIOError:
                pass
            except OSError:
                dropped = True
        assert dropped, "the server kept a connection whose client never reads"
        assert time.monotonic() - start < 5


# --- 2. head limits -------------------------------------------------------------------------------
LIMITS = {"GATEWAY_MAX_HEADER_BYTES": "1024", "GATEWAY_MAX_HEADERS": "10", "GATEWAY_MAX_URI_BYTES": "256"}


def headers(n: int, size: int = 1) -> str:
    return "".join(f"X-{i}: {'v' * size}\r\n" for i in range(n))


def send_until_answered(port: int, start: bytes, filler: bytes, limit: int = 1 << 20) -> tuple[bytes, int]:
    """Send `start`, then `filler` every 20 ms (a head that never ends) until the server answers or
    `limit` bytes are out; return (everything received until the close, bytes sent). Paced, so the
    count measures when the server decided, not how much loopback buffers absorb meanwhile."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(start)
        sent = len(start)
        while sent < limit and not select.select([s], [], [], 0.02)[0]:
            try:
                s.sendall(filler)
            except OSError:
                break
            sent += len(filler)
        return read_until_closed(s), sent


def test_head_limits_431_and_414(gateway) -> None:  # noqa: F811
    gw = gateway(None, env=LIMITS)
    port = gw.admin_port
    # Within the limits: Host + 9 fields = 10 fields, about 900 bytes of fields; a 250-byte target.
    ok = get(extra=headers(9)) + get(extra=headers(2, 400)) + get("/" + "a" * 249, extra=CLOSE)
    assert statuses(exchange(port, ok)) == [200, 200, 404]
    # One field too many; too many field bytes; a target over the limit: each closes the connection.
    assert statuses(exchange(port, get(extra=headers(10)) + get())) == [431]
    assert statuses(exchange(port, get(extra=headers(1, 1100)) + get())) == [431]
    assert statuses(exchange(port, get("/" + "a" * 300) + get())) == [414]
    # Requests before the offending one are answered first.
    assert statuses(exchange(port, get() + get(extra=headers(10)))) == [200, 431]


def test_head_limits_are_decided_as_soon_as_crossed(gateway) -> None:  # noqa: F811
    """Heads that never end: the answer comes once the limit is crossed, not after buffering a
    megabyte (and not never)."""
    gw = gateway(None, env=LIMITS)
    port = gw.admin_port
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    cases = {
        "one endless field value": (head + b"X-Big: ", b"v" * 8192, 431),
        "endless fields": (head, b"X: v\r\n" * 1000, 431),
        "endless target": (b"GET /", b"a" * 8192, 414),
    }
    for name, (start, filler, status) in cases.items():
        data, sent = send_until_answered(port, start, filler)
        assert statuses(data) == [status], (name, data[:200])
        assert sent < 1 << 20, f"{name}: the server answered only after {sent} bytes"
        print(f"{name}: {status} after {sent} bytes sent")
    assert gw.alive()


def test_an_oversized_body_is_refused_before_it_is_read(gateway) -> None:  # noqa: F811
    """413 from Content-Length alone (the client has sent no body byte yet), or as soon as a
    chunked body crosses the 1 MiB admin limit."""
    gw = gateway(None)
    with socket.create_connection(("127.0.0.1", gw.admin_port), timeout=5) as s:
        s.sendall(b"POST /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2097152\r\n\r\n")
        assert statuses(read_until_closed(s)) == [413]
    chunked = b"POST /health HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    data, sent = send_until_answered(gw.admin_port, chunked, b"8000\r\n" + b"x" * 0x8000 + b"\r\n", 2 << 20)
    assert statuses(data) == [413] and sent < 2 << 20, (data[:200], sent)


# --- 3b. connection cap and file-descriptor exhaustion --------------------------------------------
def keep_alive_client(port: int) -> socket.socket:
    """A connection the server has surely accepted: one request answered, kept open."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(get())
    data = b""
    while b'"status":"ok"' not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    assert statuses(data) == [200], data
    return s


def test_connections_over_the_cap_get_503_at_once(gateway) -> None:  # noqa: F811
    gw = gateway(None, env={"GATEWAY_ADMIN_MAX_CONNECTIONS": "4"})
    port = gw.admin_port
    held = [keep_alive_client(port) for _ in range(4)]
    try:
        # The fifth is answered at once (no request needed), 503 with Retry-After, and closed.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            extra.sendall(get())
            data = read_until_closed(extra, 3)
        assert statuses(data) == [503], data
        assert b"Retry-After: " in data and b'"too_many_connections"' in data
        # The four are still served.
        held[0].sendall(get())
        assert held[0].recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for s in held[1:]:
            s.close()
    # Slots freed: served again (the listener notices the closes within a loop iteration).
    wait_until(lambda: statuses(exchange(port, get(extra=CLOSE))) == [200], 5)
    held[0].close()


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_accept_out_of_file_descriptors_backs_off_quietly(gateway) -> None:  # noqa: F811
    """RLIMIT_NOFILE of the running gateway lowered to what it uses + 3: three admin connections
    fit, the next ones fail in accept() with EMFILE. They must wait in the backlog (not be reset),
    the listener must retry without a log line per attempt, and serve them once fds are free."""
    gw = gateway(None, env={"GATEWAY_ADMIN_MAX_CONNECTIONS": "1000"})
    pid = gw.pid
    # wait_ready's probe connections are closed by the gateway a moment later: wait for a stable count.
    counts = [fd_count(pid)]
    while len(counts) < 3 or len(set(counts[-3:])) != 1:
        time.sleep(0.1)
        counts.append(fd_count(pid))
    limit = counts[-1] + 3
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    held = [keep_alive_client(gw.admin_port) for _ in range(3)]
    waiting = []
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", gw.admin_port), timeout=5)
        s.sendall(get(extra=CLOSE))
        waiting.append(s)
    # 2.5 s: the listener retries several times meanwhile (backoff 0.5 s, 1 s, ...); the waiting
    # connections get neither a reply nor a reset.
    readable, _, _ = select.select(waiting, [], [], 2.5)
    assert readable == [], [s.recv(100) for s in readable]
    for s in held:
        s.close()
    for s in waiting:
        assert statuses(read_until_closed(s, 5)) == [200]
        s.close()
    assert gw.alive()
    lines = [line for line in gw.stderr.splitlines() if "accept" in line]
    print("\n".join(lines))
    assert 1 <= len(lines) <= 2, lines  # one when it starts failing, at most one when it recovers
    assert "Traceback" not in gw.stderr


# --- 5a. Host check (DNS rebinding) ---------------------------------------------------------------
def host_status(port: int, host: str | None, version: str = "1.1", target: str = "/health") -> int:
    head = f"GET {target} HTTP/{version}\r\n" + (f"Host: {host}\r\n" if host is not None else "")
    data = exchange(port, (head + "Connection: close\r\n\r\n").encode("latin-1"))
    return statuses(data.replace(b"HTTP/1.0", b"HTTP/1.1"))[0]


def test_only_known_hosts_are_answered(gateway) -> None:  # noqa: F811
    gw = gateway(None, env={"GATEWAY_ADMIN_HOSTS": "admin.example.com,gw-1"})
    port = gw.admin_port
    answered = ["127.0.0.1", f"127.0.0.1:{port}", "localhost", f"LocalHost:{port}", "localhost.",
                "admin.example.com", "Admin.Example.COM:443", "gw-1", "GW-1:9"]
    for host in answered:
        assert host_status(port, host) == 200, host
    assert host_status(port, None, version="1.0") == 200  # HTTP/1.0 may omit Host
    misdirected = ["evil.example", f"evil.example:{port}", "127.0.0.2", "0.0.0.0", "[::1]",
                   "127.0.0.1.evil.example", "localhost.evil.example", "evil-admin.example.com",
                   "admin.example.com.evil", "", "127.0.0.1:notaport", "127.0.0.1:80:80", "l\xf6calhost"]
    for host in misdirected:
        assert host_status(port, host) == 421, host
    assert host_status(port, None) == 421  # HTTP/1.1 without Host
    # An absolute-form target names the host too (RFC 9112 3.2.2): it must be one of ours as well.
    assert host_status(port, "127.0.0.1", target="http://evil.example/health") == 421
    assert host_status(port, "127.0.0.1", target=f"http://127.0.0.1:{port}/health") == 200
    # 421 keeps the connection (the request was read whole); a repeated Host is malformed: 400, close.
    data = exchange(port, get(host="evil.example") + get(extra=CLOSE))
    assert statuses(data) == [421, 200] and b'"misdirected_request"' in data
    data = exchange(port, get(extra="Host: 127.0.0.1\r\n") + get())
    assert statuses(data) == [400]


def test_a_misdirected_write_has_no_side_effect(listener) -> None:
    lst = listener(admin_token="tok")

    def post(host: str, extra: str = "") -> bytes:
        return (f"POST /write HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer tok\r\n"
                f"Content-Length: 0\r\n{extra}\r\n").encode()

    data = exchange(lst.port, post("evil.example") + post("evil.example:1") + post("127.0.0.1", CLOSE))
    assert statuses(data) == [421, 421, 201], data
    assert lst.calls["writes"] == 1


def test_ipv6_listener_answers_its_bracketed_address(listener) -> None:
    lst = listener(host="::1")
    cases = [(f"[::1]:{lst.port}", 200), ("[::1]", 200), ("[0:0::1]", 200), ("127.0.0.1", 421),
             ("[::1", 421), ("::1", 421)]
    for host, status in cases:
        with socket.create_connection(("::1", lst.port), timeout=5) as s:
            s.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            assert statuses(read_until_closed(s)) == [status], host


# --- 6. the admin token, byte for byte ------------------------------------------------------------
def write_with(port: int, *authorization: bytes) -> int:
    head = b"POST /write HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n"
    head += b"".join(b"Authorization: " + a + b"\r\n" for a in authorization)
    return statuses(exchange(port, head + b"\r\n"))[0]


@pytest.mark.parametrize(("token", "authorization", "status"), [
    # The credential's bytes are compared with the token's UTF-8 bytes: UTF-8 on the wire matches,
    # latin-1 does not (it used to be the other way round), and a non-latin-1 token can match at all.
    ("été-token", "Bearer été-token".encode(), 201),
    ("été-token", "Bearer été-token".encode("latin-1"), 401),
    ("€-token", "Bearer €-token".encode(), 201),
    # Only spaces and tabs are trimmed: Unicode separators are part of the credential.
    ("tok", b"Bearer tok", 201),
    ("tok", b"Bearer \t tok \t", 201),
    ("tok", "Bearer tok\xa0".encode(), 401),
    ("tok", "Bearer tok\xa0".encode("latin-1"), 401),
    ("tok", "Bearer \u2003tok".encode(), 401),
    ("tok", "Bearer tok\u3000".encode(), 401),
    # The scheme name is case-insensitive; everything else about the field is exact.
    ("tok", b"bEaReR tok", 201),
    ("tok", b"Bearer\ttok", 201),
    ("tok", b"Bearertok", 401),
    ("tok", b"Bearer", 401),
    ("tok", b"Bearer ", 401),
    ("tok", b"Basic tok", 401),
    ("tok", b"Bearer TOK", 401),
    ("tok", b"Bearer tok tok", 401),
])
def test_admin_token_bytes(listener, token: str, authorization: bytes, status: int) -> None:
    lst = listener(admin_token=token)
    assert write_with(lst.port, authorization) == status
    assert lst.calls["writes"] == (1 if status == 201 else 0)


def test_admin_token_repeated_authorization_is_refused(listener) -> None:
    lst = listener(admin_token="tok")
    assert write_with(lst.port, b"Bearer tok", b"Bearer tok") == 401
    assert write_with(lst.port, b"Bearer nope", b"Bearer tok") == 401
    assert lst.calls["writes"] == 0


def test_admin_token_through_the_python_api() -> None:
    """AdminApp.handle with a str header (tests, internal callers): the str is the text, as UTF-8."""
    from gateway.admin.server import AdminApp

    routes, calls = test_routes()
    app = AdminApp(routes, "€-token")
    for value, status in [("Bearer €-token", 201), ("bearer  €-token\t", 201), ("Bearer €-token\xa0", 401)]:
        req = AdminRequest("POST", "/write", "", {"authorization": value}, b"")
        assert asyncio.run(app.handle(req)).status == status, value
