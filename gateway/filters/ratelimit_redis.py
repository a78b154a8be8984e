"""Rate limits across instances (GATEWAY_REDIS_URL): leases of tokens from Redis, spent locally.

The design (README "Rate limits across instances"):

- Redis holds, per policy and key, the count of each fixed window (`window` seconds of wall-clock
  time, aligned on multiples of it, as the embedded sliding window): `{rl:<policy>:<key
  digest>}:<window index>`, one hash tag per key so the two windows a script reads share a
  Cluster slot. The key digest (BLAKE2b) keeps user ids and addresses out of Redis.
- A process asks for a *lease* of up to `block` tokens (one Lua script, EVALSHA, reloaded by
  redis-py on NOSCRIPT): the script computes the sliding estimate prev * weight + curr, grants
  min(block, ceil(room / (2 x instances))) (at least 1 while there is room) and adds the grant
  to the window's count before returning. Tokens are counted in Redis *before* they are spent,
  so with Redis up the instances together never admit more than the estimate allows: the
  overshoot is 0; what leases cost is under-use, at most P x block tokens reserved but not yet
  spent when the limit is reached (P = worker processes of all instances), and those are spent
  as requests keep arriving everywhere. Unspent tokens of a window that ends are dropped (they
  still count in Redis: a little under-admission, never over-).
- The request path only spends local tokens: no Redis round trip. A refill is requested (one
  task per lease, not per request) when a key's tokens fall to a quarter of its last grant, so a
  steadily used key never waits. A key without tokens (its first request in a window, or a
  refill not back yet) waits for its lease, at most GATEWAY_REDIS_TIMEOUT; at most 64 requests
  wait per key, more are refused (429) rather than queued without bound.
- Redis unreachable (the link is down, or a lease failed or timed out): the process falls back
  to a local limiter in node memory sized limit / live instances (membership heartbeats seen
  before the outage; at least 1, at most the limit): never unlimited, never 429 for everyone.
  Leases are tried again as soon as the link reports Redis up (it probes with capped backoff),
  so shared mode resumes within a few seconds of Redis returning.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway._fast.keyed_table import KeyedLimiterTable

from .ratelimit_fast import Lease

if TYPE_CHECKING:
    from gateway.config.model import RateLimitConfig

log = logging.getLogger("gateway.ratelimit")

LEASE = """
local curr = tonumber(redis.call('GET', KEYS[1]) or '0')
local prev = tonumber(redis.call('GET', KEYS[2]) or '0')
local room = math.floor(tonumber(ARGV[1]) - prev * tonumber(ARGV[3]) - curr)
if room <= 0 then return {0, curr, prev} end
local grant = math.ceil(room / (2 * tonumber(ARGV[5])))
if grant > tonumber(ARGV[2]) then grant = tonumber(ARGV[2]) end
if grant < 1 then grant = 1 end
redis.call('INCRBY', KEYS[1], grant)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {grant, curr + grant, prev}
"""

MAX_WAITERS = 64          # requests waiting for one key's lease; beyond: 429
MAX_KEYS = 100_000        # leases held per process; the least recently refilled go first


# A key's lease (tokens in hand, the pending refill, ...): a compiled class, so that the compiled
# access (ratelimit_fast.pyx) spends a token without a Python frame; this module uses it as any
# object with those attributes.
_Lease = Lease


def block_for(limit: int) -> int:
    """Tokens asked per lease: 1 % of the limit, between 1 and 1000."""
    return max(1, min(1000, limit // 100))


_LINK: Any = None


def process_link(settings: Any) -> Any:
    """This process's own RedisLink for limiter traffic (ARCHITECTURE.md: the first per-request
    Redis user adds one per worker), started on first use."""
    global _LINK
    if _LINK is None:
        from gateway.state.redis_link import RedisLink

        _LINK = RedisLink(settings.redis_url, cluster=settings.redis_cluster, timeout=settings.redis_timeout,
                          prefix=settings.redis_prefix, client_name="gateway-ratelimit")
        asyncio.get_running_loop().create_task(_LINK.start())
    return _LINK


class RedisLeases:
    """Leased tokens of one policy in one process, with the local fallback for outages."""

    def __init__(self, name: str, config: RateLimitConfig, link: Any, status: Callable[[], dict[str, Any]],
                 *, block: int, workers: int, fallback_capacity: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.limit = config.limit
        self.window = config.window
        self.link = link
        self.status = status
        self.block = block
        self.workers = max(1, workers)
        self.fallback_capacity = fallback_capacity
        self._fallbacks: dict[int, KeyedLimiterTable] = {}
        self.clock = clock
        self.tag = hashlib.blake2b(name.encode(), digest_size=6).hexdigest()
        self.leases: dict[str, _Lease] = {}
        self.script = link.client.register_script(LEASE)
        self.fallbacks = 0                # decisions taken by the fallback limiter
        self.leased = 0                   # tokens granted so far

    # -- the request path ---------------------------------------------------------------------

    def check(self, key: str, now: float) -> tuple[bool, int, float] | asyncio.Future[None]:
        """(allowed, remaining, reset) from local tokens, or a future to wait on for a lease."""
        if not self.link.up:
            return self._fallback(key)
        wall = self.clock()
        w = int(wall // self.window)
        lease = self.leases.get(key)
        if lease is None:
            if len(self.leases) >= MAX_KEYS:
                self._evict()
            lease = self.leases[key] = _Lease()
        if lease.window != w:
            lease.window, lease.tokens, lease.grant = w, 0, 0
        if lease.tokens > 0:
            lease.tokens -= 1
            if lease.tokens * 4 <= lease.grant and lease.pending is None:
                self._refill(key, lease, w)
            return True, lease.remaining + lease.tokens, (w + 1) * self.window - wall
        if wall < lease.denied_until:
            # Redis had no room a moment ago: refused locally, so a key over its limit costs
            # Redis at most one lease call per `denied` interval per process, not one per request.
            return False, 0, lease.denied_until - wall
        if lease.pending is None:
            self._refill(key, lease, w)
        if lease.waiters >= MAX_WAITERS:
            return False, 0, self.window / max(1, self.limit)
        assert lease.pending is not None
        return lease.pending

    async def wait(self, key: str, fut: asyncio.Future[None]) -> None:
        """Wait for a key's lease, at most the Redis time budget (a little more: the lease's own
        call has that budget)."""
        lease = self.leases.get(key)
        if lease is not None:
            lease.waiters += 1
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.link.timeout * 2 + 0.01)
        except TimeoutError:
            pass
        finally:
            if lease is not None:
                lease.waiters -= 1

    def refund(self, key: str, now: float, cost: float = 1.0) -> bool:
        """Give back a token this process spent for a request a later policy refused."""
        lease = self.leases.get(key)
        if lease is not None and self.link.up and lease.window == int(self.clock() // self.window):
            lease.tokens += 1
            return True
        return self._fallback_table().refund(key, time.monotonic(), cost)

    def after_wait(self, key: str) -> tuple[bool, int, float]:
        """A request that waited for a lease and still found no token: decided by the local
        fallback only when the lease failed (Redis unreachable); with Redis answering, the
        tokens went to other waiting requests, and this one is refused: admitting it locally
        would count it nowhere in Redis (measured: +8 over a limit of 200 with 20 clients)."""
        lease = self.leases.get(key)
        if lease is None or lease.failed or not self.link.up:
            return self._fallback(key)
        return False, 0, max(0.001, self.link.timeout)

    def _fallback(self, key: str) -> tuple[bool, int, float]:
        self.fallbacks += 1
        ok, rem, reset = self._fallback_table().check(key, time.monotonic(), 1.0)
        return ok, int(rem), reset

    def _fallback_table(self) -> KeyedLimiterTable:
        # This process's share of the limit: limit / (live instances x workers), at least 1, so
        # the node admits about limit / instances and all instances together about the limit.
        # Instances are the membership count last seen (kept through the outage).
        share = max(1, min(self.limit, self.limit // max(1, int(self.status().get("instances", 1)) * self.workers)))
        table = self._fallbacks.get(share)
        if table is None:
            self._fallbacks.clear()
            c = self.config
            table = self._fallbacks[share] = KeyedLimiterTable.from_policy(
                self.fallback_capacity, c.algorithm, float(share), c.window,  # type: ignore[arg-type]
                float(c.burst * share // c.limit) if c.algorithm == "token_bucket" else 0.0)
        return table

    def _evict(self) -> None:
        # Bounded: drop the oldest half (dict order = insertion order); their tokens stay counted
        # in Redis (under-admission only).
        for k in list(self.leases)[: len(self.leases) // 2]:
            lease = self.leases[k]
            if lease.pending is None:
                del self.leases[k]

    # -- leases -------------------------------------------------------------------------------

    def _refill(self, key: str, lease: _Lease, w: int) -> None:
        loop = asyncio.get_running_loop()
        lease.pending = loop.create_future()
        loop.create_task(self._lease(key, lease, w))

    async def _lease(self, key: str, lease: _Lease, w: int) -> None:
        from gateway.state.redis_link import RedisUnavailable

        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=10).hexdigest()
        base = f"{self.link.prefix}{{rl:{self.tag}:{digest}}}:"
        wall = self.clock()
        weight = max(0.0, 1.0 - (wall - w * self.window) / self.window)
        instances = max(1, int(self.status().get("instances", 1)))
        ttl = int(self.window * 2000) + 1000
        try:
            grant, curr, prev = await self.link.call(
                "ratelimit", lambda c: self.script(keys=[base + str(w), base + str(w - 1)],
                                                   args=[self.limit, self.block, repr(weight), ttl, instances],
                                                   client=c))
            if lease.window == w:
                lease.tokens += int(grant)
                lease.grant = int(grant)
                if not grant:
                    lease.denied_until = wall + min(self.window, max(0.05, self.window / self.limit))
                lease.remaining = max(0, math.floor(self.limit - int(prev) * weight - int(curr)))
                self.leased += int(grant)
            lease.failed = False
        except RedisUnavailable as exc:
            lease.failed = True
            log.debug("ratelimit lease failed: %s", exc)
        finally:
            fut, lease.pending = lease.pending, None
            if fut is not None and not fut.done():
                fut.set_result(None)
