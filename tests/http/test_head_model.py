"""The compiled head handling (head.pyx) against the plain-Python model (head_model.py).

Generated request and response heads (names from the ones the data plane acts on, their
look-alikes and random ones, in random case; values with OWS, tabs, obs-text, now and then a byte
llhttp refuses; duplicates; heads over the field-count and field-byte limits) go through the real
DownstreamProtocol/UpstreamProtocol (tests/http/harness.py) whole, one byte at a time and split at
every byte position. Each must give the model's verdict and forward exactly the model's field
lines, in order, where the data plane writes them (after Host upstream, after the status line
downstream).
"""
from __future__ import annotations

import random

import pytest

from gateway.http.head import view_of_request_head, view_of_response_head
from tests.http.harness import Harness, status_of
from tests.http.head_model import request_model, response_model

LIMITS = {"max_headers": 12, "max_header_bytes": 400}

REQUEST_NAMES = [
    b"accept", b"user-agent", b"cookie", b"authorization", b"x-api-key", b"content-type", b"referer",
    b"connection", b"keep-alive", b"te", b"trailer", b"upgrade", b"proxy-connection", b"expect",
    b"x-request-id", b"traceparent", b"tracestate", b"x-forwarded-for", b"x-forwarded-proto",
    b"x-forwarded-anything", b"forwarded", b"x-real-ip", b"x-consumer-id", b"x-consumer-x",
    b"x_forwarded_for", b"x-consumer_id", b"content_length", b"x_custom", b"x-auth-method",
    b"sec-fetch-mode", b"a", b"x-" + b"n" * 40,
]
RESPONSE_NAMES = [
    b"server", b"x-powered-by", b"x-request-id", b"x-content-type-options", b"keep-alive",
    b"proxy-connection", b"proxy-authenticate", b"te", b"trailer", b"upgrade", b"connection",
    b"set-cookie", b"etag", b"cache-control", b"access-control-allow-origin", b"vary", b"a",
]
CONNECTION_VALUES = [b"keep-alive", b"close", b"Keep-Alive", b"x-drop-me, keep-alive", b"cookie",
                     b"etag,  vary", b"x-api-key"]


def _case(rng: random.Random, name: bytes) -> bytes:
    return bytes(c ^ 32 if 97 <= c <= 122 and rng.random() < 0.4 else c for c in name)


def _value(rng: random.Random) -> bytes:
    kind = rng.random()
    body = bytes(rng.choice(b"abcxyz0123456789;=,/-_. \t\x80\xe9\xff") for _ in range(rng.randint(0, 24)))
    if kind < 0.03:
        body += rng.choice([b"\x00", b"\x7f", b"\x01"])   # a byte llhttp refuses in a value
    lead = rng.choice([b"", b" ", b"  ", b"\t", b" \t "])
    trail = rng.choice([b"", b"", b" ", b"\t "])
    return lead + body.strip(b" \t") + trail


def _fields(rng: random.Random, names: list[bytes], n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        name = rng.choice(names)
        if name == b"connection":
            value = b" " + rng.choice(CONNECTION_VALUES)
        elif name == b"upgrade":
            value = b" h2c"
        elif name == b"expect":
            value = b" 100-continue"
        elif name == b"x-request-id":
            value = rng.choice([b" abc-123", b" bad id", b" "])
        elif name == b"traceparent":
            value = rng.choice([b" 00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01", b" junk"])
        else:
            value = _value(rng)
        sep = b":" if rng.random() < 0.97 else rng.choice([b" :", b"\t:"])   # llhttp refuses these
        out.append(_case(rng, name) + sep + value + b"\r\n")
    return out


def request_heads(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    heads = []
    for _ in range(count):
        n = rng.choice([0, 1, 3, 6, 10, 12, 13, 16])
        lines = _fields(rng, REQUEST_NAMES, n)
        lines.insert(rng.randint(0, len(lines)), b"Host: a.test\r\n")
        lead = rng.choice([b"", b"", b"", b"\r\n"])
        heads.append(lead + b"GET /x?q=1 HTTP/1.1\r\n" + b"".join(lines) + b"\r\n")
    return heads


def response_heads(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    heads = []
    for _ in range(count):
        n = rng.choice([0, 2, 5, 9, 11, 12, 14])
        lines = _fields(rng, RESPONSE_NAMES, n)
        lines.insert(rng.randint(0, len(lines)), b"Content-Length: 2\r\n")
        heads.append(b"HTTP/1.1 200 OK\r\n" + b"".join(lines) + b"\r\n")
    return heads


def _request_outcome(head: bytes, pieces: list[bytes]) -> tuple[int, list[bytes] | None]:
    """(status, forwarded field lines) of one request fed in these pieces."""
    h = Harness(**LIMITS)
    try:
        for piece in pieces:
            if h.down.closed:
                break
            h.feed(piece)
        up = h.all_upstream_bytes()
        if not up:
            return status_of(h.down.take()), None
        lines = up.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        assert lines[0] == b"GET /x?q=1 HTTP/1.1" and lines[1] == b"Host: upstream.test:8000", up
        end = next(i for i, line in enumerate(lines) if line.startswith(b"X-Forwarded-For: "))
        h.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return status_of(h.down.take()), [line + b"\r\n" for line in lines[2:end]]
    finally:
        h.close()


def _check_request(head: bytes, pieces: list[bytes]) -> None:
    want = request_model(head, **LIMITS)
    status, forwarded = _request_outcome(head, pieces)
    expected_status = {"ok": 200, "too_large": 431, "invalid": 400}[want.outcome]
    assert status == expected_status, (head, pieces, want)
    if want.outcome == "ok":
        assert forwarded == want.forwarded, (head, want)


REQUESTS = request_heads(160, seed=18)


@pytest.mark.parametrize("head", REQUESTS)
def test_request_head_whole_and_byte_at_a_time_match_the_model(head: bytes) -> None:
    _check_request(head, [head])
    _check_request(head, [head[i:i + 1] for i in range(len(head))])


@pytest.mark.parametrize("head", REQUESTS[:24])
def test_request_head_split_at_every_position_matches_the_model(head: bytes) -> None:
    for k in range(1, len(head)):
        _check_request(head, [head[:k], head[k:]])


def test_generated_requests_cover_every_verdict() -> None:
    outcomes = {request_model(h, **LIMITS).outcome for h in REQUESTS}
    assert outcomes == {"ok", "too_large", "invalid"}


def test_pipelined_requests_each_get_their_own_fields() -> None:
    """Heads after heads in one read and split anywhere: each request forwards its own fields."""
    heads = [h for h in REQUESTS if request_model(h, **LIMITS).outcome == "ok"][:6]
    stream = b"".join(heads)
    for pieces in ([stream], [stream[i:i + 1] for i in range(len(stream))],
                   [stream[:len(stream) // 3], stream[len(stream) // 3:]]):
        h = Harness(**LIMITS)
        for piece in pieces:
            h.feed(piece)
        for head in heads:
            up = h.upstream_bytes()
            lines = up.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            end = next(k for k, line in enumerate(lines) if line.startswith(b"X-Forwarded-For: "))
            assert [line + b"\r\n" for line in lines[2:end]] == request_model(head, **LIMITS).forwarded
            h.up().transport.written.clear()
            h.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        assert status_of(h.down.take()) == 200
        h.close()


def _response_outcome(head: bytes, pieces: list[bytes]) -> tuple[int, list[bytes] | None]:
    h = Harness(**LIMITS)
    try:
        h.feed(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        for piece in pieces:
            h.respond(piece)
        h.respond(b"ok")
        out = h.down.take()
        status = status_of(out)
        if status != 200:
            return status, None
        lines = out.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        end = next(i for i, line in enumerate(lines) if line.startswith(b"Content-Length: "))
        return status, [line + b"\r\n" for line in lines[1:end]]
    finally:
        h.close()


def _check_response(head: bytes, pieces: list[bytes]) -> None:
    want = response_model(head, **LIMITS)
    status, forwarded = _response_outcome(head, pieces)
    assert status == (200 if want.outcome == "ok" else 502), (head, pieces, want)
    if want.outcome == "ok":
        assert forwarded == want.forwarded, (head, want)


RESPONSES = response_heads(120, seed=1818)


@pytest.mark.parametrize("head", RESPONSES)
def test_response_head_whole_and_byte_at_a_time_match_the_model(head: bytes) -> None:
    _check_response(head, [head])
    _check_response(head, [head[i:i + 1] for i in range(len(head))])


@pytest.mark.parametrize("head", RESPONSES[:16])
def test_response_head_split_at_every_position_matches_the_model(head: bytes) -> None:
    for k in range(1, len(head)):
        _check_response(head, [head[:k], head[k:]])


def test_generated_responses_cover_every_verdict() -> None:
    outcomes = {response_model(h, **LIMITS).outcome for h in RESPONSES}
    assert outcomes == {"ok", "too_large", "invalid"}


def test_a_1xx_head_before_the_final_one_is_skipped_and_counted() -> None:
    """Field bytes of an interim head count with the final head's (as on_header counted them)."""
    big = b"X-Pad: " + b"p" * 150 + b"\r\n"
    for interim, status in ((b"HTTP/1.1 100 Continue\r\n\r\n", 200),
                            (b"HTTP/1.1 103 Early Hints\r\n" + big * 2 + b"\r\n", 502)):
        head = interim + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + big + b"\r\n"
        for pieces in ([head], [head[i:i + 1] for i in range(len(head))]):
            h = Harness(**LIMITS)
            h.feed(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            for piece in pieces:
                h.respond(piece)
            h.respond(b"ok")
            assert status_of(h.down.take()) == status
            h.close()


# --- the view filters read -----------------------------------------------------------------------
def test_header_view_reads_only_the_forwarded_fields_in_any_case() -> None:
    v = view_of_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization:  Bearer t \r\n"
                             b"X-Api-Key: k1\r\nx-api-key: k2\r\nConnection: keep-alive\r\nAccept:\r\n\r\n")
    assert v.get(b"authorization") == b"Bearer t " and v.get("AUTHORIZATION") == b"Bearer t "
    assert v.get_all(b"x-api-key") == [b"k1", b"k2"] and v.count(b"X-API-KEY") == 2
    assert v.get(b"host") is None and v.get(b"connection") is None   # the data plane's own fields
    assert v.get(b"accept") == b"" and v.get(b"missing") is None and b"accept" in v
    assert list(v) == [(b"authorization", b"Bearer t "), (b"x-api-key", b"k1"), (b"x-api-key", b"k2"),
                       (b"accept", b"")]
    assert len(v) == 4


def test_header_view_edits_apply_to_what_is_iterated() -> None:
    v = view_of_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nX-Api-Key: k\r\nAccept: */*\r\nX-A: 1\r\n\r\n")
    assert v.remove(b"X-API-KEY") == 1
    v.set(b"x-a", b"2")
    v.add("X-B", "3")
    assert list(v) == [(b"accept", b"*/*"), (b"x-a", b"2"), (b"x-b", b"3")]
    assert v.get(b"x-a") == b"2" and v.get_all(b"x-b") == [b"3"] and v.count(b"x-api-key") == 0
    assert v.remove_if(b"accept", lambda value: value == b"*/*") == 1 and v.get(b"accept") is None


def test_response_view_keeps_the_upstreams_spelling() -> None:
    v = view_of_response_head(b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nServer: x\r\nETag: \"e\"\r\n\r\n")
    assert list(v) == [(b"set-cookie", b"a=1"), (b"etag", b'"e"')]
    assert v.get(b"server") is None


# --- the held head is bounded ------------------------------------------------------------------
def test_a_head_of_endless_whitespace_is_refused_at_the_held_bytes_bound() -> None:
    """Whitespace llhttp drops (a value's leading OWS) counts toward no head limit, but a head that
    has not ended is held: a client sending it forever gets 431 once the hold's bound is crossed,
    and the hold never grows past it."""
    h = Harness(**LIMITS)
    bound = 4 * (LIMITS["max_header_bytes"] + 8192 + 32) + 4096   # (max_uri_bytes: the default)
    h.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad:")
    sent = 0
    while not h.down.closed and sent < 4 * bound:
        h.feed(b" " * 1000)
        sent += 1000
    assert status_of(h.down.take()) == 431
    assert bound < sent <= bound + 1000
    h.close()


def test_leading_whitespace_under_the_bound_is_accepted_split_anywhere() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad:" + b" " * 3000 + b"v\r\n\r\n"
    for pieces in ([head], [head[i:i + 7] for i in range(0, len(head), 7)]):
        h = Harness(**LIMITS)
        for piece in pieces:
            h.feed(piece)
        assert b"x-pad: v\r\n" in h.all_upstream_bytes()
        h.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        assert status_of(h.down.take()) == 200
        h.close()


def test_swar_lowercasing_is_bytes_lower() -> None:
    # head.pyx lowercases forwarded names eight bytes at a time: every byte value, every length
    # and alignment, bytes over 0x7f included (they must neither change nor carry).
    from gateway.http.head import lowered

    rng = random.Random(11)
    alphabet = bytes(range(256))
    for n in range(0, 70):
        for _ in range(40):
            data = bytes(rng.choice(alphabet) for _ in range(n))
            assert lowered(data) == data.lower()
    assert lowered(b"@AZ[`az{\xc1\xda" * 3) == b"@az[`az{\xc1\xda" * 3
