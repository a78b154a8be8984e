"""Redis-mode rate limits through the compiled access (ratelimit_fast.pyx `leased_access`) against
the Python code it stands for (RedisLeases.check through python_access): twin filters, each on
its own in-process stand-in for Redis running the lease script's arithmetic, give the same
statuses, RateLimit-* values and decision counters for the same requests; and the compiled path
really decides the common case (a key with tokens in hand)."""
from __future__ import annotations

import asyncio
import math
import random

from gateway.config.model import RateLimitConfig
from gateway.filters.ratelimit import build_filter
from gateway.filters.ratelimit_fast import FastAccess
from gateway.pipeline.context import RequestContext


class FakeRedis:
    """What RedisLeases needs of a RedisLink, with the LEASE script computed in Python."""

    def __init__(self) -> None:
        self.up = True
        self.timeout = 0.5
        self.prefix = "t:"
        self.client = self
        self.store: dict[str, int] = {}
        self.calls = 0

    def register_script(self, source: str) -> object:
        return self._lease

    def _lease(self, keys: list[str], args: list[object], client: object) -> list[int]:
        limit, block, weight, _ttl, instances = (int(args[0]), int(args[1]), float(args[2]),  # type: ignore[arg-type]
                                                 args[3], int(args[4]))  # type: ignore[arg-type]
        curr, prev = self.store.get(keys[0], 0), self.store.get(keys[1], 0)
        room = math.floor(limit - prev * weight - curr)
        if room <= 0:
            return [0, curr, prev]
        grant = max(1, min(block, math.ceil(room / (2 * instances))))
        self.store[keys[0]] = curr + grant
        return [grant, curr + grant, prev]

    async def call(self, name: str, fn: object) -> object:
        self.calls += 1
        return fn(self)  # type: ignore[operator]


POLICIES = (RateLimitConfig("ip", 300, 3600.0), RateLimitConfig("header:x-tenant", 120, 3600.0))


def make(link: FakeRedis, monkeypatch) -> object:  # type: ignore[no-untyped-def]
    import gateway.filters.ratelimit_redis as rr

    monkeypatch.setattr(rr, "_LINK", link)
    settings = type("S", (), {"workers": 1})()
    return build_filter("r", POLICIES, None, 100, None, redis=(settings, lambda: {"instances": 1}))


def request(ip: str, tenant: bytes) -> RequestContext:
    c = RequestContext()
    c.client_ip = ip
    c.request_id = b"req"
    c.headers = [(b"x-tenant", tenant)]
    return c


async def decide(f: object, ctx: RequestContext, compiled: bool) -> tuple[object, ...]:
    res = f.access(ctx) if compiled else f.python_access(ctx)  # type: ignore[attr-defined]
    if res is not None and hasattr(res, "__await__"):
        res = await res
    for _ in range(3):
        await asyncio.sleep(0)               # let refills (one task each) finish, as the loop does
    h = dict(ctx.response_headers)
    return (None if res is None else res.status, h.get(b"RateLimit-Limit"), h.get(b"RateLimit-Remaining"),  # type: ignore[attr-defined]
            h.get(b"RateLimit-Reset"))


def test_compiled_leased_access_answers_as_the_python_code(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    steps = [(rng.choice(["10.0.0.1", "10.0.0.2"]), rng.choice([b"a", b"b", b"c"])) for _ in range(900)]

    async def run() -> None:
        fast_link, slow_link = FakeRedis(), FakeRedis()
        fast = make(fast_link, monkeypatch)
        slow = make(slow_link, monkeypatch)
        assert isinstance(fast.access, FastAccess)  # type: ignore[attr-defined]
        python_calls = 0
        python_access = fast.python_access  # type: ignore[attr-defined]

        def counting(ctx: RequestContext, waits: int | None = None) -> object:
            nonlocal python_calls
            python_calls += 1
            return python_access(ctx, waits)
        fast.python_access = counting  # type: ignore[attr-defined]
        admitted: dict[tuple[str, bytes], int] = {}
        for ip, tenant in steps:
            a = await decide(fast, request(ip, tenant), True)
            b = await decide(slow, request(ip, tenant), False)
            assert a[:3] == b[:3], (ip, tenant, a, b)
            assert abs(int(a[3]) - int(b[3])) <= 1       # seconds to the window's end, read apart
            if a[0] is None:
                admitted[(ip, tenant)] = admitted.get((ip, tenant), 0) + 1
        assert fast.counters.values() == slow.counters.values()  # type: ignore[attr-defined]
        assert fast_link.store == slow_link.store                 # the same leases asked of Redis
        # The limits held (300 per ip, 120 per tenant over both ips) and were reached.
        per_tenant = {t: sum(n for (_, tt), n in admitted.items() if tt == t) for t in (b"a", b"b", b"c")}
        assert max(per_tenant.values()) == 120, per_tenant
        # The compiled path decided the common case; Python only the first request of a key,
        # the requests after a lease ran dry and the refusals.
        refused = sum(1 for _ in steps) - sum(admitted.values())
        assert python_calls < 0.2 * (len(steps) - refused) + refused, (python_calls, refused)

    asyncio.run(run())


def test_compiled_leased_access_leaves_redis_down_to_the_fallback(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def run() -> None:
        link = FakeRedis()
        f = make(link, monkeypatch)
        first = await decide(f, request("10.0.0.1", b"a"), True)
        assert first[:2] == (None, b"120") and link.calls >= 2          # leased from "Redis"
        link.up = False                                    # the fallback: limit / instances, local
        statuses = [(await decide(f, request("10.0.0.1", b"z"), True))[0] for _ in range(130)]
        assert statuses.count(None) == 120 and statuses.count(429) == 10
        assert f.policies[1].leases.fallbacks > 0  # type: ignore[attr-defined]

    asyncio.run(run())
