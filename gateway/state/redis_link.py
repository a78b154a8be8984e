"""One supervised Redis connection per process: a time budget on every call, up/down with events.

Everything else in the gateway talks to Redis through `RedisLink.call(op, fn)`, which runs
`fn(client)` under the time budget (GATEWAY_REDIS_TIMEOUT) and turns every way Redis can fail
(refused, reset, silent, slow, out of memory, loading...) into one exception, `RedisUnavailable`.
A caller therefore never waits on Redis longer than the budget, and while the link is down it
does not wait at all: the call fails before touching a socket.

Two clients, two budgets:

- `client`: the call budget (`timeout`) as asyncio deadline *and* as redis-py's socket timeouts
  (connect and per reply), so a stalled reply is abandoned even by a call that forgot its deadline.
  Its pool holds at most `max_connections` sockets; a call finding them all busy waits for one
  within its own budget, so the queue is bounded in time (and empty while down: calls fail before
  reaching the pool). On Cluster the cap is per node and a full node pool fails the call at once.
- `slow_client`: `slow_timeout` (default `max(timeout, 0.5 s)`) for background work that is no caller's
  latency: the health PING, the pub/sub listener's connection, full-state loads, heartbeats. A
  50 ms budget is right for a request path but would declare a healthy Redis down after one
  scheduling hiccup on a loaded box, and a full-state read of a large map may need longer.

Up/down is decided by one supervisor task, never by a single failed call:

- while up it PINGs every second (on `slow_client`, within `slow_timeout`); a call that times out
  or loses its connection wakes it to probe *now*. The probe, not the call, marks the link down:
  a stale pooled socket (Redis' idle `timeout`, a CLIENT KILL, a NAT reset) then costs one failed
  call instead of a redis_down/redis_up pair of alerts. Refused or reset connections are confirmed
  within milliseconds; a silent (paused, partitioned) server within `slow_timeout`.
- while down it probes with capped exponential backoff and full jitter (uniform in
  [0, min(2 s, 50 ms * 2^attempt)]): one connection attempt per probe, never a tight loop.
- `on_down(reason)` / `on_up()` fire once per transition, from the supervisor task. The first
  probe after `start()` fires one of them too (the state goes from "not known yet" to up or down),
  so an instance that boots with Redis unreachable reports redis_down.

The budget is enforced twice: the caller waits on the call in a separate task and leaves at its
deadline (`within()`: asyncio.timeout alone is not enough on Python 3.11, see there), and redis-py's
socket timeouts (connect, read, write: the same budget) end the abandoned work soon after.
Connections that timed out mid-reply are never reused: redis-py disconnects a connection whose
read was cancelled or timed out (its `read_response` closes on any exception), so the next call
on that pool slot reconnects instead of reading the previous request's late reply. The link sets
redis-py's own retries to zero: a retry inside the budget would hide failures from the error
counters, and a retried write script could run twice.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.config.env import mask_url_password

log = logging.getLogger("gateway.state.redis")

T = TypeVar("T")

HEALTH_INTERVAL = 1.0      # seconds between PINGs while up
MIN_SLOW_BUDGET = 0.5      # floor of slow_timeout (health PING, pub/sub, loads, heartbeats)
MIN_PROBE_GAP = 0.1        # while up, probes triggered by failing calls are at least this far apart
BACKOFF_BASE = 0.05        # reconnect backoff: first ceiling ...
BACKOFF_CAP = 2.0          # ... doubling up to this
SLOW_POOL_SIZE = 8         # health PING, pub/sub listeners, loads, heartbeats


class RedisUnavailable(Exception):
    """Redis is down, or the call exceeded the time budget."""


async def within(budget: float, aw: Awaitable[T]) -> T:
    """Await `aw` in its own task for at most `budget` seconds, else cancel it and raise TimeoutError.

    Why not just `asyncio.timeout()`: on Python 3.11, `asyncio.wait_for` (which redis-py uses to
    time socket writes) swallows a cancellation that arrives as the inner write completes, and the
    cancelled call then carries on, bounded only by the socket timeouts: measured here as 2x the
    budget for a call that was waiting for a pooled connection of a paused server. Waiting on a
    separate task, the caller leaves at its deadline whatever happens inside; the abandoned task
    ends on its own within the socket timeouts, either cancelled (redis-py then closes its
    connection), completed (its reply fully read), or timed out (connection closed), so the pool
    never holds a connection with a reply still pending. The price is one task per call, about
    25-50 us on a 150-200 us loopback round trip here: fine for the control plane and for batched
    limiter traffic, which is all that awaits Redis (never once per request).
    """
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait((task,), timeout=budget)
    except BaseException:   # our caller was cancelled: so is the work
        task.cancel()
        task.add_done_callback(_retrieve)
        raise
    if done:
        return task.result()
    task.cancel()
    task.add_done_callback(_retrieve)
    raise TimeoutError


def _retrieve(task: asyncio.Future[Any]) -> None:
    # An abandoned call's outcome is of no interest; retrieving it keeps asyncio from logging
    # "exception was never retrieved".
    if not task.cancelled():
        task.exception()


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Full-jitter backoff: uniform in [0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)]."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** min(attempt, 16)))
    return (rng or random).uniform(0.0, ceiling)


def make_client(url: str, *, cluster: bool, timeout: float, max_connections: int,
                client_name: str | None = None) -> Redis | RedisCluster:
    """A redis-py asyncio client for `url` with `timeout` as connect and read timeout, no retries.

    redis://, rediss:// and unix:// are parsed by redis-py's from_url (TLS and unix sockets
    included); querystring options in the URL win over these keyword arguments. `cluster=True`
    builds a RedisCluster from the same URL (one node is enough: it discovers the others).
    """
    kwargs: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "max_connections": max_connections,   # cluster: per node
    }
    if client_name:
        kwargs["client_name"] = client_name
    if cluster:
        return RedisCluster.from_url(url, **kwargs)
    # A blocking pool: a call finding every socket busy waits for one, within its own budget
    # (the asyncio deadline cancels the wait), instead of failing at once on a burst.
    kwargs["timeout"] = None
    return Redis(connection_pool=BlockingConnectionPool.from_url(url, **kwargs))


# Set by the process that maps node memory (gateway/observability/node_metrics.py): called with
# the op of every failed call of every RedisLink in the process.
error_sink: Callable[[str], None] | None = None


class RedisLink:
    """One supervised Redis connection (a small pool) per process; see the module docstring.

    `errors` maps an op name to the calls that failed or timed out (`gateway_redis_errors_total{op}`):
    op names are metric label values, so callers pass constants, never keys or user input.
    """

    def __init__(self, url: str, *, cluster: bool = False, timeout: float = 0.05, prefix: str = "gateway:",
                 on_up: Callable[[], None] | None = None, on_down: Callable[[str], None] | None = None,
                 max_connections: int = 32, client_name: str | None = None,
                 slow_timeout: float | None = None) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if slow_timeout is not None and not slow_timeout >= timeout:
            raise ValueError(f"slow_timeout must be >= timeout ({timeout!r} s), got {slow_timeout!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
        self.url = url
        self.cluster = cluster
        self.timeout = timeout
        # The budget of background work (health PING included); by default MIN_SLOW_BUDGET.
        self.slow_timeout = max(timeout, MIN_SLOW_BUDGET) if slow_timeout is None else slow_timeout
        self.prefix = prefix
        self.on_up = on_up
        self.on_down = on_down
        self.up = False
        self.down_reason: str | None = "not connected yet"
        self.errors: dict[str, int] = {}
        # Probes made so far (each is one PING, reconnecting first when needed): lets a test or a
        # metric see that an outage costs a handful of connection attempts, not a tight loop.
        self.probes = 0
        self.client: Any = make_client(url, cluster=cluster, timeout=timeout,
                                       max_connections=max_connections, client_name=client_name)
        self.slow_client: Any = make_client(url, cluster=cluster, timeout=self.slow_timeout,
                                            max_connections=SLOW_POOL_SIZE, client_name=client_name)
        self._known = False                # has any probe answered yet?
        self._wake = asyncio.Event()       # a call saw a timeout or a lost connection: probe now
        self._up_event = asyncio.Event()   # set while up (wait_up)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._rng = random.Random()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the supervisor (first probe at once); returns immediately, never blocks startup."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name="redis-link")

    async def close(self) -> None:
        """Stop the supervisor and close every connection. No on_down is fired for a close."""
        self._closed = True
        self.up = False
        self.down_reason = "closed"
        self._up_event.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        for c in (self.client, self.slow_client):
            try:
                await (c.aclose() if self.cluster else c.aclose(close_connection_pool=True))
            except (RedisError, OSError) as e:   # closing a dead socket; nothing to do about it
                log.debug("redis: error while closing: %s", e)

    async def wait_up(self, timeout: float | None = None) -> bool:
        """Wait until the link is up (at most `timeout` seconds); True if it is."""
        if self.up:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._up_event.wait()
        except TimeoutError:
            pass
        return self.up

    # -- calls -------------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        """prefix + "{state}:" + parts joined by ":". The hash tag puts every key in one Cluster
        slot, so multi-key scripts and MULTI work on Redis Cluster too."""
        return f"{self.prefix}{{state}}:" + ":".join(parts)

    def pubsub(self) -> PubSub:
        """A PubSub on `slow_client` (long-lived listener: connects within slow_timeout; reads
        are the caller's to time, e.g. `get_message(timeout=...)`)."""
        ps: PubSub = self.slow_client.pubsub()
        return ps

    def count_error(self, op: str) -> None:
        """Count a failed Redis operation (call() does, and pub/sub code that does not go through it)."""
        self.errors[op] = self.errors.get(op, 0) + 1
        sink = error_sink
        if sink is not None:
            sink(op)    # the node's count (gateway_redis_errors_total): node memory

    async def call(self, op: str, fn: Callable[[Any], Awaitable[T]], *, slow: bool = False) -> T:
        """Run `fn(client)` within the budget; RedisUnavailable at once if down, or if it fails.

        `slow=True` runs it on `slow_client` within `slow_timeout` (for background work).
        Exceptions that are not Redis' (a TypeError in `fn`) propagate unchanged: they are bugs,
        not outages.
        """
        if not self.up:
            self.count_error(op)
            raise RedisUnavailable(f"redis {op}: link down ({self.down_reason})")
        budget = self.slow_timeout if slow else self.timeout
        try:
            return await within(budget, fn(self.slow_client if slow else self.client))
        except (TimeoutError, RedisTimeoutError):
            # Our deadline or redis-py's socket timeout, whichever came first; either way the
            # connection is dropped, never reused with a reply pending (see within()).
            self.count_error(op)
            self._suspect()
            raise RedisUnavailable(f"redis {op}: no answer within {budget * 1000:.0f} ms") from None
        except MaxConnectionsError:
            # Cluster only (a node's pool is full; the standalone pool waits instead): too many
            # calls in flight, not a Redis outage.
            self.count_error(op)
            raise RedisUnavailable(f"redis {op}: connection pool exhausted") from None
        except (RedisConnectionError, OSError) as e:
            self.count_error(op)
            self._suspect()
            raise RedisUnavailable(f"redis {op}: {type(e).__name__}: {e}") from e
        except RedisError as e:
            # Answered with an error (OOM, READONLY, BUSY, a script error...): the link itself is
            # fine, the call failed.
            self.count_error(op)
            log.warning("redis %s failed: %s: %s", op, type(e).__name__, e)
            raise RedisUnavailable(f"redis {op}: {type(e).__name__}: {e}") from e

    def _suspect(self) -> None:
        if self.up:
            self._wake.set()

    # -- supervision -------------------------------------------------------------------------

    async def _supervise(self) -> None:
        attempt = 0
        while not self._closed:
            try:
                attempt = await self._supervise_once(attempt)
            except asyncio.CancelledError:
                raise
            except Exception:   # the supervisor must outlive anything, or up/down would freeze
                log.exception("redis: supervisor error")
                await asyncio.sleep(backoff_delay(attempt, self._rng))

    async def _supervise_once(self, attempt: int) -> int:
        """One probe and the wait after it; returns the next backoff attempt number."""
        self._wake.clear()
        reason = await self._probe()
        if reason is not None:
            await self._set_down(reason)
            await asyncio.sleep(backoff_delay(attempt, self._rng))
            return attempt + 1
        self._set_up()
        # A probe another failing call asks for comes MIN_PROBE_GAP later at the earliest, so a
        # slow-but-alive Redis (every call over budget, PING fine) costs at most 10 probes a second.
        await asyncio.sleep(MIN_PROBE_GAP)
        try:
            async with asyncio.timeout(HEALTH_INTERVAL - MIN_PROBE_GAP):
                await self._wake.wait()
        except TimeoutError:
            pass
        return 0

    async def _probe(self) -> str | None:
        """PING within slow_timeout; None if Redis answered, else why not.

        While up, a connection error is retried once at once: the first try may have run on a
        socket that died while idle, and only a fresh connection failing proves Redis is gone.
        """
        reason = "no probe"
        for _ in range(2 if self.up else 1):
            self.probes += 1
            try:
                await within(self.slow_timeout, self._ping())
                return None
            except (TimeoutError, RedisTimeoutError):
                return f"no PONG within {self.slow_timeout * 1000:.0f} ms"
            except (RedisError, OSError) as e:
                reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            except Exception as e:  # redis-py internals failing on a half-open socket
                reason = f"{type(e).__name__}: {e}"
                log.debug("redis probe failed unexpectedly", exc_info=True)
        return reason

    async def _ping(self) -> None:
        if self.cluster:
            slow = self.slow_client
            await slow.initialize()
            await slow.ping(target_nodes=slow.get_node_from_key(self.key("kv")))
            await self.client.initialize()   # topology for the budget client, outside any call budget
        else:
            await self.slow_client.ping()

    def _set_up(self) -> None:
        if self.up and self._known:
            return
        self._known = True
        self.up = True
        self.down_reason = None
        self._up_event.set()
        log.info("redis: up (%s)", mask_url_password(self.url))
        if self.on_up is not None:
            try:
                self.on_up()
            except Exception:
                log.exception("redis: on_up callback failed")

    async def _set_down(self, reason: str) -> None:
        was_known, was_up = self._known, self.up
        self.down_reason = reason
        if was_known and not was_up:
            return
        self._known = True
        self.up = False
        self._up_event.clear()
        log.warning("redis: down (%s): %s", mask_url_password(self.url), reason)
        if not self.cluster:
            # Idle sockets from before the outage are suspect; drop them so the first calls after
            # recovery connect afresh. In-use ones finish or fail on their own (disconnecting a
            # socket under another task's read would surface as odd errors there).
            try:
                await self.client.connection_pool.disconnect(inuse_connections=False)
            except (RedisError, OSError):
                pass
        if self.on_down is not None:
            try:
                self.on_down(reason)
            except Exception:
                log.exception("redis: on_down callback failed")

