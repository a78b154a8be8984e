"""What happens to a parsed request: _ExchangeBase, between _ReaderBase (reader.pyx: the
connection's state and its reads) and _DownstreamBase (downstream.pyx: the connection's life,
the parser's callbacks, refusals and timers).

One exchange is active per connection (a_*): the route is matched, the route's access filters run
(synchronously unless one waits on I/O: the only per-request task), and the request goes to a
pooled UpstreamProtocol (or a new connection from pool.connect), whose callbacks write the
response to the client and end the exchange here (`_exchange_done`, which starts the next
pipelined request). Off the common path:

- a second attempt (`_upstream_failed` → `_again`): the resend after a stale pooled connection,
  and route `retries` on another target (Service.pick_retry), while no response byte reached the
  client and a copy of every request byte sent is held (a_sent, bounded);
- an Upgrade answered 101 (`_switch`): the connection becomes a Tunnel (tunnel.pyx);
- a local reply (`_local`): 404/405, a filter's refusal, 502/504, ...
- a route with a body check (`json_check`): the body is held, bounded, until checked (`_hold`).

Every upstream attempt is reported once to a service that observes outcomes (`_attempt_end`).
"""
import logging

from gateway.pipeline.chain cimport FilterChain
from gateway.pipeline.context cimport RequestContext
from gateway.routing cimport Router
from gateway.routing import Route
from gateway.http.request cimport STRIP_ASK
from gateway.pipeline.reply import LocalReply
from gateway.discovery.service import Service
from gateway.discovery.service_core cimport ServiceCore, is_observed, pool_of
from gateway.runtime_core cimport draining, metrics_of, router_of
from gateway.observability.recorder cimport Recorder

from . import replies
from .flow import PAUSE_BUFFER, PAUSE_PIPELINE, PAUSE_UPGRADE, PAUSE_UPSTREAM, PAUSE_WRITE
from .reader import MAX_BUFFERED_BODY, MAX_PIPELINE

from gateway._fast.clock cimport monotonic_now
from gateway.http.pool cimport UpstreamPool
from gateway.http.reader cimport K_IDLE, K_NONE, _Queued, _ReaderBase
from gateway.http.tunnel cimport Tunnel
from gateway.http.upstream cimport _UpstreamBase
from .wire import CONTINUE_100, LAST_CHUNK

log = logging.getLogger("gateway.http")
cdef double INF = float("inf")  # a C double: compared per request without a global lookup
cdef int cPAUSE_UPSTREAM = PAUSE_UPSTREAM
cdef int cPAUSE_WRITE = PAUSE_WRITE
# Methods a retry may send again to another target (RFC 9110 §9.2.2; TRACE is never proxied far).
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"))


cdef inline object _pick(object service, RequestContext ctx):
    """service.pick(ctx): for a plain Service its C implementation (ServiceCore.c_pick), for any
    other class (a balancer's override) the Python method."""
    if type(service) is Service:
        return (<ServiceCore>service).c_pick(ctx)
    return service.pick(ctx)


cdef class _ExchangeBase(_ReaderBase):
    """The active exchange's steps (see the module docstring); state in reader.pxd."""

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
        router = router_of(self.worker)
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
            chain = self.c_chain
            if type(chain) is FilterChain:
                result = (<FilterChain>chain).c_run_access(ctx)   # a C call
            else:
                result = chain.run_access(ctx)
            if result is not None:
                if type(result) is LocalReply:
                    self._local(result)
                else:
                    # The only per-request task: a filter waiting on I/O (Redis, JWKS...).
                    self.a_task = self.loop.create_task(self._access_wait(ctx, result))
                return 0
        if self.c_body is not None and self._hold(ctx):
            return 0
        # The proxy step, inlined for the common case (a pooled connection, no Expect).
        if self.a_expect:
            self._proxy(ctx)
            return 0
        target = _pick(self.c_service, ctx)
        if target is None:
            self._local(replies.unavailable(ctx))
            return 0
        ctx.upstream_target = target
        ctx.upstream_start = monotonic_now()   # the attempt starts now (connect time counts)
        pool = pool_of(target)
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
        if not route.strip_prefix:
            self.c_strip = -1
        elif type(route) is Route:
            self.c_strip = route._strip_len   # stripped in C (request.pyx)
        else:
            self.c_strip = STRIP_ASK          # its own upstream_path() says
        self.c_body = (<FilterChain>chain).body_check if type(chain) is FilterChain else None
        return 0

    cdef bint _filtered(self, RequestContext ctx) except -1:
        """Whether ctx's route has filters (ctx.route is re-checked: a filter may have changed it)."""
        route = ctx.route
        if route is None:
            return False
        if route is self.c_route:
            return self.c_filtered
        return bool(route.chain.filters)

    cdef object _chain(self, RequestContext ctx):
        """ctx.route's FilterChain (the cached one for the last matched route: no attribute read)."""
        route = ctx.route
        if route is self.c_route:
            return self.c_chain
        return route.chain

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
        elif self.c_body is None or not self._hold(ctx):
            self._proxy(ctx)

    cdef int _proxy(self, RequestContext ctx) except -1:
        target = _pick(ctx.route.service, ctx)
        if target is None:
            self._local(replies.unavailable(ctx))
            return 0
        ctx.upstream_target = target
        ctx.upstream_start = monotonic_now()
        if self.a_expect:
            # We answer the client's Expect ourselves (nginx does too) and never forward it: the
            # body then streams to whatever upstream connection we pick.
            self.a_expect = False
            assert self.transport is not None
            self.transport.write(CONTINUE_100)
        pool = pool_of(target)
        up = pool.acquire()
        if up is not None:
            self._send(up)
        else:
            pool.connect(self)
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
            if self.p_turn:
                # Parsing a read: its body bytes (a small POST's whole body) leave with the head
                # in one write at the end of this turn (_flush_body), not in a second one.
                self.o_head = head
                head = b""
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
            if self.o_head is not None:
                self._flush_body()   # the head (and this turn's body pieces) first
            up._send(data)
            if self.a_sent is not None:
                self._keep_sent(data)
        elif self.a_ctx is not None:
            if self.a_hold is not None:
                self._hold_more(self.a_ctx, data, False)
                return 0
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
            self.t_write.write(data)

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
        self.o_head = None
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
            pool_of(ctx.upstream_target).connect(self)   # never another pooled one: it may be stale too
            return True
        route = ctx.route
        if (kind != "connect" and kind != "reset") or route is None or self.a_retries >= route.retries:
            return False
        if ctx.method not in IDEMPOTENT:
            return False
        self._attempt_end(ctx, kind)
        pick_retry = getattr(ctx.service, "pick_retry", None)   # (a service without it: no retry)
        target = pick_retry(ctx, ctx.upstream_target) if pick_retry is not None else None
        if target is None:
            return False
        self.a_retries += 1
        self.a_resent = False   # a new target's pooled connection may be stale too
        log.info("request %s: upstream %s failed (%s) before any response byte; retry %d of %d on %s",
                 ctx.request_id, ctx.upstream_target.url, kind, self.a_retries, route.retries, target.url)
        ctx.upstream_target = target
        ctx.upstream_start = monotonic_now()
        ctx.upstream_end = 0.0
        self.a_pending = self.a_sent
        pool = pool_of(target)
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
        self.a_hold = None
        if self.a_up is not None:  # an upstream exchange was abandoned (413/400 mid-body)
            self.a_up._abort()
            self.a_up = None
        self.o_head = None
        self._attempt_end(ctx, "aborted")   # an open attempt (sending or connecting) is given up
        # Unread request body bytes could be parsed as a next request: close instead.
        keep = ctx.keep_alive and not reply.close and self.a_body_done
        ctx.keep_alive = keep
        headers = reply.headers
        route = ctx.route
        if route is not None and route.chain.filters:
            headers = list(headers)
            chain = route.chain
            try:
                if type(chain) is FilterChain:
                    (<FilterChain>chain).c_run_response(ctx, reply.status, headers)
                else:
                    chain.run_response(ctx, reply.status, headers)
            except Exception:
                # Our own reply still goes out, with its own fields: a filter's bug must not
                # turn a 404 or a 429 into a dropped connection.
                log.exception("request %s: response filter failed on the local %d reply; sent"
                              " without its changes", bytes(ctx.request_id).decode("latin-1"),
                              reply.status)
                headers = list(reply.headers)
        if ctx.response_headers:
            headers = headers + ctx.response_headers
        data = replies.render(reply, ctx.request_id, keep, headers, ctx.method == b"HEAD")
        ctx.bytes_out += len(data)
        self.t_write.write(data)
        self._exchange_done()
        return 0

    cdef bint _hold(self, RequestContext ctx) except -1:
        """The route's body check (json_check) before the proxy step: whether it took the request
        (holding its body, or refused). The body is held in one buffer bounded by the check's
        max_bytes (413 as soon as it is crossed), then checked whole: refused, or forwarded
        unchanged in one write with the head (_proxy). Reading never pauses for the hold (the cap
        bounds it); the body timeout and GATEWAY_MAX_BODY_BYTES apply as to any body."""
        verdict = self.c_body.begin(ctx)
        if verdict is False:
            return False
        if type(verdict) is LocalReply:
            self._local(verdict)
            return True
        self.a_hold = bytearray()
        self.a_hold_max = self.c_body.max_bytes
        if self.a_expect:
            # The body is wanted now (a Content-Length over the cap was refused before this 100).
            self.a_expect = False
            self.transport.write(CONTINUE_100)
        # Body read before the hold began (a pipelined request's, or during a filter's wait on
        # I/O, where reading may have paused at MAX_BUFFERED_BODY: the hold lifts that pause).
        pieces = self.a_pending
        self.a_pending = []
        self.a_pending_size = 0
        if self.gate.reasons:
            self.gate.resume(PAUSE_BUFFER)
        for data in pieces:
            self._hold_more(ctx, data, False)
            if self.a_hold is None:
                return True   # refused, or complete and checked
        if self.a_body_done:
            self._hold_more(ctx, None, True)
        return True

    cdef int _hold_more(self, RequestContext ctx, bytes data, bint done) except -1:
        """Body bytes for the hold (as _body_out gets them: a chunked body's pieces framed by
        on_body, its end LAST_CHUNK), or `done` when the body is complete."""
        cdef bytearray hold = self.a_hold
        cdef Py_ssize_t i
        if data is not None:
            if ctx.chunked:
                if data == LAST_CHUNK:
                    done = True
                else:
                    i = data.find(b"\r\n") + 2     # "<size>\r\n<bytes>\r\n": one piece from on_body
                    hold += memoryview(data)[i:len(data) - 2]
            else:
                hold += data
                done = len(hold) >= ctx.content_length
            if len(hold) > self.a_hold_max:
                self._local(self.c_body.too_large(ctx))
                return 0
        if not done:
            return 0
        body = bytes(hold)
        self.a_hold = None
        reply = self.c_body.finish(ctx, body)
        if reply is not None:
            self._local(reply)
            return 0
        if ctx.chunked:
            self.a_pending = [b"%x\r\n" % len(body), body, b"\r\n", LAST_CHUNK] if body else [LAST_CHUNK]
        else:
            self.a_pending = [body]
        self.a_sent = self.a_pending
        self._proxy(ctx)
        return 0

    def exchange_done(self) -> None:
        self._exchange_done()

    cdef int _response_complete(self) except -1:
        """The upstream's response is complete and its last bytes are about to be written to the
        client: the attempt's outcome is recorded now, before the write, so that a client that
        has seen a response finds the breaker, passive health and every other observer already
        past it (a third request after two failures with failure_threshold = 2 is refused, on
        any worker; the admin API shows what the client saw). _exchange_done calls it too, for
        the exchanges that end otherwise (a tunnel, the client gone); _attempt_end reports each
        attempt once."""
        cdef RequestContext ctx = self.a_ctx
        if ctx is not None and ctx.upstream_end == 0.0 and ctx.upstream_target is not None:
            self._attempt_end(ctx, None)
        return 0

    cdef int _exchange_done(self) except -1:
        """The active exchange sent its last byte: log it, then the next request or idle or close."""
        cdef RequestContext ctx = self.a_ctx
        cdef _Queued entry
        if ctx is None:
            return 0
        self._response_complete()   # (when the upstream side has not already)
        self.a_ctx = None
        self.a_up = None
        self.a_sent = None
        self.o_head = None
        if ctx is self.u_ctx:
            self.u_ctx = None
        self._log(ctx)
        if self.closing:
            return 0
        if not ctx.keep_alive or not self.a_body_done or draining(self.worker):
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
        ctx.upstream_end = monotonic_now()
        service = ctx.service
        if service is not None and is_observed(service):
            try:
                if type(service) is Service:
                    (<ServiceCore>service).c_record(ctx, ctx.upstream_target, kind)   # a C call
                else:
                    service.record(ctx, ctx.upstream_target, kind)
            except Exception:  # noqa: BLE001 - an observer must never break the exchange
                log.exception("service %s: recording an upstream outcome failed", service.name)
        return 0

    cdef int _log(self, RequestContext ctx) except -1:
        """The exchange is over (last byte sent, or the client gone): metrics, then the log phase."""
        metrics = metrics_of(self.worker)
        if type(metrics) is Recorder:   # gateway/observability/recorder.pyx: a few atomic adds
            (<Recorder>metrics).c_observe(ctx)
        elif metrics is not None:
            metrics.observe(ctx)
        if self._filtered(ctx):
            chain = self._chain(ctx)
            if type(chain) is FilterChain:
                (<FilterChain>chain).c_run_log(ctx)
            else:
                chain.run_log(ctx)
        return 0
