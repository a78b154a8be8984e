#!/usr/bin/env python3
"""Issue 7 section A's figures: one worker's memory under each hostile peer, and another client's
latency while one connection sends a body of 100,000 one-byte chunks.

    python bench/hostile_peers.py [--repo DIR] [--only NAME ...]

Runs `python -m gateway` from --repo (default: this checkout; point it at an older checkout to get
its figures with the same script) with GATEWAY_WORKERS=1, so the process measured is the worker.
Each scenario prints the worker's RSS when idle (before), its peak while the peer misbehaves
(sampled every 5 ms, and VmHWM after resetting it through /proc/PID/clear_refs when allowed), and
its RSS once the hostile connections are closed (after: when the worker holds no socket of the
scenario any more, with how long that took). Scenarios:

  endless-head   an upstream that answers with header lines for ever (until the gateway hangs up)
  unread-404s    a client pipelining requests that get a local 404 and never reading, for 8 s
  pipelined-64k  20 clients each sending one 64 KiB write of pipelined GETs to an upstream that
                 never answers (the requests queue: per connection = growth / 20); they close
                 without reading, and the worker finds out when it writes the first 504
  huge-names     4,200 requests, each with a distinct 15,000-byte header name, and responses each
                 with a distinct 15,000-byte header name (both name caches)
  tiny-chunks    a client sends POST with a chunked body of 100,000 one-byte chunks in one write
                 while another client sends GETs back to back: that client's worst latency; also
                 without a flood, and during a control flood of the same bytes as one
                 Content-Length body (machine noise: the flooding process, the kernel, the upstream)
  tunnel-unread  20 WebSocket tunnels (route websocket = true) whose upstream sends as fast as it
                 can after its 101 while the clients never read (issue 7 C1's backpressure)
  tunnel-sink    20 tunnels whose clients send as fast as they can while the upstream never reads
                 (after close: the clients' FIN is passed on and the silent upstream keeps its
                 side open, so the tunnels end at their idle timeout, 6 s, then flush for one more)
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


class Sampler:
    """Peak RSS of `pid` between start() and stop(), sampled every 5 ms (and VmHWM when resettable)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.hwm_ok = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sampler:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.hwm_ok = True
        except OSError:
            pass
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.005)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        if self.hwm_ok:
            self.peak = max(self.peak, rss_kib(self.pid, "VmHWM"))
        return self.peak


class RawServer:
    """A TCP server running handler(sock) in a thread per connection."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._run, args=(c,), daemon=True).start()

    def _run(self, c: socket.socket) -> None:
        try:
            self.handler(c)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def endless_head(c: socket.socket) -> None:
    c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\r\n")
    block = (b"X-Endless: " + b"v" * 100 + b"\r\n") * 100
    while True:
        c.sendall(block)


def never_answer(c: socket.socket) -> None:
    while c.recv(65536):
        pass


def huge_name_responder(c: socket.socket) -> None:
    """Answer each request with a header whose 15,000-byte name is distinct per response."""
    buf = b""
    n = 0
    while True:
        while b"\r\n\r\n" not in buf:
            data = c.recv(65536)
            if not data:
                return
            buf += data
        _, buf = buf.split(b"\r\n\r\n", 1)
        n += 1
        name = (b"X-R%d-" % n).ljust(15000, b"n")
        c.sendall(b"HTTP/1.1 200 OK\r\n" + name + b": v\r\nContent-Length: 2\r\n\r\nok")


SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
UPGRADE = (b"GET /ws/x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class Switching:
    """An upstream that answers an Upgrade with 101, then floods (or never reads): counts bytes."""

    def __init__(self, flood: bool) -> None:
        self.flood = flood
        self.sent = 0
        self.server = RawServer(self.handle)
        self.port = self.server.port

    def handle(self, c: socket.socket) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = c.recv(65536)
            if not data:
                return
            buf += data
        c.sendall(SWITCH)
        if self.flood:
            block = b"\x82\x7e\xff\xff" + b"f" * 65535   # binary frames, as a server sends them
            while True:
                c.sendall(block)
                self.sent += len(block)
        else:
            time.sleep(3600)   # never reads again

    def close(self) -> None:
        self.server.close()


def upgraded(port: int) -> socket.socket:
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(UPGRADE)
    head = b""
    while b"\r\n\r\n" not in head:
        head += c.recv(1)   # nothing after the 101 head is read
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head)
    return c


class Gateway:
    def __init__(self, repo: Path, config: str, env: dict[str, str]) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="gw-hostile-"))
        (self.tmp / "gw.toml").write_text(config)
        self.port = free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        full.update(GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(self.port), GATEWAY_ADMIN_HOST="127.0.0.1",
                    GATEWAY_ADMIN_PORT=str(free_port()), GATEWAY_WORKERS="1", PYTHONPATH=str(repo), **env)
        if config.strip():
            # No routes at all is GATEWAY_CONFIG unset: an empty file is refused at start.
            full["GATEWAY_CONFIG"] = str(self.tmp / "gw.toml")
        self.err = open(self.tmp / "stderr", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=str(repo), env=full,
                                     stdout=subprocess.DEVNULL, stderr=self.err)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError((self.tmp / "stderr").read_text())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.err.close()

    def get(self, sock: socket.socket, path: bytes = b"/x") -> float:
        """One GET on a keep-alive connection; returns its latency in seconds."""
        t0 = time.perf_counter()
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        buf = b""
        while True:
            buf += sock.recv(65536)
            head, sep, body = buf.partition(b"\r\n\r\n")
            if sep:
                cl = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
                if cl and len(body) >= cl[0]:
                    return time.perf_counter() - t0


def sockets(pid: int) -> int:
    n = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            n += os.readlink(fd).startswith("socket:")
        except OSError:
            pass
    return n


def settle(pid: int, seconds: float = 1.0) -> int:
    time.sleep(seconds)
    return rss_kib(pid)


def closed(pid: int, idle_sockets: int, timeout: float = 30.0) -> tuple[int, str]:
    """RSS once the worker has closed every connection of the scenario (client and upstream side),
    and how long that took after the clients closed theirs."""
    t0 = time.monotonic()
    while sockets(pid) > idle_sockets and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    took = time.monotonic() - t0
    left = sockets(pid) - idle_sockets
    what = f"closed by the worker {took:.1f} s later" if left <= 0 else f"{left} sockets still open after {timeout:.0f} s"
    return settle(pid, 0.5), what


def config_for(routes: dict[str, int]) -> str:
    out = []
    for name, port in routes.items():
        out.append(f'[[services]]\nname = "{name}"\ntargets = [{{ url = "http://127.0.0.1:{port}" }}]\n'
                   f'[[routes]]\nname = "{name}"\npath = "/{name}"\nservice = "{name}"\n')
    return "\n".join(out)


def report(name: str, idle: int, peak: int, after: tuple[int, str], extra: str = "") -> None:
    print(f"{name:14s} idle {mib(idle):>10s}  peak {mib(peak):>10s} (+{mib(peak - idle)})  "
          f"after close {mib(after[0]):>10s} (+{mib(after[0] - idle)}, {after[1]}){extra}", flush=True)


def scenario_endless_head(repo: Path) -> None:
    up = RawServer(endless_head)
    gw = Gateway(repo, config_for({"endless": up.port}), {"GATEWAY_UPSTREAM_TIMEOUT": "30"})
    try:
        idle = settle(gw.pid)
        idle_sockets = sockets(gw.pid)
        s = Sampler(gw.pid).start()
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", gw.port)) as c:
            c.settimeout(6)  # the run: 6 s
            c.sendall(b"GET /endless HTTP/1.1\r\nHost: a\r\n\r\n")
            try:
                answer = f"answer {c.recv(100)[:12]!r} after {(time.monotonic() - t0) * 1000:.0f} ms"
            except TimeoutError:
                answer = "no answer within 6 s"
        peak = s.stop()
        report("endless-head", idle, peak, closed(gw.pid, idle_sockets), "  " + answer)
    finally:
        gw.stop()
        up.close()


def scenario_unread_404s(repo: Path, seconds: float = 8.0) -> None:
    gw = Gateway(repo, "", {})
    try:
        idle = settle(gw.pid)
        idle_sockets = sockets(gw.pid)
        s = Sampler(gw.pid).start()
        c = socket.create_connection(("127.0.0.1", gw.port))
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.setblocking(False)
        block = b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n" * 2000
        sent = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                sent += c.send(block)
            except BlockingIOError:
                time.sleep(0.01)
        peak = s.stop()
        c.close()
        report("unread-404s", idle, peak, closed(gw.pid, idle_sockets), f"  ({sent / 1e6:.1f} MB of requests sent in {seconds:.0f} s)")
    finally:
        gw.stop()


def scenario_pipelined_64k(repo: Path, conns: int = 20) -> None:
    up = RawServer(never_answer)
    # The clients close with no response due yet: the worker answers the held requests (504 after
    # GATEWAY_UPSTREAM_TIMEOUT, 2 s here) and finds the clients gone when it writes.
    gw = Gateway(repo, config_for({"held": up.port}), {"GATEWAY_UPSTREAM_TIMEOUT": "2"})
    try:
        idle = settle(gw.pid)
        idle_sockets = sockets(gw.pid)
        s = Sampler(gw.pid).start()
        req = b"GET /held/x HTTP/1.1\r\nHost: a\r\n\r\n"
        data = req * (65536 // len(req))
        socks = []
        for _ in range(conns):
            c = socket.create_connection(("127.0.0.1", gw.port))
            c.sendall(data)
            socks.append(c)
        time.sleep(2.0)
        peak = s.stop()
        for c in socks:
            c.close()
        report("pipelined-64k", idle, peak, closed(gw.pid, idle_sockets),
               f"  ({conns} connections x {len(data)} bytes: +{mib((peak - idle) / conns)} per connection)")
    finally:
        gw.stop()
        up.close()


def scenario_huge_names(repo: Path, n: int = 4200) -> None:
    up = RawServer(huge_name_responder)
    gw = Gateway(repo, config_for({"names": up.port}), {"GATEWAY_MAX_HEADER_BYTES": "16384"})
    try:
        idle = settle(gw.pid)
        idle_sockets = sockets(gw.pid)
        s = Sampler(gw.pid).start()
        with socket.create_connection(("127.0.0.1", gw.port)) as c:
            c.settimeout(10)
            for i in range(n):
                name = (b"X-Q%d-" % i).ljust(15000, b"n")
                t0 = time.perf_counter()
                c.sendall(b"GET /names/x HTTP/1.1\r\nHost: a\r\n" + name + b": v\r\n\r\n")
                buf = b""
                while not buf.endswith(b"ok"):
                    chunk = c.recv(65536)
                    if not chunk:
                        raise RuntimeError(f"closed after {i} requests")
                    buf += chunk
                del t0
        peak = s.stop()
        report("huge-names", idle, peak, closed(gw.pid, idle_sockets), f"  ({n} requests and responses)")
    finally:
        gw.stop()
        up.close()


FLOOD = r"""
import socket, sys
port, chunks, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with socket.create_connection(("127.0.0.1", port)) as f:
    f.settimeout(60)
    if mode == "chunks":
        body = b"1\r\nx\r\n" * chunks + b"0\r\n\r\n"
        f.sendall(b"POST /echo/upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    else:  # the control: as many bytes on the wire, as one Content-Length body
        n = chunks * 6 + 5
        f.sendall(b"POST /echo/upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % n + b"x" * n)
        chunks = n
    buf = b""
    while b'"body_length"' not in buf:
        data = f.recv(65536)
        if not data:
            break
        buf += data
    sys.stdout.write(buf.split(b'"body_length": ')[1].split(b",")[0].decode() if b'"body_length"' in buf else "none")
"""


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * q))]


def scenario_tiny_chunks(repo: Path, chunks: int = 100_000, floods: int = 5) -> None:
    from tests.support.gateway_proc import UpstreamProcess  # the echo upstream (reads every body)

    up = UpstreamProcess()
    try:
        gw = Gateway(repo, config_for({"echo": up.port}), {})
    except BaseException:
        up.stop()
        raise
    try:
        probe = socket.create_connection(("127.0.0.1", gw.port))
        for _ in range(200):  # warm up
            gw.get(probe, b"/echo/warm")
        base = [gw.get(probe, b"/echo/base") for _ in range(3000)]
        print(f"tiny-chunks    the other client alone: worst {max(base) * 1000:.1f} ms, p99 {pct(base, 0.99) * 1000:.2f} ms,"
              f" median {pct(base, 0.5) * 1000:.2f} ms over {len(base)} requests", flush=True)
        # The control: the same bytes as one Content-Length body (the flooding process's start,
        # the kernel and the upstream cost the same; only the chunks' parsing differs).
        for mode, what in (("cl", f"a {chunks * 6 + 5}-byte Content-Length body"), ("chunks", f"{chunks} one-byte chunks")):
            lat: list[float] = []
            took = []
            for _ in range(floods):
                # The flooding client is another process: no GIL shared with the measuring one.
                t0 = time.perf_counter()
                p = subprocess.Popen([sys.executable, "-c", FLOOD, str(gw.port), str(chunks), mode], stdout=subprocess.PIPE)
                while p.poll() is None:
                    lat.append(gw.get(probe, b"/echo/during"))
                took.append(time.perf_counter() - t0)
                got = p.stdout.read().decode() if p.stdout else ""
                want = str(chunks) if mode == "chunks" else str(chunks * 6 + 5)
                if got != want:
                    raise RuntimeError(f"the flood's body arrived as {got!r}")
            print(f"tiny-chunks    during {floods} x {what} (each {statistics.median(took) * 1000:.0f} ms, median, incl. "
                  f"the flooding process's start): worst {max(lat) * 1000:.1f} ms, p99 {pct(lat, 0.99) * 1000:.2f} ms, "
                  f"median {pct(lat, 0.5) * 1000:.2f} ms over {len(lat)} requests", flush=True)
        probe.close()
    finally:
        gw.stop()
        up.stop()


def tunnel_config(port: int) -> str:
    # timeout: the tunnels' idle timeout. Longer than the scenario (the peers stall for 4 s), short
    # enough that the half-closed tunnels of tunnel-sink (the clients' FIN is passed on; the silent
    # upstream never ends its side) are closed, then aborted, within the 30 s `closed` waits.
    return (f'[[services]]\nname = "ws"\ntargets = [{{ url = "http://127.0.0.1:{port}" }}]\n'
            '[[routes]]\nname = "ws"\npath = "/ws"\nservice = "ws"\nwebsocket = true\ntimeout = 6.0\n')


def scenario_tunnel_unread(repo: Path, conns: int = 20, seconds: float = 4.0) -> None:
    up = Switching(flood=True)
    gw = Gateway(repo, tunnel_config(up.port), {})
    try:
        idle = settle(gw.pid)
        idle_sockets = sockets(gw.pid)
        s = Sampler(gw.pid).start()
        socks = [upgraded(gw.port) for _ in range(conns)]
        time.sleep(seconds)
        peak = s.stop()
        sent = up.sent
        for c in socks:
            c.close()
        report("tunnel-unread", idle, peak, closed(gw.pid, idle_sockets),
               f"  ({conns} tunnels; the upstream got {sent / 2**20:.1f} MiB out in {seconds:.0f} s, all in socket buffers:"
               f" +{mib((peak - idle) / conns)} per tunnel)")
    finally:
        gw.stop()
        up.close()


def scenario_tunnel_sink(repo: Path, conns: int = 20, seconds: float = 4.0) -> None:
    up = Switching(flood=False)
    gw = Gateway(repo, tunnel_config(up.port), {})
    try:
        idle = settle(gw.pid)
        idle_sockets = sockets(gw.pid)
        s = Sampler(gw.pid).start()
        socks = [upgraded(gw.port) for _ in range(conns)]
        block = b"\x82\xfe\xff\xff\0\0\0\0" + b"c" * 65535   # masked client frames
        sent = 0
        for c in socks:
            c.setblocking(False)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            progress = False
            for c in socks:
                try:
                    sent += c.send(block)
                    progress = True
                except BlockingIOError:
                    pass
            if not progress:
                time.sleep(0.01)
        peak = s.stop()
        for c in socks:
            c.close()
        report("tunnel-sink", idle, peak, closed(gw.pid, idle_sockets),
               f"  ({conns} tunnels; the clients got {sent / 2**20:.1f} MiB in, then the gateway stopped reading:"
               f" +{mib((peak - idle) / conns)} per tunnel)")
    finally:
        gw.stop()
        up.close()


SCENARIOS = {
    "endless-head": scenario_endless_head,
    "unread-404s": scenario_unread_404s,
    "pipelined-64k": scenario_pipelined_64k,
    "huge-names": scenario_huge_names,
    "tiny-chunks": scenario_tiny_chunks,
    "tunnel-unread": scenario_tunnel_unread,
    "tunnel-sink": scenario_tunnel_sink,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=HERE.parent)
    ap.add_argument("--only", nargs="*", choices=sorted(SCENARIOS))
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    for name, fn in SCENARIOS.items():
        if not args.only or name in args.only:
            fn(args.repo.resolve())


if __name__ == "__main__":
    main()
