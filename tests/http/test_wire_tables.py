"""Tables of bytes in → status and bytes forwarded upstream, each run in one write and byte by byte."""
from __future__ import annotations

import pytest

from tests.http.harness import OK, Harness, status_of, statuses

BOTH = pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])

# (id, request bytes, expected status) — every one must forward nothing and close the connection.
REJECTED = [
    ("cl+te", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te+cl", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
    ("dup-cl", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("dup-cl-same", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("te-gzip-only", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400),
    ("te-chunked-not-last", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("te-twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-unknown", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo, chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-gzip-chunked-501", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te-on-1.0", b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("no-host-1.1", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
    ("bad-host", b"GET / HTTP/1.1\r\nHost: a/b@c\r\n\r\n", 400),
    ("host-list", b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", 400),  # RFC 9110 §7.2: one authority, never a list
    ("host-list-absolute", b"GET http://a,b/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("nul-in-target", b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("ctl-in-target", b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("nul-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400),
    ("ctl-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x1bb\r\n\r\n", 400),
    ("del-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x7fb\r\n\r\n", 400),
    ("cr-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("bare-lf", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("space-in-name", b"GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n", 400),
    ("bad-cl", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400),
    ("encoded-dot-segment", b"GET /a/%2e%2E/etc HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    # Some upstream frameworks read '\\' as '/': "/public\\..\\admin" would escape a prefix route's rules.
    ("backslash-in-path", b"GET /public\\..\\admin HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("backslash-only", b"GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("encoded-backslash", b"GET /public/%5c..%5Cadmin HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("backslash-absolute-form", b"GET http://a/x\\y HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("ftp-absolute", b"GET ftp://a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("userinfo-absolute", b"GET http://u@a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("connect-authority-form", b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", 400),
    ("asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("http-2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ("uri-too-long", b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    ("head-too-large", b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 600 + b"\r\n\r\n", 431),
    ("too-many-headers", b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: 1\r\n" * 20 + b"\r\n", 431),
    ("cl-over-limit", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n", 413),
    ("upgrade-with-body", b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\nab", 400),
]

LIMITS = {"max_uri_bytes": 128, "max_header_bytes": 512, "max_headers": 10, "max_body_bytes": 1000}


@BOTH
@pytest.mark.parametrize("raw,status", [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_rejected_nothing_forwarded(raw: bytes, status: int, bytewise: bool) -> None:
    h = Harness(**LIMITS)
    h.feed(raw, bytewise)
    out = h.down.take()
    assert status_of(out) == status, out
    assert b'"request_id":' in out and b"application/json" in out
    assert h.all_upstream_bytes() == b""
    assert h.down.closed
    h.close()


def test_431_decided_before_the_header_line_ends() -> None:
    """A single endless header value is refused once the head limit is crossed, not at its CRLF."""
    h = Harness(**LIMITS)
    h.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
    for _ in range(20):
        if h.down.closed:
            break
        h.feed(b"b" * 100)
    assert status_of(h.down.take()) == 431
    assert h.down.closed


def test_413_when_chunked_body_crosses_limit() -> None:
    h = Harness(**LIMITS)
    h.feed(b"POST /submit HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    h.feed(b"258\r\n" + b"x" * 600 + b"\r\n")
    assert not h.down.closed
    h.feed(b"258\r\n" + b"x" * 600 + b"\r\n")
    assert status_of(h.down.take()) == 413
    assert h.down.closed
    assert h.up().broken  # the half-sent upstream request is never reused


# (id, request, must appear upstream, must not appear upstream)
FORWARDED = [
    ("fragment", b"GET /a?x=1#frag HTTP/1.1\r\nHost: a\r\n\r\n", [b"GET /a?x=1 HTTP/1.1\r\n"], [b"frag"]),
    ("dot-segments", b"GET /a/b/../c/./d HTTP/1.1\r\nHost: a\r\n\r\n", [b"GET /a/c/d HTTP/1.1\r\n"], [b".."]),
    ("dot-above-root", b"GET /../../x HTTP/1.1\r\nHost: a\r\n\r\n", [b"GET /x HTTP/1.1\r\n"], [b".."]),
    ("absolute-form", b"GET http://Other.Example:81/p?q HTTP/1.1\r\nHost: ignored\r\n\r\n",
     [b"GET /p?q HTTP/1.1\r\n", b"X-Forwarded-Host: other.example:81\r\n"], [b"ignored"]),
    ("host-upstream", b"GET / HTTP/1.1\r\nHost: client.example\r\n\r\n",
     [b"Host: upstream.test:8000\r\n", b"X-Forwarded-Host: client.example\r\n", b"X-Forwarded-Proto: http\r\n"], []),
    ("lookalike-names", b"GET / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\nTransfer_Encoding: x\r\nX_Custom: 1\r\n\r\n",
     [b"x_custom: 1\r\n"], [b"content_length", b"transfer_encoding", b"Content-Length"]),
    ("upgrade-stripped", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAA\r\n\r\n",
     [b"GET / HTTP/1.1\r\n"], [b"pgrade", b"AAA", b"onnection"]),
    ("connection-named", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Secret, keep-alive\r\nX-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\n\r\n",
     [b"GET / HTTP/1.1\r\n"], [b"x-secret", b"keep-alive", b"te:"]),
    ("proxy-hop-by-hop", b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: x\r\n\r\n",
     [b"GET /"], [b"proxy-"]),
    ("chunk-ext-and-trailers", b"POST /submit HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3;name=val\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\nConnection: close\r\n\r\n",
     [b"Transfer-Encoding: chunked\r\n", b"\r\n0\r\n\r\n"], [b"name=val", b"X-Trailer", b"x-trailer", b";"]),
    ("canonical-cl", b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 003\r\n\r\nabc",
     [b"Content-Length: 3\r\n", b"\r\n\r\nabc"], [b": 003"]),  # (not b"003": request ids are hex)
    ("gateway-owned-removed", b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\n"
     b"X-Forwarded-Proto: https\r\nX-Consumer-Id: admin\r\nX-Consumer-Custom: y\r\nX-Auth-Method: jwt\r\nForwarded: for=1\r\n\r\n",
     [b"X-Forwarded-For: 10.0.0.7\r\n", b"X-Forwarded-Proto: http\r\n", b"X-Forwarded-Host: a\r\n"],
     [b"6.6.6.6", b"evil", b"https", b"onsumer", b"uth-method", b"orwarded: for"]),
    ("sane-request-id-kept", b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc-123.x_y\r\n\r\n", [b"X-Request-Id: abc-123.x_y\r\n"], []),
    ("insane-request-id-replaced", b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: a b<script>\r\n\r\n",
     [b"X-Request-Id: "], [b"script"]),
    ("traceparent-continued", b"GET / HTTP/1.1\r\nHost: a\r\nTraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: k=v\r\n\r\n",
     [b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-", b"-01\r\n", b"tracestate: k=v\r\n"], [b"00f067aa0ba902b7"]),
    ("traceparent-invalid-restarted", b"GET / HTTP/1.1\r\nHost: a\r\ntraceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01\r\n\r\n",
     [b"traceparent: 00-"], [b"00000000000000000000000000000000", b"00f067aa0ba902b7"]),
    ("expect-not-forwarded", b"POST /submit HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab",
     [b"Content-Length: 2\r\n"], [b"xpect"]),
    ("http-1.0-no-host", b"GET /x HTTP/1.0\r\n\r\n", [b"GET /x HTTP/1.1\r\n", b"Host: upstream.test:8000\r\n"], []),
    ("strip-prefix", b"GET /api/users/1 HTTP/1.1\r\nHost: a\r\n\r\n", [b"GET /users/1 HTTP/1.1\r\n"], []),
    ("backslash-in-query", b"GET /a?x=\\y HTTP/1.1\r\nHost: a\r\n\r\n", [b"GET /a?x=\\y HTTP/1.1\r\n"], []),
]


@BOTH
@pytest.mark.parametrize("raw,present,absent", [c[1:] for c in FORWARDED], ids=[c[0] for c in FORWARDED])
def test_forwarded_canonical(raw: bytes, present: list[bytes], absent: list[bytes], bytewise: bool) -> None:
    h = Harness()
    h.feed(raw, bytewise)
    up = h.all_upstream_bytes()
    for p in present:
        assert p in up, (p, up)
    for a in absent:
        assert a not in up, (a, up)
    # exactly one framing header, Host once
    assert up.lower().count(b"\r\nhost:") == 1
    assert up.count(b"Content-Length:") + up.count(b"Transfer-Encoding:") <= 1
    h.respond(OK)
    out = h.down.take()
    assert statuses(out)[-1] == 200  # (a 100 Continue may come first)
    h.close()


def test_bad_chunk_mid_body_aborts_upstream() -> None:
    """A malformed chunk: 400, the upstream connection is aborted before the request is complete."""
    for bytewise in (False, True):
        h = Harness()
        h.feed(b"POST /submit HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nxx\r\n0\r\n\r\n",
               bytewise)
        assert status_of(h.down.take()) == 400 and h.down.closed
        up = h.all_upstream_bytes()
        assert b"zz" not in up and not up.endswith(b"0\r\n\r\n")
        assert h.up().transport.aborted  # type: ignore[attr-defined]
        h.close()


def parse_request(data: bytes) -> dict:
    import httptools

    out: dict = {"complete": False, "body": b""}

    class P:
        def on_body(self, b: bytes) -> None:
            out["body"] += b

        def on_message_complete(self) -> None:
            out["complete"] = True

    httptools.HttpRequestParser(P()).feed_data(data)
    return out


BODIES = {
    FORWARDED[9][1]: b"abcde",
    FORWARDED[10][1]: b"abc",
    FORWARDED[16][1]: b"ab",
}


def test_trusted_proxy_xff_appended() -> None:
    import ipaddress

    h = Harness(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    h.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n\r\n")
    up = h.all_upstream_bytes()
    assert b"x-forwarded-for: 1.2.3.4, 10.0.0.7\r\n" in up
    assert b"x-forwarded-proto: https\r\n" in up and b"X-Forwarded-Proto: http\r\n" not in up
    assert h.proto.a_ctx is not None and h.proto.a_ctx.client_ip == "1.2.3.4"
    h.close()


def test_request_id_returned_downstream() -> None:
    h = Harness()
    h.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: my-id-1\r\n\r\n")
    h.respond(b"HTTP/1.1 200 OK\r\nX-Request-Id: upstream-id\r\nContent-Length: 0\r\n\r\n")
    out = h.down.take()
    assert b"X-Request-Id: my-id-1\r\n" in out and b"upstream-id" not in out
    h.close()
