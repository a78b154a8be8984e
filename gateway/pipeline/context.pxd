# RequestContext as a cdef class: the data plane (gateway/http/*.pyx) reads and writes these fields
# as C struct members (a pointer load instead of a slot descriptor lookup, ~40 accesses a request);
# every field stays `public`, because filters and tests read and set them from Python.
# Most fields stay `object` so that None/bytes/int values behave exactly as they did with __slots__.

cdef class RequestContext:
    # --- the request as received (after wire hygiene) ---
    cdef public object method
    cdef public object target
    cdef public object path
    cdef public object query
    cdef public object http_version
    cdef public object host
    cdef public object headers
    cdef public object content_length
    cdef public bint chunked
    cdef public object client_ip
    cdef public object scheme
    cdef public bint keep_alive
    cdef public double start
    # --- identity and tracing ---
    cdef public object request_id
    cdef public object traceparent
    cdef public object tracestate
    cdef public object parent_span_id
    cdef public object consumer_id
    cdef public object consumer_org
    cdef public object scopes
    cdef public object auth_method
    cdef public object api_key_id
    # --- routing and proxying ---
    cdef public object route
    cdef public object service
    cdef public object upstream_target
    cdef public object upstream_headers
    cdef public object response_headers
    cdef public int filters_ran
    # --- outcome, for the log phase ---
    cdef public int status
    cdef public object local_reply
    cdef public object upstream_error
    cdef public object upstream_reason   # str | None: why the upstream failed, when known (a connect's)
    cdef public double upstream_start
    cdef public double upstream_end
    cdef public long long breaker_ticket
    cdef public long long bytes_in
    cdef public long long bytes_out
    cdef public object vars
