# The matcher as cdef classes: the downstream protocol calls Router.match as a C method, and the
# per-request scan runs over typed dicts and tuples. Route stays a plain Python class (config,
# admin and tests build and read it); its `methods` are copied into the tables next to each route
# so matching reads no Python attribute.

cdef class _Table:
    cdef public dict exact      # path -> tuple of (methods, route)
    cdef public dict buckets    # first segment -> tuple of (prefix, len, ends_with_slash, routes)
    cdef public tuple root      # routes with path "/"
    cdef tuple _root_m          # root as (methods, route) pairs
    cdef object find(self, bytes method, bytes path)


cdef class Router:
    cdef public tuple routes
    cdef public dict _hosts
    cdef public _Table _default
    cdef public dict _host_cache
    cpdef object match(self, bytes method, bytes host, bytes path)
