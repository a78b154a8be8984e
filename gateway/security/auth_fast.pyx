"""AuthFilter's cache hit compiled (gateway/security/auth_filter.py): one `Authorization: Bearer`
field (no second one, at most one X-API-Key), a token in the verified-token cache and not past
its `exp` + leeway. Then the identity goes on the request exactly as AuthFilter._jwt sets it, with
the identity headers made once per cached token (CachedIdentity.headers). Everything else (a
first sight of a token, an API key, any refusal) is AuthFilter.python_access, unchanged.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memcmp
from gateway._fast.clock cimport wall_now as _wall   # time.time()'s clock, without the Python call

from gateway.http.head cimport HeaderView
from gateway.pipeline.chain cimport CompiledAccess
from gateway.pipeline.context cimport RequestContext

from .identity import identity_headers

cdef bytes AUTHORIZATION = b"authorization"
cdef bytes X_API_KEY = b"x-api-key"
cdef const char* BEARER = b"bearer "
# The verified-token cache (SecurityContext.cache) is keyed by an int made of a token's last
# KEY_BYTES bytes, not by the token: hashing a whole token (hundreds of bytes for a real JWT) and
# comparing it cost more than the rest of the cache hit (~900 instructions for the benchmark's
# 190-byte token; an int key ~150). A JWS ends with its signature, so its last bytes are the
# signature's: unforgeable and evenly spread (48 bits of base64url). A hit counts only when the
# whole token equals the cached one (`token`): a token sharing a cached one's last bytes is
# verified like any other, and two cached tokens with the same last bytes only evict each other.
cdef enum:
    KEY_BYTES = 8


cdef inline uint64_t _key(const char* p, Py_ssize_t n) noexcept:
    """int.from_bytes(token[-KEY_BYTES:], "little") of the token at p (n bytes)."""
    cdef uint64_t k = 0
    cdef Py_ssize_t i, start = n - KEY_BYTES if n > KEY_BYTES else 0
    for i in range(n - 1, start - 1, -1):
        k = (k << 8) | <unsigned char>p[i]
    return k


def token_key(bytes token) -> int:
    """The verified-token cache's key of a token (see KEY_BYTES)."""
    return _key(PyBytes_AS_STRING(token), len(token))


cdef class CachedIdentity:
    """A verified token's identity (SecurityContext.cache), valid until `until` (exp + leeway).
    Compiled so the cache hit reads its fields as C struct members."""
    cdef public object sub
    cdef public object org
    cdef readonly object scopes   # (readonly: `granted` relies on it never changing)
    cdef public double until
    cdef public object jti
    cdef public object headers
    cdef public object kid
    cdef public bytes token     # the whole token (set by SecurityContext.cache_put)
    # The last route scopes (a frozenset) found within `scopes`: the next request of the same
    # route skips the subset test (frozensets never change, so identity is enough).
    cdef object granted

    def __init__(self, sub, org, scopes, until, jti, method, kid=None):
        self.kid = kid
        self.sub = sub
        self.org = org
        self.scopes = scopes
        self.until = until
        self.jti = jti
        self.headers = identity_headers(sub, org, scopes, method)


cdef inline bint _space(char c) noexcept:
    # bytes.strip()'s whitespace (ASCII: space, \t, \n, \v, \f, \r)
    return c == 32 or 9 <= c <= 13


cdef class CachedJwtAccess(CompiledAccess):
    """Bound as a JWT route's AuthFilter.access (see AuthFilter.__init__)."""
    cdef object filter
    cdef dict cache             # SecurityContext.cache (the one dict, changed in place only)
    cdef object required        # frozenset of the route's scopes; None when there are none

    def __init__(self, filter, sec, required):
        self.filter = filter
        self.cache = sec.cache
        self.required = required if required else None

    cdef object c_access(self, RequestContext ctx):
        cdef Py_ssize_t n_authz = 0, n_key = 0, n = 0, start, end, i, at = -1
        cdef const char* p = NULL
        cdef char c
        cdef CachedIdentity ident
        cdef HeaderView view
        authz = None
        headers = ctx.headers
        pairs = headers
        cdef bint is_view = type(headers) is HeaderView
        if is_view:
            # The two fields read in place (head.pyx), in one pass over the head's fields: no
            # object for them or for the request's other fields, the token read where it lies.
            view = <HeaderView>headers
            for i in range(view.n):
                if view.f[i].cls != view.forward_cls:
                    continue
                if view.c_is(i, b"authorization", 13):
                    n_authz += 1
                    at = i
                elif view.c_is(i, b"x-api-key", 9):
                    n_key += 1
            if at >= 0:
                p = PyBytes_AS_STRING(view.buf) + view.f[at].value
                n = view.f[at].vlen
            pairs = view.added or ()   # filters' additions count as fields too (rare)
        for name, value in pairs:
            if is_view:
                name = name.lower()   # (a view's additions keep the filter's spelling)
            if name == AUTHORIZATION:
                authz = value
                p = NULL
                n_authz += 1
            elif name == X_API_KEY:
                n_key += 1
        f = self.filter
        if n_authz != 1 or n_key > 1:
            return f.python_access(ctx)
        if p == NULL:
            if type(authz) is not bytes:
                return f.python_access(ctx)
            p = PyBytes_AS_STRING(authz)
            n = PyBytes_GET_SIZE(authz)
        # authz[:7].lower() == b"bearer " and authz[7:].strip(), without the three objects.
        if n < 7:
            return f.python_access(ctx)
        for i in range(7):
            c = p[i]
            if 65 <= c <= 90:
                c = c + 32
            if c != BEARER[i]:
                return f.python_access(ctx)
        start = 7
        end = n
        while start < end and _space(p[start]):
            start += 1
        while end > start and _space(p[end - 1]):
            end -= 1
        n = end - start
        found = self.cache.get(_key(p + start, n))
        if found is None or type(found) is not CachedIdentity:
            return f.python_access(ctx)
        ident = <CachedIdentity>found
        if (ident.token is None or PyBytes_GET_SIZE(ident.token) != n
                or memcmp(PyBytes_AS_STRING(ident.token), p + start, n) != 0):
            return f.python_access(ctx)   # another token with the same last bytes
        if ident.until <= _wall():
            return f.python_access(ctx)
        ctx.consumer_id = ident.sub
        ctx.consumer_org = ident.org
        ctx.scopes = ident.scopes
        ctx.auth_method = "jwt"
        if self.required is not None and ident.granted is not self.required:
            if not self.required <= ident.scopes:
                return f._forbidden(ctx, "jwt", f.forbidden_jwt)
            ident.granted = self.required
        ctx.upstream_headers = ctx.upstream_headers + ident.headers
        return None
