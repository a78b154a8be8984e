# The client side as a cdef class: per-connection and per-request state in C fields, the internal
# steps as cdef methods (vtable calls), and typed references to the builder, the active upstream
# connection and the contexts, so the hot path never looks an attribute up by name.
from gateway.http.flow cimport ReadGate, Ticker
from gateway.http.request cimport RequestBuilder
from gateway.http.upstream cimport _UpstreamBase
from gateway.pipeline.context cimport RequestContext


cdef class _Queued:
    cdef RequestContext ctx
    cdef list body
    cdef Py_ssize_t size
    cdef bint done
    cdef bint expect


cdef class _DownstreamBase:
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
    # Bound methods taken once (a method lookup per call otherwise): the transport's write (set
    # in connection_made), the parser's feed_data (re-taken whenever the parser is replaced) and
    # loop.time.
    cdef object t_write
    cdef object p_feed
    cdef object l_time
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
    # per request being parsed (p_*)
    cdef public bint in_head
    cdef bytes p_url
    cdef list p_headers
    cdef Py_ssize_t p_hbytes
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
    # a chunked request body, decoded by _dechunk rather than llhttp (see on_headers_complete)
    cdef int c_state
    cdef long long c_size       # the chunk being read: its size as the digits come, then bytes left
    cdef long long c_total      # chunk sizes declared so far (never above lim_body)
    cdef Py_ssize_t c_line      # bytes of the current chunk-size line, or of the trailer section
    cdef bint c_defer           # the request is dispatched once its first chunk-size line is valid
    # the active exchange (a_*)
    cdef public RequestContext a_ctx
    cdef public _UpstreamBase a_up
    cdef list a_pending
    cdef Py_ssize_t a_pending_size
    cdef public bint a_body_done
    cdef public object a_task
    cdef bint a_expect
    # The last matched route's fields, read once per route instead of per request (a Route is
    # immutable by convention and a reload builds new ones, so identity says when to re-read).
    cdef public object c_route
    cdef object c_service
    cdef object c_chain
    cdef bint c_filtered
    cdef object c_timeout
    cdef bint c_strip

    cdef int _reset_parse(self) except -1
    cdef int _consume(self, bytes data) except -1
    cdef Py_ssize_t _plan(self, bytes data, Py_ssize_t pos, Py_ssize_t n) except -1
    cdef int _feed(self, bytes data) except -1
    cdef int _resume_soon(self) except -1
    cdef int _flush_body(self) except -1
    cdef bint _eof_keep(self) except -1
    cdef int _route_plan(self, object route) except -1
    cdef bint _filtered(self, RequestContext ctx) except -1
    cdef int _dispatch(self, RequestContext ctx, bint has_body, bint expect) except -1
    cdef Py_ssize_t _dechunk(self, bytes data) except -1
    cdef int _message_complete(self) except -1
    cdef int _activate(self, RequestContext ctx, list body, bint done, bint expect) except -1
    cdef int _proxy(self, RequestContext ctx) except -1
    cdef int _send(self, _UpstreamBase up) except -1
    cdef int _body_out(self, bytes data) except -1
    cdef int _upstream_failed(self, str kind) except -1
    cdef int _attempt_end(self, RequestContext ctx, object kind) except -1
    cdef int _local(self, object reply) except -1
    cdef int _exchange_done(self) except -1
    cdef int _log(self, RequestContext ctx) except -1
    cdef int _reject(self, object reply) except -1
    cdef int _close(self) except -1
