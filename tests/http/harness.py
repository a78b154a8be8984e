"""Drive the data plane with bytes through fake transports: no sockets, no sleeps.

`Harness` builds a DownstreamProtocol over a FakeTransport with the real Router/Route/Service/
Target and the real UpstreamPool and UpstreamProtocol; only the upstream *connection* is faked
(FakePool.connect hands over an UpstreamProtocol on a FakeTransport synchronously), so tests see
exactly the bytes forwarded upstream and the bytes answered downstream. Time is driven by hand:
`h.tick(seconds)` advances the ticker clock and runs every connection's on_tick.
"""
from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from gateway.config.env import Settings
from gateway.discovery.service import Service, Target
from gateway.http.downstream import DownstreamProtocol
from gateway.http.flow import ticker_for
from gateway.http.pool import UpstreamPool
from gateway.http.upstream import UpstreamProtocol
from gateway.pipeline.chain import EMPTY_CHAIN, FilterChain
from gateway.routing import Route, Router


class FakeTransport(asyncio.Transport):
    def __init__(self, protocol: asyncio.BaseProtocol | None = None, peer: str = "10.0.0.7") -> None:
        super().__init__()
        self.protocol = protocol
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True
        self.peer = peer
        self.high_water: int | None = None
        self.write_paused = False
        self.eof_written = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        assert not self.closed, "write after close"
        self.written += data

    def limit_writes(self, high_water: int) -> None:
        """Write backpressure as uvloop does it: pause_writing() once the unread bytes exceed
        high_water, resume_writing() when take() drains them. (A separate write method, so that
        bench/dataplane_loop.py's plain one costs what it always did.)"""
        self.high_water = high_water
        self.write = self._write_limited  # type: ignore[method-assign]

    def _write_limited(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.written += data
        if self.high_water is not None and len(self.written) > self.high_water and not self.write_paused:
            self.write_paused = True
            self.protocol.pause_writing()  # type: ignore[union-attr]

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        assert not self.closed and not self.eof_written, "write_eof after close or twice"
        self.eof_written = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return (self.peer, 40000)
        return default

    def take(self) -> bytes:
        out = bytes(self.written)
        self.written.clear()
        if self.write_paused and not self.closed:
            self.write_paused = False
            self.protocol.resume_writing()  # type: ignore[union-attr]
        return out


class FakePool(UpstreamPool):
    """The real pool, except that new connections are FakeTransports created synchronously."""

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: Any, fail: str | None = None) -> None:
        super().__init__(loop, "upstream.test", 8000, settings)
        self.fail = fail
        self.conns: list[UpstreamProtocol] = []

    def connect(self, down: DownstreamProtocol) -> None:  # type: ignore[override]
        if self.fail:
            down.upstream_failed(self.fail)
            return
        up = UpstreamProtocol(self)
        tr = FakeTransport(up)
        up.connection_made(tr)
        self.conns.append(up)
        down.upstream_ready(up)


class FakeWorker:
    def __init__(self, loop: asyncio.AbstractEventLoop, settings: Settings, router: Router) -> None:
        self.loop = loop
        self.settings = settings
        self.runtime = type("R", (), {"router": router, "metrics": None})()
        self.draining = False
        self.connections: set[Any] = set()

    def connection_made(self, proto: Any) -> None:
        self.connections.add(proto)

    def connection_lost(self, proto: Any) -> None:
        self.connections.discard(proto)


def settings(**kw: Any) -> Settings:
    return dataclasses.replace(Settings(), **kw)


class Harness:
    def __init__(self, chain: FilterChain = EMPTY_CHAIN, fail: str | None = None, peer: str = "10.0.0.7",
                 routes: list[Route] | None = None, root: bool = True, **settings_kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.settings = settings(**settings_kw)
        self.pool = FakePool(self.loop, self.settings, fail)
        self.target = Target("upstream.test", 8000, self.pool)
        self.service = Service("svc", [self.target])
        if routes is None:
            routes = [
                Route("api", self.service, "/api", strip_prefix=True, chain=chain),
                Route("post-only", self.service, "/submit", exact=True, methods=["POST"], chain=chain),
            ]
            if root:
                routes.append(Route("root", self.service, "/", chain=chain))
        self.router = Router(routes)
        self.worker = FakeWorker(self.loop, self.settings, self.router)
        self.ticker = ticker_for(self.loop)
        self.proto = DownstreamProtocol(self.worker)
        self.down = FakeTransport(self.proto, peer)
        self.proto.connection_made(self.down)

    # --- driving ---
    def feed(self, data: bytes, byte_at_a_time: bool = False) -> None:
        if byte_at_a_time:
            for i in range(len(data)):
                if self.down.closed:
                    break
                self.proto.data_received(data[i:i + 1])
        else:
            self.proto.data_received(data)

    def up(self, i: int = -1) -> UpstreamProtocol:
        return self.pool.conns[i]

    def upstream_bytes(self, i: int = -1) -> bytes:
        if not self.pool.conns:
            return b""
        t = self.pool.conns[i].transport
        assert isinstance(t, FakeTransport)
        return bytes(t.written)

    def all_upstream_bytes(self) -> bytes:
        return b"".join(bytes(c.transport.written) for c in self.pool.conns)  # type: ignore[union-attr]

    def respond(self, data: bytes, i: int = -1) -> None:
        self.pool.conns[i].data_received(data)

    def spin(self, rounds: int = 10_000) -> int:
        """Run the loop's ready callbacks (call_soon) until none is left; returns the iterations."""
        for n in range(rounds):
            if not getattr(self.loop, "_ready", None):
                return n
            self.loop.call_soon(self.loop.stop)
            self.loop.run_forever()
        raise AssertionError(f"callbacks still ready after {rounds} loop iterations")

    def tick(self, seconds: float) -> None:
        self.ticker.now += seconds
        for m in list(self.ticker.members):
            m.on_tick(self.ticker.now)

    def close(self) -> None:
        if not self.down.closed:
            self.down.close()
        self.proto.connection_lost(None)
        for c in self.pool.conns:
            c.connection_lost(None)
        self.loop.close()


def status_of(response: bytes) -> int:
    """Status of the first response in `response` (0 if none)."""
    if not response.startswith(b"HTTP/1.1 "):
        return 0
    return int(response[9:12])


def statuses(response: bytes) -> list[int]:
    out = []
    i = 0
    while True:
        j = response.find(b"HTTP/1.1 ", i)
        if j == -1:
            return out
        out.append(int(response[j + 9:j + 12]))
        i = j + 12


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: x\r\n\r\nok"
