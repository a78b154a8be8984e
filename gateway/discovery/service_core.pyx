"""C-level base classes of Target and Service: see service_core.pxd. The fields' meanings are
documented where the subclasses set them (gateway/discovery/service.py).

ServiceCore.pick and .record are Service's own (round robin; an outcome told to the observers and
to passive health), compiled because the data plane calls them on every proxied request: a
breaker's admit hook and observer (admission.pyx) are called as C methods, every other hook and
observer as the Python callables they are. Failures go on to Service._record_failure (Python:
error counters, passive health; not the common path)."""
from gateway.discovery.admission cimport Admission, BreakerObserver
from gateway.pipeline.context cimport RequestContext


cdef class TargetCore:
    pass


cdef inline bint _admits(TargetCore t, object ctx) except -1:
    """t.admit(ctx), or True without a hook; a breaker's Admission as a C call."""
    admit = t.admit
    if admit is None:
        return True
    if type(admit) is Admission:
        return (<Admission>admit).c_admit(ctx)
    return bool(admit(ctx))


cdef class ServiceCore:

    def pick(self, ctx=None):
        """Next available target in rotation, or None when none is available (-> 503).

        One index per service per worker: plain rotation with no lock, because a worker is one
        thread. The common case (the next target is available) is one list index and one compare.
        A target's admit hook is asked last, for the candidate about to be returned."""
        return self.c_pick(ctx)

    def record(self, ctx, target, kind):
        """One upstream attempt on `target` ended (called by the data plane when `observed`).

        kind: None for a complete response (ctx.status holds its status), "connect", "timeout",
        "reset" or "protocol" for a failure before or during the response, "aborted" when the
        gateway gave the attempt up (the client left, or a local reply cut the request body).
        ctx.upstream_start/upstream_end (monotonic seconds) bound the attempt. Must not block."""
        self.c_record(ctx, target, kind)

    cdef object c_pick(self, object ctx):
        targets = self.targets
        if type(targets) is not list:
            targets = list(targets)
        cdef Py_ssize_t n = len(<list>targets), i, k
        cdef TargetCore t
        if n == 1:
            # A single target (most services): the loop below, unrolled. Same result, same _next.
            t = <TargetCore?>(<list>targets)[0]
            if t.available and _admits(t, ctx):
                self._next = 0
                return t
            return None
        if n == 0:
            return None
        i = self._next
        if i >= n or i < 0:     # targets may shrink (dynamic registration)
            i = 0
        for k in range(n):
            t = <TargetCore?>(<list>targets)[i]
            i += 1
            if i == n:
                i = 0
            if t.available and _admits(t, ctx):
                self._next = i
                return t
        return None

    cdef int c_record(self, object ctx, object target, object kind) except -1:
        cdef TargetCore t = <TargetCore?>target
        observers = self.observers
        if type(observers) is not tuple:
            observers = tuple(observers)
        for observe in <tuple>observers:
            if type(observe) is BreakerObserver and type(ctx) is RequestContext:
                (<BreakerObserver>observe).c_observe(<RequestContext>ctx, target, kind)
            else:
                observe(ctx, target, kind)
        if kind is None:
            if t.passive_fails:
                t.passive_fails = 0
                target.passive_trips = 0
            return 0
        self._record_failure(ctx, target, kind)
        return 0
