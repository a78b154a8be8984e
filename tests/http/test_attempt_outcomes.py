"""The service-layer seam: each upstream attempt's outcome reaches Service.record exactly once.

Passive health, breakers, least_conn and the latency EWMA all stand on it (issues 8 and 9), so it
is tested here, at the data plane, for every way an attempt ends.
"""
from __future__ import annotations

from typing import Any

import pytest

from gateway.discovery.service import Service
from tests.http.harness import OK, Harness, status_of

GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


def observe(h: Harness) -> list[tuple[Any, str | None, int, float]]:
    seen: list[tuple[Any, str | None, int, float]] = []

    def record(ctx: Any, target: Any, kind: str | None) -> None:
        assert ctx.upstream_end >= ctx.upstream_start > 0
        seen.append((target, kind, ctx.status, ctx.upstream_end - ctx.upstream_start))

    h.service.__class__ = type("Observed", (Service,), {"__slots__": (), "record": lambda self, *a: record(*a)})
    h.service.observed = True
    return seen


def test_unobserved_service_is_never_called() -> None:
    h = Harness()
    def never(self: Any, *a: Any) -> None:
        pytest.fail("record called on an unobserved service")

    h.service.__class__ = type("Unobserved", (Service,), {"__slots__": (), "record": never})
    h.feed(GET)
    h.respond(OK)
    assert status_of(h.down.take()) == 200
    h.close()


def test_complete_response_is_reported_once_with_its_status() -> None:
    h = Harness()
    seen = observe(h)
    for _ in range(2):
        h.feed(GET)
        h.respond(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
        assert status_of(h.down.take()) == 503
    assert [(t, k, s) for t, k, s, _ in seen] == [(h.target, None, 503)] * 2
    h.close()


@pytest.mark.parametrize("kind", ["connect", "timeout", "reset"])
def test_connect_failure_is_reported_with_its_kind(kind: str) -> None:
    h = Harness(fail=kind)
    seen = observe(h)
    h.feed(GET)
    assert status_of(h.down.take()) in (502, 504)
    assert [(t, k) for t, k, _, _ in seen] == [(h.target, kind)]
    h.close()


def test_upstream_reset_mid_response_is_reported_once() -> None:
    h = Harness()
    seen = observe(h)
    h.feed(GET)
    h.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    h.up().connection_lost(ConnectionResetError())
    assert [(t, k) for t, k, _, _ in seen] == [(h.target, "reset")]
    h.close()
    assert len(seen) == 1


def test_upstream_timeout_is_reported() -> None:
    h = Harness()
    seen = observe(h)
    h.feed(GET)
    h.tick(h.settings.upstream_timeout + 1)
    assert status_of(h.down.take()) == 504
    assert [k for _, k, _, _ in seen] == ["timeout"]
    h.close()


def test_client_leaving_mid_exchange_is_reported_as_aborted() -> None:
    h = Harness()
    seen = observe(h)
    h.feed(GET)
    h.proto.connection_lost(None)
    assert [(t, k) for t, k, _, _ in seen] == [(h.target, "aborted")]
    h.close()
    assert len(seen) == 1


def test_local_reply_before_any_pick_reports_nothing() -> None:
    h = Harness(root=False)
    seen = observe(h)
    h.feed(b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(h.down.take()) == 404
    assert seen == []
    h.close()


def test_a_target_whose_admit_refuses_is_skipped_and_none_left_is_503() -> None:
    from gateway.discovery.service import Target

    h = Harness()
    other = Target("other.test", 8001, h.pool)
    h.service.targets.append(other)
    asked: list[Any] = []

    def refuse(ctx: Any) -> bool:
        asked.append(ctx)
        return False

    h.target.admit = refuse
    for _ in range(3):
        assert h.service.pick(None) is other
    other.admit = refuse
    assert h.service.pick(None) is None
    h.feed(GET)
    assert status_of(h.down.take()) == 503
    assert asked and not h.pool.conns
    h.close()
