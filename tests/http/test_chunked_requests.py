"""Chunked request bodies (issue 7, B1, B3, B4): decoded by the gateway from the byte after the head.

Each case runs in one write and byte by byte. "Nothing forwarded" means no byte reached an upstream;
a request refused after it was dispatched is never complete upstream and its connection is aborted.
"""
from __future__ import annotations

from typing import Any

import httptools
import pytest

from gateway.http.chunked import MAX_CHUNK_LINE
from tests.http.harness import OK, Harness, status_of, statuses

BOTH = pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
HEAD = b"POST /submit HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
LIMITS = {"max_body_bytes": 1000, "max_header_bytes": 512}


def upstream_requests(data: bytes) -> list[tuple[bytes, bytes, bool]]:
    """(url, decoded body, complete) of each request an upstream connection received."""
    out: list[tuple[bytes, bytes, bool]] = []

    class P:
        def on_url(self, url: bytes) -> None:
            out.append((url, b"", False))

        def on_body(self, body: bytes) -> None:
            url, got, _ = out[-1]
            out[-1] = (url, got + body, False)

        def on_message_complete(self) -> None:
            url, got, _ = out[-1]
            out[-1] = (url, got, True)

    httptools.HttpRequestParser(P()).feed_data(data)
    return out


def run(data: bytes, bytewise: bool, **settings: Any) -> Harness:
    """Feed data, answering each request once it is complete upstream."""
    h = Harness(**{**LIMITS, **settings})
    pieces = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
    for piece in pieces:
        if h.down.closed:
            break
        h.feed(piece)
        while (h.proto.a_up is not None and not h.up().transport.closed  # type: ignore[attr-defined]
               and upstream_requests(h.upstream_bytes())[-1][2]):
            h.respond(OK)
    return h


# --- B1: `chunked<TAB>` is chunked (RFC 9110 OWS), decoded by us, never refused after forwarding ---
@BOTH
@pytest.mark.parametrize("te", [b"chunked\t", b"Chunked \t ", b"chunked \t"])
def test_chunked_with_trailing_tab_is_chunked(te: bytes, bytewise: bool) -> None:
    h = run(b"POST /submit HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: %s\r\n\r\n3\r\nabc\r\n0\r\n\r\n" % te + NEXT,
            bytewise)
    assert statuses(h.down.take()) == [200, 200] and not h.down.closed
    assert [r[1:] for r in upstream_requests(h.upstream_bytes())] == [(b"abc", True), (b"", True)]
    assert b"Transfer-Encoding: chunked\r\n" in h.upstream_bytes() and b"\t" not in h.upstream_bytes()
    h.close()


# --- B3: a chunk size beyond the body limit: 413 at that line, nothing after it read as body ---
@BOTH
@pytest.mark.parametrize("size", [b"FFFFFFFFFFFFFFFF", b"10000000000000000", b"3e9", b"3E9"])
def test_first_chunk_over_the_limit_is_413_and_nothing_is_forwarded(size: bytes, bytewise: bool) -> None:
    h = run(HEAD + size + b"\r\nabc\r\n0\r\n\r\n" + NEXT, bytewise)
    out = h.down.take()
    assert statuses(out) == [413] and h.down.closed
    assert h.all_upstream_bytes() == b""
    h.close()


@BOTH
def test_later_chunk_over_the_limit_is_413_and_the_upstream_request_is_cut(bytewise: bool) -> None:
    h = run(HEAD + b"3\r\nabc\r\n3e6\r\n" + NEXT + b"\r\n0\r\n\r\n", bytewise)
    assert statuses(h.down.take()) == [413] and h.down.closed
    assert upstream_requests(h.all_upstream_bytes()) == [(b"/submit", b"abc", False)]  # never /next
    assert h.up().transport.aborted  # type: ignore[attr-defined]
    h.close()


@BOTH
def test_chunks_up_to_the_limit_are_accepted(bytewise: bool) -> None:
    h = run(HEAD + b"1f4\r\n" + b"x" * 500 + b"\r\n1F4;e=1\r\n" + b"y" * 500 + b"\r\n0\r\n\r\n" + NEXT, bytewise)
    assert statuses(h.down.take()) == [200, 200]
    assert upstream_requests(h.all_upstream_bytes())[0][1:] == (b"x" * 500 + b"y" * 500, True)
    h.close()


# --- B4: chunk extensions are capped (the whole chunk-size line: MAX_CHUNK_LINE bytes) ---
@BOTH
def test_chunk_extension_over_the_cap_is_400_and_nothing_is_forwarded(bytewise: bool) -> None:
    ext = b";e=" + b"v" * MAX_CHUNK_LINE
    h = run(HEAD + b"3" + ext + b"\r\nabc\r\n0\r\n\r\n" + NEXT, bytewise)
    out = h.down.take()
    assert statuses(out) == [400] and h.down.closed and b"chunk-size line" in out
    assert h.all_upstream_bytes() == b""
    h.close()


@BOTH
def test_chunk_extension_over_the_cap_in_a_later_chunk_cuts_the_request(bytewise: bool) -> None:
    h = run(HEAD + b"3\r\nabc\r\n2;" + b"e" * 100_000 + b"\r\nde\r\n0\r\n\r\n" + NEXT, bytewise)
    assert statuses(h.down.take()) == [400] and h.down.closed
    assert upstream_requests(h.all_upstream_bytes()) == [(b"/submit", b"abc", False)]
    assert h.up().transport.aborted  # type: ignore[attr-defined]
    h.close()


@BOTH
def test_chunk_line_at_the_cap_is_accepted(bytewise: bool) -> None:
    line = b"3;e=" + b"v" * (MAX_CHUNK_LINE - 4)
    assert len(line) == MAX_CHUNK_LINE
    h = run(HEAD + line + b"\r\nabc\r\n0\r\n\r\n", bytewise)
    assert statuses(h.down.take()) == [200]
    assert b"vvv" not in h.all_upstream_bytes()  # extensions are never forwarded
    h.close()


def test_trailer_section_over_the_head_limit_is_431() -> None:
    h = run(HEAD + b"3\r\nabc\r\n0\r\n" + b"X-T: 1234567890\r\n" * 40 + b"\r\n", False)
    assert statuses(h.down.take()) == [431] and h.down.closed
    assert not upstream_requests(h.all_upstream_bytes())[0][2]
    h.close()


# --- the decoder is as strict as llhttp: each case is refused, and never complete upstream ---
MALFORMED = [
    ("space-after-size", b"3 \r\nabc\r\n0\r\n\r\n"),
    ("space-before-size", b" 3\r\nabc\r\n0\r\n\r\n"),
    ("empty-size", b"\r\nabc\r\n0\r\n\r\n"),
    ("hex-prefix", b"0x3\r\nabc\r\n0\r\n\r\n"),
    ("negative", b"-3\r\nabc\r\n0\r\n\r\n"),
    ("bare-lf-after-size", b"3\nabc\r\n0\r\n\r\n"),
    ("bare-cr-after-size", b"3\rabc\r\n0\r\n\r\n"),
    ("data-longer-than-size", b"3\r\nabcd\r\n0\r\n\r\n"),
    ("bare-lf-after-data", b"3\r\nabc\n0\r\n\r\n"),
    ("space-in-extension", b"3;a b\r\nabc\r\n0\r\n\r\n"),
    ("space-before-extension", b"3 ;a=b\r\nabc\r\n0\r\n\r\n"),
    ("ctl-in-extension", b"3;a=\x01\r\nabc\r\n0\r\n\r\n"),
    ("ctl-in-quoted-extension", b"3;a=\"\x00\"\r\nabc\r\n0\r\n\r\n"),
    ("trailer-obs-fold", b"3\r\nabc\r\n0\r\nX: 1\r\n y\r\n\r\n"),
    ("trailer-no-name", b"3\r\nabc\r\n0\r\n: 1\r\n\r\n"),
    ("trailer-space-in-name", b"3\r\nabc\r\n0\r\nX Y: 1\r\n\r\n"),
    ("trailer-nul", b"3\r\nabc\r\n0\r\nX: a\x00b\r\n\r\n"),
    ("trailer-bare-lf", b"3\r\nabc\r\n0\r\nX: 1\n\r\n"),
    ("end-bare-lf", b"3\r\nabc\r\n0\r\n\n"),
    ("end-not-crlf", b"3\r\nabc\r\n0\r\n\rX"),
]


@BOTH
@pytest.mark.parametrize("body", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_chunked_body_is_400(body: bytes, bytewise: bool) -> None:
    h = run(HEAD + body + NEXT, bytewise)
    assert statuses(h.down.take()) == [400] and h.down.closed
    assert not any(r[2] for r in upstream_requests(h.all_upstream_bytes()))
    assert b"/next" not in h.all_upstream_bytes()
    for conn in h.pool.conns:
        assert conn.transport.aborted  # type: ignore[attr-defined]
    h.close()


WELL_FORMED = [
    ("plain", b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", b"abcde"),
    ("uppercase-and-zeros", b"000A\r\n0123456789\r\n0000\r\n\r\n", b"0123456789"),
    ("extensions", b"3;a=b;c;d=\"x;\\\"y\"\r\nabc\r\n0;last\r\n\r\n", b"abc"),
    ("trailers", b"3\r\nabc\r\n0\r\nX-T: 1\r\nY:\t two words \r\n\r\n", b"abc"),
    ("data-looks-like-framing", b"5\r\n0\r\n\r\n\r\n0\r\n\r\n", b"0\r\n\r\n"),
    ("empty", b"0\r\n\r\n", b""),
]


@BOTH
@pytest.mark.parametrize("body,decoded", [c[1:] for c in WELL_FORMED], ids=[c[0] for c in WELL_FORMED])
def test_well_formed_chunked_body_is_forwarded_decoded_then_next_request(body: bytes, decoded: bytes,
                                                                         bytewise: bool) -> None:
    h = run(HEAD + body + NEXT, bytewise)
    assert statuses(h.down.take()) == [200, 200] and not h.down.closed
    assert upstream_requests(h.all_upstream_bytes()) == [(b"/submit", decoded, True), (b"/next", b"", True)]
    up = h.all_upstream_bytes()
    assert b"X-T" not in up and b";" not in up.split(b"\r\n\r\n", 1)[1]  # no trailers, no extensions
    h.close()


def test_request_goes_upstream_once_its_first_chunk_line_is_valid() -> None:
    h = Harness()
    h.feed(HEAD)
    assert h.all_upstream_bytes() == b""  # the head alone: nothing yet
    h.feed(b"5;x")
    assert h.all_upstream_bytes() == b""
    h.feed(b"=y\r\n")
    assert h.upstream_bytes().startswith(b"POST /submit HTTP/1.1\r\n")
    h.feed(b"hello\r\n0\r\n\r\n")
    h.respond(OK)
    assert status_of(h.down.take()) == 200 and h.pool.idle == [h.up()]
    h.close()


def test_expect_100_continue_with_a_chunked_body() -> None:
    h = Harness()
    h.feed(b"POST /submit HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert h.down.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert h.upstream_bytes().startswith(b"POST /submit")  # with Expect it cannot wait for the body
    h.feed(b"3\r\nabc\r\n0\r\n\r\n")
    h.respond(OK)
    assert status_of(h.down.take()) == 200
    assert upstream_requests(h.upstream_bytes()) == [(b"/submit", b"abc", True)]
    h.close()


@BOTH
def test_pipelined_chunked_requests_behind_a_pending_exchange(bytewise: bool) -> None:
    h = Harness()
    data = NEXT + HEAD + b"3\r\nabc\r\n0\r\n\r\n" + HEAD + b"FFFFFFFFF\r\n"
    for piece in ([data[i:i + 1] for i in range(len(data))] if bytewise else [data]):
        h.feed(piece)
    assert upstream_requests(h.all_upstream_bytes()) == [(b"/next", b"", True)]  # one at a time
    h.respond(OK)
    assert upstream_requests(h.all_upstream_bytes())[1] == (b"/submit", b"abc", True)
    h.respond(OK)
    assert statuses(h.down.take()) == [200, 200, 413] and h.down.closed
    assert len(upstream_requests(h.all_upstream_bytes())) == 2  # the refused one never went
    h.close()


def test_no_route_for_a_chunked_request_answers_once_its_first_line_arrives() -> None:
    h = Harness(routes=[])
    h.feed(HEAD)
    assert h.down.take() == b""
    h.feed(b"3\r\nabc\r\n")
    out = h.down.take()
    assert status_of(out) == 404 and h.down.closed  # (the unread body: close)
    h.close()


# --- differential: our decoder against llhttp's (strict) on mutated bodies ---
def llhttp_verdict(body: bytes) -> tuple[str, bytes]:
    got: list[bytes] = []
    done: list[bytes] = []

    class P:
        def on_body(self, b: bytes) -> None:
            got.append(b)

        def on_message_complete(self) -> None:
            done.append(b"".join(got))

    try:
        httptools.HttpRequestParser(P()).feed_data(HEAD + body)
    except httptools.HttpParserError:
        pass  # (bytes after a complete body are the next request's: only the body is compared)
    else:
        if not done:
            return ("incomplete", b"")
    return ("complete", done[0]) if done else ("refused", b"")


def gateway_verdict(h: Harness, body: bytes) -> tuple[str, bytes]:
    h.feed(HEAD + body)
    reqs = upstream_requests(h.all_upstream_bytes())
    if reqs and reqs[0][2]:
        return ("complete", reqs[0][1])
    return ("refused", b"") if status_of(h.down.take()) == 400 else ("incomplete", b"")


BASES = [
    b"5;a=b;q=\"x y\"\r\nhello\r\n0\r\nX: y\r\n\r\n",
    b"002;=v;n;;t=\"\\\"\"\r\nhi\r\n1\r\n!\r\n0;e\r\nA-B: c d\r\n\r\n",
]
MUTATIONS = [b" ", b"\t", b"\r", b"\n", b";", b"=", b"\"", b"\\", b":", b"G", b"0", b"\x00", b"\xff"]


@pytest.mark.parametrize("base", BASES, ids=["base1", "base2"])
def test_decoder_agrees_with_llhttp_on_every_mutation(base: bytes) -> None:
    """Each byte of a body replaced by, or preceded by, each mutation: same verdict, same body."""
    h = Harness()
    checked = 0
    for i in range(len(base)):
        for m in MUTATIONS:
            for body in (base[:i] + m + base[i + 1:], base[:i] + m + base[i:]):
                h.close()
                h = Harness()
                assert gateway_verdict(h, body) == llhttp_verdict(body), body
                checked += 1
    h.close()
    assert checked == len(base) * len(MUTATIONS) * 2
