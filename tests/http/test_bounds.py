"""Issue 7 section A: memory and time stay bounded whatever a peer does (fake transports, no sockets).

Each test plays one hostile or unlucky peer deterministically: the race or the hostile byte
pattern is made to happen by the test, never left to timing.
"""
from __future__ import annotations

import logging

import pytest

from gateway.http import request, upstream
from tests.http.harness import OK, Harness, status_of, statuses

GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


# --- A1: upstream response heads are bounded like request heads -------------------------------
def test_upstream_head_with_too_many_fields_is_502(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(max_headers=20)
    h.feed(GET)
    with caplog.at_level(logging.ERROR, logger="gateway.http"):
        h.respond(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(21)) + b"Content-Length: 0\r\n\r\n")
    out = h.down.take()
    assert status_of(out) == 502 and not h.down.closed
    assert h.up().broken and h.up().transport.closed  # type: ignore[attr-defined]
    assert h.pool.idle == []
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    h.close()


def test_upstream_head_over_the_byte_limit_is_502_in_one_read() -> None:
    h = Harness(max_header_bytes=1024)
    h.feed(GET)
    h.respond(b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * 2000 + b"\r\nContent-Length: 0\r\n\r\n")
    assert status_of(h.down.take()) == 502 and h.up().broken
    h.close()


@pytest.mark.parametrize("piece", [b"X-Endless: value\r\n", b"v" * 100], ids=["endless-lines", "endless-value"])
def test_upstream_head_that_never_ends_is_502_as_soon_as_the_limit_is_crossed(
        piece: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """An upstream sending header lines (or one header value) without end: cut at the limit."""
    h = Harness(max_header_bytes=4096, max_uri_bytes=1024, max_headers=10_000)
    h.feed(GET)
    h.respond(b"HTTP/1.1 200 OK\r\nX-A: " if piece.startswith(b"v") else b"HTTP/1.1 200 OK\r\n")
    sent = 0
    with caplog.at_level(logging.ERROR, logger="gateway.http"):
        while not h.up().broken and sent < 1_000_000:
            h.respond(piece)
            sent += len(piece)
    assert sent <= 4096 + 1024 + len(piece)  # decided the read the raw bound was crossed
    assert status_of(h.down.take()) == 502 and h.up().transport.closed  # type: ignore[attr-defined]
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    h.feed(GET)  # the client connection is still good, on a new upstream connection
    h.respond(OK)
    assert status_of(h.down.take()) == 200 and len(h.pool.conns) == 2
    h.close()


def test_upstream_trailer_section_that_never_ends_closes_the_client() -> None:
    h = Harness(max_header_bytes=4096, max_uri_bytes=1024)
    h.feed(GET)
    h.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: ")
    sent = 0
    while not h.up().broken and sent < 1_000_000:
        h.respond(b"t" * 100)
        sent += 100
    assert sent <= 4096 + 1024 + 100
    out = h.down.take()
    assert statuses(out) == [200] and out.endswith(b"3\r\nabc\r\n") and h.down.closed  # truncated: closed
    h.close()


# --- A8: header-name caches keep only short names --------------------------------------------
def test_header_name_caches_keep_only_short_names() -> None:
    h = Harness(max_header_bytes=65536)
    names = [b"X-%d-" % i + b"n" * 15000 for i in range(3)]
    h.feed(b"GET /x HTTP/1.1\r\nHost: a\r\n" + b"".join(n + b": v\r\n" for n in names) + b"\r\n")
    h.respond(b"HTTP/1.1 200 OK\r\n" + b"".join(n + b": v\r\n" for n in names) + b"Content-Length: 0\r\n\r\n")
    assert status_of(h.down.take()) == 200
    assert max(len(n) for n in request._name_cache) <= 64
    assert upstream._cached_name_max() <= 64
    h.close()
