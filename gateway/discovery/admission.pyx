"""The breaker's two per-request calls, compiled: Target.admit and the service's outcome observer.

breakers.py explains what they do; they are Cython because they run twice per proxied request on a
service with a breaker, and as Python objects (a __call__, time.monotonic(), the breaker's Python
methods) they cost about a tenth of a plain proxied request's CPU (bench/results/breakers.md).
Here each is a C call into the breaker (c_allow lock-free while closed, c_record) with the clock
read by clock_gettime(CLOCK_MONOTONIC): the clock of time.monotonic() and of the event loop, the
same in every process of the node. Service's pick and record (service_core.pyx) call them as C
methods (c_admit, c_observe), so a breaker service's request runs no Python frame for them;
other callers (the balancers' Python picks) use __call__.
"""
from libc.stdint cimport uint32_t
from gateway._fast.clock cimport monotonic_now as _now

from gateway._fast.breaker cimport CircuitBreaker
from gateway.pipeline.context cimport RequestContext

# (fields and the C entry points are declared in admission.pxd: exchange.pyx calls them directly)


cdef class Admission:
    """Target.admit: admit(ctx) -> bool; notes the ticket on ctx.breaker_ticket (-1: refused)."""

    def __init__(self, CircuitBreaker breaker):
        self.breaker = breaker

    def __call__(self, ctx):
        return self.c_admit(ctx)

    cdef bint c_admit(self, object ctx) except -1:
        cdef uint32_t epoch = 0
        cdef int ok = self.breaker.c_allow(_now(), &epoch)
        cdef long long ticket = <long long>epoch if ok else -1
        if type(ctx) is RequestContext:
            (<RequestContext>ctx).breaker_ticket = ticket
        elif ctx is not None:
            ctx.breaker_ticket = ticket
        return ok == 1


cdef class BreakerObserver:
    """A Service observer: observer(ctx, target, kind) records the attempt on its target's breaker."""

    def __init__(self, dict breakers, bytes failing):
        if len(failing) != 600:
            raise ValueError("failing must hold one byte per status 0..599")
        self.breakers = breakers
        self.failing = failing

    def __call__(self, RequestContext ctx not None, target, kind):
        self.c_observe(ctx, target, kind)

    cdef int c_observe(self, RequestContext ctx, object target, object kind) except -1:
        cdef CircuitBreaker b
        cdef long long ticket = ctx.breaker_ticket
        cdef double now, duration
        cdef bint ok
        cdef int status
        found = self.breakers.get(target)
        if found is None or ticket <= 0:
            return 0    # not admitted by this breaker (no ticket): nothing to count it against
        b = <CircuitBreaker>found
        ctx.breaker_ticket = 0          # one result per admission
        now = _now()
        if kind is None:
            status = ctx.status
            ok = not (0 <= status < 600 and (<const unsigned char *>self.failing)[status])
        elif kind == "aborted":
            # We gave the attempt up (the client left): no verdict on the upstream; a probe's
            # slot is handed back.
            b.cancel(now, <uint32_t>ticket)
            return 0
        else:
            ok = False      # connect, timeout, reset, protocol
        duration = ctx.upstream_end - ctx.upstream_start
        b.c_record(now, ok, duration if duration > 0.0 else 0.0, <uint32_t>ticket)
        return 0
