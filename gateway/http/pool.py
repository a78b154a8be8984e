"""UpstreamPool: keep-alive connections to one upstream (host, port), shared by a worker's routes.

The common path is `acquire()`: pop the most recently used idle connection (LIFO keeps a few
connections warm and lets the rest reach their idle timeout). Only when none is idle does the
downstream protocol call `connect()`, which opens a connection in a task (the uncommon path) and
hands it over through a callback, so no future is awaited per request.

A connection is pooled again only after a complete, error-free exchange (the UpstreamProtocol
decides); an idle one that the peer closes or that receives unexpected bytes removes itself, and
`acquire()` skips any whose transport is closing: that is the check before reuse.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .upstream import UpstreamProtocol

if TYPE_CHECKING:
    from .downstream import DownstreamProtocol

log = logging.getLogger("gateway.http")

# Idle connections kept per upstream. nginx's `keepalive 32` is per worker per upstream block;
# a larger bound costs only file descriptors while idle, and the idle timeout trims them.
MAX_IDLE = 256
# Below the common upstream keep-alive timeouts (nginx 75 s, Node 5 s is the outlier): closing
# first on our side avoids sending a request onto a connection the upstream is just closing.
IDLE_TIMEOUT = 4.0


class UpstreamPool:
    __slots__ = ("loop", "host", "port", "settings", "idle", "max_idle", "idle_timeout", "closed",
                 "connecting", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, settings: Any) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.settings = settings
        self.idle: list[UpstreamProtocol] = []
        self.max_idle = MAX_IDLE
        self.idle_timeout = IDLE_TIMEOUT
        self.closed = False
        self.connecting: set[asyncio.Task[None]] = set()

    def acquire(self) -> UpstreamProtocol | None:
        idle = self.idle
        while idle:
            up = idle.pop()
            if up.reusable():
                return up
            up.abort()
        return None

    def release(self, up: UpstreamProtocol) -> None:
        """Take back a connection after a complete exchange (called by the UpstreamProtocol)."""
        if self.closed or len(self.idle) >= self.max_idle:
            up.abort()
            return
        self.idle.append(up)

    def forget(self, up: UpstreamProtocol) -> None:
        """An idle connection died (peer closed it, stray bytes, idle timeout)."""
        try:
            self.idle.remove(up)
        except ValueError:
            pass

    def connect(self, down: DownstreamProtocol) -> None:
        """Open a new connection for `down`; it gets upstream_ready(up) or upstream_failed(kind)."""
        task = self.loop.create_task(self._connect(down))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _connect(self, down: DownstreamProtocol) -> None:
        try:
            _, up = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamProtocol(self), self.host, self.port),
                self.settings.upstream_connect_timeout,
            )
        except (TimeoutError, OSError) as exc:
            log.debug("connect to %s:%s failed: %r", self.host, self.port, exc)
            down.upstream_failed("connect")
            return
        except asyncio.CancelledError:
            raise
        down.upstream_ready(up)

    def close(self) -> None:
        """Close idle connections now; busy ones are closed when their exchange ends."""
        self.closed = True
        for up in self.idle:
            up.abort()
        self.idle.clear()

    def __repr__(self) -> str:
        return f"UpstreamPool({self.host}:{self.port}, idle={len(self.idle)})"
