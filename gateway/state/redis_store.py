"""Dynamic state in Redis: a durable key → JSON map, a change bus across instances, membership.

Every instance holds a full copy of the map (the lead's control plane, fed by `on_change` and
`on_resync`); Redis holds the durable, shared copy. All keys carry one hash tag (`link.key()`), so
every script below touches a single Redis Cluster slot.

| key (prefix "gateway:") | type | holds |
| --- | --- | --- |
| `gateway:{state}:kv` | hash | field = state key, value = its JSON (orjson) |
| `gateway:{state}:version` | string (INCR) | global version: bumped once by every put/delete |
| `gateway:{state}:changes` | pub/sub channel | one message per version (below) |
| `gateway:{state}:members` | sorted set | member = instance id, score = expiry in ms of *Redis server time* |

Change message (JSON): `{"v": version, "k": key, "val": value or null for a delete, "o": instance id}`.

Writes: put/delete run one Lua script that HSETs/HDELs, INCRs the version and PUBLISHes the message
in one atomic step, so version order = publish order = apply order on every instance.

Apply order and this instance's own writes: `on_change` is called exactly once per version, in
version order, for *every* change, this instance's own included. put()/delete() call it themselves
before they return when no earlier version is still in flight (the common case), otherwise they
wait (at most the link's budget) for the listener to apply the versions before theirs and then
their own. So when put() returns, the caller's own write is normally already applied locally; the
caller must not apply it a second time: a write applied by the caller after put() returned could
land after, and undo, another instance's later write to the same key that the listener applied
meanwhile. The echo of a write that was applied by put() arrives with version <= `version` and is
ignored like any duplicate.

Listener (pub/sub): on every (re)connect it subscribes FIRST, then loads the whole map in one
atomic read (`load()`), calls `on_resync`, then applies the messages that queued up meanwhile,
skipping those at or below the loaded version. A message is never lost silently: one above
`version + 1` means some were (Redis drops a subscriber's messages only with its connection, but
a message can still vanish, e.g. across a failover), and triggers a full resync. While the listener
loads, new messages wait in the socket and in Redis' per-client output buffer, bounded by Redis'
`client-output-buffer-limit pubsub`: a listener that falls that far behind is disconnected by
Redis, reconnects and resyncs again. The listener's reads are not under the call budget (it is
idle most of the time); it PINGs after 1 s of silence and reconnects (with the link's backoff)
when no answer comes within the link's `slow_timeout`, so a dead or paused Redis is noticed
within about 1.5 s.

Membership: every `heartbeat` seconds one script ZADDs this instance with expiry = Redis' TIME +
`member_ttl`, trims expired members, refreshes the set's PEXPIRE (it disappears `member_ttl` after
the last instance stops) and returns the count of unexpired members. Scores use Redis' own clock
(TIME inside the script), never the instances': instances with skewed clocks still agree on who is
live. (On Redis Cluster after a failover, the new primary's clock takes over; a skew between the
two primaries shifts expiries by that skew once.) While Redis is unreachable `live_instances` keeps
its last value: the rate limiter sizes its local share from it, and a failed heartbeat tells
nothing about how many peers are still running.

Survives restarts as far as Redis does: with persistence off, a Redis restart empties the map
(every instance then resyncs to empty); configure RDB/AOF for durable dynamic state.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from redis.exceptions import RedisError

from .redis_link import RedisLink, RedisUnavailable, backoff_delay

log = logging.getLogger("gateway.state.redis")

MAX_VALUE_BYTES = 1 << 20     # JSON of one value; a bigger put is refused (ValueError)
MAX_KEY_BYTES = 1024          # UTF-8 of one state key
PUBSUB_PING_AFTER = 1.0       # seconds of silence on the pub/sub connection before we PING it

# put/delete: KEYS = kv hash, version; ARGV = op, field, value JSON ("null" for del), key JSON,
# origin JSON, channel. The message is assembled from pieces already JSON-encoded by the caller,
# so the script needs no JSON library and the value's bytes are published exactly as stored.
_WRITE = """
local v = redis.call('INCR', KEYS[2])
if ARGV[1] == 'put' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
else
  redis.call('HDEL', KEYS[1], ARGV[2])
end
redis.call('PUBLISH', ARGV[6],
  '{"v":' .. string.format('%d', v) .. ',"k":' .. ARGV[4] .. ',"val":' .. ARGV[3] .. ',"o":' .. ARGV[5] .. '}')
return v
"""

# load: KEYS = version, kv hash. One script = one atomic read of both.
_LOAD = """
return {redis.call('GET', KEYS[1]) or '0', redis.call('HGETALL', KEYS[2])}
"""

# heartbeat: KEYS = members; ARGV = instance id, ttl ms. Returns the live count (this one included).
_BEAT = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCOUNT', KEYS[1], string.format('(%d', now), '+inf')
"""


class _Resync(Exception):
    """The listener must load the full state again (gap, malformed message, callback failure)."""


class RedisStore:
    """The Redis-backed dynamic state store; see the module docstring for the protocol."""

    def __init__(self, link: RedisLink, instance_id: str, *,
                 on_change: Callable[[int, str, Any | None], None],
                 on_resync: Callable[[int, dict[str, Any]], None],
                 heartbeat: float = 1.0, member_ttl: float = 5.0) -> None:
        if not instance_id:
            raise ValueError("instance_id must be a non-empty string")
        if not 0 < heartbeat < member_ttl:
            raise ValueError(f"need 0 < heartbeat < member_ttl, got {heartbeat!r} and {member_ttl!r}")
        self._link = link
        self.instance_id = instance_id
        self._on_change = on_change
        self._on_resync = on_resync
        self._heartbeat = heartbeat
        self._member_ttl_ms = int(member_ttl * 1000)
        self.version = 0
        self.live_instances = 1
        self.synced = False           # a full resync has happened on the current subscription
        self.resyncs = 0              # full resyncs so far (first sync included)
        self._kv = link.key("kv")
        self._version_key = link.key("version")
        self._members = link.key("members")
        self.channel = link.key("changes")
        self._origin = orjson.dumps(instance_id)
        self._write = link.client.register_script(_WRITE)
        self._load = link.client.register_script(_LOAD)
        self._beat = link.client.register_script(_BEAT)
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._resync_wanted = False
        self._last_session_synced = False
        self._synced_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the listener and the heartbeat (the link must be started too); returns at once."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen_forever(), name="redis-store-listener"),
                       loop.create_task(self._heartbeat_forever(), name="redis-store-heartbeat")]

    async def close(self) -> None:
        """Stop the tasks and leave the membership set (best effort, within the budget).
        Close the store before its link."""
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self.synced = False
        try:
            await self._link.call("leave", lambda c: c.zrem(self._members, self.instance_id))
        except RedisUnavailable:
            pass

    async def wait_synced(self, timeout: float | None = None) -> bool:
        """Wait (at most `timeout` s) until the listener is synced: subscribed, with a full
        resync done on that subscription (False if not by then)."""
        if self.synced:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._synced_event.wait()
        except TimeoutError:
            pass
        return self.synced

    # -- writes and reads --------------------------------------------------------------------

    async def put(self, key: str, value: Any) -> int:
        """Persist and publish `key` = `value` (JSON-serializable, not None); return its version.

        On return, `on_change` has normally been called for this write already (in version
        order); the caller must not apply it again itself (see the module docstring).

        ValueError for a bad key, a None value (use delete) or JSON over MAX_VALUE_BYTES;
        RedisUnavailable when Redis is down or slow (then nothing was applied here; on a timeout
        the write may still have landed in Redis, and then its message applies it everywhere).
        """
        _check_key(key)
        if value is None:
            raise ValueError("put() of None: use delete()")
        data = orjson.dumps(value)
        if len(data) > MAX_VALUE_BYTES:
            raise ValueError(f"value of {key!r} is {len(data)} bytes of JSON; the limit is {MAX_VALUE_BYTES}")
        v = await self._run_write("put", key, data)
        await self._settle(v, key, orjson.loads(data))   # apply the stored form, as peers see it
        return v

    async def delete(self, key: str) -> int:
        """Delete `key` everywhere; return its version (a version is used even if `key` was absent)."""
        _check_key(key)
        v = await self._run_write("delete", key, b"null")
        await self._settle(v, key, None)
        return v

    async def load(self) -> tuple[int, dict[str, Any]]:
        """(version, full state) from one atomic read. A field whose JSON is corrupt is skipped."""
        version, flat = await self._link.call(
            "load", lambda c: self._load(keys=[self._version_key, self._kv], client=c), slow=True)
        state: dict[str, Any] = {}
        for i in range(0, len(flat), 2):
            try:
                state[flat[i].decode()] = orjson.loads(flat[i + 1])
            except (UnicodeDecodeError, orjson.JSONDecodeError):
                log.warning("redis store: skipping field %r of %s: not UTF-8 JSON", flat[i][:80], self._kv)
        return int(version), state

    async def _run_write(self, op: str, key: str, data: bytes) -> int:
        args = ["put" if op == "put" else "del", key, data, orjson.dumps(key), self._origin, self.channel]
        v = await self._link.call(
            op, lambda c: self._write(keys=[self._kv, self._version_key], args=args, client=c))
        return int(v)

    async def _settle(self, v: int, key: str, value: Any | None) -> None:
        """Apply our own version `v` in order: now if it is next, else after the listener caught up."""
        if v <= self.version:
            return                       # the listener already applied it (our echo came first)
        if v == self.version + 1:
            self._apply(v, key, value)   # nothing in between: ours is next
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(v, []).append(fut)
        try:
            async with asyncio.timeout(self._link.timeout):
                await fut
        except TimeoutError:
            # Durable in Redis and published: the listener applies it when it catches up (or
            # resyncs). Only read-your-writes is delayed.
            log.info("redis store: version %d not applied yet after put (at %d)", v, self.version)
        finally:
            waiters = self._waiters.get(v)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[v]

    def _apply(self, v: int, key: str, value: Any | None) -> None:
        self.version = v
        try:
            self._on_change(v, key, value)
        except Exception:
            log.exception("redis store: on_change failed at version %d; resyncing", v)
            self._resync_wanted = True
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        if self._waiters:
            for wv in [wv for wv in self._waiters if wv <= self.version]:
                for fut in self._waiters.pop(wv):
                    if not fut.done():
                        fut.set_result(None)

    # -- listener ----------------------------------------------------------------------------

    async def _listen_forever(self) -> None:
        attempt = 0
        while True:
            await self._link.wait_up()
            ps = self._link.pubsub()
            try:
                await self._session(ps)
            except (RedisUnavailable, RedisError, OSError, TimeoutError, _Resync) as e:
                if not isinstance(e, RedisUnavailable):
                    self._link.count_error("subscribe")
                log.warning("redis store: listener restarting: %s: %s", type(e).__name__, e)
            except Exception:
                # Whatever redis-py raises from a half-closed socket: the listener must outlive
                # it, or this instance would silently stop hearing about changes.
                self._link.count_error("subscribe")
                log.exception("redis store: listener restarting after an unexpected error")
            finally:
                self.synced = False
                self._synced_event.clear()
                await _close_pubsub(ps, self._link.slow_timeout)
            # A session that got as far as a resync was a success: start the backoff over.
            attempt = 0 if self._last_session_synced else attempt + 1
            await asyncio.sleep(backoff_delay(attempt))

    async def _session(self, ps: Any) -> None:
        """One subscription: subscribe, resync, then apply messages until something breaks."""
        self._last_session_synced = False
        async with asyncio.timeout(self._link.slow_timeout):
            await ps.subscribe(self.channel)
            while True:   # the confirmation proves the server registered us: from here nothing is missed
                msg = await ps.get_message(timeout=self._link.slow_timeout)
                if msg is not None and msg["type"] == "subscribe":
                    break
        await self._resync()
        self._last_session_synced = True
        loop = asyncio.get_running_loop()
        pong_due: float | None = None
        while True:
            conn = ps.connection
            if conn is None or not conn.is_connected:
                raise RedisError("pub/sub connection lost")
            if self._resync_wanted:
                await self._resync()
            wait = PUBSUB_PING_AFTER if pong_due is None else max(0.0, pong_due - loop.time())
            msg = await ps.get_message(timeout=wait)
            if msg is None:
                if pong_due is None:
                    async with asyncio.timeout(self._link.slow_timeout):
                        await ps.ping()
                    pong_due = loop.time() + self._link.slow_timeout
                elif loop.time() >= pong_due:
                    raise TimeoutError(f"no PONG on the pub/sub connection within "
                                       f"{self._link.slow_timeout * 1000:.0f} ms")
                continue
            pong_due = None   # any traffic proves the connection alive
            kind = msg["type"]
            if kind == "message":
                if not self._on_message(msg["data"]):
                    await self._resync()
            elif kind in ("unsubscribe", "sunsubscribe"):
                raise RedisError("unsubscribed by the server")

    def _on_message(self, data: bytes) -> bool:
        """Apply one change message; False when a full resync is needed."""
        try:
            m = orjson.loads(data)
            v, key, value = m["v"], m["k"], m["val"]
            if type(v) is not int or not isinstance(key, str):
                raise TypeError("bad field types")
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            log.warning("redis store: malformed change message (%s): %r", e, data[:200])
            return False
        if v <= self.version:
            return True        # queued before our load, or our own write already applied by put()
        if v != self.version + 1:
            log.info("redis store: missed versions %d..%d; resyncing", self.version + 1, v - 1)
            return False
        self._apply(v, key, value)
        return True

    async def _resync(self) -> None:
        self._resync_wanted = False
        version, state = await self.load()
        self.version = version
        self.resyncs += 1
        try:
            self._on_resync(version, state)
        except Exception:
            log.exception("redis store: on_resync failed at version %d", version)
            raise _Resync("on_resync failed") from None
        self.synced = True
        self._synced_event.set()
        self._wake_waiters()

    # -- membership --------------------------------------------------------------------------

    async def _heartbeat_forever(self) -> None:
        args = [self.instance_id, self._member_ttl_ms]
        while True:
            if not await self._link.wait_up(self._heartbeat):
                continue
            try:
                n = await self._link.call(
                    "heartbeat", lambda c: self._beat(keys=[self._members], args=args, client=c), slow=True)
                self.live_instances = max(1, int(n))
            except RedisUnavailable:
                pass   # keep the last count (see the module docstring)
            except Exception:
                log.exception("redis store: heartbeat failed unexpectedly")
            await asyncio.sleep(self._heartbeat)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError("state key must be a non-empty string")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"state key is over {MAX_KEY_BYTES} bytes")


async def _close_pubsub(ps: Any, budget: float) -> None:
    try:
        async with asyncio.timeout(budget):
            await ps.aclose()
    except (RedisError, OSError, TimeoutError):
        pass
