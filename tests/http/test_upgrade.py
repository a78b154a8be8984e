"""Upgrade and WebSocket tunnelling (SPEC §4, issue 7 C1), bytes in → bytes out.

A route with `websocket = true` forwards an Upgrade request with its Upgrade and `Connection:
upgrade`; after the upstream's 101 the connection is a tunnel (raw bytes both ways, flow control
coupled, half-close passed on, an idle timeout). Elsewhere an Upgrade gets 400; `Upgrade: h2c`
alone is ignored (proxied as a plain request). A non-101 answer is an ordinary response, after
which the connection closes.
"""
from __future__ import annotations

from typing import Any

from gateway.discovery.service import Service
from gateway.routing import Route
from tests.http.harness import OK, Harness, status_of

WS = (b"GET /ws/chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nServer: up\r\n\r\n")


def harness(timeout: float | None = None, **kw: Any) -> Harness:
    h = Harness(routes=[], **kw)
    h.router.__init__([  # type: ignore[misc]
        Route("ws", h.service, "/ws", websocket=True, timeout=timeout),
        Route("root", h.service, "/"),
    ])
    return h


def switched(h: Harness, extra: bytes = b"", first: bytes = b"") -> bytes:
    """Open a tunnel; returns the 101 head the client got."""
    h.feed(WS + extra)
    h.respond(SWITCH + first)
    out = h.down.take()
    assert status_of(out) == 101, out
    assert h.proto.tunnel is not None
    return out


def test_an_upgrade_on_a_route_without_websocket_is_refused() -> None:
    h = harness()
    h.feed(WS.replace(b"/ws/chat", b"/plain"))
    out = h.down.take()
    assert status_of(out) == 400 and b'"upgrade_not_allowed"' in out
    assert b"Connection: close" in out and h.down.closed
    assert h.all_upstream_bytes() == b""
    h.close()


def test_h2c_alone_is_ignored_and_proxied_as_a_plain_request() -> None:
    h = harness()
    h.feed(b"GET /ws/x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
           b"HTTP2-Settings: AAA\r\n\r\nGET /ws/y HTTP/1.1\r\nHost: a\r\n\r\n")
    sent = h.upstream_bytes()
    assert sent.startswith(b"GET /ws/x HTTP/1.1\r\n") and b"pgrade" not in sent
    h.respond(OK)
    assert status_of(h.down.take()) == 200
    assert h.upstream_bytes().count(b"GET /ws/y") == 1   # the next request was parsed as HTTP
    h.close()


def test_the_upgrade_request_is_forwarded_with_its_upgrade_fields() -> None:
    h = harness()
    h.feed(WS)
    sent = h.upstream_bytes()
    assert sent.startswith(b"GET /ws/chat HTTP/1.1\r\n")
    assert sent.endswith(b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n" in sent.lower().replace(b"dghlihnhbxbszsbub25jzq==", b"dGhlIHNhbXBsZSBub25jZQ==")
    h.close()


def test_after_101_bytes_flow_both_ways_unparsed() -> None:
    h = harness()
    # bytes the client sent right behind its request, and the upstream right behind its 101
    head = switched(h, extra=b"\x81\x85early", first=b"\x81\x05hello")
    assert b"Upgrade: websocket\r\n" in head and b"Connection: upgrade\r\n" in head
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
    assert b"X-Request-Id: " in head and b"Server:" not in head
    assert head.endswith(b"\r\n\r\n\x81\x05hello")
    assert h.upstream_bytes().endswith(b"\r\n\r\n\x81\x85early")
    h.feed(b"GET / HTTP/1.1\r\n\r\n")          # not HTTP any more: passed on as it is
    assert h.upstream_bytes().endswith(b"\x81\x85earlyGET / HTTP/1.1\r\n\r\n")
    h.respond(b"HTTP/1.1 200 OK\r\n\r\n")
    assert h.down.take() == b"HTTP/1.1 200 OK\r\n\r\n"
    assert h.pool.idle == []                  # never pooled
    h.close()


def test_the_attempt_is_reported_once_with_101() -> None:
    h = harness()
    seen: list[Any] = []
    h.service.__class__ = type("Observed", (Service,), {"__slots__": (),
                               "record": lambda self, ctx, t, k: seen.append((k, ctx.status))})
    h.service.observed = True
    switched(h)
    h.up().connection_lost(None)
    assert seen == [(None, 101)]
    h.close()


def test_a_non_101_answer_is_an_ordinary_response_then_the_connection_closes() -> None:
    h = harness()
    h.feed(WS + b"GET /ws/next HTTP/1.1\r\nHost: a\r\n\r\n")
    h.respond(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    out = h.down.take()
    assert status_of(out) == 403 and out.endswith(b"no") and b"Connection: close" in out
    assert h.down.closed
    assert b"/ws/next" not in h.all_upstream_bytes()   # what followed the upgrade is never parsed
    assert h.pool.idle == [h.up()]            # a complete ordinary exchange: reusable
    h.close()


def test_a_101_to_a_plain_request_or_without_upgrade_is_a_502() -> None:
    h = harness()
    h.feed(b"GET /ws/x HTTP/1.1\r\nHost: a\r\n\r\n")
    h.respond(SWITCH)
    assert status_of(h.down.take()) == 502
    h.close()
    h = harness()
    h.feed(WS)
    h.respond(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n")
    assert status_of(h.down.take()) == 502
    assert h.proto.tunnel is None
    h.close()


def test_either_side_closing_closes_the_other() -> None:
    h = harness()
    switched(h)
    h.up().connection_lost(None)
    assert h.down.closed
    h.close()
    h = harness()
    switched(h)
    h.down.close()
    h.proto.connection_lost(None)
    assert h.up().transport.closed  # type: ignore[union-attr]
    h.close()


def test_half_close_is_passed_on_and_the_other_direction_keeps_flowing() -> None:
    h = harness()
    switched(h)
    assert h.proto.eof_received() is True      # the client's FIN: the transport stays open
    up_t = h.up().transport
    assert up_t.eof_written and not up_t.closed  # type: ignore[union-attr]
    h.respond(b"still talking")
    assert h.down.take() == b"still talking"
    assert h.up().eof_received() is False      # both sides done: both closed
    assert h.down.closed and up_t.closed  # type: ignore[union-attr]
    h.close()


def test_backpressure_couples_both_directions() -> None:
    h = harness()
    h.down.limit_writes(1000)
    switched(h)
    up_t = h.up().transport
    h.respond(b"x" * 5000)                     # the client does not read
    assert not up_t.reading  # type: ignore[union-attr]
    h.down.take()                              # it reads: the upstream is read again
    assert up_t.reading  # type: ignore[union-attr]
    h.up().pause_writing()                     # the upstream does not read
    assert not h.down.reading
    h.up().resume_writing()
    assert h.down.reading
    h.close()


def test_a_client_already_backed_up_pauses_the_upstream_once_switched() -> None:
    h = harness()
    h.feed(WS)
    h.proto.pause_writing()                    # the client stopped reading before the 101
    assert not h.down.reading
    h.respond(SWITCH + b"first frame")
    assert h.proto.tunnel is not None
    # in a tunnel a client that does not read pauses the upstream, and is itself still read
    assert not h.up().transport.reading and h.down.reading  # type: ignore[union-attr]
    h.proto.resume_writing()
    assert h.up().transport.reading  # type: ignore[union-attr]
    h.close()


def test_the_idle_timeout_closes_both_sides() -> None:
    h = harness(timeout=5.0)
    switched(h)
    h.tick(3)
    h.feed(b"ping")                            # traffic either way moves the deadline
    h.tick(3)
    assert not h.down.closed
    h.respond(b"pong")
    h.tick(4)
    assert not h.down.closed
    h.tick(2)
    assert h.down.closed and h.up().transport.closed  # type: ignore[union-attr]
    h.close()


def test_a_side_that_never_drains_is_aborted_an_idle_period_after_the_close() -> None:
    h = harness(timeout=5.0)
    switched(h)
    up_t = h.up().transport
    h.down.close()
    h.proto.connection_lost(None)              # the client left: the upstream side is closed ...
    assert up_t.closed and not up_t.aborted  # type: ignore[union-attr]
    h.tick(6)                                  # ... and, never drained (no connection_lost), aborted
    assert up_t.aborted  # type: ignore[union-attr]
    assert h.proto.tunnel not in h.ticker.members
    h.close()


def test_drain_leaves_an_established_tunnel_alone() -> None:
    h = harness()
    switched(h)
    h.worker.draining = True
    h.proto.shutdown()
    assert not h.down.closed
    h.feed(b"more")
    assert h.upstream_bytes().endswith(b"more")
    h.close()


def test_an_upgrade_pipelined_behind_another_request_waits_its_turn() -> None:
    h = harness()
    h.feed(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n" + WS + b"frame")
    h.respond(OK)
    assert status_of(h.down.take()) == 200
    assert h.upstream_bytes().endswith(b"Upgrade: websocket\r\n\r\n")   # the pooled connection
    h.respond(SWITCH)
    assert status_of(h.down.take()) == 101
    assert h.upstream_bytes().endswith(b"\r\n\r\nframe")
    h.close()
