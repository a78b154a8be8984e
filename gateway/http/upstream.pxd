# The upstream side as a cdef class: the downstream protocol calls start/send/abort/pause_reading
# as C methods and this class calls the downstream's exchange_done/upstream_failed the same way
# (through _ReaderBase, reader.pxd, which declares them). Exchange state lives in C ints, bints and doubles.
from gateway.http.flow cimport Ticker
from gateway.http.head cimport HeadTracker, HeaderView
from gateway.http.llhooks cimport ParserOwner
from gateway.http.outlet cimport Outlet
from gateway.http.pool cimport UpstreamPool
from gateway.http.reader cimport _ReaderBase
from gateway.http.tunnel cimport Tunnel
from gateway.pipeline.context cimport RequestContext


cdef class _UpstreamBase(ParserOwner):
    cdef public UpstreamPool pool
    cdef object settings
    cdef Ticker ticker
    cdef double body_timeout       # settings.body_timeout, copied (settings never change per worker)
    # Response head limits (the request's, from settings) and what the current head has used.
    cdef Py_ssize_t lim_hbytes     # name + value + 4 per field
    cdef Py_ssize_t lim_headers    # fields
    cdef Py_ssize_t lim_raw        # raw bytes before the final head / between body bytes
    cdef Py_ssize_t h_bytes
    cdef Py_ssize_t h_raw
    cdef public object transport
    cdef readonly object parser
    cdef Outlet t_write            # the transport's writes (outlet.pyx), set in connection_made
    cdef public _ReaderBase down
    cdef public RequestContext ctx
    cdef HeadTracker heads         # where the response heads lie in the bytes read (head.pyx)
    cdef HeaderView view           # the final response head's fields, as spans
    cdef list out
    cdef public int state
    cdef public int mode
    cdef public int status
    cdef bint head_request
    cdef public bint done
    cdef public bint broken        # never reused once set (error, incomplete exchange, close)
    cdef public bint until_close   # response body delimited by EOF
    cdef public double deadline
    cdef public bint paused        # our reading is paused (the client is backed up)
    # GATEWAY_UPSTREAM_TIMEOUT runs from the last request byte written to the response head:
    cdef double timeout            # this exchange's upstream timeout
    cdef bint sending              # request body bytes still to come: the timeout has not started
    cdef double held               # a deadline held while reading is paused (seconds; < 0: none)
    cdef public bint w_paused      # our write buffer is over its high-water mark
    cdef public int uses           # exchanges started on this connection (> 1: it was pooled)
    cdef public bint upgrading     # this exchange forwards an Upgrade: a 101 switches protocols
    cdef public Tunnel tunnel      # after a 101: the bytes go to the tunnel, never parsed again
    cdef bint cl_body              # the response body is framed by Content-Length
    cdef bint in_chunk             # llhttp is inside a chunk of the response (between its callbacks)

    cdef bint _reusable(self)
    cdef int _start(self, _ReaderBase down, RequestContext ctx, bytes data, double timeout) except -1
    cdef int _send(self, bytes data) except -1
    cdef int _abort(self) except -1
    cdef int _pause_reading(self) except -1
    cdef int _resume_reading(self) except -1
    cdef int _arm(self, double seconds) except -1
    cdef int _sent(self) except -1
    cdef int _backed_up(self, _ReaderBase down) except -1
    cdef int _received(self, bytes data) except -1
    cdef bint _pass_body(self, Py_ssize_t n) except -1
    cdef object _send_body(self, object data, Py_ssize_t n)
    cdef bint _plain_response(self, bytes data) except -1
    cdef int _final_head(self, int status) except -1
    cdef int _head_done(self, bytes data) except -1
    cdef object _new_parser(self)
    # (and llhttp's callbacks: ParserOwner's, llhooks.pxd)
    cdef bytes _response_head(self, int status)
    cdef bytes _switch_head(self)
    cdef object _filter_chain(self, RequestContext ctx)
    cdef int _handover(self, bytes rest) except -1
    cdef int _flush(self) except -1
    cdef int _finish(self) except -1
    cdef int _fail(self, str kind) except -1
    cdef int _too_large(self, str what) except -1
