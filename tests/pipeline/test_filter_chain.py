"""FilterChain phases (DESIGN.md): access in order with short-circuit, response reversed over the
filters that ran, log always; synchronous unless a filter returns an awaitable."""
from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.pipeline import EMPTY_CHAIN, Filter, FilterChain, LocalReply, RequestContext


class Rec(Filter):
    def __init__(self, name: str, calls: list[str], reply: LocalReply | None = None) -> None:
        self.name, self.calls, self.reply = name, calls, reply

    def access(self, ctx: RequestContext) -> LocalReply | None:
        self.calls.append(f"access:{self.name}")
        return self.reply

    def response(self, ctx: RequestContext, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.calls.append(f"response:{self.name}")
        headers.append((b"x-" + self.name.encode(), b"1"))

    def log(self, ctx: RequestContext) -> None:
        self.calls.append(f"log:{self.name}")


class LogOnly(Filter):
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def log(self, ctx: RequestContext) -> None:
        self.calls.append("log:only")


class AsyncAccess(Filter):
    def __init__(self, calls: list[str], reply: LocalReply | None = None) -> None:
        self.calls, self.reply = calls, reply

    def access(self, ctx: RequestContext):  # type: ignore[no-untyped-def]
        async def wait() -> LocalReply | None:
            await asyncio.sleep(0)
            self.calls.append("access:async")
            return self.reply
        return wait()


def test_empty_chain_is_synchronous_and_shared() -> None:
    ctx = RequestContext()
    assert EMPTY_CHAIN.empty and EMPTY_CHAIN.run_access(ctx) is None
    EMPTY_CHAIN.run_response(ctx, 200, [])
    EMPTY_CHAIN.run_log(ctx)


def test_all_pass_runs_every_phase_in_order() -> None:
    calls: list[str] = []
    chain = FilterChain([Rec("a", calls), LogOnly(calls), Rec("b", calls)])
    ctx = RequestContext()
    assert chain.run_access(ctx) is None
    headers: list[tuple[bytes, bytes]] = []
    chain.run_response(ctx, 200, headers)
    chain.run_log(ctx)
    assert calls == ["access:a", "access:b", "response:b", "response:a", "log:a", "log:only", "log:b"]
    assert headers == [(b"x-b", b"1"), (b"x-a", b"1")]


def test_rejection_stops_access_and_response_runs_only_filters_that_ran() -> None:
    calls: list[str] = []
    deny = LocalReply(429, "rate_limited", "slow down")
    chain = FilterChain([Rec("a", calls), Rec("b", calls, deny), Rec("c", calls)])
    ctx = RequestContext()
    assert chain.run_access(ctx) is deny
    chain.run_response(ctx, 429, [])
    chain.run_log(ctx)
    assert calls == ["access:a", "access:b", "response:b", "response:a", "log:a", "log:b", "log:c"]


def test_async_access_continues_with_the_rest() -> None:
    calls: list[str] = []
    chain = FilterChain([Rec("a", calls), AsyncAccess(calls), Rec("c", calls)])
    ctx = RequestContext()
    pending = chain.run_access(ctx)
    assert asyncio.iscoroutine(pending)
    assert asyncio.run(pending) is None
    assert calls == ["access:a", "access:async", "access:c"]
    assert ctx.filters_ran == 3


def test_async_rejection_stops_the_chain() -> None:
    calls: list[str] = []
    deny = LocalReply(401, "unauthorized", "who are you")
    chain = FilterChain([AsyncAccess(calls, deny), Rec("c", calls)])
    ctx = RequestContext()
    assert asyncio.run(chain.run_access(ctx)) is deny  # type: ignore[arg-type]
    assert calls == ["access:async"]


def test_a_failing_log_filter_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    class Boom(Filter):
        def log(self, ctx: RequestContext) -> None:
            raise RuntimeError("boom")

    chain = FilterChain([Boom(), LogOnly(calls)])
    with caplog.at_level(logging.ERROR):
        chain.run_log(RequestContext())
    assert calls == ["log:only"]
    assert "log filter failed" in caplog.text


class Slow(Filter):
    """An access phase that takes `seconds` (busy, synchronous) or waits them (awaitable)."""

    def __init__(self, name: str, seconds: float, wait: bool = False, reply: LocalReply | None = None) -> None:
        self.name, self.seconds, self.wait, self.reply = name, seconds, wait, reply

    def access(self, ctx: RequestContext):  # type: ignore[no-untyped-def]
        if self.wait:
            async def later() -> LocalReply | None:
                await asyncio.sleep(self.seconds)
                return self.reply
            return later()
        import time
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            pass
        return self.reply


def test_a_timed_chain_records_each_access_phase_including_a_wait() -> None:
    import time

    chain = FilterChain([Slow("auth", 0.01), LogOnly([]), Slow("ratelimit", 0.03, wait=True), Slow("last", 0.0)],
                        timed=True)
    ctx = RequestContext()
    t0 = time.monotonic()
    pending = chain.run_access(ctx)
    assert asyncio.run(pending) is None
    t1 = time.monotonic()
    phases = ctx.vars["phases"]
    assert [p[0] for p in phases] == ["auth", "ratelimit", "last"]
    (_, a0, a1), (_, r0, r1), (_, l0, l1) = phases
    assert t0 <= a0 <= a1 <= r0 <= r1 <= l0 <= l1 <= t1       # the clock of ctx.start: time.monotonic
    assert a1 - a0 >= 0.01 and r1 - r0 >= 0.03 and ctx.filters_ran == 4


def test_a_timed_chain_stops_at_a_refusal_with_its_phase_recorded() -> None:
    chain = FilterChain([Slow("auth", 0.0, reply=LocalReply(401, "unauthorized", "no")), Slow("ratelimit", 0.0)],
                        timed=True)
    ctx = RequestContext()
    assert chain.run_access(ctx).status == 401
    assert [p[0] for p in ctx.vars["phases"]] == ["auth"]


def test_an_untimed_chain_records_nothing() -> None:
    ctx = RequestContext()
    assert FilterChain([Slow("auth", 0.0)]).run_access(ctx) is None
    assert ctx.vars is None
