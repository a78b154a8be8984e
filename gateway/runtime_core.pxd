# The fields of a Worker and a Runtime that the data plane reads on every request, as C struct
# members: gateway/worker.py's Worker and gateway/runtime.py's Runtime subclass these, so Python
# code reads and writes them as before, while the protocols (gateway/http) read them without a
# generic attribute lookup (~140 instructions each, several a request). A worker-like object of
# another class (tests' fakes) is still read through getattr.

cdef class WorkerCore:
    cdef public object runtime       # gateway.runtime.Runtime in force (swapped by a reload)
    cdef public bint draining        # no new requests on kept-alive connections


cdef class RuntimeCore:
    cdef public object router        # gateway.routing.Router
    cdef public object metrics       # the request Recorder, or None (not recorded)


cdef inline object runtime_of(object worker):
    if isinstance(worker, WorkerCore):
        return (<WorkerCore>worker).runtime
    return worker.runtime


cdef inline object router_of(object worker):
    runtime = runtime_of(worker)
    if isinstance(runtime, RuntimeCore):
        return (<RuntimeCore>runtime).router
    return runtime.router


cdef inline object metrics_of(object worker):
    runtime = runtime_of(worker)
    if isinstance(runtime, RuntimeCore):
        return (<RuntimeCore>runtime).metrics
    return runtime.metrics


cdef inline bint draining(object worker) except -1:
    if isinstance(worker, WorkerCore):
        return (<WorkerCore>worker).draining
    return bool(worker.draining)
