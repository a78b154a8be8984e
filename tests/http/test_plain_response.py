"""plain_response.pyx reads a strict subset of response heads without llhttp: whatever it accepts,
llhttp (httptools, as the upstream protocol drives it) must accept too and read the same way
(status, version, fields and their values, Content-Length, keep-alive), and whatever it refuses
goes to llhttp as before. Checked on a hand-written table of framing and smuggling heads, on every
one-byte mutation of them, and on generated heads."""
from __future__ import annotations

import random
import tracemalloc
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.http.plain_response import plain_response
from tests.http.test_response_framing import BAD_CODINGS, BAD_INTERIM


class _Reading:
    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.heads = 0
        self.complete = 0
        self.parser: Any = None
        self.keep_alive: bool | None = None   # llhttp's, read where the upstream reads it

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.heads += 1

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete += 1
        # (llhttp clears its flags once the message is over: read within the callback)
        self.keep_alive = self.parser.should_keep_alive()


def llhttp_reading(data: bytes) -> tuple[Any, _Reading] | None:
    """llhttp's reading of data as one response (None when it refuses it, or reads more or less
    than one complete response in it)."""
    r = _Reading()
    p = r.parser = httptools.HttpResponseParser(r)
    try:
        p.feed_data(data)
    except httptools.HttpParserError:
        return None
    if r.heads != 1 or r.complete != 1:
        return None
    return p, r


def check(head: bytes) -> bool:
    """If the plain scan accepts `head` (+ its body), llhttp reads it the same way. Returns
    whether the scan accepted it."""
    got = plain_response(head)
    if got is None:
        return False
    status, minor, cl, keep, fields, end = got
    assert head[end - 4:end] == b"\r\n\r\n" and head.find(b"\r\n\r\n") == end - 4, head
    head = head[:end]   # (what follows is body: the upstream takes it only if exactly cl bytes)
    if cl < 0 or status < 200 or status in (204, 304):
        # The upstream takes none of these without llhttp (their framing is llhttp's call): here
        # llhttp must still accept the head and read the same status and fields.
        r = _Reading()
        p = r.parser = httptools.HttpResponseParser(r)
        try:
            p.feed_data(head)
        except httptools.HttpParserError:
            pass   # (after the head: a 101 without Upgrade is paused there)
        assert r.heads == 1, f"the scan accepted a head llhttp refuses: {head!r}"
        assert p.get_status_code() == status and r.fields == fields, head
        return True
    body = b"b" * cl
    reading = llhttp_reading(head + body)
    assert reading is not None, f"the scan accepted what llhttp refuses: {head!r}"
    p, r = reading
    assert p.get_status_code() == status, head
    assert p.get_http_version() == f"1.{minor}", head
    assert r.fields == fields, head
    assert r.body == body, head
    assert r.keep_alive == keep, head
    return True


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"

# (id, head) framing and smuggling shapes: the plain ones must agree with llhttp, the others must
# be refused by the scan or agree too.
TABLE = [
    ("plain", OK),
    ("http10", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n"),
    ("http10-keep-alive", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n"),
    ("close", b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n"),
    ("close-upper", b"HTTP/1.1 200 OK\r\nCONNECTION: CLOSE\r\nContent-Length: 2\r\n\r\n"),
    ("no-reason", b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n"),
    ("empty-reason", b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\n"),
    ("reason-tab", b"HTTP/1.1 404 Not\tFound\r\nContent-Length: 2\r\n\r\n"),
    ("leading-zeros", b"HTTP/1.1 200 OK\r\nContent-Length: 002\r\n\r\n"),
    ("cl-zero", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ("ows", b"HTTP/1.1 200 OK\r\nContent-Length:\t 2\r\nX-A:   \r\nX-B:a \t\r\n\r\n"),
    ("status-599", b"HTTP/1.1 599 X\r\nContent-Length: 2\r\n\r\n"),
    ("status-999", b"HTTP/1.1 999 X\r\nContent-Length: 2\r\n\r\n"),
    ("status-000", b"HTTP/1.1 000 X\r\nContent-Length: 2\r\n\r\n"),
    ("status-101", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
    ("status-204", b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n"),
    ("status-304", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\n\r\n"),
    ("cl-te", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ("te", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ("two-cl", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n"),
    ("cl-list", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n"),
    ("cl-sign", b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n"),
    ("cl-trailing-space", b"HTTP/1.1 200 OK\r\nContent-Length: 2 \r\n\r\n"),
    ("cl-inner-space", b"HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n"),
    ("cl-huge", b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
    ("cl-hex", b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\n"),
    ("space-before-colon", b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\n"),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\n"),
    ("bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 2\n\n"),
    ("bare-lf-field", b"HTTP/1.1 200 OK\r\nX-A: a\nContent-Length: 2\r\n\r\n"),
    ("bare-cr", b"HTTP/1.1 200 OK\r\nX-A: a\rContent-Length: 2\r\n\r\n"),
    ("nul-value", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\n"),
    ("del-value", b"HTTP/1.1 200 OK\r\nX-A: a\x7fb\r\nContent-Length: 2\r\n\r\n"),
    ("obs-text-value", b"HTTP/1.1 200 OK\r\nX-A: caf\xc3\xa9\r\nContent-Length: 2\r\n\r\n"),
    ("obs-text-reason", b"HTTP/1.1 200 \xc3\x89t\xc3\xa9\r\nContent-Length: 2\r\n\r\n"),
    ("empty-name", b"HTTP/1.1 200 OK\r\n: a\r\nContent-Length: 2\r\n\r\n"),
    ("http12", b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\n"),
    ("http20", b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\n"),
    ("http09ish", b"HTTP/0.9 200 OK\r\nContent-Length: 2\r\n\r\n"),
    ("two-digit-status", b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\n"),
    ("four-digit-status", b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n"),
    ("two-spaces", b"HTTP/1.1  200 OK\r\nContent-Length: 2\r\n\r\n"),
    ("lowercase-http", b"http/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"),
    ("leading-crlf", b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"),
    ("connection-list", b"HTTP/1.1 200 OK\r\nConnection: close, x-a\r\nContent-Length: 2\r\n\r\n"),
    ("connection-upgrade", b"HTTP/1.1 200 OK\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\n"),
    ("two-connection", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\nContent-Length: 2\r\n\r\n"),
    ("proxy-connection", b"HTTP/1.1 200 OK\r\nProxy-Connection: close\r\nContent-Length: 2\r\n\r\n"),
    ("upgrade-field", b"HTTP/1.1 200 OK\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\n"),
    ("keep-alive-field", b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\n"),
    ("no-cl", b"HTTP/1.1 200 OK\r\nX-A: a\r\n\r\n"),
    ("many-fields", b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-F%d: v%d\r\n" % (i, i) for i in range(60))
     + b"Content-Length: 2\r\n\r\n"),
] + [(f"framing-{i}", data) for i, data in BAD_INTERIM] + [(f"coding-{i}", data) for i, _, data in BAD_CODINGS]

REFUSED = {"cl-te", "te", "two-cl", "cl-list", "cl-sign", "cl-trailing-space", "cl-inner-space", "cl-huge",
           "cl-hex", "space-before-colon", "obs-fold", "bare-lf", "bare-lf-field", "bare-cr", "nul-value",
           "del-value", "obs-text-value", "obs-text-reason", "empty-name", "http12", "http20", "http09ish",
           "two-digit-status", "four-digit-status", "two-spaces", "lowercase-http", "leading-crlf",
           "connection-list", "connection-upgrade", "status-101", "two-connection", "proxy-connection"}


def _head_of(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data[:end + 4] if end >= 0 else data


@pytest.mark.parametrize("head", [h for _, h in TABLE], ids=[i for i, _ in TABLE])
def test_the_table_agrees_with_llhttp(head: bytes) -> None:
    name = next(i for i, h in TABLE if h == head)
    accepted = check(_head_of(head) if name.startswith(("framing", "coding")) else head)
    if name in REFUSED or name.startswith("coding"):
        assert not accepted, f"{name}: the scan took what llhttp must decide"
    elif not name.startswith("framing"):
        assert accepted, f"{name}: a plain head the scan should take"


MUTANT_BYTES = b"\x00\t\n\r \",:;\x7f\x80\xff0129AZaz-_/.+"


def test_every_one_byte_mutation_of_the_table_agrees_with_llhttp() -> None:
    """Each byte of each head replaced by each of MUTANT_BYTES, deleted, and a byte inserted
    before it: every mutant the scan accepts, llhttp reads the same way."""
    accepted = tried = 0
    for _, data in TABLE:
        head = _head_of(data)
        for i in range(len(head)):
            mutants = [head[:i] + head[i + 1:]]
            for b in MUTANT_BYTES:
                mutants.append(head[:i] + bytes([b]) + head[i + 1:])
                mutants.append(head[:i] + bytes([b]) + head[i:])
            for m in mutants:
                tried += 1
                accepted += check(m)
    # Not vacuous: many mutants stay plain (a changed letter of a value, of a name, of a reason).
    assert tried > 50_000 and accepted > tried // 10, (accepted, tried)


_TOKEN = st.sampled_from([b"Content-Length", b"content-length", b"Transfer-Encoding", b"Connection",
                          b"Proxy-Connection"]
                         + [b"Upgrade", b"X-A", b"x_b", b"Set-Cookie", b"Server", b"X-Request-Id",
                            b"Keep-Alive", b"A!#$%&'*+-.^`|~9"] * 4)
# (weighted towards plain heads: one odd byte anywhere makes a head not plain)
_NAME = st.one_of(_TOKEN, _TOKEN, _TOKEN, _TOKEN, st.binary(min_size=0, max_size=6))
_PLAIN_VALUE = st.sampled_from([b"2", b"02", b" 2", b"2 ", b"+2", b"2,2", b"close", b"keep-alive", b"Close",
                     b"KEEP-ALIVE", b"upgrade", b"close, x", b"chunked", b"gzip", b"", b" ", b"\t"])
_VALUE = st.one_of(
    _PLAIN_VALUE, _PLAIN_VALUE, _PLAIN_VALUE,
    st.text("abcXYZ019 \t;=,/", max_size=8).map(str.encode),
    st.binary(min_size=0, max_size=8))
_EOL = st.sampled_from([b"\r\n"] * 12 + [b"\n", b"\r", b"\r\n "])


@st.composite
def _heads(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from([b"HTTP/1.1"] * 4 + [b"HTTP/1.0"] * 2 + [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/1.1 "]))
    status = draw(st.sampled_from([b"200"] * 4 + [b"404", b"503", b"204", b"304", b"100", b"101", b"20", b"2000",
                                   b"20x"]))
    plain_reason = st.sampled_from([b" OK", b"", b" ", b" Not Found", b" a\tb"])
    reason = draw(st.one_of(plain_reason, plain_reason, plain_reason, st.binary(max_size=6).map(lambda r: b" " + r)))
    head = version + b" " + status + reason + draw(_EOL)
    for _ in range(draw(st.integers(0, 6))):
        head += draw(_NAME) + draw(st.sampled_from([b": "] * 8 + [b":", b":\t", b" :", b""])) + draw(_VALUE) + draw(_EOL)
    return head + draw(_EOL)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_heads())
def test_generated_heads_agree_with_llhttp(head: bytes) -> None:
    check(head)


def test_random_heads_agree_with_llhttp() -> None:
    """Hypothesis favours odd draws (most of the above are not plain); these are mostly plain
    heads with one or two odd pieces, drawn from a seeded generator, so that the accepted side is
    checked on many combinations of framing fields too."""
    rng = random.Random(20261206)
    names = [b"Content-Length", b"Connection", b"Transfer-Encoding", b"Proxy-Connection"] + [
        b"X-A", b"Set-Cookie", b"Server", b"X-Request-Id", b"Keep-Alive", b"Upgrade", b"Date", b"ETag"] * 3
    values = [b"2", b"0", b"007", b"close", b"keep-alive", b"Keep-Alive", b"chunked", b"upgrade", b"",
              b"a b", b"\tx\t", b"W/\"1\"", b"text/html; charset=utf-8"]
    odd = [b"\n", b"\r", b"\x00", b"\x7f", b"\x80", b" ", b"\t", b":", b",", b"+"]
    accepted = tried = 0
    for _ in range(20_000):
        head = b"HTTP/1.%d %d%s\r\n" % (rng.choice((0, 1, 1, 1)), rng.choice((200, 200, 201, 404, 503, 204, 304, 101)),
                                       rng.choice((b" OK", b"", b" Not Found")))
        for _ in range(rng.randint(0, 8)):
            head += rng.choice(names) + rng.choice((b": ", b": ", b":", b":\t")) + rng.choice(values) + b"\r\n"
        head += b"\r\n"
        if rng.random() < 0.5:   # one odd byte somewhere
            i = rng.randrange(len(head))
            head = head[:i] + rng.choice(odd) + head[i + rng.randint(0, 1):]
        tried += 1
        accepted += check(head)
    assert accepted > tried // 5, (accepted, tried)


def test_the_scan_needs_the_whole_head() -> None:
    for i in range(len(OK)):
        assert plain_response(OK[:i]) is None, OK[:i]
    got = plain_response(OK + b"{}")
    assert got is not None and got[-1] == len(OK) and got[2] == 2


def test_a_head_over_the_limits_is_not_plain_and_the_scan_stops_there() -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"a:\r\n" * 5 + b"Content-Length: 0\r\n\r\n"   # 6 fields, 44 bytes of them
    assert plain_response(head, 6, 44) is not None
    assert plain_response(head, 5, 44) is None
    assert plain_response(head, 6, 43) is None
    # A read full of tiny fields: given up at the limit, before its fields grow the view's table
    # (20 bytes a field: 1.2 MB for these 60,000 when scanned to the end).
    flood = b"HTTP/1.1 200 OK\r\n" + b"a:\r\n" * 60_000
    tracemalloc.start()
    try:
        assert plain_response(flood, 100, 1 << 20) is None
        limited = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        assert plain_response(flood, 1 << 30, 1 << 30) is None
        unlimited = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert limited < 64 * 1024 < 1_000_000 < unlimited, (limited, unlimited)


def test_a_name_takes_exactly_the_token_characters() -> None:
    """charclass.pxd's is_tchar, byte by byte, through the scan (the same map decides chunk
    extensions in chunked.pyx)."""
    tchar = set(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    for b in range(256):
        head = b"HTTP/1.1 200 OK\r\nX" + bytes([b]) + b"Y: v\r\nContent-Length: 0\r\n\r\n"
        # (a ':' there ends the name "X": the field is X with the value "Y: v", plain too)
        assert (plain_response(head) is not None) == (b in tchar or b == ord(":")), b
