"""RequestContext: everything one request carries through the pipeline.

One instance per request, created by the downstream protocol when the request head is complete.
A cdef class (context.pxd): the Cython data plane reads its fields as C struct members;
filters add what they learn (identity, limits) to it, the proxy step and the log phase read it.
"""
cimport cython


# A freelist keeps recently freed instances' memory for reuse: one context is created and freed
# per request, and this skips the allocator both ways.
@cython.freelist(64)
cdef class RequestContext:
    # Fields (declared in context.pxd, all public):
    # --- the request as received (after wire hygiene) ---
    # method            bytes, e.g. b"GET"
    # target            bytes: origin-form target that will be sent upstream (path + ?query)
    # path              bytes: normalized path (dot-segments resolved), no query, no fragment
    # query             bytes: query string without '?', b"" when absent
    # http_version      bytes: b"1.1" or b"1.0"
    # host              bytes: Host (or absolute-form authority) as received, lowercased
    # headers           gateway.http.head.HeaderView (a list of (lowercased name, value) pairs when
    # a filter or a test set one): end-to-end request headers; hop-by-hop, framing and
    # gateway-owned headers already removed. get/get_all/count/iteration; edits: ARCHITECTURE.md
    # content_length    int | None: declared body length; None for chunked or no body
    # chunked           bool: request body is chunked
    # client_ip         str: downstream peer address (or trusted X-Forwarded-For origin)
    # scheme            bytes: b"http" or b"https" as seen by the downstream
    # keep_alive        bool: downstream connection may be reused after this exchange
    # start             float: loop.time() when the head was complete
    # --- identity and tracing ---
    # request_id        bytes: sane client X-Request-Id or a generated one
    # traceparent       bytes: W3C traceparent sent upstream (continued or started)
    # tracestate        bytes | None
    # parent_span_id    bytes | None: the client's span id (16 hex digits) from its valid
    #                   traceparent, the parent of the gateway's span; None when we started the trace
    # consumer_id       str | None: authenticated user (JWT sub / API key user)
    # consumer_org      str | None
    # scopes            frozenset[str] | None
    # auth_method       str | None: "jwt" | "api_key"
    # api_key_id        str | None: the API key's public id (12 hex digits) when auth_method is "api_key"
    # --- routing and proxying ---
    # route             gateway.routing.Route | None
    # service           gateway.discovery.service.Service | None
    # upstream_target   gateway.discovery.service.Target | None: the target picked
    # upstream_headers  list[tuple[bytes, bytes]]: extra headers filters add for upstream
    # response_headers  list[tuple[bytes, bytes]]: extra headers filters add downstream
    # filters_ran       int: how many access filters ran (response phase runs those, reversed)
    # --- outcome, for the log phase ---
    # status            int: status sent downstream (0 until the head is sent)
    # local_reply       LocalReply | None: when the gateway answered itself
    # upstream_error    str | None: connect | timeout | reset | protocol
    # upstream_reason   str | None: why, when known (a failed connect's: refused, certificate verify failed...)
    # upstream_start    float: loop.time() when the upstream attempt began: target picked (0.0 if never)
    # upstream_end      float: loop.time() when the attempt ended (complete, failed or aborted; 0.0 while open)
    # breaker_ticket    int: the circuit breaker's admission of the current attempt's target (its
    #                   ticket, > 0, handed back with the outcome), -1 when a breaker refused a
    #                   candidate (pick() found none: the 503 says circuit-open), 0 when none asked
    # bytes_in          int: request body bytes received
    # bytes_out         int: response bytes written downstream
    # vars              dict[str, Any] | None: scratch space for filters, created lazily

    def __cinit__(self):
        # __cinit__, not __init__: the data plane creates contexts with RequestContext.__new__,
        # a direct tp_new call that skips the __init__ lookup and argument parsing.
        self.method = b""
        self.target = b""
        self.path = b""
        self.query = b""
        self.http_version = b"1.1"
        self.host = b""
        self.headers = []
        self.content_length = None
        self.chunked = False
        self.client_ip = ""
        self.scheme = b"http"
        self.keep_alive = True
        self.start = 0.0
        self.request_id = b""
        self.traceparent = b""
        self.tracestate = None
        self.parent_span_id = None
        self.consumer_id = None
        self.consumer_org = None
        self.scopes = None
        self.auth_method = None
        self.api_key_id = None
        self.route = None
        self.service = None
        self.upstream_target = None
        self.upstream_headers = []
        self.response_headers = []
        self.filters_ran = 0
        self.status = 0
        self.local_reply = None
        self.upstream_error = None
        self.upstream_reason = None
        self.upstream_start = 0.0
        self.upstream_end = 0.0
        self.breaker_ticket = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.vars = None
