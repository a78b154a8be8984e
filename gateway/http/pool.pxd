# UpstreamPool as a cdef class: acquire/release run once per request, called as C methods by the
# protocols (cpdef: a Python subclass such as the tests' FakePool may still override them).
from gateway.http.upstream cimport _UpstreamBase


cdef class UpstreamPool:
    cdef public object loop
    cdef public object host
    cdef public object port
    cdef public object settings
    cdef public list idle
    cdef public Py_ssize_t max_idle
    cdef public double idle_timeout
    cdef public bint closed
    cdef public set connecting
    cdef public object tls           # gateway.tls.UpstreamTLS for an https:// upstream, else None
    cdef public object ssl           # its SSLContext (shared by the pools of the same trust), or None
    cdef object __weakref__

    cpdef object acquire(self)
    cpdef release(self, _UpstreamBase up)
    cpdef forget(self, _UpstreamBase up)
