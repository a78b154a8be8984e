"""From a parsed request head to a RequestContext, and from a RequestContext to the upstream head.

`RequestBuilder.build` applies every wire-hygiene rule of issue 2 that llhttp leaves to us (framing
verdicts, Host, target normalization, header classification) and raises RequestRejected with the
reply to send. `upstream_head` writes the canonical request head in one buffer: origin-form target,
Host = the target's host:port, the end-to-end headers, exactly one framing header, then the
gateway's own X-Forwarded-*, X-Request-Id and traceparent.

One builder per connection: it holds what is constant for the connection (peer address, whether
the peer is a trusted proxy, the precomputed X-Forwarded-For value).
"""
import ipaddress
import os
from typing import Any

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from gateway.http.head cimport F_GONE, Field, HeaderView, pairs_size, put_bytes, put_pairs
from gateway.pipeline.context cimport RequestContext
from gateway.routing cimport stripped_path
from gateway.discovery.service_core cimport host_header_of

from . import replies
from .errors import RequestRejected
from gateway._fast.wire import request_head

from .wire import (
    H_CONNECTION,
    H_CONTENT_LENGTH,
    H_EXPECT,
    H_FORWARD,
    H_HOST,
    H_REQUEST_ID,
    H_TRACEPARENT,
    H_TRACESTATE,
    H_TRANSFER_ENCODING,
    H_XFF,
    H_XFWD,
    TE_BAD,
    TE_UNSUPPORTED,
    TargetError,
    classify_te,
    normalize_target,
    parse_traceparent,
    sane_request_id,
    valid_host,
)

# Request ids: a random per-process prefix (12 hex digits) and a counter (10 hex digits), written
# in C into one new bytes object. Unique across workers and restarts with overwhelming probability.
# Trace and span ids come from splitmix64 seeded by os.urandom: ids need uniqueness, not secrecy
# (the Mersenne Twister did the same job before; hexlify(randbytes(24)) + formatting cost ~0.4 µs,
# this costs a few ns). Both are re-seeded in a forked child, as the random module does, so a
# fork without exec never repeats the parent's ids.
cdef char _ID_PREFIX[12]
cdef uint64_t _id_next = 1
cdef uint64_t _rng = 0
cdef const char* _HEX = b"0123456789abcdef"
# %010x of the counter has 10 digits until 16**10 ids; past that the Python formatting takes over.
cdef uint64_t _ID_C_MAX = 0xFFFFFFFFFF


def _seed() -> None:
    global _rng, _id_next
    prefix = os.urandom(6).hex().encode()
    cdef const char* p = prefix
    cdef int i
    for i in range(12):
        _ID_PREFIX[i] = p[i]
    _rng = int.from_bytes(os.urandom(8), "little")
    _id_next = 1


_seed()
os.register_at_fork(after_in_child=_seed)


cdef inline uint64_t _rand64() noexcept:
    # splitmix64 (Steele, Lea, Flood 2014): passes BigCrush, one add and three multiply-xorshifts.
    global _rng
    _rng += <uint64_t>0x9E3779B97F4A7C15
    cdef uint64_t z = _rng
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


cdef char _HEX2[512]   # "000102...ff": two digits per byte (ids and traceparents are per request)
for _b in range(256):
    _HEX2[2 * _b] = _HEX[_b >> 4]
    _HEX2[2 * _b + 1] = _HEX[_b & 15]


cdef inline void _hex(char* p, uint64_t v, int digits) noexcept:
    """The low `digits` hex digits of v, most significant first, at p."""
    cdef int i = digits
    while i >= 2:
        i -= 2
        memcpy(p + i, &_HEX2[2 * (v & 255)], 2)
        v >>= 8
    if i:
        p[0] = _HEX[v & 15]


# The bytes _plain_target looks at twice: '#', '%', '\\', ';' (never on the fast path), '/' (then
# the next byte) and '?'. One table read per byte for all the others (most of a target).
cdef unsigned char _TARGET_MARK[256]
for _b in (35, 37, 92, 59, 47, 63):   # '#' '%' '\\' ';' '/' '?'
    _TARGET_MARK[_b] = 1


cdef Py_ssize_t _plain_target(bytes url) noexcept:
    """One C pass for the fast path of build(): the index of the first '?' (-1 if none) when url is
    origin-form ("/...") with no "/.", "//", '#', '%', ';' or '\\' anywhere; -2 when normalize_target
    must decide (it canonicalizes the path: wire._canonical)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(url)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(url), i, q = -1
    cdef unsigned char c
    if n == 0 or p[0] != 47:  # '/'
        return -2
    for i in range(n):
        c = p[i]
        if _TARGET_MARK[c]:
            if c == 47:  # "/." or "//"
                if i + 1 < n and (p[i + 1] == 46 or p[i + 1] == 47):
                    return -2
            elif c == 63:  # '?'
                if q == -1:
                    q = i
            else:  # '#', '%', '\\', ';' (path parameters)
                return -2
    return q


def plain_target(bytes url not None) -> int:
    """_plain_target, for tests."""
    return _plain_target(url)


cdef bytes _new_traceparent():
    """b"00-<32 hex trace id>-<16 hex span id>-01": a new trace, sampled."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 55)
    cdef char* p = PyBytes_AS_STRING(out)
    memcpy(p, b"00-", 3)
    _hex(p + 3, _rand64(), 16)
    _hex(p + 19, _rand64(), 16)
    p[35] = 45  # '-'
    _hex(p + 36, _rand64(), 16)
    memcpy(p + 52, b"-01", 3)
    return out
# The header classes of wire.py as C ints: `cls == cH_HOST` is one integer compare, where
# `cls == H_HOST` would box cls and look the module global up (up to 11 times per header).
cdef int cH_FORWARD = H_FORWARD
cdef int cH_HOST = H_HOST
cdef int cH_CONTENT_LENGTH = H_CONTENT_LENGTH
cdef int cH_TRANSFER_ENCODING = H_TRANSFER_ENCODING
cdef int cH_CONNECTION = H_CONNECTION
cdef int cH_EXPECT = H_EXPECT
cdef int cH_REQUEST_ID = H_REQUEST_ID
cdef int cH_TRACEPARENT = H_TRACEPARENT
cdef int cH_TRACESTATE = H_TRACESTATE
cdef int cH_XFF = H_XFF
cdef int cH_XFWD = H_XFWD

cpdef bytes new_request_id():
    global _id_next
    cdef uint64_t n = _id_next
    _id_next += 1
    if n > _ID_C_MAX:
        return b"%s%010x" % (PyBytes_FromStringAndSize(_ID_PREFIX, 12), n)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 22)
    cdef char* p = PyBytes_AS_STRING(out)
    memcpy(p, _ID_PREFIX, 12)
    _hex(p + 12, n, 10)
    return out


_PLAIN_CONNECTION = (b"keep-alive", b"close")
_V11 = b"1.1"
_V10 = b"1.0"


cdef class RequestBuilder:
    # (attributes: request.pxd)

    def __init__(self, settings: Any, peer: str) -> None:
        self.settings = settings
        self.peer = peer
        self.peer_b = peer.encode()
        self.trusted = _is_trusted(peer, settings.trusted_proxies)
        self.xff_line = b"X-Forwarded-For: " + self.peer_b + b"\r\n"
        self.max_body = settings.max_body_bytes
        # A keep-alive connection sends the same Host again and again: validate it once.
        self.last_host = b""
        self.last_host_ok = b""
        self.fwd_host = None
        self.fwd_block = b""
        self.scheme = b"https" if getattr(settings, "tls_cert", None) else b"http"
        self.has_body = False
        self.expect = False

    cdef RequestContext build(self, bytes method, str version, bytes url, object head,
                              bint keep_alive):
        """The context of a complete head (self.has_body/self.expect set); raises RequestRejected."""
        # C locals for the per-header loop: the class and the counters never box.
        cdef int cls
        cdef Py_ssize_t hosts = 0, cls_count = 0, q
        cdef bint expect = False, chunked = False, has_body
        cdef RequestContext ctx
        if version == "1.1":
            http_version = _V11
        elif version == "1.0":
            http_version = _V10
        else:
            raise RequestRejected(replies.VERSION_NOT_SUPPORTED)
        q = _plain_target(url)
        if q != -2:
            # Fast path (nearly every request): origin-form, nothing to resolve or refuse.
            authority = None
            target = url
            if q == -1:
                path, query = url, b""
            else:
                path, query = url[:q], url[q + 1:]
        else:
            try:
                path, query, target, authority = normalize_target(url)
            except TargetError:
                raise RequestRejected(replies.BAD_TARGET) from None

        cdef HeaderView view = head
        cdef Field* f
        cdef Py_ssize_t i
        host = None
        cl = None
        te = None
        conn = None
        rid = None
        tp = None
        ts = None
        xff = None
        xfwd = None
        for i in range(view.n):
            # The spans were classified in C by scan_head (head.pyx): end-to-end fields stay in
            # the view as spans; only the fields the data plane acts on become bytes here.
            f = &view.f[i]
            cls = f.cls
            if cls == cH_FORWARD:
                continue
            elif cls == cH_HOST:
                host = view.c_value(i)
                hosts += 1
            elif cls == cH_CONTENT_LENGTH:
                cl = view.c_value(i)
                cls_count += 1
            elif cls == cH_TRANSFER_ENCODING:
                te = [view.c_value(i)] if te is None else [*te, view.c_value(i)]
            elif cls == cH_CONNECTION:
                conn = view.c_value(i) if conn is None else conn + b"," + view.c_value(i)
            elif cls == cH_EXPECT:
                # Answered by the gateway itself (downstream.pyx) and never forwarded: the upstream
                # connection may be pooled and already past the point where 100 means anything.
                # Other expectations are dropped (RFC 9110 allows ignoring them; nginx does).
                expect = view.c_value(i).strip().lower() == b"100-continue"
            elif cls == cH_REQUEST_ID:
                rid = view.c_value(i)  # the last one wins; kept only if it is a sane token (below)
            elif cls == cH_TRACEPARENT:
                tp = view.c_value(i)
            elif cls == cH_TRACESTATE:
                ts = view.c_value(i)
            elif cls == cH_XFF:
                # Several X-Forwarded-For fields are one list (RFC 9110 §5.3); believed only from
                # a trusted proxy, otherwise replaced by the peer address.
                xff = view.c_value(i) if xff is None else xff + b", " + view.c_value(i)
            elif cls == cH_XFWD:
                if self.trusted:
                    pair = (view.c_lname(i), view.c_value(i))
                    xfwd = [pair] if xfwd is None else [*xfwd, pair]
            # H_DROP, H_OWNED: hop-by-hop, look-alikes and gateway-owned fields are never forwarded

        # --- framing (llhttp already refused CL+TE, duplicate CL and malformed CL) ---
        content_length = None
        if te is not None:
            # HTTP/1.0 has no Transfer-Encoding: a 1.0 message carrying one is the classic request
            # smuggling vector (a 1.0 backend would read it by Content-Length or to EOF).
            if http_version == _V10 or cl is not None:
                raise RequestRejected(replies.AMBIGUOUS_FRAMING)
            verdict = classify_te(te)
            if verdict == TE_BAD:
                raise RequestRejected(replies.AMBIGUOUS_FRAMING)
            if verdict == TE_UNSUPPORTED:
                raise RequestRejected(replies.TE_NOT_IMPLEMENTED)
            chunked = True
        elif cl is not None:
            if cls_count > 1:
                raise RequestRejected(replies.AMBIGUOUS_FRAMING)
            content_length = int(cl)
            # 413 from the declared length, before a byte of the body is read (SPEC §4).
            if content_length > self.max_body:
                raise RequestRejected(replies.BODY_TOO_LARGE)
        has_body = chunked or bool(content_length)
        if expect and (http_version != _V11 or not has_body):
            expect = False  # RFC 9110 §10.1.1: never 100 to an HTTP/1.0 client, nor with no body

        # --- Host: the absolute-form authority wins (RFC 9112 §3.2.2) ---
        if hosts > 1:
            raise RequestRejected(replies.BAD_HOST)
        if authority is not None:
            host = authority
        elif host is None:
            if http_version == _V11:
                raise RequestRejected(replies.BAD_HOST)
            host = b""
        elif host == self.last_host:
            host = self.last_host_ok
        else:
            raw_host = host
            host = host.lower()
            if not valid_host(host):
                raise RequestRejected(replies.BAD_HOST)
            self.last_host = raw_host
            self.last_host_ok = host

        if conn is not None and conn != b"keep-alive" and conn != b"close" and conn.lower() not in _PLAIN_CONNECTION:
            # Every field the client names in Connection is hop-by-hop for this hop.
            named = {t.strip().lower() for t in conn.split(b",")}
            for i in range(view.n):
                if view.f[i].cls == cH_FORWARD and view.c_lname(i) in named:
                    view.f[i].cls = F_GONE
            if b"close" in named:
                keep_alive = False  # (llhttp already says so; kept explicit for mixed lists)

        ctx = RequestContext.__new__(RequestContext)  # (fields initialized by __cinit__)
        ctx.method = method
        ctx.target = target
        ctx.path = path
        ctx.query = query
        ctx.http_version = http_version
        ctx.host = host
        ctx.headers = view
        ctx.content_length = content_length
        ctx.chunked = chunked
        ctx.keep_alive = keep_alive
        ctx.request_id = rid if rid is not None and sane_request_id(rid) else new_request_id()
        parsed = parse_traceparent(tp) if tp is not None else None
        if parsed is not None:
            # Continue the caller's trace: same trace id and flags, our own span as the parent.
            ctx.traceparent = b"00-%s-%016x-%s" % (parsed[0], _rand64() | 1, parsed[2])
            ctx.tracestate = ts
            ctx.parent_span_id = parsed[1]   # the caller's span: our span's parent (tracing.py)
        else:
            # An all-zero id (invalid) has probability 2^-64.
            ctx.traceparent = _new_traceparent()
        if self.trusted:
            # Extend the proxy chain the trusted proxy sent; the client is the right-most address
            # that is not itself a trusted proxy (what nginx's real_ip_recursive does).
            ctx.client_ip = _client_ip(xff, self.peer, self.settings.trusted_proxies)
            if xff is not None:
                ctx.upstream_headers = [(b"x-forwarded-for", xff + b", " + self.peer_b)]
            if xfwd is not None:
                ctx.upstream_headers = ctx.upstream_headers + xfwd
        else:
            ctx.client_ip = self.peer
        ctx.scheme = self.scheme
        self.has_body = has_body
        self.expect = expect
        return ctx

    cdef bytes upstream_head(self, RequestContext ctx, Py_ssize_t strip):
        """The canonical request head, one buffer (gateway._fast.wire.request_head)."""
        # strip (the downstream protocol read it from ctx.route, exchange.pyx's _route_plan): -1
        # no strip_prefix; >= 0 the bytes it strips (Route._strip_len), done here in C;
        # STRIP_ASK a route object of another class, whose upstream_path() is asked.
        if strip == -1:
            target = ctx.target
        elif strip >= 0:
            target = stripped_path(ctx.target, strip)
        else:
            target = ctx.route.upstream_path(ctx.target)
        if ctx.chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif ctx.content_length is not None:
            framing = b"Content-Length: %d\r\n" % ctx.content_length
        else:
            framing = b""
        extra = ctx.upstream_headers
        if not extra or not _names_forwarded(extra):
            # X-Forwarded-* for the common case (also when filters only add other fields, such
            # as the identity headers of auth): cached per Host value on this connection.
            if ctx.host == self.fwd_host:
                forwarded = self.fwd_block
            else:
                forwarded = b"%sX-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\n" % (self.xff_line, self.scheme, ctx.host)
                self.fwd_host = ctx.host
                self.fwd_block = forwarded
        else:
            # A trusted proxy's X-Forwarded-* (or a filter's) replace ours, name by name.
            names = {n.lower() for n, _ in extra}
            forwarded = b"".join([
                self.xff_line if b"x-forwarded-for" not in names else b"",
                b"X-Forwarded-Proto: %s\r\n" % self.scheme if b"x-forwarded-proto" not in names else b"",
                b"X-Forwarded-Host: %s\r\n" % ctx.host if b"x-forwarded-host" not in names else b"",
            ])
        fields = ctx.headers
        if type(fields) is HeaderView:
            return _request_head_view(ctx.method, target, host_header_of(ctx.upstream_target),
                                      <HeaderView>fields, framing, extra, forwarded, ctx.request_id,
                                      ctx.traceparent, ctx.tracestate)
        # (a filter replaced ctx.headers with a list of (name, value) pairs)
        return request_head(ctx.method, target, host_header_of(ctx.upstream_target), fields, framing,
                            extra, forwarded, ctx.request_id, ctx.traceparent, ctx.tracestate)


cdef bytes _request_head_view(bytes method, bytes target, bytes host_header, HeaderView view,
                              bytes framing, list extra, bytes forwarded, bytes request_id,
                              bytes traceparent, object tracestate):
    """gateway._fast.wire.request_head with the end-to-end fields written from the head's spans
    (the same bytes: lowercased names, llhttp's values): one allocation, no object per field."""
    cdef bytes ts = b"" if tracestate is None else <bytes?>tracestate
    cdef Py_ssize_t size = (PyBytes_GET_SIZE(method) + 1 + PyBytes_GET_SIZE(target) + 17
                            + PyBytes_GET_SIZE(host_header) + 2 + view.wire_size()
                            + PyBytes_GET_SIZE(framing) + pairs_size(extra)
                            + PyBytes_GET_SIZE(forwarded) + 14 + PyBytes_GET_SIZE(request_id)
                            + 15 + PyBytes_GET_SIZE(traceparent)
                            + (14 + PyBytes_GET_SIZE(ts) if tracestate is not None else 0) + 4)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char* p = PyBytes_AS_STRING(out)
    p = put_bytes(p, method)
    p[0] = 32
    p = put_bytes(p + 1, target)
    memcpy(p, b" HTTP/1.1\r\nHost: ", 17)
    p = put_bytes(p + 17, host_header)
    p[0] = 13
    p[1] = 10
    p = view.wire_put(p + 2)
    p = put_bytes(p, framing)
    p = put_pairs(p, extra)
    p = put_bytes(p, forwarded)
    memcpy(p, b"X-Request-Id: ", 14)
    p = put_bytes(p + 14, request_id)
    memcpy(p, b"\r\ntraceparent: ", 15)
    p = put_bytes(p + 15, traceparent)
    if tracestate is not None:
        memcpy(p, b"\r\ntracestate: ", 14)
        p = put_bytes(p + 14, ts)
    memcpy(p, b"\r\n\r\n", 4)
    return out


cdef bint _names_forwarded(list extra):
    """Does any of these extra upstream fields name an X-Forwarded-* field? (12-byte prefix test,
    no per-request set: the identity headers of every authenticated request pass through here;
    compared in place, as name[:12].lower() == b"x-forwarded-" without the two objects.)"""
    cdef tuple h
    cdef bytes name
    cdef const char* p
    cdef const char* want = b"x-forwarded-"
    cdef Py_ssize_t i
    cdef char c
    for h in extra:
        name = h[0]
        if PyBytes_GET_SIZE(name) > 12:
            p = PyBytes_AS_STRING(name)
            for i in range(12):
                c = p[i]
                if 65 <= c <= 90:
                    c = c + 32
                if c != want[i]:
                    break
            else:
                return True
    return False


def _is_trusted(peer: str, networks: Any) -> bool:
    if not networks or not peer:
        return False
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(addr in net for net in networks)


def _client_ip(xff: bytes | None, peer: str, networks: Any) -> str:
    """The right-most address of X-Forwarded-For that is not a trusted proxy (the real client)."""
    if xff is None:
        return peer
    for item in reversed(xff.split(b",")):
        candidate = item.strip().decode("latin-1")
        if not _is_trusted(candidate, networks):
            return candidate
    return peer

