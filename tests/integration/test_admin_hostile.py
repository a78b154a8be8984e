"""The admin listener against hostile peers: real sockets against a real listener.

Peers that pipeline without reading, send endless heads, stall, hold connections, speak Upgrade or
CONNECT, lie about the Host, or send credentials in odd bytes. Memory is measured on the real
serving process (/proc/<pid>/status VmRSS), tracebacks on its real stderr.
"""
from __future__ import annotations

import re
import select
import socket
import time
from pathlib import Path

from tests.support.gateway_proc import gateway, wait_until  # noqa: F401 - `gateway` is a fixture

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
