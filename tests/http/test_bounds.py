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


# --- A4: the upstream timeout survives a pause before the response head ------------------------
def test_upstream_timeout_survives_pause_before_the_head() -> None:
    h = Harness(upstream_timeout=2.0, body_timeout=30.0)
    h.feed(GET)
    h.proto.pause_writing()  # the client is backed up: reading the upstream pauses
    h.tick(1)
    h.proto.resume_writing()
    h.tick(3)
    assert status_of(h.down.take()) == 504 and h.up().broken
    h.close()


# --- A5: upload time does not count against the upstream timeout -------------------------------
def test_slow_upload_is_not_an_upstream_timeout() -> None:
    h = Harness(upstream_timeout=2.0, body_timeout=5.0)
    h.feed(b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    for b in b"abcdefghi":  # 9 bytes, one every 1.5 s: 13.5 s of upload, each step within the body timeout
        h.tick(1.5)
        h.feed(bytes([b]))
    assert h.down.take() == b"" and not h.up().broken
    h.feed(b"j")  # the last request byte: the upstream timeout starts now
    assert h.upstream_bytes().endswith(b"abcdefghij")
    h.tick(1.5)
    assert h.down.take() == b""
    h.tick(1.0)
    assert status_of(h.down.take()) == 504
    h.close()


def test_upstream_that_stops_reading_the_body_is_cut_after_the_body_timeout() -> None:
    """(Guard for the above: an upload the upstream stops draining is still bounded.)"""
    h = Harness(upstream_timeout=2.0, body_timeout=5.0)
    h.feed(b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    h.up().pause_writing()  # the upstream's socket is full: reading the client pauses
    h.tick(4)
    assert h.down.take() == b""
    h.tick(2)
    assert status_of(h.down.take()) == 504 and h.up().broken
    h.close()


# --- A6: a client connection never stays paused after an upstream answered early -------------
def test_client_reading_resumes_when_a_backed_up_upstream_answers() -> None:
    h = Harness()
    h.feed(b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789")
    up = h.up()
    up.pause_writing()  # the whole body was handed to the upstream socket, which is full
    assert not h.down.reading
    h.respond(OK)  # the upstream answers before draining the body: complete, pooled
    assert status_of(h.down.take()) == 200 and h.pool.idle == [up]
    assert h.down.reading  # the client's next request is read
    # The next exchange reuses the connection whose socket is still full: that one pauses.
    h.feed(b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
    assert h.up() is up and not h.down.reading
    up.resume_writing()
    assert h.down.reading
    h.feed(b"cd")
    h.respond(OK)
    assert status_of(h.down.take()) == 200 and h.down.reading
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
