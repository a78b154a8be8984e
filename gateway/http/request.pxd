# RequestBuilder as a cdef class: downstream.pyx calls build/upstream_head as C methods (vtable
# calls, typed arguments) and reads the per-request verdicts from C fields.
from gateway.pipeline.context cimport RequestContext

cdef enum:
    STRIP_ASK = -2   # upstream_head's strip: ask the route's upstream_path()


cdef class RequestBuilder:
    cdef public object settings
    cdef public str peer
    cdef public bytes peer_b
    cdef public bint trusted
    cdef bytes xff_line
    cdef long long max_body
    # A keep-alive connection sends the same Host again and again: validated once.
    cdef bytes last_host
    cdef bytes last_host_ok
    cdef object fwd_host
    cdef bytes fwd_block
    cdef public bytes scheme     # b"https" when the data-plane listener has TLS (X-Forwarded-Proto)
    # Verdicts of the last build(), read by the downstream protocol right after it.
    cdef public bint has_body
    cdef public bint expect

    cdef RequestContext build(self, bytes method, str version, bytes url, object head,
                              bint keep_alive)
    cdef bytes upstream_head(self, RequestContext ctx, Py_ssize_t strip)


cpdef bytes new_request_id()
