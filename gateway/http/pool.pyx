"""UpstreamPool: keep-alive connections to one upstream (host, port), shared by a worker's routes.

The common path is `acquire()`: pop the most recently used idle connection (LIFO keeps a few
connections warm and lets the rest reach their idle timeout). Only when none is idle does the
downstream protocol call `connect()`, which opens a connection in a task (the uncommon path) and
hands it over through a callback, so no future is awaited per request.

A connection is pooled again only after a complete, error-free exchange (the UpstreamProtocol
decides); an idle one that the peer closes or that receives unexpected bytes removes itself, and
`acquire()` skips any whose transport is closing: that is the check before reuse.

An https:// upstream's pool (`tls`) opens its connections with TLS: the SSLContext of its trust
settings (gateway/tls.py), SNI and the verified name from the target's host, the handshake inside
GATEWAY_UPSTREAM_CONNECT_TIMEOUT. Pooled TLS connections are reused exactly like plain ones (the
handshake is paid once per connection). A failed connect, TLS included, is a "connect" failure
(502, or a second attempt on another target); its reason (refused, certificate verify failed:
...) goes to ctx.upstream_reason, which the error log's line for the exchange names.
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

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, settings: Any,
                 tls: Any = None) -> None:
        self.loop = loop
        self.tls = tls
        self.ssl = None
        if tls is not None:
            from gateway.tls import client_context

            self.ssl = client_context(tls)   # (the CA file was loaded when the config was checked)
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
            if self.ssl is None:
                opening = self.loop.create_connection(lambda: UpstreamProtocol(self), self.host, self.port)
            else:
                # SNI and the name checked against the certificate: the target's host, never the
                # client's Host header. (An IP address is sent as no SNI and checked against the
                # certificate's IP SANs.)
                opening = self.loop.create_connection(
                    lambda: UpstreamProtocol(self), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host, ssl_handshake_timeout=self.settings.upstream_connect_timeout)
            _, up = await asyncio.wait_for(opening, self.settings.upstream_connect_timeout)
        except (TimeoutError, OSError) as exc:
            self._connect_failed(down, exc)
            down.upstream_failed("connect")
            return
        except asyncio.CancelledError:
            raise
        down.upstream_ready(up)

    def _connect_failed(self, down: Any, exc: BaseException) -> None:
        """Why the connect failed goes on the exchange (ctx.upstream_reason): the error log's one
        line for it (gateway/observability/errorlog.py, rate-limited there) names it with the
        request id, target and timings. Here only at debug level, per attempt."""
        from gateway.tls import describe_failure

        if isinstance(exc, TimeoutError):
            reason = f"no connection within {self.settings.upstream_connect_timeout:g}s"
        else:
            reason = describe_failure(exc)
        ctx = getattr(down, "a_ctx", None)
        if ctx is not None:
            ctx.upstream_reason = reason
        log.debug("connect to %s://%s:%s failed: %s", "https" if self.tls else "http", self.host, self.port, reason)

    def close(self) -> None:
        """Close idle connections now; busy ones are closed when their exchange ends."""
        self.closed = True
        for up in self.idle:
            up.abort()
        self.idle.clear()

    def __repr__(self) -> str:
        scheme = "https://" if self.tls is not None else ""
        return f"UpstreamPool({scheme}{self.host}:{self.port}, idle={len(self.idle)})"
