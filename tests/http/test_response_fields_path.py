"""A route whose filters have no response phase (JWT, rate limits) takes the response path that
copies the upstream's fields from the spans of its head; one with a response filter gets them as
a list of pairs it may edit. With nothing edited, both write the same bytes downstream."""
from __future__ import annotations

from typing import Any

import pytest

from gateway.pipeline.chain import FilterChain
from gateway.pipeline.filter import Filter
from tests.http.harness import Harness

RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: upstream\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2\r\nSet-Cookie: a=1; Path=/\r\nX-Powered-By: php\r\nVary: Origin\r\n"
            b"Connection: keep-alive\r\nETag: \"abc\"\r\n\r\n{}")


class AddsLimitFields(Filter):
    """Access only, as the rate limit does: fields for the response through ctx.response_headers."""

    def access(self, ctx: Any) -> None:
        ctx.response_headers.append((b"RateLimit-Remaining", b"9"))


class ReadsResponse(Filter):
    def __init__(self) -> None:
        self.seen: list[list[tuple[bytes, bytes]]] = []

    def response(self, ctx: Any, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.seen.append(list(headers))


def _downstream_bytes(chain: FilterChain) -> bytes:
    h = Harness(chain=chain)
    try:
        h.feed(b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Request-Id: fixed-id-1\r\n\r\n")
        h.respond(RESPONSE)
        return bytes(h.down.written)
    finally:
        h.close()


@pytest.mark.parametrize("twice", [False, True])
def test_access_only_chain_writes_what_the_pairs_path_writes(twice: bool) -> None:
    access_only = FilterChain([AddsLimitFields()] * (2 if twice else 1))
    assert not access_only.has_response
    reader = ReadsResponse()
    with_response = FilterChain([*[AddsLimitFields()] * (2 if twice else 1), reader])
    assert with_response.has_response
    a = _downstream_bytes(access_only)
    b = _downstream_bytes(with_response)
    assert a == b
    assert b"RateLimit-Remaining: 9\r\n" in a and b"Set-Cookie: a=1; Path=/\r\n" in a
    assert reader.seen and (b"Set-Cookie", b"a=1; Path=/") in reader.seen[0]
