"""An upstream attempt's outcome is recorded before the client is sent the response's last bytes:
a client that has seen a response finds the breaker (and every observer) already past it. The
multi-worker breaker tests read the admin API right after a response, and on a loaded CI box a
worker preempted between its write and its record showed them the state before it."""
from __future__ import annotations

from typing import Any

import pytest

from tests.http.harness import Harness

GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
HEAD = b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n"
PLAIN = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail"
CHUNKED = b"HTTP/1.1 500 X\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nfail\r\n0\r\n\r\n"


@pytest.mark.parametrize("req,resp,pieces", [
    (GET, PLAIN, 1),        # the plain path (whole in one read)
    (GET, PLAIN, 2),        # llhttp, the last read completes it
    (GET, CHUNKED, 1),
    (GET, CHUNKED, 3),
    (HEAD, b"HTTP/1.1 500 X\r\nContent-Length: 4\r\n\r\n", 1),
], ids=["plain", "llhttp-split", "chunked", "chunked-split", "head"])
def test_the_outcome_is_recorded_before_the_last_write(req: bytes, resp: bytes, pieces: int) -> None:
    h = Harness()
    recorded: list[tuple[Any, int]] = []
    seen_at_write: list[int] = []
    h.service.observers = (lambda ctx, target, kind: recorded.append((kind, ctx.status)),)
    h.service.observed = True
    plain_write = h.down.write

    def write(data: bytes) -> None:
        seen_at_write.append(len(recorded))
        plain_write(data)

    h.down.write = write  # type: ignore[method-assign]
    try:
        h.feed(req)
        step = -(-len(resp) // pieces)
        for i in range(0, len(resp), step):
            h.respond(resp[i:i + step])
        assert recorded == [(None, 500)]
        assert seen_at_write and seen_at_write[-1] == 1, seen_at_write
    finally:
        h.close()
