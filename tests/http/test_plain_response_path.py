"""A plain response that arrives whole in one read is taken without llhttp (upstream.pyx's
_plain_response); the same bytes in two reads go through llhttp. Both must give the client the
same bytes and leave the upstream connection in the same state (pooled, or closed). Whether the
plain path was taken is read from llhttp's own state: a parser that never saw a response still
has status 0."""
from __future__ import annotations

import random
from typing import Any

import pytest
from gateway.http.llstate import verdicts

from gateway.pipeline.chain import FilterChain
from gateway.pipeline.filter import Filter
from tests.http.harness import Harness, status_of

GET = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: rid-1\r\n\r\n"
GET10 = b"GET /x HTTP/1.0\r\nHost: a\r\nX-Request-Id: rid-1\r\n\r\n"
HEAD = b"HEAD /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: rid-1\r\n\r\n"


def _plain(body: bytes = b"ok", fields: bytes = b"", line: bytes = b"HTTP/1.1 200 OK") -> bytes:
    return line + b"\r\n" + fields + b"Content-Length: %d\r\n\r\n" % len(body) + body


# (id, request, upstream bytes, taken without llhttp)
CASES = [
    ("plain", GET, _plain(), True),
    ("empty-body", GET, _plain(b""), True),
    ("json", GET, _plain(b'{"a": 1}', b"Content-Type: application/json\r\nETag: \"x\"\r\nSet-Cookie: a=1\r\n"), True),
    ("dropped-fields", GET, _plain(b"ok", b"Server: up\r\nX-Powered-By: php\r\nKeep-Alive: timeout=5\r\n"
                                          b"X-Request-Id: theirs\r\nUpgrade: h2c\r\n"), True),
    ("leading-zeros", GET, b"HTTP/1.1 200 OK\r\nContent-Length: 0002\r\n\r\nok", True),
    ("close", GET, _plain(b"ok", b"Connection: close\r\n"), True),
    ("keep-alive", GET, _plain(b"ok", b"Connection: Keep-Alive\r\n"), True),
    ("http10-upstream", GET, _plain(b"ok", line=b"HTTP/1.0 200 OK"), True),
    ("http10-upstream-keep-alive", GET, _plain(b"ok", b"Connection: keep-alive\r\n", b"HTTP/1.0 200 OK"), True),
    ("http10-client", GET10, _plain(), True),
    ("404-no-reason", GET, _plain(b"nope", line=b"HTTP/1.1 404"), True),
    ("503", GET, _plain(b"down", line=b"HTTP/1.1 503 Service Unavailable"), True),
    ("599", GET, _plain(b"x", line=b"HTTP/1.1 599 Odd"), True),
    # llhttp's: not plain, or not a whole response in this read
    ("head-request", HEAD, _plain(), False),
    ("204", GET, b"HTTP/1.1 204 No Content\r\n\r\n", False),
    ("304", GET, b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", False),
    ("chunked", GET, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", False),
    ("until-close", GET, b"HTTP/1.1 200 OK\r\nX-A: b\r\n\r\n", False),
    ("connection-names-a-field", GET, _plain(b"ok", b"Connection: x-a\r\nX-A: b\r\n"), False),
    ("obs-text", GET, _plain(b"ok", b"X-A: caf\xc3\xa9\r\n"), False),
    ("interim-first", GET, b"HTTP/1.1 100 Continue\r\n\r\n" + _plain(), False),
    ("bytes-after-body", GET, _plain() + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False),
    ("duplicate-content-length", GET, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", False),
    ("cl-and-te", GET, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", False),
    ("bare-lf", GET, b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", False),
]


def _exchange(req: bytes, resp: bytes, split: bool, chain: FilterChain | None = None,
              **kw: Any) -> tuple[bytes, str, int]:
    """(client bytes, what became of the upstream connection, llhttp's status code after it).
    `split`: the response in two reads, its first byte and the rest (the second read is then
    not a response's first: llhttp reads it, in the same pieces as the whole read)."""
    h = Harness(chain=chain, **kw) if chain is not None else Harness(**kw)
    try:
        h.feed(req)
        if split:
            h.respond(resp[:1])
            if not h.up().transport.closed:  # type: ignore[attr-defined]
                h.respond(resp[1:])
        else:
            h.respond(resp)
        up = h.up()
        if not up.transport.closed and up.until_close:  # type: ignore[attr-defined]
            up.connection_lost(None)   # (the end of a close-delimited body)
        fate = "pooled" if h.pool.idle == [up] else ("aborted" if up.transport.aborted else  # type: ignore[attr-defined]
                                                     "closed" if up.transport.closed else "open")  # type: ignore[attr-defined]
        return bytes(h.down.written), fate, verdicts(up.parser, True)[0]
    finally:
        h.close()


@pytest.mark.parametrize("req,resp,plain", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_whole_and_split_give_the_same_bytes_and_connection(req: bytes, resp: bytes, plain: bool) -> None:
    whole, whole_fate, whole_llhttp = _exchange(req, resp, False)
    slow, slow_fate, slow_llhttp = _exchange(req, resp, True)
    assert whole == slow and whole_fate == slow_fate
    assert slow_llhttp != 0 or slow_fate != "pooled", "the split exchange must have gone through llhttp"
    assert (whole_llhttp == 0) == plain, "llhttp saw the whole response" if plain else "llhttp was skipped"


def test_plain_responses_keep_or_close_the_connection_as_llhttp_says() -> None:
    assert _exchange(GET, _plain(), False)[1] == "pooled"
    assert _exchange(GET, _plain(b"ok", b"Connection: close\r\n"), False)[1] == "aborted"
    assert _exchange(GET, _plain(line=b"HTTP/1.0 200 OK"), False)[1] == "aborted"
    assert _exchange(GET, _plain(b"ok", b"Connection: keep-alive\r\n", b"HTTP/1.0 200 OK"), False)[1] == "pooled"


def test_a_head_over_the_limits_is_refused_as_before() -> None:
    """The plain path leaves such a head to llhttp's path, which refuses it (502, logged)."""
    resp = _plain(b"ok", b"".join(b"X-F%d: v\r\n" % i for i in range(5)))
    out, fate, _ = _exchange(GET, resp, False, max_headers=3)
    assert status_of(out) == 502 and fate == "aborted"
    out, fate, _ = _exchange(GET, resp, False, max_header_bytes=40)
    assert status_of(out) == 502 and fate == "aborted"


def test_llhttp_reads_the_next_response_on_a_connection_the_plain_path_used() -> None:
    h = Harness()
    try:
        for i, bytewise in enumerate((False, True, False, True)):
            h.feed(GET)
            body = b"r%d" % i
            resp = _plain(body)
            if bytewise:
                for k in range(len(resp)):
                    h.respond(resp[k:k + 1])
            else:
                h.respond(resp)
            out = h.down.take()
            assert status_of(out) == 200 and out.endswith(b"\r\n\r\n" + body), out
            assert len(h.pool.conns) == 1 and h.pool.idle == [h.up()]
    finally:
        h.close()


class EditsResponse(Filter):
    def response(self, ctx: Any, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        headers[:] = [(n, v) for n, v in headers if n.lower() != b"x-secret"]
        headers.append((b"X-Edited", b"%d" % status))


class FailsResponse(Filter):
    def response(self, ctx: Any, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        raise RuntimeError("filter bug")


@pytest.mark.parametrize("split", [False, True])
def test_response_filters_run_on_the_plain_path(split: bool) -> None:
    resp = _plain(b"ok", b"X-Secret: s\r\nX-Kept: k\r\n")
    out, fate, _ = _exchange(GET, resp, split, FilterChain([EditsResponse()]))
    assert b"X-Secret" not in out and b"X-Kept: k\r\n" in out and b"X-Edited: 200\r\n" in out
    assert out.endswith(b"\r\n\r\nok") and fate == "pooled"


def test_a_response_filter_that_raises_is_a_502_on_either_path(caplog: pytest.LogCaptureFixture) -> None:
    whole = _exchange(GET, _plain(b"secret-body"), False, FilterChain([FailsResponse()]))
    split = _exchange(GET, _plain(b"secret-body"), True, FilterChain([FailsResponse()]))
    assert whole[:2] == split[:2]
    out, fate, _ = whole
    assert status_of(out) == 502 and b"secret-body" not in out and fate == "aborted"
    assert b"Connection: close" not in out   # (nothing had gone out: the client's connection stays)
    failed = [r for r in caplog.records if "response filter failed: 502" in r.getMessage()]
    assert len(failed) == 2 and all("rid-1" in r.getMessage() and r.exc_info for r in failed)
    # (the 502 itself runs no response filter: the failed one would only fail again)
    assert not [r for r in caplog.records if "on the local" in r.getMessage()]


def test_a_response_filter_that_raises_on_a_local_reply_leaves_the_reply_as_it_is(
        caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(chain=FilterChain([FailsResponse()]), fail="connect")
    try:
        h.feed(GET)
        h.spin()
        out = bytes(h.down.written)
        assert status_of(out) in (502, 503) and not h.down.closed, out
        failed = [r for r in caplog.records if "on the local" in r.getMessage()]
        assert len(failed) == 1 and "rid-1" in failed[0].getMessage() and failed[0].exc_info
    finally:
        h.close()


def test_random_responses_whole_and_split_agree() -> None:
    """Mostly plain responses with one odd piece now and then (the scan's tests draw heads the
    same way), through the whole data plane both ways: same client bytes, same connection fate."""
    rng = random.Random(6122026)
    names = [b"Content-Type", b"Connection", b"Transfer-Encoding", b"Keep-Alive", b"Server", b"Set-Cookie",
             b"X-Request-Id", b"Upgrade", b"Vary", b"ETag", b"X-A"]
    values = [b"close", b"keep-alive", b"chunked", b"text/plain", b"a=1; Path=/", b"", b"x\ty", b"W/\"1\""]
    plain = 0
    for _ in range(1500):
        req = rng.choice((GET, GET, GET10, HEAD))
        body = b"b" * rng.choice((0, 1, 2, 10, 300))
        fields = b"".join(rng.choice(names) + b": " + rng.choice(values) + b"\r\n" for _ in range(rng.randint(0, 5)))
        line = b"HTTP/1.%d %d OK" % (rng.choice((0, 1, 1)), rng.choice((200, 200, 201, 404, 500, 204, 304)))
        resp = _plain(body, fields, line)
        if rng.random() < 0.2:
            i = rng.randrange(len(resp))
            resp = resp[:i] + rng.choice((b"\r", b"\n", b"\x00", b" ", b"\x80", b"0", b"")) + resp[i + 1:]
        if rng.random() < 0.1:
            resp = resp[:-1] if body else resp + b"x"   # a body short of, or past, its length
        whole, whole_fate, whole_llhttp = _exchange(req, resp, False)
        split = _exchange(req, resp, True)
        assert (whole, whole_fate) == split[:2], resp
        plain += whole_llhttp == 0 and split[2] != 0   # llhttp read a status only when split
    assert plain > 300, plain   # (not vacuous: a good share took the plain path)
