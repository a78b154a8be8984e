# The bytes of a switched connection (a WebSocket, any Upgrade answered 101) as a cdef class: both
# protocols hand it their reads and flow-control callbacks as C calls.
from gateway.http.flow cimport ReadGate, Ticker
from gateway.pipeline.context cimport RequestContext


cdef class Tunnel:
    cdef object down_t            # the client's transport
    cdef object up_t              # the upstream's transport
    cdef ReadGate gate            # the client's read gate (its reading pauses for a reason, as before)
    cdef Ticker ticker
    cdef public RequestContext ctx
    cdef public double idle       # seconds without a byte either way before both sides are closed
    cdef public double deadline
    cdef public bint down_eof     # the client half-closed (its FIN went on to the upstream)
    cdef public bint up_eof       # the upstream half-closed
    cdef public bint closed
    cdef public int gone          # connections lost (2: both sockets closed)
    cdef object on_end            # called once when the tunnel is over (the downstream's log phase)

    cdef int start(self, bytes from_down, bytes from_up) except -1
    cdef int from_down(self, bytes data) except -1
    cdef int from_up(self, bytes data) except -1
    cdef int down_paused(self) except -1
    cdef int down_resumed(self) except -1
    cdef int up_paused(self) except -1
    cdef int up_resumed(self) except -1
    cdef bint eof_from_down(self) except -1
    cdef bint eof_from_up(self) except -1
    cdef int lost(self) except -1
    cdef int close(self) except -1
