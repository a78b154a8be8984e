# The fields of a Target and a Service that the data plane reads on every request, as C struct
# members: gateway/discovery/service.py's Target and Service subclass these, so Python code reads
# and writes them as before (member descriptors), while exchange.pyx and request.pyx read them in
# one instruction instead of a generic attribute lookup (~140 instructions each, ten a request).
# ServiceCore also holds the round-robin pick and the record of an outcome (the data plane calls
# them in C on a plain Service; a balancer subclass overrides them in Python).

cdef class TargetCore:
    cdef public object pool          # gateway.http.pool.UpstreamPool of this (host, port)
    cdef public object admit         # None, or admit(ctx) -> bool (a breaker's)
    cdef public object host_header   # bytes: the Host sent upstream
    cdef public bint available       # active and passive health; pick() skips it when False
    cdef public long passive_fails   # consecutive failures seen by this worker


cdef class ServiceCore:
    cdef public object targets       # list[Target]
    cdef public object observers     # tuple of observer(ctx, target, kind)
    cdef public bint observed        # record() is called once per attempt
    cdef public Py_ssize_t _next     # the rotation's next index (round robin)

    # pick() and record() (def, overridable by the balancers' Python subclasses) in C, for the
    # data plane to call on a plain Service without a Python call
    cdef object c_pick(self, object ctx)
    cdef int c_record(self, object ctx, object target, object kind) except -1


# Reads for any target- or service-like object: a C read for a Target or Service, getattr for
# anything else (tests' fakes).
cdef inline object pool_of(object target):
    if isinstance(target, TargetCore):
        return (<TargetCore>target).pool
    return target.pool


cdef inline object host_header_of(object target):
    if isinstance(target, TargetCore):
        return (<TargetCore>target).host_header
    return target.host_header


cdef inline bint is_observed(object service) except -1:
    if isinstance(service, ServiceCore):
        return (<ServiceCore>service).observed
    return bool(service.observed)
