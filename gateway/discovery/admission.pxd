from gateway._fast.breaker cimport CircuitBreaker
from gateway.pipeline.context cimport RequestContext


cdef class Admission:
    cdef readonly CircuitBreaker breaker

    # Target.admit(ctx) as a C call (Service's pick, service_core.pyx)
    cdef bint c_admit(self, object ctx) except -1


cdef class BreakerObserver:
    cdef readonly dict breakers          # Target -> CircuitBreaker
    cdef readonly bytes failing          # 600 bytes: 1 where a status counts as a failure

    # observer(ctx, target, kind) as a C call (Service's record, service_core.pyx)
    cdef int c_observe(self, RequestContext ctx, object target, object kind) except -1
