"""Rate limits and hierarchical quotas (SPEC §3, §4): one synchronous Filter per limited route.

Embedded mode: every policy is a KeyedLimiterTable in node memory, placed by name through the
runtime's Placer, so all workers of a node count in the same bytes: a limit is exact per node,
not per worker. A check is a few hundred nanoseconds of compiled code and creates no task.
Redis mode (GATEWAY_REDIS_URL): route policies and quotas alike are RedisPolicy objects, counted
across instances by leases spent locally (ratelimit_redis.py); only a key without local tokens
returns a coroutine that waits for its lease.

What a request counts against, in this order (the first refusal answers 429):
1. its quotas (`[quotas]`, authenticated requests only): the user's share (the user's override,
   else the org's `user_limit`, else `default_user`), then the org's total (the org's override,
   else `default_org`). The org refusing gives the user's share back (`refund`), so neither
   level is consumed for a request that was not served;
2. the route's `[[routes.rate_limits]]` in file order; a refusal gives back what the earlier
   policies and the quotas took.

Keys: `ip` = the client address (X-Forwarded-For only from GATEWAY_TRUSTED_PROXIES); `user`,
`org` = the identity the auth filters set (ctx.consumer_id / ctx.consumer_org); `api_key` = the
key id (ctx.api_key_id when the auth layer provides it); `route` = one key for the whole route;
`header:NAME` = that header's value. A request without the policy's key (no user on a `user`
policy, no such header) is limited by its client IP under that policy, never let through
unlimited: the IP keys live in the same table under their own prefix, so they cannot collide
with a user named like an address.

Headers: every response of a limited route carries RateLimit-Limit / -Remaining / -Reset of
the tightest policy that applied (the least remaining); a 429 adds Retry-After (whole seconds,
at least 1) and the SPEC §4 JSON body. They are added in the access phase to
ctx.response_headers, which the data plane appends to the upstream response or the local reply
alike, so no response phase runs per request.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway._fast.counters import CounterArray
from gateway._fast.heavy_hitters import HeavyHitters
from gateway._fast.heavy_hitters import layout_bytes as top_bytes
from gateway._fast.keyed_table import KeyedLimiterTable, layout_bytes
from gateway.http.head import first_value
from gateway.pipeline.filter import Filter
from gateway.pipeline.reply import LocalReply
from gateway.security.audit import audit

from .ratelimit_fast import FastAccess, eligible

if TYPE_CHECKING:
    from gateway.config.model import QuotaLimit, QuotasConfig, RateLimitConfig
    from gateway.pipeline.context import RequestContext
    from gateway.state.node import Placer

log = logging.getLogger("gateway.ratelimit")

LOAD = 0.8          # table slots per key: 1/LOAD (40 bytes per key with 32-byte slots)
ROUTE_KEY = "route"


def table_capacity(keys: int) -> int:
    return max(16, math.ceil(keys / LOAD))


def bytes_per_key() -> float:
    return layout_bytes(table_capacity(1_000_000)) / 1_000_000


TableFactory = Callable[[str, str, int, float, int, int], KeyedLimiterTable]


def table_factory(placer: Placer | None) -> TableFactory:
    """Makes limiter tables: in node memory by name when there is a Placer (every worker and
    every reload finds the same bytes; a name carries the parameters, so a changed policy gets
    a fresh table and the old one is released with the runtime that used it), else private."""

    def make(name: str, algorithm: str, limit: int, window: float, burst: int, keys: int) -> KeyedLimiterTable:
        cap = table_capacity(keys)
        full = f"{name}/{algorithm}/{limit}/{window!r}/{burst}/{cap}"
        buffer = placer.place(full, layout_bytes(cap), kind="ratelimit") if placer is not None else None
        return KeyedLimiterTable.from_policy(cap, algorithm, float(limit), window, float(burst),  # type: ignore[arg-type]
                                             buffer=buffer)

    return make


# ---- keys -------------------------------------------------------------------------------------

def _ip(ctx: RequestContext) -> str:
    return "ip:" + ctx.client_ip


def _user(ctx: RequestContext) -> str:
    u = ctx.consumer_id
    return "u:" + u if u else "ip:" + ctx.client_ip


def _org(ctx: RequestContext) -> str:
    o = ctx.consumer_org
    return "o:" + o if o else "ip:" + ctx.client_ip


def _api_key(ctx: RequestContext) -> str:
    # ctx.api_key_id: set by the auth filter for an API-key request; without one, the client IP.
    k = ctx.api_key_id
    return "k:" + k if k else "ip:" + ctx.client_ip


def _route(ctx: RequestContext) -> str:
    return ROUTE_KEY


def _header(name: str) -> Callable[[RequestContext], str]:
    lname = name.encode("latin-1")

    def key(ctx: RequestContext) -> str:
        v = first_value(ctx.headers, lname)
        return "h:" + v.decode("latin-1") if v is not None else "ip:" + ctx.client_ip

    return key


def key_function(key: str) -> Callable[[RequestContext], str]:
    if key.startswith("header:"):
        return _header(key[7:])
    return {"ip": _ip, "user": _user, "org": _org, "api_key": _api_key, "route": _route}[key]


# ---- policies ---------------------------------------------------------------------------------

class Policy:
    """One compiled policy: its table, how to find a request's key, how to read its answers."""

    __slots__ = ("name", "config", "table", "key_of", "limit", "limit_header", "bucket", "rate",
                 "capacity", "check", "cell")

    def __init__(self, name: str, config: RateLimitConfig | QuotaLimit, table: KeyedLimiterTable,
                 key_of: Callable[[RequestContext], str] | None, bucket: bool, cell: int = 0) -> None:
        self.name = name                  # metric label and log word: "0", "1"..., "user", "org"
        self.config = config
        self.table = table
        self.key_of = key_of
        self.limit = config.limit
        self.limit_header = (b"RateLimit-Limit", b"%d" % config.limit)
        self.bucket = bucket              # token bucket: answers are (ok, tokens, retry_after)
        self.rate = config.limit / config.window
        self.capacity = config.limit + getattr(config, "burst", 0)   # a bucket's size in tokens
        self.cell = cell                  # its "allowed" decision counter (rejected: cell + 1)
        # check(key, now) -> (allowed, remaining, reset seconds), in the sliding window's terms
        # for both kinds. A sliding-window table answers exactly that (cost defaults to 1): it is
        # bound directly, saving a Python call per request.
        self.check: Callable[..., Any] = self._bucket_check if bucket else table.check

    def _bucket_check(self, key: str, now: float) -> tuple[bool, int, float]:
        ok, left, t = self.table.check(key, now, 1.0)
        rem = int(left)
        if ok:
            nxt = rem + 1
            t = 0.0 if nxt > self.capacity else (nxt - left) / self.rate
        return ok, rem, t


class RedisPolicy(Policy):
    """A policy counted across instances through leases (gateway/filters/ratelimit_redis.py):
    check() answers from local tokens, or returns a future to wait on for a lease."""

    __slots__ = ("leases",)

    def __init__(self, name: str, config: RateLimitConfig, leases: Any,
                 key_of: Callable[[RequestContext], str] | None, cell: int) -> None:
        super().__init__(name, config, leases, key_of, False, cell)
        self.leases = leases
        self.check = leases.check


# Header values of small numbers, made once: formatting three numbers a request cost about 1 us.
_NUMBERS = tuple(b"%d" % i for i in range(4096))


def _number(n: int) -> bytes:
    return _NUMBERS[n] if 0 <= n < 4096 else b"%d" % n


def _headers(p: Policy, remaining: int, reset: float) -> list[tuple[bytes, bytes]]:
    r = int(reset)
    if reset > r:
        r += 1                      # ceil, for the finite positive resets of an allowed request
    return [p.limit_header,
            (b"RateLimit-Remaining", _NUMBERS[remaining] if remaining < 4096 else b"%d" % remaining),
            (b"RateLimit-Reset", _NUMBERS[r] if r < 4096 else b"%d" % r)]


def _seconds(t: float) -> int:
    if t != t or t == math.inf:
        return 0
    return max(0, math.ceil(t))


class _Sampler:
    """At most `rate` rejections a second per process are recorded (a log line and an audit
    event each): a flood of 429s must not flood either. `skipped` counts the rejections not
    recorded since the last recorded one; each audit event carries that count."""

    __slots__ = ("rate", "second", "used", "dropped", "skipped")

    def __init__(self, rate: int = 10) -> None:
        self.rate = rate
        self.second = 0
        self.used = 0
        self.dropped = 0
        self.skipped = 0

    def take(self, now: float) -> bool:
        s = int(now)
        if s != self.second:
            if self.dropped:
                log.info("rate_limited: %d more rejections not logged in the last second", self.dropped)
            self.second, self.used, self.dropped = s, 0, 0
        if self.used < self.rate:
            self.used += 1
            return True
        self.dropped += 1
        self.skipped += 1
        return False

    def skipped_since_last(self) -> int:
        n, self.skipped = self.skipped, 0
        return n


def audit_key(key: str) -> str:
    """A limited key as the audit log may show it: a header's value (which may be a credential)
    only as its fingerprint (SPEC §7); ids, addresses and "route" as they are."""
    if key.startswith("h:"):
        from gateway.security.apikeys import fingerprint

        return "h#" + fingerprint(key[2:])
    return key


_SAMPLER = _Sampler()


# ---- quotas -----------------------------------------------------------------------------------

class Quotas:
    """`[quotas]` compiled: the tables of every (limit, window) in use, per level, and the rule
    that picks a request's user and org quota. One instance serves every route of a runtime."""

    __slots__ = ("config", "_user", "_org", "_default_user", "_default_org")

    def __init__(self, config: QuotasConfig, make: TableFactory, keys: int,
                 redis: tuple[Any, Callable[[], dict[str, Any]]] | None = None) -> None:
        self.config = config
        user_tables: dict[tuple[int, float], Policy] = {}
        org_tables: dict[tuple[int, float], Policy] = {}

        def policy(level: str, q: QuotaLimit, tables: dict[tuple[int, float], Policy]) -> Policy:
            p = tables.get((q.limit, q.window))
            if p is None:
                cell = 0 if level == "user" else 2
                if redis is not None:
                    # Redis mode: counted across instances like a route policy (leases spent
                    # locally); the name carries the level, limit and window, as a table's does.
                    from gateway.config.model import RateLimitConfig

                    as_policy = RateLimitConfig(key=level, limit=q.limit, window=q.window)
                    leases = redis_leases(f"quota/{level}/{q.limit}/{q.window!r}", as_policy, keys, redis)
                    p = RedisPolicy(level, as_policy, leases, None, cell)
                    p.config = q
                else:
                    t = make(f"quota/{level}", "sliding_window", q.limit, q.window, 0, keys)
                    p = Policy(level, q, t, None, False, cell)
                tables[(q.limit, q.window)] = p
            return p

        from gateway.config.model import QuotaLimit

        self._default_user = policy("user", config.default_user, user_tables) if config.default_user else None
        self._default_org = policy("org", config.default_org, org_tables) if config.default_org else None
        # user -> its policy; org -> (org total policy or None, its users' policy or None)
        self._user = {u: policy("user", q, user_tables) for u, q in config.users.items()}
        self._org: dict[str, tuple[Policy | None, Policy | None]] = {}
        for o, q in config.orgs.items():
            per_user = (policy("user", QuotaLimit(q.user_limit, q.window), user_tables)
                        if q.user_limit is not None else None)
            self._org[o] = (policy("org", q, org_tables), per_user)

    def for_request(self, user: str, org: str | None) -> tuple[Policy | None, Policy | None]:
        """(user policy, org policy) for user `user` of org `org` (SPEC §3's inheritance)."""
        org_total, org_users = self._org.get(org, (None, None)) if org else (None, None)
        up = self._user.get(user) or org_users or self._default_user
        op = (org_total or self._default_org) if org else None
        return up, op


# ---- decisions (gateway_ratelimit_decisions_total{route,policy,result}) ----------------------

DECISIONS_KIND = "rl-decisions"
QUOTA_LABELS = ("quota:user", "quota:org")


def policy_labels(policies: tuple[RateLimitConfig, ...]) -> list[str]:
    """The `policy` label of each cell pair: the quotas' two, then "<index>:<key>" per policy
    (from the config: never a user, key or token)."""
    return list(QUOTA_LABELS) + [f"{i}:{p.key}" for i, p in enumerate(policies)]


def decisions_name(route: str, policies: tuple[RateLimitConfig, ...]) -> str:
    """Node-memory name of a route's decision counters. It carries a digest of the policies, so
    the scrape (which knows the policies in force) finds the same cells, and a changed policy list
    starts new counters (a reset Prometheus handles) instead of mislabelling old ones."""
    import hashlib

    sig = hashlib.blake2b(repr([p.as_dict() for p in policies]).encode(), digest_size=6).hexdigest()
    return f"{DECISIONS_KIND}/{route}/{sig}"


def decision_counters(route: str, policies: tuple[RateLimitConfig, ...], placer: Placer | None) -> CounterArray:
    n = 2 * len(policy_labels(policies))            # (allowed, rejected) per label
    if placer is None:
        return CounterArray(n)
    buf = placer.place(decisions_name(route, policies), CounterArray.nbytes(n), kind=DECISIONS_KIND)
    return CounterArray(n, buffer=buf)


# ---- the most limited keys (GET /ratelimit/top) ------------------------------------------------

TOP_NAME = "ratelimit/top"      # one sketch per node, in node memory: every worker records into it
TOP_KIND = "rl-top"
TOP_K = 256                     # counters per generation (2 x 256 x 128 bytes = 64 KiB)
TOP_PERIOD = 60.0               # a generation: top() covers the last one to two minutes


def top_sketch(placer: Placer | None) -> HeavyHitters:
    if placer is None:
        return HeavyHitters(TOP_K, TOP_PERIOD)
    return HeavyHitters(TOP_K, TOP_PERIOD, buffer=placer.place(TOP_NAME, top_bytes(TOP_K), kind=TOP_KIND))


# ---- the filter -------------------------------------------------------------------------------

class RateLimitFilter(Filter):
    """A route's quotas and policies; see the module docstring."""

    name = "ratelimit"

    def __init__(self, route: str, policies: list[Policy], quotas: Quotas | None,
                 clock: Callable[[], float] = time.monotonic, counters: CounterArray | None = None,
                 emit: Callable[..., Any] | None = None, surge: int = 100,
                 top: HeavyHitters | None = None) -> None:
        self.route = route
        self.top = top if top is not None else HeavyHitters(TOP_K, TOP_PERIOD)
        self.emit = emit                  # state.emit: the ratelimit_surge event
        self.surge = surge                # rejections per second (node-wide) that raise it
        self._surge_at = 0.0              # when the rejection rate was last measured
        self._surge_seen = 0              # node-wide rejections then
        self.policies = tuple(policies)
        self.quotas = quotas
        self.clock = clock
        # Cells: 2*i allowed, 2*i+1 rejected; i = 0 user quota, 1 org quota, 2 + n policy n.
        self.counters = counters if counters is not None else CounterArray(2 * (2 + len(policies)))
        if eligible(self.policies, self.counters):
            # The common case compiled (ratelimit_fast.pyx): the same steps without Python frames;
            # it hands quotas, refusals and odd clocks back to python_access / _reject.
            self.access = FastAccess(self, self.policies, self.counters, clock)  # type: ignore[method-assign]

    async def _after_lease(self, ctx: RequestContext, p: RedisPolicy, key: str, fut: Any,
                           waits: int) -> LocalReply | None:
        # A Redis-mode key without local tokens: wait for its lease (bounded by the Redis time
        # budget), then decide again. The next pass may find another key (the org after the
        # user, a route policy after the quotas) waiting for its own first lease: it waits too,
        # at most once per Redis policy (`waits`); a miss after that is decided by after_wait.
        await p.leases.wait(key, fut)
        res = self.python_access(ctx, waits - 1)
        if res is not None and not isinstance(res, LocalReply):     # a coroutine: the next wait
            res = await res
        return res

    def access(self, ctx: RequestContext, may_wait: bool = True) -> Any:
        return self.python_access(ctx, None if may_wait else 0)

    def _leased(self, ctx: RequestContext, p: Policy, key: str, res: Any, taken: list[tuple[Policy, str]],
                now: float, waits: int | None) -> Any:
        # `res` is a future (Redis mode, no local token for `key`): wait for it with what this
        # request took given back (a waiting request holds nothing), or decide without waiting.
        if waits is None:
            waits = 2 + len(self.policies)     # one wait per policy the request may meet
        if waits > 0:
            for q, k in taken:
                q.table.refund(k, now, 1.0)
            return self._after_lease(ctx, p, key, res, waits)  # type: ignore[arg-type]
        return p.leases.after_wait(key)  # type: ignore[attr-defined]

    def _add_headers(self, ctx: RequestContext, p: Policy, remaining: int, reset: float) -> None:
        ctx.response_headers.extend(_headers(p, remaining, reset))

    def python_access(self, ctx: RequestContext, waits: int | None = None) -> Any:
        """None (allowed), a LocalReply (429), or a coroutine (Redis mode: a key waits for its
        lease). `waits`: how many lease waits this request may still do (None: the first pass)."""
        now = self.clock()
        best: tuple[Policy, int, float] | None = None
        taken: list[tuple[Policy, str]] = []
        quotas = self.quotas
        if quotas is not None and ctx.consumer_id:
            user = ctx.consumer_id
            org = ctx.consumer_org
            up, op = quotas.for_request(user, org)
            if up is not None:
                res = up.check(user, now)
                if type(res) is not tuple:             # Redis mode: no local tokens for the user
                    res = self._leased(ctx, up, user, res, taken, now, waits)
                    if type(res) is not tuple:
                        return res
                ok, rem, reset = res
                if not ok:
                    return self._reject(ctx, up, rem, reset, taken, now, "quota_exceeded", 1, user)
                taken.append((up, user))
                best = (up, rem, reset)
            if op is not None and org is not None:
                res = op.check(org, now)
                if type(res) is not tuple:
                    res = self._leased(ctx, op, org, res, taken, now, waits)
                    if type(res) is not tuple:
                        return res
                ok, rem, reset = res
                if not ok:
                    return self._reject(ctx, op, rem, reset, taken, now, "quota_exceeded", 3, org)
                taken.append((op, org))
                if best is None or rem < best[1]:
                    best = (op, rem, reset)
        for p in self.policies:
            key = p.key_of(ctx)  # type: ignore[misc]
            res = p.check(key, now)
            if type(res) is not tuple:                 # Redis mode: no local tokens for this key
                res = self._leased(ctx, p, key, res, taken, now, waits)
                if type(res) is not tuple:
                    return res
            ok, rem, reset = res
            if not ok:
                return self._reject(ctx, p, rem, reset, taken, now, "rate_limited", p.cell + 1, key)
            taken.append((p, key))
            if best is None or rem < best[1]:
                best = (p, rem, reset)
        if best is not None:
            ctx.response_headers.extend(_headers(*best))
            counters = self.counters
            for q, _ in taken:
                counters.inc(q.cell)
        return None

    def _check_surge(self, now: float) -> None:
        # Measured at most once a second, on the rejection path only: the rate is of node-wide
        # rejections (the counters are in node memory), so workers agree; the EventHub keeps one
        # event per route per cooldown however many workers see the surge.
        total = sum(self.counters.values()[1::2])
        elapsed = now - self._surge_at
        rate = (total - self._surge_seen) / elapsed if self._surge_at and elapsed > 0 else 0.0
        self._surge_at, self._surge_seen = now, total
        if rate >= self.surge and self.emit is not None:
            self.emit("ratelimit_surge", service=self.route,
                      details={"route": self.route, "rejections_per_second": round(rate, 1),
                               "threshold": self.surge})

    def _reject(self, ctx: RequestContext, p: Policy, rem: int, reset: float,
                taken: list[tuple[Policy, str]], now: float, code: str, cell: int, key: str) -> LocalReply:
        self.counters.inc(cell)
        self.top.record(f"{self.route}|{p.name}|{key}", now)
        if now - self._surge_at >= 1.0:
            self._check_surge(now)
        for q, k in taken:                 # the request is not served: nothing it took counts
            q.table.refund(k, now, 1.0)
        retry = reset if reset != math.inf else p.config.window
        ctx.response_headers.extend(_headers(p, rem, retry))
        if _SAMPLER.take(now):
            log.info("%s request_id=%s route=%s policy=%s client_ip=%s consumer=%s retry_after=%.3f",
                     code, ctx.request_id.decode("latin-1"), self.route, p.name, ctx.client_ip,
                     ctx.consumer_id or "-", retry)
            # SPEC §7: rate-limit rejections, sampled, in the audit log (GATEWAY_AUDIT_LOG).
            audit("rate_limited", request_id=ctx.request_id, client_ip=ctx.client_ip,
                  consumer=ctx.consumer_id, route=self.route, error=code, policy=p.name,
                  key=audit_key(key), limit=p.limit, window=p.config.window,
                  retry_after=max(1, _seconds(retry)), not_sampled=_SAMPLER.skipped_since_last())
        what = "quota" if code == "quota_exceeded" else "rate limit"
        return LocalReply(429, code, f"{what} exceeded; retry after {max(1, _seconds(retry))} s",
                          headers=[(b"Retry-After", b"%d" % max(1, _seconds(retry)))])


def redis_leases(name: str, config: RateLimitConfig, keys: int,
                 redis: tuple[Any, Callable[[], dict[str, Any]]]) -> Any:
    """A policy's leases in Redis mode (gateway/filters/ratelimit_redis.py), named the same on
    every instance so that they all count in the same Redis keys."""
    from .ratelimit_redis import RedisLeases, block_for, process_link

    settings, status = redis
    return RedisLeases(name, config, process_link(settings), status, block=block_for(config.limit),
                       workers=settings.workers, fallback_capacity=table_capacity(keys))


def build_quotas(config: QuotasConfig | None, keys: int, placer: Placer | None,
                 redis: tuple[Any, Callable[[], dict[str, Any]]] | None = None) -> Quotas | None:
    """`[quotas]` compiled; with `redis` (settings, status), counted across instances."""
    if config is None or (config.default_user is None and config.default_org is None
                          and not config.orgs and not config.users):
        return None
    return Quotas(config, table_factory(placer), keys, redis)


def build_filter(route: str, policies: tuple[RateLimitConfig, ...], quotas: Quotas | None,
                 keys: int, placer: Placer | None, clock: Callable[[], float] = time.monotonic,
                 emit: Callable[..., Any] | None = None, surge: int = 100,
                 redis: tuple[Any, Callable[[], dict[str, Any]]] | None = None,
                 audit_log: str | None = None) -> RateLimitFilter | None:
    if not policies and quotas is None:
        return None
    if audit_log is not None:
        # This process's audit destination (GATEWAY_AUDIT_LOG) for the sampled rejection events:
        # a worker whose routes have no auth would otherwise keep the default (stderr).
        from gateway.security.audit import configure

        configure(audit_log)
    make = table_factory(placer)
    compiled: list[Policy] = []
    for i, pc in enumerate(policies):
        n = 1 if pc.key == "route" else keys
        if redis is not None:
            leases = redis_leases(f"{route}/{i}/{pc.key}/{pc.limit}/{pc.window!r}", pc, n, redis)
            compiled.append(RedisPolicy(str(i), pc, leases, key_function(pc.key), 2 * (2 + i)))
            continue
        table = make(f"ratelimit/{route}/{i}", pc.algorithm, pc.limit, pc.window, pc.burst, n)
        compiled.append(Policy(str(i), pc, table, key_function(pc.key), pc.algorithm == "token_bucket",
                               2 * (2 + i)))
    return RateLimitFilter(route, compiled, quotas, clock, decision_counters(route, policies, placer),
                           emit, surge, top_sketch(placer))


def describe(policies: Any) -> list[dict[str, Any]]:
    return [p.as_dict() for p in policies]
