"""UpstreamPool: keep-alive connections to one upstream (host, port), shared by a worker's routes.

The common path is `acquire()`: pop the most recently used idle connection (LIFO keeps a few
connections warm and lets the rest reach their idle timeout). Only when none is idle does the
downstream protocol call `connect()`, which opens a connection in a task (the uncommon path) and
hands it over through a callback, so no future is awaited per request.

A connection is pooled again only after a complete, error-free exchange (the UpstreamProtocol
decides); an idle one that the peer closes or that receives unexpected bytes removes itself, and
`acquire()` skips any whose transport is closing: that is the check before reuse.
"""
import asyncio
import logging
from typing import Any

from gateway.http.upstream cimport _UpstreamBase

log = logging.getLogger("gateway.http")

# Idle connections kept per upstream. nginx's `keepalive 32` is per worker per upstream block;
# a larger bound costs only file descriptors while idle, and the idle timeout trims them.
MAX_IDLE = 256
# Below the common upstream keep-alive timeouts (nginx 75 s, Node 5 s is the outlier): closing
# first on our side avoids sending a request onto a connection the upstream is just closing.
IDLE_TIMEOUT = 4.0


cdef class UpstreamPool:
    # (attributes: pool.pxd)

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, settings: Any) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.settings = settings
        self.idle = []
        self.max_idle = MAX_IDLE
        self.idle_timeout = IDLE_TIMEOUT
        self.closed = False
        self.connecting = set()

    cpdef object acquire(self):
        """The most recently used idle connection that is still usable, or None."""
        cdef list idle = self.idle
        cdef _UpstreamBase up
        while idle:
            up = idle.pop()
            if up._reusable():
                return up
            up._abort()
        return None

    cpdef release(self, _UpstreamBase up):
        """Take back a connection after a complete exchange (called by the UpstreamProtocol)."""
        if self.closed or len(self.idle) >= self.max_idle:
            up._abort()
            return
        self.idle.append(up)

    cpdef forget(self, _UpstreamBase up):
        """An idle connection died (peer closed it, stray bytes, idle timeout)."""
        try:
            self.idle.remove(up)
        except ValueError:
            pass

    def connect(self, down: Any) -> None:
        """Open a new connection for `down`; it gets upstream_ready(up) or upstream_failed(kind)."""
        task = self.loop.create_task(self._connect(down))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _connect(self, down):
        from .upstream import UpstreamProtocol  # (the Python class; imported here, not at init)

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
