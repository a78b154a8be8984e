"""The data plane's body hold for a route's body check (exchange.pyx `_hold`, json_check), through
fake transports: nothing reaches an upstream before the whole body is checked; the body then goes
with the head unchanged; a filter waiting on I/O first, reading paused meanwhile, a pipelined
request, one byte at a time."""
from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway.pipeline import Filter, FilterChain, LocalReply, RequestContext
from gateway.security.hygiene import JsonBodyCheck
from tests.http.harness import Harness, status_of, statuses

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def post(body: bytes, path: str = "/api/x", extra: bytes = b"") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (path.encode(), len(body), extra)) + body


class Waits(Filter):
    """An access phase waiting on I/O (as Redis or JWKS would) until the test releases it."""

    name = "waits"

    def __init__(self) -> None:
        self.gate: asyncio.Future[Any] | None = None

    def access(self, ctx: RequestContext):  # type: ignore[no-untyped-def]
        async def wait() -> LocalReply | None:
            self.gate = asyncio.get_running_loop().create_future()
            await self.gate
            return None
        return wait()


def harness(cap: int, *filters: Filter) -> Harness:
    return Harness(FilterChain(list(filters), body_check=JsonBodyCheck("api", cap)))


def test_nothing_goes_upstream_before_the_last_byte_then_all_of_it_with_the_head() -> None:
    h = harness(1000)
    body = json.dumps({"a": [1, 2, 3], "b": "x" * 100}).encode()
    data = post(body)
    for i in range(len(data) - 1):
        h.feed(data[i:i + 1])
        assert not h.pool.conns, f"upstream contacted after byte {i}"
    h.feed(data[-1:])
    sent = h.upstream_bytes()
    assert sent.endswith(b"\r\n\r\n" + body) and sent.startswith(b"POST /x HTTP/1.1\r\n")
    h.respond(OK)
    assert status_of(h.down.take()) == 200
    # The connection goes on: the next request (no body) is proxied at once.
    h.feed(b"GET /api/y HTTP/1.1\r\nHost: h\r\n\r\n")
    assert body + b"GET /y HTTP/1.1\r\n" in h.upstream_bytes()   # (on the same pooled connection)
    h.close()


def test_malformed_or_too_large_reaches_no_upstream() -> None:
    h = harness(1000)
    h.feed(post(b'{"a": '))
    assert status_of(h.down.take()) == 400 and h.down.closed and not h.pool.conns
    h.close()
    h = harness(10)
    h.feed(b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"8\r\n[1,2,3,4\r\n")
    assert not h.down.closed
    h.feed(b"4\r\n,5,6\r\n")          # 12 bytes > 10: refused as it crosses
    assert status_of(h.down.take()) == 413 and h.down.closed and not h.pool.conns
    h.close()


def test_a_filter_waiting_on_io_then_the_hold_lifts_the_read_pause() -> None:
    waits = Waits()
    h = harness(300_000, waits)
    body = b'"' + b"x" * 200_000 + b'"'            # more than MAX_BUFFERED_BODY (64 KiB)
    h.feed(post(body))
    h.spin()
    assert not h.pool.conns and not h.down.reading, "reading pauses while the filter waits"
    waits.gate.set_result(None)   # type: ignore[union-attr]
    h.spin()
    assert h.down.reading
    sent = h.all_upstream_bytes()
    assert sent.endswith(b"\r\n\r\n" + body), len(sent)
    h.respond(OK)
    assert status_of(h.down.take()) == 200
    h.close()


def test_pipelined_requests_each_checked_in_order() -> None:
    h = harness(1000)
    h.feed(post(b"[1]") + post(b"[2]") + post(b"{bad"))
    h.respond(OK)
    h.respond(OK)
    out = h.down.take()
    assert statuses(out) == [200, 200, 400]
    assert h.all_upstream_bytes().count(b"POST /x HTTP/1.1") == 2
    h.close()


def test_bodies_of_other_types_stream_as_before() -> None:
    h = harness(10)
    h.feed(b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n" + b"y" * 50)
    assert h.pool.conns and h.upstream_bytes().endswith(b"y" * 50)   # upstream contacted at once
    h.close()
