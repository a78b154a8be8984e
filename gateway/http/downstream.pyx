"""DownstreamProtocol: one client connection, parsed by llhttp (driven from C: llhooks.pyx).

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

Compiled with Cython (asyncpg's layout), in three cdef classes, one job each: _ReaderBase
(reader.pxd, reader.pyx) holds the connection's state and slices its reads into the parser;
_ExchangeBase (exchange.pyx) is what a parsed request becomes (routing, filters, the upstream
exchange, second attempts, the switch to a tunnel, local replies); _DownstreamBase (this file) is
the connection's life, the parser's callbacks, refusals and timers. DownstreamProtocol adds
asyncio.Protocol as a base. A chunked request body is decoded by chunked.pyx.
It stays in gateway/http, not gateway/_fast, because it does I/O (DESIGN.md keeps _fast I/O-free);
the same holds for upstream.pyx, pool.pyx and flow.pyx.
"""
import asyncio
import logging
from collections import deque
from typing import Any

from gateway.pipeline.context cimport RequestContext
from gateway.pipeline.reply import LocalReply

from . import replies
from .errors import RequestRejected
from .flow import PAUSE_BUFFER, PAUSE_CLOSING, PAUSE_PIPELINE, PAUSE_WRITE, ticker_for
from .reader import MAX_BUFFERED_BODY, MAX_PIPELINE, _TakeOver

from gateway.http.chunked cimport ChunkDecoder
from gateway.http.exchange cimport _ExchangeBase
from gateway.http.flow cimport ReadGate
from gateway.http.outlet cimport Outlet
from gateway.http.head cimport HeadTracker, HeaderView
from gateway._fast.clock cimport monotonic_now
from gateway.http.llstate cimport request_keep_alive, request_method, should_upgrade
from gateway.http.reader cimport HEAD_WORK, K_BODY, K_HEADER, K_IDLE, K_NONE, _Queued
from gateway.http.request cimport RequestBuilder, new_request_id
from gateway.runtime_core cimport draining, metrics_of
from .wire import H_FORWARD, LAST_CHUNK

log = logging.getLogger("gateway.http")
cdef double INF = float("inf")  # a C double: compared per request without a global lookup
cdef int cPAUSE_CLOSING = PAUSE_CLOSING
cdef int cPAUSE_WRITE = PAUSE_WRITE
cdef int cH_FORWARD = H_FORWARD


cdef class _DownstreamBase(_ExchangeBase):
    """The protocol's state and logic; DownstreamProtocol (below) adds asyncio.Protocol as a base.

    (Attributes: reader.pxd. `def` methods are what asyncio/uvloop, the pool, the
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
        self.parser = self._new_parser()
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
        self.o_head = None
        self.p_turn = False
        self.chunk = ChunkDecoder(s.max_body_bytes, s.max_header_bytes)
        # A held head's raw bytes: the limits' bytes plus whitespace llhttp drops, bounded at 4x.
        self.heads = HeadTracker(4 * (s.max_header_bytes + s.max_uri_bytes + 32) + 4096,
                                 s.max_headers, s.max_header_bytes)
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
        self.t_write = Outlet(transport)
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
        self.o_head = None
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
        cdef bint keep
        if self.tunnel is not None:
            keep = self.tunnel.eof_from_down()
        else:
            self.eof = True
            self.gate.ended = True  # never resume reading a stream after EOF
            if self.closing:
                return False
            keep = self._eof_keep()
        # Over TLS (GATEWAY_TLS_CERT) an EOF is the client's close_notify, and uvloop has no
        # half-close: it flushes what was written and closes whatever we answer (and logs a
        # warning per connection for True). Answered False, as asyncio's streams do.
        return keep and self.transport.get_extra_info("sslcontext") is None

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
    # (ParserOwner's methods, called by llhttp through llhooks.pyx's C functions)
    cdef int _message_begin(self) except -1:
        # (p_ctx/p_entry/p_has_body/p_expect are always set by on_headers_complete before use.)
        self.in_head = True
        self.p_url = b""
        self.p_body = 0
        self.p_conn = False
        self.p_raw = 0  # (data_received counts this head's bytes after feed_data, if still incomplete)
        # Absolute deadline from the first byte of the head; never moved while the head trickles in.
        self.p_kind = K_HEADER
        self.p_deadline = self.ticker.now + self.t_header
        return 0

    cdef int _url(self, bytes url) except -1:
        if self.p_url:
            self.p_url += url   # (a target split across reads)
        else:
            self.p_url = url
        if len(self.p_url) > self.lim_uri:
            raise RequestRejected(replies.URI_TOO_LONG)
        return 0

    cdef int _headers_complete(self) except -1:
        cdef RequestContext ctx
        cdef HeaderView view
        cdef bint has_body, expect
        cdef _Queued entry
        self.in_head = False
        parser = self.parser
        builder = self.builder
        method = request_method(parser)
        # The head's bytes, scanned in C now that llhttp accepted them (head.pyx): its fields are
        # spans, measured against the head limits here as httptools' on_header measured them.
        view = self.heads.take_view(method, cH_FORWARD, True)
        if view is None:
            log.error("request head not found where llhttp ended it (stream out of step): 400")
            raise RequestRejected(replies.BAD_REQUEST)
        if view.n > self.lim_headers or view.field_bytes > self.lim_hbytes:
            raise RequestRejected(replies.HEADERS_TOO_LARGE)
        # (see below: only these two names set llhttp's keep-alive flags)
        self.p_conn = view.connection   # (noted by scan_head)
        keep_alive = request_keep_alive(parser)
        # get_http_version() formats a new str per call (the dearest getter, ~0.15 us). llhttp (strict:
        # only 0.9, 1.0, 1.1 and 2.0 parse) says keep-alive for 1.1 unless "close", and for the
        # others only with a keep-alive token in Connection/Proxy-Connection: so keep-alive with
        # neither field present can only be HTTP/1.1.
        version = "1.1" if keep_alive and not self.p_conn else parser.get_http_version()
        ctx = builder.build(method, version, self.p_url, view,
                            keep_alive and not draining(self.worker))
        if not ctx.chunked and ctx.content_length is not None:
            self.heads.body(ctx.content_length)   # where the next head begins
        has_body = builder.has_body
        expect = builder.expect
        self.p_work += HEAD_WORK
        # (An Upgrade needs `Connection: upgrade`: p_conn spares the common request this call.)
        if (self.p_conn or has_body) and should_upgrade(parser):
            if has_body:
                raise RequestRejected(replies.BAD_REQUEST)  # see reader.pyx's HttpParserUpgrade
            self._upgrade_head(ctx)
        ctx.start = monotonic_now()
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
            # The body is decoded by the ChunkDecoder (chunked.pyx) from the byte after this head,
            # not by llhttp: the framing verdict is then request.pyx's alone (llhttp would refuse
            # `chunked<TAB>` only after this callback, when the request may already be upstream),
            # and chunk sizes and extensions get bounds llhttp lacks. The request goes upstream once its first
            # chunk-size line is valid, so a body refused there reaches no upstream at all; with
            # Expect the client waits for our 100, so it goes now.
            self.chunk.start(not expect)
            if expect:
                self._dispatch(ctx, True, True)
            raise _TakeOver()
        self._dispatch(ctx, has_body, expect)
        return 0

    cdef int _upgrade_head(self, RequestContext ctx) except -1:
        """A request asking to switch protocols (Connection: upgrade, Upgrade: ...).

        `Upgrade: h2c` alone is ignored (RFC 9110 §7.8 lets a server ignore Upgrade; RFC 9113
        dropped h2c): the request is proxied as a plain one, with Upgrade stripped, as nginx and
        Envoy do, so a client that offers h2c opportunistically is still answered. Any other
        Upgrade is tunnelled on a route with `websocket = true` and refused elsewhere (400,
        _activate). Its connection is never reused for HTTP: a non-101 answer closes it."""
        cdef HeaderView view = ctx.headers
        cdef Py_ssize_t i = view.c_find(b"upgrade", 7, 0, True)
        value = None
        while i >= 0:
            value = view.c_value(i) if value is None else value + b", " + view.c_value(i)
            i = view.c_find(b"upgrade", 7, i + 1, True)
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

    cdef int _on_body(self, bytes body) except -1:
        """Body bytes of the request being parsed: from llhttp, from the ChunkDecoder, or a piece
        of a Content-Length body passed on without llhttp (reader.pyx's _consume)."""
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
            return 0
        ctx = self.p_ctx
        assert ctx is not None
        # Chunk extensions never survive: we re-frame each piece the ChunkDecoder hands us.
        data = b"%x\r\n%s\r\n" % (n, body) if ctx.chunked else body
        if entry is None:
            self._body_out(data)
        else:
            entry.body.append(data)
            entry.size += len(data)
            if entry.size > MAX_BUFFERED_BODY:
                self.gate.pause(PAUSE_BUFFER)
        return 0

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
            if self.o_body or self.o_head is not None:
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

    # ------------------------------------------------------------------ rejection, close, timers
    cdef int _reject(self, object reply) except -1:
        """The request being parsed is refused: nothing more is read from this connection."""
        cdef RequestContext ctx
        cdef _Queued entry
        cdef double head_start = 0.0
        if self.closing:
            return 0
        if self.p_kind == K_HEADER:
            head_start = self.p_deadline - self.t_header   # (on the ticker's clock: the loop's, monotonic)
        self.gate.pause(PAUSE_CLOSING)
        self.p_kind = K_NONE
        self.in_head = False
        ctx = self.p_ctx
        if ctx is not None and ctx is self.a_ctx:
            # The active request itself failed mid-body (413 crossed, bad chunk, body stall). The
            # body bytes of this turn that came before the refusal go upstream first, as they
            # would have had they arrived in earlier reads: the upstream sees the same aborted
            # prefix however the bytes were split (tests/http/test_segmentation.py).
            if self.o_body or self.o_head is not None:
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
        self._refused(ctx, reply, rid, head_start)
        return 0

    cdef int _refused(self, RequestContext ctx, object reply, bytes rid, double head_start) except -1:
        """A request refused before it became an exchange (a head the parser or a limit refused, a
        queued request's body): reported where every exchange is (the Recorder: metrics, access
        log, error log, audit), with the request id its reply carried. Without a context (the head
        never parsed completely), one is made of what was read: the method when the parser knew
        it, the target's path (no query, cut at 256 bytes)."""
        metrics = metrics_of(self.worker)
        if metrics is None:
            return 0
        if ctx is None:
            ctx = RequestContext.__new__(RequestContext)
            ctx.request_id = rid
            ctx.client_ip = self.peer
            ctx.keep_alive = False
            ctx.path = self.p_url.split(b"?", 1)[0][:256]
            try:
                ctx.method = self.parser.get_method()
            except Exception:  # noqa: BLE001 - llhttp had not read a method yet
                ctx.method = b""
            # The head's start is known to the ticker's resolution (0.5 s): used for a head that
            # timed out, where it is the whole story; any other refusal took this read's time.
            ctx.start = head_start if head_start > 0.0 and reply is replies.HEADER_TIMEOUT else monotonic_now()
        ctx.status = reply.status
        ctx.local_reply = reply
        try:
            metrics.observe(ctx)
        except Exception:  # noqa: BLE001 - reporting must never break the connection's clean-up
            log.exception("reporting a refused request failed")
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
