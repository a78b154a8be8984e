# A connection's writes (outlet.pyx): the protocols call Outlet.write instead of transport.write.
cdef class Outlet:
    cdef readonly object transport
    cdef object t_write        # transport.write, bound (direct writes only)
    cdef object is_closing     # transport.is_closing, bound (direct writes only)
    cdef object buffered       # transport.get_write_buffer_size, bound (direct writes only)
    cdef readonly int fd       # the socket, for direct writes; -1: every write is transport.write
    cdef int write(self, object data) except -1
    cdef Py_ssize_t write_list(self, list pieces) except -1
