"""Connection behaviour through fake transports: keep-alive, pipelining, bodies, timeouts, upstream errors."""
from __future__ import annotations

from typing import Any

import pytest

from gateway.pipeline.chain import FilterChain
from gateway.pipeline.filter import Filter
from gateway.pipeline.reply import LocalReply
from tests.http.harness import OK, Harness, status_of, statuses

GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


def test_keep_alive_reuses_upstream_connection() -> None:
    h = Harness()
    for _ in range(3):
        h.feed(GET)
        h.respond(OK)
        assert status_of(h.down.take()) == 200
    assert len(h.pool.conns) == 1
    assert h.all_upstream_bytes().count(b"GET /x HTTP/1.1") == 3
    assert not h.down.closed
    h.close()


def test_connection_close_closes_after_response() -> None:
    h = Harness()
    h.feed(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    h.respond(OK)
    out = h.down.take()
    assert status_of(out) == 200 and b"Connection: close\r\n" in out
    assert h.down.closed
    assert h.pool.idle == [h.up()]  # the upstream side was complete: pooled
    h.close()


def test_http10_keep_alive_and_close() -> None:
    h = Harness()
    h.feed(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    h.respond(OK)
    out = h.down.take()
    assert b"Connection: keep-alive\r\n" in out and not h.down.closed
    h.feed(b"GET /x HTTP/1.0\r\n\r\n")
    h.respond(OK)
    assert status_of(h.down.take()) == 200 and h.down.closed
    h.close()


@pytest.mark.parametrize("head,version", [
    (b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", b"1.1"),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", b"1.1"),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nCONNECTION: keep-alive\r\n\r\n", b"1.1"),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nProxy-Connection: close\r\n\r\n", b"1.1"),
    (b"GET /x HTTP/1.0\r\n\r\n", b"1.0"),
    (b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", b"1.0"),
    (b"GET /x HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n", b"1.0"),
    (b"GET /x HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n", b"1.0"),
])
@pytest.mark.parametrize("byte_at_a_time", [False, True])
def test_http_version_is_exact_whatever_the_connection_fields(head: bytes, version: bytes, byte_at_a_time: bool) -> None:
    # downstream.pyx infers "1.1" from llhttp's keep-alive verdict when no Connection or
    # Proxy-Connection field is present (get_http_version is skipped): every other case asks.
    h = Harness()
    h.feed(head, byte_at_a_time)
    assert h.proto.a_ctx is not None and h.proto.a_ctx.http_version == version
    h.close()


def test_http2_request_line_is_refused_even_with_keep_alive() -> None:
    h = Harness()
    h.feed(b"GET /x HTTP/2.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
    assert status_of(h.down.take()) == 505 and h.down.closed
    h.close()


def test_http10_chunked_upstream_is_close_delimited() -> None:
    h = Harness()
    h.feed(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    h.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    out = h.down.take()
    assert b"Transfer-Encoding" not in out and b"Content-Length" not in out
    assert out.endswith(b"\r\n\r\nabc") and h.down.closed
    h.close()


@pytest.mark.parametrize("bytewise", [False, True])
def test_pipelining_in_order_one_in_flight(bytewise: bool) -> None:
    h = Harness()
    h.feed(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\nGET /3 HTTP/1.1\r\nHost: a\r\n\r\n", bytewise)
    assert h.upstream_bytes().count(b"GET /") == 1  # one exchange in flight
    for n in (1, 2, 3):
        assert h.upstream_bytes().count(b"GET /") == n
        h.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % n)
    out = h.down.take()
    assert statuses(out) == [200, 200, 200]
    assert out.index(b"\r\n\r\n1") < out.index(b"\r\n\r\n2") < out.index(b"\r\n\r\n3")
    h.close()


def test_pipelining_queue_is_bounded() -> None:
    h = Harness()
    h.feed(GET * 20)
    assert not h.down.reading  # 16 waiting: reading paused
    for _ in range(20):
        h.respond(OK)
        h.spin()  # the rest of the read is parsed on the next loop turn
    assert statuses(h.down.take()) == [200] * 20
    assert h.down.reading
    h.close()


def test_long_pipelined_stream_in_small_reads_is_not_431() -> None:
    """The raw head-bytes bound counts one head at a time, never a whole pipelined stream."""
    h = Harness(max_header_bytes=512, max_uri_bytes=128)
    req = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 100 + b"\r\n\r\n"
    stream = req * 40
    for i in range(0, len(stream), 50):
        h.feed(stream[i:i + 50])
        while h.proto.a_up is not None:
            h.respond(OK)
    assert statuses(h.down.take()) == [200] * 40 and not h.down.closed
    h.close()


def test_pipelined_local_replies_keep_order() -> None:
    h = Harness(root=False)
    h.feed(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n" + b"GET /submit HTTP/1.1\r\nHost: a\r\n\r\n" + b"GET /api/y HTTP/1.1\r\nHost: a\r\n\r\n")
    h.respond(OK)
    h.respond(OK)
    assert statuses(h.down.take()) == [200, 405, 200]
    h.close()


def test_pipelined_bad_request_answered_after_earlier_ones() -> None:
    h = Harness()
    h.feed(GET + b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert not h.down.closed
    h.respond(OK)
    assert statuses(h.down.take()) == [200, 400]
    assert h.down.closed
    h.close()


def test_content_length_body_streams_with_backpressure() -> None:
    h = Harness()
    h.feed(b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    assert h.upstream_bytes().endswith(b"\r\n\r\nabc")  # streamed, not buffered whole
    h.up().pause_writing()  # upstream socket full → stop reading the client
    assert not h.down.reading
    h.up().resume_writing()
    assert h.down.reading
    h.feed(b"defghij")
    assert h.upstream_bytes().endswith(b"abcdefghij")
    h.respond(OK)
    assert status_of(h.down.take()) == 200 and h.pool.idle == [h.up()]
    h.close()


def test_slow_downstream_pauses_upstream_reading() -> None:
    h = Harness()
    h.feed(GET)
    h.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
    h.proto.pause_writing()
    assert not h.up().transport.reading  # type: ignore[attr-defined]
    h.proto.resume_writing()
    assert h.up().transport.reading  # type: ignore[attr-defined]
    h.respond(b"def")
    assert h.down.take().endswith(b"abcdef")
    h.close()


def test_client_that_stops_reading_is_cut() -> None:
    h = Harness(body_timeout=5.0)
    h.feed(GET)
    h.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
    h.proto.pause_writing()
    h.tick(6)
    assert h.down.aborted
    h.close()


def test_expect_100_continue() -> None:
    h = Harness()
    h.feed(b"POST /submit HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert h.down.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    h.feed(b"abc")
    h.respond(OK)
    assert status_of(h.down.take()) == 200 and not h.down.closed
    h.close()


def test_expect_on_http10_gets_no_100() -> None:
    h = Harness()
    h.feed(b"POST /submit HTTP/1.0\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc")
    assert h.down.take() == b""
    h.respond(OK)
    assert status_of(h.down.take()) == 200
    h.close()


def test_expect_refused_without_100_closes() -> None:
    h = Harness(root=False)
    h.feed(b"PUT /submit HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    out = h.down.take()
    assert status_of(out) == 405 and b"100 Continue" not in out
    assert h.down.closed and h.all_upstream_bytes() == b""
    h.close()


def test_local_reply_with_unread_body_closes() -> None:
    h = Harness(root=False)
    h.feed(b"POST /submit/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")  # /submit is exact: 404
    assert status_of(h.down.take()) in (404, 405) and h.down.closed
    h.close()


def test_header_deadline_is_absolute() -> None:
    h = Harness(header_timeout=10.0)
    h.feed(b"GET / HTTP/1.1\r\n")
    for _ in range(9):
        h.tick(1.0)
        h.feed(b"X-A: 1\r\n")  # trickling bytes never move the deadline
    assert not h.down.closed
    h.tick(1.5)
    assert status_of(h.down.take()) == 408 and h.down.closed
    h.close()


def test_body_idle_timeout() -> None:
    h = Harness(body_timeout=5.0)
    h.feed(b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    h.tick(3)
    h.feed(b"de")  # progress moves the deadline
    h.tick(3)
    assert not h.down.closed
    h.tick(3)
    assert status_of(h.down.take()) == 408 and h.down.closed
    assert h.up().broken
    h.close()


def test_keep_alive_idle_close() -> None:
    h = Harness(keepalive_timeout=5.0)
    h.feed(GET)
    h.respond(OK)
    h.tick(4)
    assert not h.down.closed
    h.tick(2)
    assert h.down.closed and h.down.take().count(b"HTTP/1.1") == 1
    h.close()


@pytest.mark.parametrize("kind,status", [("connect", 502)])
def test_connect_failure(kind: str, status: int) -> None:
    h = Harness(fail=kind)
    h.feed(GET)
    out = h.down.take()
    assert status_of(out) == 502 and b'"error":"bad_gateway"' in out
    assert h.proto.a_ctx is None and not h.down.closed
    h.close()


def test_upstream_read_timeout_504_and_no_reuse() -> None:
    h = Harness(upstream_timeout=2.0)
    h.feed(GET)
    h.tick(3)
    assert status_of(h.down.take()) == 504
    assert h.up().broken and h.pool.idle == []
    h.feed(GET)
    assert len(h.pool.conns) == 2  # a new connection, not the timed-out one
    h.close()


@pytest.mark.parametrize("data", [b"\x00\x01garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"],
                         ids=["garbage", "dup-cl"])
def test_upstream_garbage_502(data: bytes) -> None:
    h = Harness()
    h.feed(GET)
    h.respond(data)
    assert status_of(h.down.take()) == 502 and h.up().broken
    h.close()


def test_upstream_reset_before_head_502() -> None:
    h = Harness()
    h.feed(GET)
    h.up().connection_lost(ConnectionResetError())
    out = h.down.take()
    assert status_of(out) == 502 and h.proto.a_ctx is None
    assert h.pool.idle == []
    h.close()


def test_upstream_reset_mid_body_closes_downstream() -> None:
    h = Harness()
    h.feed(GET)
    h.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    h.up().connection_lost(ConnectionResetError())
    out = h.down.take()
    assert statuses(out) == [200]  # no second response
    assert h.down.closed
    h.close()


def test_1xx_dropped_final_response_forwarded() -> None:
    h = Harness()
    h.feed(GET)
    h.respond(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n" + OK)
    out = h.down.take()
    assert statuses(out) == [200] and b"Link" not in out
    assert h.pool.idle == [h.up()]
    h.close()


def test_head_response_has_no_body_and_connection_is_reused() -> None:
    h = Harness()
    h.feed(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
    h.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n")
    out = h.down.take()
    assert out.endswith(b"\r\n\r\n") and b"Content-Length: 42\r\n" in out
    assert h.proto.a_ctx is None and not h.down.closed
    assert h.pool.idle == [h.up()]  # the read ended with the head: nothing can be pending
    h.feed(GET)
    h.respond(OK)
    assert status_of(h.down.take()) == 200 and len(h.pool.conns) == 1
    h.close()


@pytest.mark.parametrize("chunks", [
    [b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\nstray"],                      # bytes after the head
    [b"HTTP/1.1 103 Early\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n"],  # two heads in one read
], ids=["stray-bytes", "1xx-same-read"])
def test_head_response_connection_retired_when_unsure(chunks: list[bytes]) -> None:
    h = Harness()
    h.feed(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
    for c in chunks:
        h.respond(c)
    out = h.down.take()
    assert statuses(out) == [200] and b"stray" not in out
    assert h.pool.idle == [] and h.up().broken
    h.close()


@pytest.mark.parametrize("status", [204, 304])
def test_204_304_without_body(status: int) -> None:
    h = Harness()
    h.feed(GET)
    h.respond(b"HTTP/1.1 %d X\r\nETag: e\r\n\r\n" % status)
    out = h.down.take()
    assert status_of(out) == status and out.endswith(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in out
    h.feed(GET)  # connection still usable
    assert h.upstream_bytes().count(b"GET /x") == 2
    h.close()


def test_chunked_response_rechunked_without_extensions_or_trailers() -> None:
    h = Harness()
    h.feed(GET)
    h.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n")
    out = h.down.take()
    assert out.endswith(b"Transfer-Encoding: chunked\r\nX-Request-Id: " + h.proto.builder.peer_b[:0] + out.split(b"X-Request-Id: ")[1].split(b"\r\n")[0]
                        + b"\r\nX-Content-Type-Options: nosniff\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert b"ext" not in out and b"X-T" not in out
    h.feed(GET)  # trailers never leak into the next response's head
    h.respond(OK)
    assert b"X-T" not in h.down.take()
    h.close()


def test_close_delimited_upstream_becomes_chunked() -> None:
    h = Harness()
    h.feed(GET)
    h.respond(b"HTTP/1.1 200 OK\r\n\r\nabc")
    h.up().connection_lost(None)
    out = h.down.take()
    assert b"Transfer-Encoding: chunked" in out and out.endswith(b"3\r\nabc\r\n0\r\n\r\n")
    assert not h.down.closed and h.pool.idle == []
    h.close()


def test_response_hygiene() -> None:
    h = Harness()
    h.feed(GET)
    h.respond(b"HTTP/1.1 200 OK\r\nServer: nginx\r\nX-Powered-By: PHP\r\nConnection: X-Internal\r\nX-Internal: s\r\n"
              b"Keep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n")
    out = h.down.take()
    for absent in (b"nginx", b"PHP", b"X-Internal", b"Keep-Alive"):
        assert absent not in out
    assert b"X-Content-Type-Options: nosniff\r\n" in out
    h.close()


def test_upstream_connection_close_not_reused() -> None:
    h = Harness()
    h.feed(GET)
    h.respond(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert status_of(h.down.take()) == 200 and h.pool.idle == [] and h.up().broken
    assert not h.down.closed  # the downstream connection stays alive
    h.close()


def test_early_response_with_unsent_body_closes_both() -> None:
    h = Harness()
    h.feed(b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    h.respond(b"HTTP/1.1 413 Too Big\r\nContent-Length: 0\r\n\r\n")
    assert status_of(h.down.take()) == 413
    assert h.down.closed and h.pool.idle == []
    h.close()


def test_idle_pooled_connection_closed_by_peer_is_not_reused() -> None:
    h = Harness()
    h.feed(GET)
    h.respond(OK)
    first = h.up()
    first.connection_lost(None)  # the upstream closed its idle keep-alive connection
    h.feed(GET)
    assert len(h.pool.conns) == 2
    h.close()


class Deny(Filter):
    def __init__(self, log: list[str]) -> None:
        self.seen = log

    def access(self, ctx: Any) -> LocalReply:
        self.seen.append("access")
        return LocalReply(401, "unauthorized", "No.", headers=[(b"WWW-Authenticate", b"Bearer")])

    def response(self, ctx: Any, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.seen.append(f"response {status}")
        headers.append((b"X-Filter", b"1"))

    def log(self, ctx: Any) -> None:
        self.seen.append(f"log {ctx.status}")


def test_filter_chain_local_reply_phases() -> None:
    seen: list[str] = []
    h = Harness(chain=FilterChain([Deny(seen)]))
    h.feed(GET)
    out = h.down.take()
    assert status_of(out) == 401 and b"WWW-Authenticate: Bearer\r\n" in out and b"X-Filter: 1\r\n" in out
    assert seen == ["access", "response 401", "log 401"]
    assert h.all_upstream_bytes() == b""
    h.close()


class Tag(Filter):
    def response(self, ctx: Any, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        headers.append((b"X-Tag", b"%d" % status))


def test_filter_response_phase_on_upstream_response() -> None:
    h = Harness(chain=FilterChain([Tag()]))
    h.feed(GET)
    h.respond(OK)
    assert b"X-Tag: 200\r\n" in h.down.take()
    h.close()


class AsyncAllow(Filter):
    async def _check(self) -> None:
        return None

    def access(self, ctx: Any) -> Any:
        return self._check()


def test_async_access_continues_in_task() -> None:
    h = Harness(chain=FilterChain([AsyncAllow()]))
    h.feed(GET)
    assert h.all_upstream_bytes() == b""
    h.loop.run_until_complete(h.proto.a_task)  # type: ignore[arg-type]
    assert b"GET /x HTTP/1.1" in h.upstream_bytes()
    h.respond(OK)
    assert status_of(h.down.take()) == 200
    h.close()


def test_drain_shutdown_closes_idle_and_finishes_in_flight() -> None:
    h = Harness()
    h.feed(GET)
    h.proto.shutdown()
    assert not h.down.closed
    h.respond(OK)
    out = h.down.take()
    assert status_of(out) == 200 and b"Connection: close" in out and h.down.closed
    h.close()


def test_no_route_404_json() -> None:
    h = Harness(routes=[])
    h.feed(GET)
    out = h.down.take()
    assert status_of(out) == 404 and b'{"error":"not_found"' in out and not h.down.closed
    h.close()


def test_queued_request_body_is_bounded_then_streams() -> None:
    """A pipelined POST waiting for its turn buffers at most ~64 KiB before reading pauses."""
    h = Harness()
    body = b"z" * 200_000
    h.feed(GET + b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body))
    sent = 0
    while h.down.reading and sent < len(body):
        h.feed(body[sent:sent + 16384])
        sent += 16384
    assert not h.down.reading and sent < len(body)  # paused after ~64 KiB, long before 200 KB
    h.respond(OK)  # the GET's response: the POST becomes active, its buffered body goes upstream
    assert h.down.reading
    h.feed(body[sent:])
    assert h.upstream_bytes().endswith(body[-1000:])
    h.respond(OK)
    assert statuses(h.down.take()) == [200, 200]
    h.close()


def test_chunked_body_streams_with_backpressure() -> None:
    h = Harness()
    h.feed(b"POST /submit HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert h.upstream_bytes().endswith(b"\r\n\r\n5\r\nhello\r\n")  # streamed before the end
    h.up().pause_writing()
    assert not h.down.reading
    h.up().resume_writing()
    h.feed(b"0\r\n\r\n")
    assert h.upstream_bytes().endswith(b"5\r\nhello\r\n0\r\n\r\n")
    h.respond(OK)
    assert status_of(h.down.take()) == 200 and h.pool.idle == [h.up()]
    h.close()
