"""From a parsed request head to a RequestContext, and from a RequestContext to the upstream head.

`RequestBuilder.build` applies every wire-hygiene rule of issue 2 that llhttp leaves to us (framing
verdicts, Host, target normalization, header classification) and raises RequestRejected with the
reply to send. `upstream_head` writes the canonical request head in one buffer: origin-form target,
Host = the target's host:port, the end-to-end headers, exactly one framing header, then the
gateway's own X-Forwarded-*, X-Request-Id and traceparent.

One builder per connection: it holds what is constant for the connection (peer address, whether
the peer is a trusted proxy, the precomputed X-Forwarded-For value).
"""
import binascii
import ipaddress
import itertools
import os
import random
from typing import Any

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint64_t

from gateway.pipeline.context cimport RequestContext

from . import replies
from .errors import RequestRejected
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
    REQUEST_CLASSES,
    TE_BAD,
    TE_UNSUPPORTED,
    TargetError,
    classify_slow,
    classify_te,
    normalize_target,
    parse_traceparent,
    request_head,
    sane_request_id,
    valid_host,
)

# Request ids: a random per-process prefix and a counter. Unique across workers and restarts with
# overwhelming probability, and 3x cheaper than os.urandom(16).hex() per request (0.12 vs 0.37 µs here).
_ID_PREFIX = os.urandom(6).hex().encode()
_id_counter = itertools.count(1)
# Mersenne Twister, not a CSPRNG: trace and span ids need uniqueness, not secrecy. Each worker is a
# fresh interpreter (the supervisor re-executes), so each starts from its own os.urandom seed.
_getrandbits = random.getrandbits
_randbytes = random.randbytes
_hexlify = binascii.hexlify
# Raw header name (as the client spelled it) → (class, lowercased name). One dict lookup per header
# instead of lower() + lookup; bounded because names are client-controlled (then: the slow path).
_name_cache: dict[bytes, tuple[int, bytes]] = {}
_CACHE_MAX = 4096


def _classify(name: bytes) -> tuple[int, bytes]:
    lname = name.lower()
    cls = REQUEST_CLASSES.get(lname)
    if cls is None:
        cls = classify_slow(lname)
    entry = (cls, lname)
    if len(_name_cache) < _CACHE_MAX:
        _name_cache[name] = entry
    return entry


cpdef bytes new_request_id():
    return b"%s%010x" % (_ID_PREFIX, next(_id_counter))


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
        self.has_body = False
        self.expect = False

    cdef RequestContext build(self, bytes method, str version, bytes url, list raw_headers,
                              bint keep_alive):
        """The context of a complete head (self.has_body/self.expect set); raises RequestRejected."""
        # C locals for the per-header loop: the class and the counters never box.
        cdef int cls
        cdef Py_ssize_t hosts = 0, cls_count = 0, q
        cdef bint expect = False, chunked = False, has_body
        cdef tuple entry
        cdef RequestContext ctx
        if version == "1.1":
            http_version = _V11
        elif version == "1.0":
            http_version = _V10
        else:
            raise RequestRejected(replies.VERSION_NOT_SUPPORTED)
        if url[:1] == b"/" and b"/." not in url and b"#" not in url and b"%" not in url:
            # Fast path (nearly every request): origin-form, nothing to resolve or refuse.
            authority = None
            target = url
            q = url.find(b"?")
            if q == -1:
                path, query = url, b""
            else:
                path, query = url[:q], url[q + 1:]
        else:
            try:
                path, query, target, authority = normalize_target(url)
            except TargetError:
                raise RequestRejected(replies.BAD_TARGET) from None

        cdef list headers = []
        host = None
        cl = None
        te = None
        conn = None
        rid = None
        tp = None
        ts = None
        xff = None
        xfwd = None
        cdef dict cache = _name_cache
        for name, value in raw_headers:
            entry = cache.get(name)
            if entry is None:
                entry = _classify(name)
            cls = entry[0]
            lname = entry[1]
            if cls == H_FORWARD:
                headers.append((lname, value))
            elif cls == H_HOST:
                host = value
                hosts += 1
            elif cls == H_CONTENT_LENGTH:
                cl = value
                cls_count += 1
            elif cls == H_TRANSFER_ENCODING:
                te = [value] if te is None else [*te, value]
            elif cls == H_CONNECTION:
                conn = value if conn is None else conn + b"," + value
            elif cls == H_EXPECT:
                # Answered by the gateway itself (downstream.py) and never forwarded: the upstream
                # connection may be pooled and already past the point where 100 means anything.
                # Other expectations are dropped (RFC 9110 allows ignoring them; nginx does).
                expect = value.strip().lower() == b"100-continue"
            elif cls == H_REQUEST_ID:
                rid = value  # the last one wins; kept only if it is a sane token (below)
            elif cls == H_TRACEPARENT:
                tp = value
            elif cls == H_TRACESTATE:
                ts = value
            elif cls == H_XFF:
                # Several X-Forwarded-For fields are one list (RFC 9110 §5.3); believed only from
                # a trusted proxy, otherwise replaced by the peer address.
                xff = value if xff is None else xff + b", " + value
            elif cls == H_XFWD:
                if self.trusted:
                    xfwd = [(lname, value)] if xfwd is None else [*xfwd, (lname, value)]
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

        if conn is not None and conn.lower() not in _PLAIN_CONNECTION:
            # Every field the client names in Connection is hop-by-hop for this hop.
            named = {t.strip().lower() for t in conn.split(b",")}
            headers = [h for h in headers if h[0] not in named]
            if b"close" in named:
                keep_alive = False  # (llhttp already says so; kept explicit for mixed lists)

        ctx = RequestContext()
        ctx.method = method
        ctx.target = target
        ctx.path = path
        ctx.query = query
        ctx.http_version = http_version
        ctx.host = host
        ctx.headers = headers
        ctx.content_length = content_length
        ctx.chunked = chunked
        ctx.keep_alive = keep_alive
        ctx.request_id = rid if rid is not None and sane_request_id(rid) else new_request_id()
        parsed = parse_traceparent(tp) if tp is not None else None
        if parsed is not None:
            # Continue the caller's trace: same trace id and flags, our own span as the parent.
            ctx.traceparent = b"00-%s-%016x-%s" % (parsed[0], _getrandbits(64) | 1, parsed[1])
            ctx.tracestate = ts
        else:
            # One random draw for both ids; hexlify(randbytes) is half the cost of formatting a
            # 192-bit int (0.28 vs 0.55 µs). An all-zero id (invalid) has probability 2^-64.
            ids = _hexlify(_randbytes(24))
            ctx.traceparent = b"00-%s-%s-01" % (ids[:32], ids[32:])
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
        ctx.scheme = b"http"
        self.has_body = has_body
        self.expect = expect
        return ctx

    cdef bytes upstream_head(self, RequestContext ctx):
        """The canonical request head, one buffer (gateway._fast.wire.request_head)."""
        route = ctx.route
        target = route.upstream_path(ctx.target) if route.strip_prefix else ctx.target
        if ctx.chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif ctx.content_length is not None:
            framing = b"Content-Length: %d\r\n" % ctx.content_length
        else:
            framing = b""
        extra = ctx.upstream_headers
        if not extra:
            # X-Forwarded-* for the common case: cached per Host value on this connection.
            if ctx.host == self.fwd_host:
                forwarded = self.fwd_block
            else:
                forwarded = b"%sX-Forwarded-Proto: http\r\nX-Forwarded-Host: %s\r\n" % (self.xff_line, ctx.host)
                self.fwd_host = ctx.host
                self.fwd_block = forwarded
        else:
            # A trusted proxy's X-Forwarded-* (or a filter's) replace ours, name by name.
            names = {n.lower() for n, _ in extra}
            forwarded = b"".join([
                self.xff_line if b"x-forwarded-for" not in names else b"",
                b"X-Forwarded-Proto: http\r\n" if b"x-forwarded-proto" not in names else b"",
                b"X-Forwarded-Host: %s\r\n" % ctx.host if b"x-forwarded-host" not in names else b"",
            ])
        return request_head(ctx.method, target, ctx.upstream_target.host_header, ctx.headers, framing,
                            extra, forwarded, ctx.request_id, ctx.traceparent, ctx.tracestate)


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

