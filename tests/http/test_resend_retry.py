"""A second attempt, bytes in → bytes out (issue 7 C2, route `retries`).

- A pooled connection the upstream closed as we wrote (nothing of the response came back) gets
  the request once more on a fresh connection to the same target, for every method, provided we
  still hold the whole request. It is part of the same attempt: reported once.
- `retries = N`: a connect failure or a reset before any response byte is tried again on another
  target, at most N times, for idempotent methods only, never once a response byte reached the
  client, never when the body was streamed beyond what we keep. Each try is reported once.
"""
from __future__ import annotations

from typing import Any

from gateway.discovery.service import Service, Target
from gateway.routing import Route
from tests.http.harness import OK, FakePool, Harness, status_of, statuses

GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
POST = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"


def observe(h: Harness, service: Service | None = None) -> list[tuple[Any, str | None]]:
    seen: list[tuple[Any, str | None]] = []

    def record(ctx: Any, target: Any, kind: str | None) -> None:
        assert ctx.upstream_end >= ctx.upstream_start > 0
        seen.append((target, kind))

    svc = service or h.service
    svc.__class__ = type("Observed", (Service,), {"__slots__": (), "record": lambda self, *a: record(*a)})
    svc.observed = True
    return seen


def pooled(h: Harness) -> None:
    """One complete exchange, so that conns[0] waits in the pool."""
    h.feed(GET)
    h.respond(OK, 0)
    assert status_of(h.down.take()) == 200
    assert h.pool.idle == [h.up(0)]


# --- C2: a stale pooled connection -------------------------------------------------------------
def test_a_pooled_connection_closed_as_we_send_is_sent_again_on_a_fresh_one() -> None:
    h = Harness()
    seen = observe(h)
    pooled(h)
    h.feed(GET)
    sent = h.upstream_bytes(0).split(b"\r\n\r\n")[1] + b"\r\n\r\n"   # the second request's bytes
    h.up(0).connection_lost(None)            # the upstream closed its idle connection: EOF, no byte
    assert len(h.pool.conns) == 2            # a fresh connection, not another pooled one
    assert h.upstream_bytes(1) == sent       # the same request, whole
    assert h.down.take() == b""              # no 502 meanwhile
    h.respond(OK, 1)
    assert status_of(h.down.take()) == 200
    assert seen == [(h.target, None), (h.target, None)]   # the resend is part of the same attempt
    h.close()


def test_the_resend_holds_for_every_method_with_its_whole_body() -> None:
    h = Harness()
    pooled(h)
    h.feed(POST)
    h.up(0).connection_lost(ConnectionResetError())
    assert h.upstream_bytes(1).startswith(b"POST /x HTTP/1.1\r\n")
    assert h.upstream_bytes(1).endswith(b"\r\n\r\nhello")
    h.respond(OK, 1)
    assert status_of(h.down.take()) == 200
    h.close()


def test_a_chunked_body_is_sent_again_whole() -> None:
    h = Harness()
    pooled(h)
    h.feed(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert h.upstream_bytes(0).endswith(b"5\r\nhello\r\n0\r\n\r\n")
    h.up(0).connection_lost(None)
    assert h.upstream_bytes(1).startswith(b"POST /x HTTP/1.1\r\n")
    assert h.upstream_bytes(1).endswith(b"5\r\nhello\r\n0\r\n\r\n")
    h.respond(OK, 1)
    assert status_of(h.down.take()) == 200
    h.close()


def test_the_resend_happens_once() -> None:
    h = Harness()
    seen = observe(h)
    pooled(h)
    h.feed(GET)
    h.up(0).connection_lost(None)
    h.up(1).connection_lost(None)            # the fresh connection fails too: that is an answer
    assert status_of(h.down.take()) == 502
    assert len(h.pool.conns) == 2
    assert seen[-1] == (h.target, "reset") and len(seen) == 2
    h.close()


def test_no_resend_once_a_response_byte_arrived() -> None:
    h = Harness()
    pooled(h)
    h.feed(GET)
    h.respond(b"HTTP/1.1 2", 0)              # the upstream began to answer: it saw the request
    h.up(0).connection_lost(None)
    assert status_of(h.down.take()) == 502
    assert len(h.pool.conns) == 1
    h.close()


def test_no_resend_on_a_fresh_connection() -> None:
    h = Harness()
    h.feed(GET)
    h.up(0).connection_lost(None)            # never pooled: the upstream closed on our first request
    assert status_of(h.down.take()) == 502
    assert len(h.pool.conns) == 1
    h.close()


def test_a_body_still_arriving_is_sent_again_as_far_as_it_came_and_the_rest_follows() -> None:
    # (http.client sends a POST's head and body in two writes: the upstream may close the pooled
    # connection on the head, before the body is even read from the client)
    h = Harness()
    pooled(h)
    h.feed(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello")
    h.up(0).connection_lost(None)
    assert len(h.pool.conns) == 2 and h.upstream_bytes(1).endswith(b"\r\n\r\nhello")
    h.feed(b"world")
    assert h.upstream_bytes(1).endswith(b"\r\n\r\nhelloworld")
    h.respond(OK, 1)
    assert status_of(h.down.take()) == 200
    h.close()


def test_a_body_arriving_while_the_fresh_connection_opens_goes_to_it_in_order() -> None:
    h = Harness()
    pooled(h)
    h.feed(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhel")
    connect = h.pool.connect
    pending: list[Any] = []
    h.pool.connect = pending.append  # type: ignore[method-assign]
    h.up(0).connection_lost(None)
    h.feed(b"lowor")                 # the fresh connection is not there yet: held
    h.pool.connect = connect         # type: ignore[method-assign]
    connect(pending[0])
    h.feed(b"ld")
    assert h.upstream_bytes(1).endswith(b"\r\n\r\nhelloworld")
    h.respond(OK, 1)
    assert status_of(h.down.take()) == 200
    h.close()


def test_no_resend_of_a_body_larger_than_what_is_kept() -> None:
    from gateway.http.downstream import MAX_BUFFERED_BODY

    h = Harness()
    pooled(h)
    size = MAX_BUFFERED_BODY + 1000
    h.feed(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
    h.feed(b"x" * size)
    assert h.up(0).transport.written.endswith(b"x" * 100)  # type: ignore[union-attr]
    h.up(0).connection_lost(None)
    assert status_of(h.down.take()) == 502
    assert len(h.pool.conns) == 1
    h.close()


def test_the_upstream_timeout_is_never_resent() -> None:
    h = Harness()
    pooled(h)
    h.feed(GET)
    h.tick(h.settings.upstream_timeout + 1)
    assert status_of(h.down.take()) == 504
    assert len(h.pool.conns) == 1
    h.close()


# --- retries to another target -----------------------------------------------------------------
class Cluster:
    """A harness whose route `/` has `retries` and whose service has several targets, each with
    its own FakePool (fail: the connect failure kind, or None)."""

    def __init__(self, fails: list[str | None], retries: int) -> None:
        self.h = h = Harness(routes=[])
        self.pools = [FakePool(h.loop, h.settings, f) for f in fails]
        self.targets = [Target(f"t{i}.test", 8000 + i, p) for i, p in enumerate(self.pools)]
        self.service = Service("svc", self.targets)
        h.router.__init__([Route("root", self.service, "/", retries=retries)])  # type: ignore[misc]
        self.seen = observe(h, self.service)

    def attempts(self) -> list[int]:
        return [len(p.conns) for p in self.pools]


def test_a_connect_failure_is_retried_on_another_target() -> None:
    c = Cluster(["connect", None], retries=1)
    c.h.feed(GET)
    assert c.attempts() == [0, 1]
    assert b"Host: t1.test:8001\r\n" in bytes(c.pools[1].conns[0].transport.written)  # type: ignore[union-attr]
    c.pools[1].conns[0].data_received(OK)
    assert status_of(c.h.down.take()) == 200
    assert c.seen == [(c.targets[0], "connect"), (c.targets[1], None)]
    c.h.close()


def test_a_reset_before_any_response_byte_is_retried_for_every_idempotent_method() -> None:
    for method in (b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"):
        c = Cluster([None, None], retries=1)
        body = b"Content-Length: 2\r\n\r\nab" if method == b"PUT" else b"\r\n"
        c.h.feed(method + b" /x HTTP/1.1\r\nHost: a\r\n" + body)
        c.pools[0].conns[0].connection_lost(ConnectionResetError())
        assert c.attempts() == [1, 1], method
        sent = bytes(c.pools[1].conns[0].transport.written)  # type: ignore[union-attr]
        assert sent.startswith(method + b" /x") and sent.endswith(b"\r\n\r\nab" if method == b"PUT" else b"\r\n\r\n")
        c.pools[1].conns[0].data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
        assert status_of(c.h.down.take()) == 204, method
        assert [k for _, k in c.seen] == ["reset", None]
        c.h.close()


def test_post_and_patch_are_never_retried() -> None:
    for method in (b"POST", b"PATCH"):
        c = Cluster(["connect", None], retries=3)
        c.h.feed(method + b" /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab")
        assert status_of(c.h.down.take()) == 502
        assert c.attempts() == [0, 0]
        assert c.seen == [] or c.seen == [(c.targets[0], "connect")]
        c.h.close()


def test_a_post_on_a_reset_is_not_retried_either() -> None:
    c = Cluster([None, None], retries=3)
    c.h.feed(POST)
    c.pools[0].conns[0].connection_lost(ConnectionResetError())
    assert status_of(c.h.down.take()) == 502
    assert c.attempts() == [1, 0]
    c.h.close()


def test_never_retried_after_a_response_byte_reached_the_client() -> None:
    c = Cluster([None, None], retries=3)
    c.h.feed(GET)
    c.pools[0].conns[0].data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    c.pools[0].conns[0].connection_lost(ConnectionResetError())
    out = c.h.down.take()
    assert statuses(out) == [200] and out.endswith(b"abc")   # cut short: the client sees the close
    assert c.h.down.closed
    assert c.attempts() == [1, 0]
    assert c.seen == [(c.targets[0], "reset")]
    c.h.close()


def test_the_upstream_timeout_and_garbage_are_not_retried() -> None:
    c = Cluster([None, None], retries=3)
    c.h.feed(GET)
    c.pools[0].conns[0].data_received(b"garbage\r\n\r\n")
    assert status_of(c.h.down.take()) == 502
    c.h.feed(GET)
    assert c.attempts() == [1, 1]
    c.h.tick(c.h.settings.upstream_timeout + 1)
    assert status_of(c.h.down.take()) == 504
    assert c.attempts() == [1, 1]
    c.h.close()


def test_retries_are_bounded_by_the_route() -> None:
    c = Cluster(["connect", "connect", "connect", None], retries=2)
    c.h.feed(GET)
    assert status_of(c.h.down.take()) == 502
    assert [k for _, k in c.seen] == ["connect"] * 3        # the first try and two retries
    assert [t for t, _ in c.seen] == c.targets[:3]
    assert c.attempts() == [0, 0, 0, 0]
    c.h.close()


def test_no_retry_without_retries() -> None:
    c = Cluster(["connect", None], retries=0)
    c.h.feed(GET)
    assert status_of(c.h.down.take()) == 502
    assert c.seen == [(c.targets[0], "connect")]
    c.h.close()


def test_no_other_available_target_ends_the_retries() -> None:
    c = Cluster(["connect", None], retries=3)
    c.targets[1].available = False
    c.h.feed(GET)
    assert status_of(c.h.down.take()) == 502
    assert c.seen == [(c.targets[0], "connect")]
    c.h.close()


def test_pick_retry_skips_the_failed_target_and_honours_admit() -> None:
    pool = object()
    ts = [Target(f"t{i}.test", 80, pool) for i in range(3)]
    s = Service("s", ts)
    assert s.pick_retry(None, ts[0]) is ts[1]
    assert s.pick_retry(None, ts[2]) is ts[0]
    ts[1].admit = lambda ctx: False
    assert s.pick_retry(None, ts[0]) is ts[2]
    ts[2].available = False
    assert s.pick_retry(None, ts[0]) is None
    assert Service("one", ts[:1]).pick_retry(None, ts[0]) is None


def test_a_retry_then_a_stale_resend_are_both_possible() -> None:
    c = Cluster(["connect", None], retries=1)
    # warm t1's pool: a complete exchange leaves its connection idle
    c.h.feed(GET)
    c.pools[1].conns[0].data_received(OK)
    assert status_of(c.h.down.take()) == 200
    c.h.feed(GET)                            # t0 fails to connect, the retry takes t1's pooled one
    assert c.attempts() == [0, 1]
    c.pools[1].conns[0].connection_lost(None)   # ... which the upstream had just closed
    assert c.attempts() == [0, 2]
    c.pools[1].conns[1].data_received(OK)
    assert status_of(c.h.down.take()) == 200
    c.h.close()
