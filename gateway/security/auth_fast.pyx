"""AuthFilter's cache hit compiled (gateway/security/auth_filter.py): one `Authorization: Bearer`
field (no second one, at most one X-API-Key), a token in the verified-token cache and not past
its `exp` + leeway. Then the identity goes on the request exactly as AuthFilter._jwt sets it, with
the identity headers made once per cached token (CachedIdentity.headers). Everything else (a
first sight of a token, an API key, any refusal) is AuthFilter.python_access, unchanged.
"""
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

from gateway.pipeline.context cimport RequestContext

cdef bytes AUTHORIZATION = b"authorization"
cdef bytes X_API_KEY = b"x-api-key"
cdef bytes BEARER = b"bearer "


cdef inline double _wall() noexcept:
    # time.time()'s clock (CLOCK_REALTIME), without the Python call.
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef class CachedJwtAccess:
    """Bound as a JWT route's AuthFilter.access (see AuthFilter.__init__)."""
    cdef object filter
    cdef object sec
    cdef object required        # frozenset of the route's scopes; None when there are none

    def __init__(self, filter, sec, required):
        self.filter = filter
        self.sec = sec
        self.required = required if required else None

    def __call__(self, RequestContext ctx):
        cdef Py_ssize_t n_authz = 0, n_key = 0
        authz = None
        for name, value in ctx.headers:
            if name == AUTHORIZATION:
                authz = value
                n_authz += 1
            elif name == X_API_KEY:
                n_key += 1
        f = self.filter
        if n_authz != 1 or n_key > 1 or type(authz) is not bytes:
            return f.python_access(ctx)
        if (<bytes>authz)[:7].lower() != BEARER:
            return f.python_access(ctx)
        ident = (<dict?>self.sec.cache).get((<bytes>authz)[7:].strip())
        if ident is None or ident.until <= _wall():
            return f.python_access(ctx)
        ctx.consumer_id = ident.sub
        ctx.consumer_org = ident.org
        scopes = ident.scopes
        ctx.scopes = scopes
        ctx.auth_method = "jwt"
        if self.required is not None and not self.required <= scopes:
            return f._forbidden(ctx, "jwt", f.forbidden_jwt)
        ctx.upstream_headers = ctx.upstream_headers + ident.headers
        return None
