# ReadGate and Ticker as cdef classes: the protocols set deadlines from `ticker.now` and pause or
# resume reading several times per request; typed, those are a C field load and a vtable call.

cdef class ReadGate:
    cdef public object transport
    cdef public int reasons
    cdef public object on_open     # called when the last reason is lifted (None: nothing to call)
    cdef public bint ended         # the peer sent EOF: the transport is never read again
    cpdef pause(self, int reason)
    cpdef resume(self, int reason)


cdef class Ticker:
    cdef public object loop
    cdef public double interval
    cdef public double now
    cdef public set members
    cdef object _handle
    cpdef add(self, object member)
    cpdef discard(self, object member)
