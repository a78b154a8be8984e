# The client connection's state and its read path as a cdef base class (asyncpg's CoreProtocol
# layout): every per-connection and per-request field lives here, so reader.pyx (how a read is
# sliced and fed to the parser) and downstream.pyx (what a parsed request becomes) both reach
# them as C struct members. _DownstreamBase (downstream.pxd) derives from it and overrides the
# steps declared last below.
from gateway.http.chunked cimport ChunkDecoder
from gateway.http.flow cimport ReadGate, Ticker
from gateway.http.head cimport HeadTracker
from gateway.http.llhooks cimport ParserOwner
from gateway.http.outlet cimport Outlet
from gateway.http.request cimport RequestBuilder
from gateway.http.tunnel cimport Tunnel
from gateway.http.upstream cimport _UpstreamBase
from gateway.pipeline.context cimport RequestContext

# parse-side deadline kinds (p_kind)
cdef enum:
    K_NONE = 0
    K_HEADER = 1
    K_BODY = 2
    K_IDLE = 3

# Work units of one head in a turn's bound (see WORK_PER_TURN in reader.pyx): routing, filters,
# the upstream write; a local 404 costs about as much as 30 one-byte chunks.
cdef enum:
    HEAD_WORK = 32


cdef class _Queued:
    cdef RequestContext ctx
    cdef list body
    cdef Py_ssize_t size
    cdef bint done
    cdef bint expect


cdef class _ReaderBase(ParserOwner):
    # per worker (shared, read-only)
    cdef public object worker
    cdef public object loop
    cdef public object settings
    cdef public Ticker ticker
    cdef public RequestBuilder builder
    # limits copied from settings (immutable for the worker's life)
    cdef Py_ssize_t lim_uri
    cdef Py_ssize_t lim_hbytes
    cdef Py_ssize_t lim_headers
    cdef long long lim_body
    cdef double t_header
    cdef double t_body
    cdef double t_keepalive
    cdef double t_upstream
    # per connection
    cdef public object transport
    cdef readonly object parser
    # The transport's writes (set in connection_made): outlet.pyx, to the socket when uvloop holds
    # nothing for it. The parser is fed from C (llhooks.pyx's feed). (Times are read with
    # gateway._fast.clock's monotonic_now, in C.)
    cdef Outlet t_write
    cdef public ReadGate gate
    cdef public str peer
    cdef public object queue
    cdef public bint closing
    cdef public double w_deadline
    cdef public object reject_after
    # Bytes of earlier reads not parsed yet: held while reading is paused (the pipeline is full,
    # the client does not read, the upstream does not drain...) or until the next turn (the work
    # bound of one turn was reached). Parsed first when the gate opens again.
    cdef public bytes p_rest
    cdef Py_ssize_t p_work      # work done in this turn: body pieces + HEAD_WORK per head
    cdef bint p_resume          # a _continue is scheduled
    cdef public bint eof        # the client half-closed: answer what is complete, then close
    # Body pieces for the active upstream, written once per turn (not once per chunk).
    cdef list o_body
    cdef Py_ssize_t o_size
    # The upstream head of a request whose first body bytes may be in the read being parsed: it
    # waits for the end of the turn (_flush_body) and leaves in one write with them.
    cdef bytes o_head
    cdef bint p_turn            # a read is being parsed (_consume)
    # per request being parsed (p_*)
    cdef public bint in_head
    cdef bytes p_url
    cdef HeadTracker heads      # where the heads lie in the bytes fed to llhttp (head.pyx)
    cdef Py_ssize_t p_raw
    cdef long long p_body
    cdef RequestContext p_ctx
    cdef _Queued p_entry
    cdef public int p_kind
    cdef public double p_deadline
    cdef bint p_has_body
    cdef bint p_expect
    cdef bint p_conn            # the head has a Connection or Proxy-Connection field
    cdef bint p_done            # a message ended during the current read (see data_received)
    cdef ChunkDecoder chunk     # a chunked request body is decoded here, not by llhttp
    # the active exchange (a_*)
    cdef public RequestContext a_ctx
    cdef public _UpstreamBase a_up
    cdef list a_pending
    cdef Py_ssize_t a_pending_size
    cdef public bint a_body_done
    cdef public object a_task
    cdef bint a_expect
    # What a second attempt needs: the body pieces sent with the head when the whole body was in
    # hand then (None once a body streamed: it cannot be sent again), whether the stale-connection
    # resend was used, and how many retries to other targets were made (route.retries bounds it).
    # An Upgrade request (at most one is pending: nothing after it is parsed until it is
    # answered), its Upgrade value, and the tunnel once the upstream switched (101).
    cdef RequestContext u_ctx
    cdef bytes u_value
    cdef public Tunnel tunnel
    cdef list a_sent
    cdef Py_ssize_t a_sent_size   # bytes in a_sent; over MAX_BUFFERED_BODY the copy is dropped
    cdef bint a_resent
    cdef int a_retries
    # The last matched route's fields, read once per route instead of per request (a Route is
    # immutable by convention and a reload builds new ones, so identity says when to re-read).
    cdef public object c_route
    cdef object c_service
    cdef object c_chain
    cdef bint c_filtered
    cdef object c_timeout
    cdef Py_ssize_t c_strip    # -1: no strip_prefix; else request.pyx's upstream_head says

    # the read path (reader.pyx)
    cdef int _consume(self, bytes data) except -1
    cdef int _consume_turn(self, bytes data, Py_ssize_t n) except -1
    cdef Py_ssize_t _plan(self, bytes data, Py_ssize_t pos, Py_ssize_t n) except -1
    cdef Py_ssize_t _body_slice(self, Py_ssize_t avail) noexcept
    cdef int _feed(self, bytes data) except -1
    cdef int _resume_soon(self) except -1
    cdef int _flush_body(self) except -1
    cdef int _keep_sent(self, bytes data) except -1
    cdef object _new_parser(self)
    # what a parsed request becomes: defined by _DownstreamBase (downstream.pyx)
    cdef int _dispatch(self, RequestContext ctx, bint has_body, bint expect) except -1
    # (and llhttp's callbacks: ParserOwner's, llhooks.pxd)
    cdef int _reject(self, object reply) except -1
    cdef bint _eof_keep(self) except -1
    cdef int _close(self) except -1
    # what the upstream protocol calls (upstream.pxd types its client as a _ReaderBase: a cimport
    # of downstream.pxd there would make the modules import each other at load time)
    cdef bint _filtered(self, RequestContext ctx) except -1
    cdef object _chain(self, RequestContext ctx)
    cdef int _upstream_failed(self, str kind, bint stale) except -1
    cdef int _response_complete(self) except -1
    cdef int _exchange_done(self) except -1
    cdef int _switch(self, _UpstreamBase up, bytes rest) except -1
