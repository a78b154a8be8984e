# The matcher as cdef classes: the downstream protocol calls Router.match as a C method, and the
# per-request walk runs over typed dicts, tuples and trie nodes. Route stays a plain Python class
# (config, admin and tests build and read it); its `methods` are copied into the tables next to
# each route so matching reads no Python attribute.
from cpython.ref cimport PyObject


cdef bytes stripped_path(bytes path, Py_ssize_t k)


cdef class _Node:
    cdef dict children      # next path segment -> _Node; None on a leaf
    cdef tuple bare         # (methods, route) pairs of the prefix ending here, no trailing slash
    cdef tuple slash        # the same for the prefix ending here with a slash ("/" on the root)
    cdef PyObject *up       # nearest proper ancestor holding routes, or NULL (borrowed: it owns us)
    cdef _Node child(self, bytes segment)


cdef class _Table:
    cdef readonly dict exact    # path -> tuple of (methods, route)
    cdef unsigned long long exact_filter[4]  # 256 bits: exact_bit() of every exact path
    cdef _Node trie             # prefix routes by path segment
    cdef public Py_ssize_t nodes  # trie size (a bound on memory: one node per distinct segment path)
    cdef _Node walk(self, bytes path, bint *more)
    cdef object find(self, bytes method, bytes path)


cdef class Router:
    cdef public tuple routes
    cdef public dict _hosts
    cdef public _Table _default
    cdef public dict _host_cache
    cpdef object match(self, bytes method, bytes host, bytes path)
