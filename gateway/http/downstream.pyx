"""DownstreamProtocol: one client connection, parsed with httptools.HttpRequestParser.

Attributes come in three groups (the uvicorn layout):
- per worker (shared, read-only): worker, loop, settings, ticker;
- per connection: transport, parser, gate (read flow control), peer, the pipelining queue;
- per request, in two halves, because with pipelining the request being *parsed* (p_*) is not
  necessarily the one being *answered* (a_*). Exactly one exchange is active per connection;
  later requests wait in `queue` (bounded: reading pauses when it is full), with their body bytes
  buffered up to a bound, and are answered in order.

The common path creates no task, future or closure: on_headers_complete builds the
RequestContext, matches the route and hands the request to a pooled UpstreamProtocol, whose
callbacks write the response here (`write_response`) and call `exchange_done`. Tasks exist only
for a new upstream connection (pool.connect) and for an access filter that must wait on I/O.

Timeouts are deadlines stored on the connection and checked by the per-loop Ticker (flow.pyx):
the header deadline is absolute from the first byte of a head, the body deadline moves with each
body chunk, the keep-alive deadline starts when the connection becomes idle.

Compiled with Cython (asyncpg's layout): the connection's state and its read path are the cdef
base class _ReaderBase (reader.pxd, reader.pyx); _DownstreamBase adds what a parsed request becomes,
DownstreamProtocol adds asyncio.Protocol as a base. A chunked request body is decoded by
chunked.pyx.
It stays in gateway/http, not gateway/_fast, because it does I/O (DESIGN.md keeps _fast I/O-free);
the same holds for upstream.pyx, pool.pyx and flow.pyx.
"""
import asyncio
import logging
from collections import deque
from typing import Any

import httptools

from gateway.pipeline.context cimport RequestContext
from gateway.routing cimport Router
from gateway.pipeline.reply import LocalReply

from . import replies
from .errors import RequestRejected
from .flow import (
    PAUSE_BUFFER,
    PAUSE_CLOSING,
    PAUSE_PIPELINE,
    PAUSE_UPGRADE,
    PAUSE_UPSTREAM,
    PAUSE_WRITE,
    ticker_for,
)
from .reader import MAX_BUFFERED_BODY, MAX_PIPELINE, _TakeOver

from gateway.http.chunked cimport ChunkDecoder
from gateway.http.flow cimport ReadGate
from gateway.http.pool cimport UpstreamPool
from gateway.http.reader cimport HEAD_WORK, K_BODY, K_HEADER, K_IDLE, K_NONE, _Queued, _ReaderBase
from gateway.http.request cimport RequestBuilder, new_request_id
from gateway.http.tunnel cimport Tunnel
from gateway.http.upstream cimport _UpstreamBase
from .wire import CONTINUE_100, LAST_CHUNK

log = logging.getLogger("gateway.http")
# Methods a retry may send again to another target (RFC 9110 §9.2.2; TRACE is never proxied far).
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"))
cdef double INF = float("inf")  # a C double: compared per request without a global lookup
cdef int cPAUSE_UPSTREAM = PAUSE_UPSTREAM
cdef int cPAUSE_CLOSING = PAUSE_CLOSING
cdef int cPAUSE_WRITE = PAUSE_WRITE

cdef class _DownstreamBase(_ReaderBase):
    """The protocol's state and logic; DownstreamProtocol (below) adds asyncio.Protocol as a base.

    (Attributes: reader.pxd. `def` methods are what asyncio/uvloop, httptools, the pool, the
    worker, the ticker and tests call; `cdef` methods are the internal steps.)
    """

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.loop = worker.loop
        self.settings = s = worker.settings
        self.ticker = ticker_for(worker.loop)
        # Limits copied onto the connection: one attribute load per check on the hot path instead
        # of two (settings are immutable for the worker's life; a reload swaps only the runtime).
        self.lim_uri = s.max_uri_bytes
        self.lim_hbytes = s.max_header_bytes
        self.lim_headers = s.max_headers
        self.lim_body = s.max_body_bytes
        self.t_header = s.header_timeout
        self.t_body = s.body_timeout
        self.t_keepalive = s.keepalive_timeout
        self.t_upstream = s.upstream_timeout
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.p_feed = self.parser.feed_data
        self.l_time = worker.loop.time
        self.t_write = None
        self.gate = None  # set in connection_made
        self.builder = None
        self.peer = ""
        self.queue = deque()
        self.closing = False
        self.w_deadline = INF
        self.reject_after: LocalReply | None = None
        self.p_rest = b""
        self.p_work = 0
        self.p_resume = False
        self.eof = False
        self.o_body = []
        self.o_size = 0
        self.chunk = ChunkDecoder(s.max_body_bytes, s.max_header_bytes)
        self._reset_parse()
        self.p_kind = K_NONE
        self.p_deadline = INF
        self.a_ctx = None
        self.a_up = None
        self.a_pending = []
        self.a_pending_size = 0
        self.a_body_done = True
        self.a_task: asyncio.Task[Any] | None = None
        self.a_expect = False
        self.a_sent = None
        self.a_resent = False
        self.a_retries = 0
        self.u_ctx = None
        self.u_value = None
        self.tunnel = None

    cdef int _reset_parse(self) except -1:
        self.in_head = False
        self.p_url = b""
        self.p_headers = []
        self.p_hbytes = 0
        self.p_raw = 0
        self.p_body = 0
        self.p_ctx = None
        self.p_entry = None
        self.p_has_body = False
        self.p_expect = False
        self.p_conn = False
        return 0

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.t_write = transport.write
        self.gate = ReadGate(transport)
        self.gate.on_open = self._reopened
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self.builder = RequestBuilder(self.settings, self.peer)
        self.p_kind = K_IDLE
        self.p_deadline = self.ticker.now + self.settings.keepalive_timeout
        self.ticker.add(self)
        self.worker.connection_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.ticker.discard(self)
        if self.tunnel is not None:
            self.tunnel.lost()   # the upstream side of a switched connection closes too
        if self.a_up is not None:
            self.a_up._abort()  # the response has nowhere to go: never reuse a half-read connection
            self.a_up = None
        if self.a_ctx is not None:
            self._attempt_end(self.a_ctx, "aborted")   # (a no-op unless an attempt is open)
        if self.a_task is not None:
            self.a_task.cancel()
            self.a_task = None
        ctx = self.a_ctx
        if ctx is not None:
            self.a_ctx = None
            self._log(ctx)
        self.queue.clear()
        # Free the held bytes now: the protocol and its parser (or gate) reference each other, so
        # the object itself may wait for a cyclic garbage collection.
        self.p_rest = b""
        self.o_body = []
        if self.gate is not None:
            self.gate.on_open = None
        try:
            self.worker.connection_lost(self)
        except Exception:  # noqa: BLE001
            log.exception("worker.connection_lost failed")

    def pause_writing(self) -> None:
        # The client reads slower than we write: stop reading the upstream (bounded memory) and the
        # client itself, whoever produces the bytes (pipelined local replies too); a client that
        # stops reading entirely is cut after GATEWAY_BODY_TIMEOUT.
        if self.tunnel is not None:
            self.tunnel.down_paused()   # (a tunnel's stall is its idle timeout's business)
            return
        self.w_deadline = self.ticker.now + self.settings.body_timeout
        self.gate.pause(cPAUSE_WRITE)
        if self.a_up is not None:
            self.a_up._pause_reading()

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.down_resumed()
            return
        self.w_deadline = INF
        self.gate.resume(cPAUSE_WRITE)
        if self.a_up is not None:
            self.a_up._resume_reading()

    def eof_received(self) -> bool:
        """The client half-closed its side (FIN). Like HAProxy (and unlike asyncio's default, which
        closes the transport), every request it sent completely still gets its response; then we
        close. A request cut by the EOF can never complete: an incomplete head is dropped, an
        incomplete pipelined request is dropped with it, and an active exchange whose body can no
        longer arrive closes the connection now (its upstream request is aborted). In a tunnel the
        FIN is passed on to the upstream and the other direction keeps flowing (tunnel.pyx)."""
        if self.tunnel is not None:
            return self.tunnel.eof_from_down()
        self.eof = True
        self.gate.ended = True  # never resume reading a stream after EOF
        if self.closing:
            return False
        return self._eof_keep()

    cdef bint _eof_keep(self) except -1:
        """After EOF: whether a response is still due (or bytes still to parse); drops what cannot complete."""
        cdef _Queued entry
        if self.p_rest and not self.gate.reasons & cPAUSE_CLOSING:
            return True  # parsed when the gate opens; decided again after
        if self.in_head:
            self.in_head = False
            self.p_kind = K_NONE
        elif self.p_ctx is not None:
            entry = self.p_entry
            if entry is None:
                return False  # the active request's body can never complete
            self.queue.remove(entry)
            self.p_ctx = None
            self.p_entry = None
            self.p_kind = K_NONE
            if len(self.queue) < MAX_PIPELINE:
                self.gate.resume(PAUSE_PIPELINE)
        return self.a_ctx is not None or bool(self.queue) or self.reject_after is not None

    # ------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        # (p_ctx/p_entry/p_has_body/p_expect are always set by on_headers_complete before use.)
        self.in_head = True
        self.p_url = b""
        self.p_headers = []
        self.p_hbytes = 0
        self.p_body = 0
        self.p_conn = False
        self.p_raw = 0  # (data_received counts this head's bytes after feed_data, if still incomplete)
        # Absolute deadline from the first byte of the head; never moved while the head trickles in.
        self.p_kind = K_HEADER
        self.p_deadline = self.ticker.now + self.t_header

    def on_url(self, url: bytes) -> None:
        self.p_url += url
        if len(self.p_url) > self.lim_uri:
            raise RequestRejected(replies.URI_TOO_LONG)

    def on_header(self, bytes name, bytes value) -> None:
        cdef list headers = self.p_headers
        cdef Py_ssize_t n = len(name)
        headers.append((name, value))
        if (n == 10 or n == 16) and not self.p_conn:
            # (see on_headers_complete: only these two names set llhttp's keep-alive flags)
            lname = name.lower()
            self.p_conn = lname == b"connection" or lname == b"proxy-connection"
        self.p_hbytes += len(name) + len(value) + 4
        if self.p_hbytes > self.lim_hbytes or len(headers) > self.lim_headers:
            raise RequestRejected(replies.HEADERS_TOO_LARGE)

    def on_headers_complete(self) -> None:
        cdef RequestContext ctx
        cdef bint has_body, expect
        cdef _Queued entry
        self.in_head = False
        parser = self.parser
        builder = self.builder
        method = parser.get_method()
        keep_alive = parser.should_keep_alive()
        # get_http_version() formats a new str per call (the dearest getter, ~0.15 us). llhttp (strict:
        # only 0.9, 1.0, 1.1 and 2.0 parse) says keep-alive for 1.1 unless "close", and for the
        # others only with a keep-alive token in Connection/Proxy-Connection: so keep-alive with
        # neither field present can only be HTTP/1.1.
        version = "1.1" if keep_alive and not self.p_conn else parser.get_http_version()
        ctx = builder.build(method, version, self.p_url, self.p_headers,
                            keep_alive and not self.worker.draining)
        has_body = builder.has_body
        expect = builder.expect
        self.p_work += HEAD_WORK
        # (An Upgrade needs `Connection: upgrade`: p_conn spares the common request this call.)
        if (self.p_conn or has_body) and parser.should_upgrade():
            if has_body:
                raise RequestRejected(replies.BAD_REQUEST)  # see reader.pyx's HttpParserUpgrade
            self._upgrade_head(ctx)
        ctx.start = self.l_time()
        self.p_ctx = ctx
        self.p_entry = None
        self.p_has_body = has_body
        self.p_expect = expect
        if has_body:
            self.p_kind = K_BODY
            self.p_deadline = self.ticker.now + self.t_body
        else:
            self.p_kind = K_NONE
        if ctx.chunked:
            # The body is decoded by _dechunk from the byte after this head, not by llhttp: the
            # framing verdict is then request.pyx's alone (llhttp would refuse `chunked<TAB>` only
            # after this callback, when the request may already be upstream), and chunk sizes and
            # extensions get bounds llhttp lacks. The request goes upstream once its first
            # chunk-size line is valid, so a body refused there reaches no upstream at all; with
            # Expect the client waits for our 100, so it goes now.
            self.chunk.start(not expect)
            if expect:
                self._dispatch(ctx, True, True)
            raise _TakeOver()
        self._dispatch(ctx, has_body, expect)

    cdef int _upgrade_head(self, RequestContext ctx) except -1:
        """A request asking to switch protocols (Connection: upgrade, Upgrade: ...).

        `Upgrade: h2c` alone is ignored (RFC 9110 §7.8 lets a server ignore Upgrade; RFC 9113
        dropped h2c): the request is proxied as a plain one, with Upgrade stripped, as nginx and
        Envoy do, so a client that offers h2c opportunistically is still answered. Any other
        Upgrade is tunnelled on a route with `websocket = true` and refused elsewhere (400,
        _activate). Its connection is never reused for HTTP: a non-101 answer closes it."""
        cdef tuple h
        value = None
        for h in self.p_headers:
            if len(<bytes>h[0]) == 7 and (<bytes>h[0]).lower() == b"upgrade":
                value = h[1] if value is None else value + b", " + h[1]
        if value is None or value.strip().lower() == b"h2c":
            return 0
        ctx.keep_alive = False
        self.u_ctx = ctx
        self.u_value = value
        return 0

    cdef int _dispatch(self, RequestContext ctx, bint has_body, bint expect) except -1:
        """Start the parsed request now, or queue it behind the active exchange."""
        cdef _Queued entry
        if self.a_ctx is None and not self.queue:
            self._activate(ctx, None, not has_body, expect)
        else:
            entry = _Queued(ctx, expect, not has_body)
            self.p_entry = entry
            self.queue.append(entry)
            if len(self.queue) >= MAX_PIPELINE:
                self.gate.pause(PAUSE_PIPELINE)
        return 0

    def on_body(self, bytes body) -> None:
        cdef Py_ssize_t n = len(body)
        cdef RequestContext ctx
        cdef _Queued entry
        self.p_body += n
        if self.p_body > self.lim_body:
            raise RequestRejected(replies.BODY_TOO_LARGE)
        self.p_deadline = self.ticker.now + self.t_body
        self.p_work += 1
        entry = self.p_entry
        if entry is None and self.a_up is not None:
            # Streaming to the upstream: written once per turn (_flush_body), so a body of tiny
            # chunks costs one write per read, not one per chunk.
            self.o_body.append(body)
            self.o_size += n
            return
        ctx = self.p_ctx
        assert ctx is not None
        # Chunk extensions never survive: we re-frame each piece _dechunk hands us.
        data = b"%x\r\n%s\r\n" % (n, body) if ctx.chunked else body
        if entry is None:
            self._body_out(data)
        else:
            entry.body.append(data)
            entry.size += len(data)
            if entry.size > MAX_BUFFERED_BODY:
                self.gate.pause(PAUSE_BUFFER)

    def on_message_complete(self) -> None:
        self._message_complete()

    cdef int _message_complete(self) except -1:
        cdef RequestContext ctx = self.p_ctx
        cdef _Queued entry
        self.p_kind = K_NONE
        self.p_done = True
        if ctx is None:
            return 0
        ctx.bytes_in = self.p_body
        entry = self.p_entry
        if entry is None:
            if self.o_body:
                self._flush_body()  # the body's last pieces before its end
            if ctx is self.a_ctx and not self.a_body_done:
                if ctx.chunked:
                    self._body_out(LAST_CHUNK)  # trailers are dropped with the upstream's framing
                self.a_body_done = True
                if self.a_up is not None:
                    self.a_up._sent()  # the upstream timeout starts now (SPEC §8)
        else:
            if ctx.chunked:
                entry.body.append(LAST_CHUNK)
            entry.done = True
        self.p_ctx = None
        self.p_entry = None
        return 0

    # ------------------------------------------------------------------ the active exchange
    cdef int _activate(self, RequestContext ctx, list body, bint done, bint expect) except -1:
        self.a_ctx = ctx
        self.a_up = None
        self.a_pending = body if body is not None else []
        self.a_pending_size = 0
        self.a_body_done = done
        self.a_expect = expect and not done and not self.a_pending
        self.a_resent = False
        self.a_retries = 0
        self.a_sent = self.a_pending   # (what a second attempt would send; see _send)
        router = self.worker.runtime.router
        if type(router) is Router:
            route = (<Router>router).match(ctx.method, ctx.host, ctx.path)  # a C call
        else:
            route = router.match(ctx.method, ctx.host, ctx.path)
        if type(route) is LocalReply:
            self._local(route)
            return 0
        if route is not self.c_route:
            self._route_plan(route)
        ctx.route = route
        ctx.service = self.c_service
        if ctx is self.u_ctx and not route.websocket:
            self._local(replies.UPGRADE_REFUSED)
            return 0
        if self.c_filtered:
            result = self.c_chain.run_access(ctx)
            if result is not None:
                if type(result) is LocalReply:
                    self._local(result)
                else:
                    # The only per-request task: a filter waiting on I/O (Redis, JWKS...).
                    self.a_task = self.loop.create_task(self._access_wait(ctx, result))
                return 0
        # The proxy step, inlined for the common case (a pooled connection, no Expect).
        if self.a_expect:
            self._proxy(ctx)
            return 0
        target = self.c_service.pick(ctx)
        if target is None:
            self._local(replies.NO_TARGET)
            return 0
        ctx.upstream_target = target
        ctx.upstream_start = self.l_time()   # the attempt starts now (connect time counts)
        pool = target.pool
        # (a C call for the real pool class and its subclasses; cpdef still honours overrides)
        up = (<UpstreamPool>pool).acquire() if isinstance(pool, UpstreamPool) else pool.acquire()
        if up is not None:
            self._send(up)
        else:
            pool.connect(self)
        return 0

    cdef int _route_plan(self, object route) except -1:
        """Read a newly matched route's fields once (see c_route in downstream.pxd)."""
        chain = route.chain
        self.c_route = route
        self.c_service = route.service
        self.c_chain = chain
        self.c_filtered = bool(chain.filters)
        self.c_timeout = route.timeout
        self.c_strip = bool(route.strip_prefix)
        return 0

    cdef bint _filtered(self, RequestContext ctx) except -1:
        """Whether ctx's route has filters (ctx.route is re-checked: a filter may have changed it)."""
        route = ctx.route
        if route is None:
            return False
        if route is self.c_route:
            return self.c_filtered
        return bool(route.chain.filters)

    async def _access_wait(self, RequestContext ctx, pending):
        try:
            result = await pending
        except Exception:  # noqa: BLE001
            log.exception("access filter failed")
            result = replies.INTERNAL_ERROR
        self.a_task = None
        if self.closing or ctx is not self.a_ctx:
            return
        if result is not None:
            self._local(result)
        else:
            self._proxy(ctx)

    cdef int _proxy(self, RequestContext ctx) except -1:
        target = ctx.route.service.pick(ctx)
        if target is None:
            self._local(replies.NO_TARGET)
            return 0
        ctx.upstream_target = target
        ctx.upstream_start = self.l_time()
        if self.a_expect:
            # We answer the client's Expect ourselves (nginx does too) and never forward it: the
            # body then streams to whatever upstream connection we pick.
            self.a_expect = False
            assert self.transport is not None
            self.transport.write(CONTINUE_100)
        up = target.pool.acquire()
        if up is not None:
            self._send(up)
        else:
            target.pool.connect(self)
        return 0

    def upstream_ready(self, _UpstreamBase up) -> None:
        """A new connection from pool.connect (called from its task)."""
        if self.closing or self.a_ctx is None or self.a_up is not None:
            up.pool.release(up)
            return
        self._send(up)

    cdef int _send(self, _UpstreamBase up) except -1:
        cdef RequestContext ctx = self.a_ctx
        cdef list pending = self.a_pending
        assert ctx is not None
        self.a_up = up
        route = ctx.route
        if route is not self.c_route:
            self._route_plan(route)
        head = self.builder.upstream_head(ctx, self.c_strip)
        if ctx is self.u_ctx:
            # The one request whose Upgrade is forwarded (request.pyx strips it from all others).
            head = b"".join([head[:-2], b"Connection: upgrade\r\nUpgrade: ", self.u_value, b"\r\n\r\n"])
        # The body bytes sent are kept (up to a bound, _keep_sent) until the exchange ends, so the
        # request can be sent again after a stale pooled connection or for a retry.
        self.a_sent = pending
        self.a_sent_size = 0
        if pending:
            n = len(head)
            head = b"".join([head, *pending])
            self.a_sent_size = len(head) - n
            self.a_pending = []
            self.a_pending_size = 0
        elif not self.a_body_done:
            self.a_pending = []   # (the body still to come is kept in a_sent, not in this list)
        up._start(self, ctx, head, self.c_timeout or self.t_upstream)
        if self.gate.reasons:
            self.gate.resume(PAUSE_BUFFER)
        if self.w_deadline != INF:
            up._pause_reading()  # the client is already backed up
        return 0

    cdef int _body_out(self, bytes data) except -1:
        if self.closing:
            return 0
        up = self.a_up
        if up is not None:
            up._send(data)
            if self.a_sent is not None:
                self._keep_sent(data)
        elif self.a_ctx is not None:
            self.a_pending.append(data)
            self.a_pending_size += len(data)
            if self.a_pending_size > MAX_BUFFERED_BODY:
                self.gate.pause(PAUSE_BUFFER)
        return 0

    def write_response(self, data: bytes) -> None:
        """Response bytes from the UpstreamProtocol (one call per upstream read)."""
        ctx = self.a_ctx
        if ctx is not None:
            ctx.bytes_out += len(data)
        if self.transport is not None:
            self.transport.write(data)

    def upstream_failed(self, kind: str) -> None:
        self._upstream_failed(kind, False)

    cdef int _upstream_failed(self, str kind, bint stale) except -1:
        """The active exchange's upstream failed (kind: connect, timeout, reset, protocol); `stale`:
        on a pooled connection closed before any response byte. Sent again when that is safe (no
        response byte reached the client, and a copy of every body byte sent so far is held: the
        rest of a body still arriving then follows on the new connection), else answered 502/504
        (or the connection closed, when part of the response went out)."""
        cdef RequestContext ctx = self.a_ctx
        self.a_up = None
        if ctx is None:
            return 0
        if not self.closing and ctx.status == 0 and self.a_sent is not None and self._again(ctx, kind, stale):
            return 0
        self._attempt_end(ctx, kind)
        if self.closing:
            return 0
        ctx.upstream_error = kind
        if ctx.status == 0:
            self._local(replies.UPSTREAM_REPLIES[kind])
        else:
            # Part of the response already went out: a second response is impossible, closing is
            # the only way to tell the client the body is incomplete.
            self._close()
        return 0

    cdef bint _again(self, RequestContext ctx, str kind, bint stale) except -1:
        """Send the request again after a failure before any response byte reached the client,
        while we hold every request byte sent so far (a_sent); whether it was sent.

        - A pooled connection closed as we wrote (stale): once, on a fresh connection to the same
          target, for every method, as nginx and Envoy do. The upstream never saw the request, so
          this is part of the same attempt (SPEC §3: not a retry, reported once).
        - A connect failure or a reset: up to route.retries times on another target
          (Service.pick_retry), for idempotent methods only; each try is an attempt of its own,
          reported through Service.record, and bounded by the route's timeout like the first."""
        if stale and not self.a_resent:
            self.a_resent = True
            self.a_pending = self.a_sent
            ctx.upstream_target.pool.connect(self)   # never another pooled one: it may be stale too
            return True
        route = ctx.route
        if (kind != "connect" and kind != "reset") or route is None or self.a_retries >= route.retries:
            return False
        if ctx.method not in IDEMPOTENT:
            return False
        self._attempt_end(ctx, kind)
        target = ctx.service.pick_retry(ctx, ctx.upstream_target)
        if target is None:
            return False
        self.a_retries += 1
        self.a_resent = False   # a new target's pooled connection may be stale too
        log.info("request %s: upstream %s failed (%s) before any response byte; retry %d of %d on %s",
                 ctx.request_id, ctx.upstream_target.url, kind, self.a_retries, route.retries, target.url)
        ctx.upstream_target = target
        ctx.upstream_start = self.l_time()
        ctx.upstream_end = 0.0
        self.a_pending = self.a_sent
        pool = target.pool
        up = pool.acquire()
        if up is not None:
            self._send(up)
        else:
            pool.connect(self)
        return True

    cdef int _local(self, object reply) except -1:
        """Answer the active request ourselves."""
        cdef RequestContext ctx = self.a_ctx
        assert ctx is not None and self.transport is not None
        ctx.local_reply = reply
        ctx.status = reply.status
        if self.a_up is not None:  # an upstream exchange was abandoned (413/400 mid-body)
            self.a_up._abort()
            self.a_up = None
        self._attempt_end(ctx, "aborted")   # an open attempt (sending or connecting) is given up
        # Unread request body bytes could be parsed as a next request: close instead.
        keep = ctx.keep_alive and not reply.close and self.a_body_done
        ctx.keep_alive = keep
        headers = reply.headers
        route = ctx.route
        if route is not None and not route.chain.empty:
            headers = list(headers)
            route.chain.run_response(ctx, reply.status, headers)
        if ctx.response_headers:
            headers = headers + ctx.response_headers
        data = replies.render(reply, ctx.request_id, keep, headers, ctx.method == b"HEAD")
        ctx.bytes_out += len(data)
        self.transport.write(data)
        self._exchange_done()
        return 0

    def exchange_done(self) -> None:
        self._exchange_done()

    cdef int _exchange_done(self) except -1:
        """The active exchange sent its last byte: log it, then the next request or idle or close."""
        cdef RequestContext ctx = self.a_ctx
        cdef _Queued entry
        if ctx is None:
            return 0
        self.a_ctx = None
        self.a_up = None
        self.a_sent = None
        if ctx is self.u_ctx:
            self.u_ctx = None
        if ctx.upstream_end == 0.0 and ctx.upstream_target is not None:
            self._attempt_end(ctx, None)   # the upstream's response is complete
        if self._filtered(ctx):
            ctx.route.chain.run_log(ctx)
        if self.closing:
            return 0
        if not ctx.keep_alive or not self.a_body_done or self.worker.draining:
            self._close()
            return 0
        if self.gate.reasons & cPAUSE_UPSTREAM:
            # The upstream connection that was backed up is no longer ours (it answered before
            # draining the body, or failed): its resume_writing would never reach us.
            self.gate.resume(cPAUSE_UPSTREAM)
        if self.queue:
            entry = self.queue.popleft()
            if len(self.queue) < MAX_PIPELINE:
                self.gate.resume(PAUSE_PIPELINE)
            if entry is self.p_entry:
                self.p_entry = None  # its remaining body now streams straight to the exchange
            self.gate.resume(PAUSE_BUFFER)
            self._activate(entry.ctx, entry.body, entry.done, entry.expect)
        elif self.reject_after is not None:
            self._reject(self.reject_after)
        elif self.eof and not self._eof_keep():
            self._close()  # the client half-closed and its last complete request is answered
        elif self.p_kind == K_NONE and not self.in_head:
            self.p_kind = K_IDLE
            self.p_raw = 0
            self.p_deadline = self.ticker.now + self.t_keepalive
        return 0

    cdef int _switch(self, _UpstreamBase up, bytes rest) except -1:
        """The upstream answered the Upgrade request with 101 (its head already went out): from
        now on this connection is a tunnel (tunnel.pyx), bytes both ways, until either side ends."""
        cdef RequestContext ctx = self.a_ctx
        cdef Tunnel tunnel
        assert ctx is not None and self.transport is not None
        self._attempt_end(ctx, None)   # the attempt's outcome: a complete 101
        held = self.p_rest             # what the client sent after its request, unparsed
        self.p_rest = b""
        self.a_ctx = None
        self.a_up = None
        self.a_sent = None
        self.u_ctx = None
        self.p_kind = K_NONE
        self.p_deadline = INF
        self.w_deadline = INF
        self.ticker.discard(self)      # the tunnel keeps its own (idle) deadline
        route = ctx.route
        tunnel = Tunnel(self.transport, up.transport, self.gate, self.ticker, ctx,
                        route.timeout or self.t_upstream, self._tunnel_end)
        self.tunnel = tunnel
        up.tunnel = tunnel
        if self.gate.reasons & cPAUSE_WRITE:
            # The client was not reading: in a tunnel that pauses the upstream, not the client.
            self.gate.resume(cPAUSE_WRITE)
            tunnel.down_paused()
        self.gate.resume(PAUSE_UPGRADE)
        tunnel.start(held, rest)
        if self.eof:
            tunnel.eof_from_down()     # the client's FIN came while the upgrade was pending
        return 0

    def _tunnel_end(self) -> None:
        """The tunnel is over (either side closed, or idle): the request's log phase runs now."""
        self.closing = True
        tunnel = self.tunnel
        if tunnel is not None:
            self._log(tunnel.ctx)

    cdef int _attempt_end(self, RequestContext ctx, object kind) except -1:
        """One upstream attempt ended: kind None (a complete response, ctx.status), a failure kind
        (connect, timeout, reset, protocol) or "aborted" (we gave up on it: the client left, or we
        answered locally mid-body). Sets ctx.upstream_end, so each attempt is reported once, and
        tells the service when it observes outcomes (passive health, breakers, least_conn, EWMA)."""
        if ctx.upstream_end != 0.0 or ctx.upstream_start == 0.0:
            return 0   # already reported, or never sent (failed before a connection was ours)
        ctx.upstream_end = self.l_time()
        service = ctx.service
        if service is not None and service.observed:
            try:
                service.record(ctx, ctx.upstream_target, kind)
            except Exception:  # noqa: BLE001 - an observer must never break the exchange
                log.exception("service %s: recording an upstream outcome failed", service.name)
        return 0

    cdef int _log(self, RequestContext ctx) except -1:
        if self._filtered(ctx):
            ctx.route.chain.run_log(ctx)
        return 0

    # ------------------------------------------------------------------ rejection, close, timers
    cdef int _reject(self, object reply) except -1:
        """The request being parsed is refused: nothing more is read from this connection."""
        cdef RequestContext ctx
        cdef _Queued entry
        if self.closing:
            return 0
        self.gate.pause(PAUSE_CLOSING)
        self.p_kind = K_NONE
        self.in_head = False
        ctx = self.p_ctx
        if ctx is not None and ctx is self.a_ctx:
            # The active request itself failed mid-body (413 crossed, bad chunk, body stall). The
            # body bytes of this turn that came before the refusal go upstream first, as they
            # would have had they arrived in earlier reads: the upstream sees the same aborted
            # prefix however the bytes were split (tests/http/test_segmentation.py).
            if self.o_body:
                self._flush_body()
            if ctx.status == 0:
                self._local(reply if reply.close else _closing(reply))
            else:
                self._close()
            return 0
        if self.a_ctx is not None or self.queue:
            # Earlier pipelined requests are answered first; the rejection comes last, in order.
            for entry in list(self.queue):
                if entry is self.p_entry:
                    self.queue.remove(entry)
            self.reject_after = reply
            return 0
        self.reject_after = None
        rid = ctx.request_id if ctx is not None else new_request_id()
        assert self.transport is not None
        self.transport.write(replies.render(reply, rid, False))
        self._close()
        return 0

    cdef int _close(self) except -1:
        if not self.closing:
            self.closing = True
            if self.transport is not None:
                self.transport.close()
        return 0

    def shutdown(self) -> None:
        """Drain: close now if idle, else after the in-flight response (which says Connection: close).
        An established tunnel is left alone: the worker closes it at GATEWAY_DRAIN_TIMEOUT."""
        if self.tunnel is not None:
            return
        if self.a_ctx is None and not self.queue and not self.in_head and self.p_ctx is None:
            self._close()
        elif self.a_ctx is not None and self.a_ctx.status == 0:
            self.a_ctx.keep_alive = False

    def on_tick(self, double now) -> None:
        if now >= self.w_deadline:
            # The client stopped reading our response.
            self.closing = True
            if self.transport is not None:
                self.transport.abort()
            return
        if now < self.p_deadline or self.closing:
            return
        cdef int kind = self.p_kind
        if kind == K_IDLE:
            self._close()
        elif kind == K_HEADER:
            # The head's deadline is absolute; while an earlier exchange is still answering, the
            # 408 waits for its turn (reject_after), so responses stay in order.
            self._reject(replies.HEADER_TIMEOUT)
        elif kind == K_BODY and not self.gate.reasons:
            self._reject(replies.BODY_TIMEOUT)


def _closing(reply: LocalReply) -> LocalReply:
    return LocalReply(reply.status, reply.code, reply.message, reply.headers, reply.body,
                      reply.content_type, close=True)


class DownstreamProtocol(_DownstreamBase, asyncio.Protocol):
    """The asyncio-facing class: a cdef class cannot inherit asyncio.Protocol, this thin subclass
    keeps isinstance(p, asyncio.Protocol) true (asyncpg's layout). No instance dict."""

    __slots__ = ()
