"""ControlPlane: where admin changes enter, and how they reach every worker and every instance.

It runs in the process that owns the admin listener: the supervisor, or the only process when
GATEWAY_WORKERS=1. A change is one (key, JSON value) write to the dynamic state (StateView):

    admin handler ─ put(key, value) ─▶ [Redis: persist + publish, atomically] ─▶ local view
                                                                    └─▶ every worker's channel
    other instance ─ Redis pub/sub ─▶ on_remote_change ─▶ local view ─▶ every worker's channel

- Workers: one socketpair each (gateway/state/channel.py). A worker gets a snapshot when its
  channel opens (so a worker started later, or a replacement, starts from the current state, not
  only from future changes), then every change in order, each numbered by `seq`; it acks the seq it
  has applied, which `applied` and `wait_applied()` expose (GET /health shows it per worker). A
  worker that stops reading is not allowed to grow the supervisor: once its channel is congested
  changes for it are dropped and it is marked stale; when it drains it gets one fresh snapshot.
- Redis (GATEWAY_REDIS_URL): the change is persisted and published before it applies here, so an
  admin write either reaches Redis or fails with StateUnavailable (the admin API answers 503) and
  changes nothing: an instance never holds a change the others can never see. Changes from other
  instances arrive through the store's subscriber in version order; after every reconnect the
  store resyncs the full state (messages published while disconnected are lost) and the workers
  get a snapshot. While Redis is down the node keeps serving with the state it has.
- Without Redis the state lives in this process's memory only and is lost on restart (README).

Events (EventHub) are delivered here too: the workers' channels carry theirs back, and the Redis
link's up/down transitions become `redis_up` / `redis_down`. The same channels carry each worker's
liveness (`listening`, a `beat` every 0.5 s, `fatal` last words): handed to `on_worker_frame`, the
supervisor's, which counts serving workers and kills silent ones.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson

from .channel import MAX_STATE_FRAME, FrameProtocol, socketpair
from .events import EventHub
from .view import StateView

log = logging.getLogger("gateway.state")

MAX_KEY = 512                     # bytes of a state key
MAX_VALUE = 1 << 20               # bytes of one value's JSON (the Redis store refuses more as well)
MAX_STATE = 64 << 20              # bytes of the whole state's JSON: a snapshot frame must fit
MAX_WORKER_FRAME = 64 << 10       # what a worker may send (acks, events)
WORKER_BUFFER = 8 << 20           # per worker: queued changes beyond this mark the worker stale
MEMBERSHIP_POLL = 1.0             # seconds between looks at the store's live-instance count
# Worker frames that only the supervisor reads (through on_worker_frame): liveness, last words,
# and a reload the worker could not apply.
LIVENESS_FRAMES = frozenset({"beat", "listening", "fatal", "reload_failed"})


class StateUnavailable(Exception):
    """The change could not be persisted (Redis down or over its time budget): nothing changed."""


class StateLimit(ValueError):
    """A key or value over its bound, or a value that is not JSON."""


class WorkerChannel:
    """The supervisor's end of one worker's channel."""

    __slots__ = ("index", "proto", "applied", "acked", "stale", "control")

    def __init__(self, control: ControlPlane, index: int) -> None:
        self.control = control
        self.index = index
        self.applied = 0            # highest seq the worker acked
        self.acked = False          # it has acked at least its first snapshot: it is up to date
        self.stale = False          # changes were dropped: it needs a snapshot when it drains
        self.proto = FrameProtocol(self._on_frame, max_frame=MAX_WORKER_FRAME, max_buffer=WORKER_BUFFER,
                                   max_send=MAX_STATE_FRAME, on_close=self._on_close, on_drain=self._on_drain, name=f"worker {index} channel")

    def connected(self) -> None:
        self.send_snapshot()

    def send(self, frame: dict[str, Any]) -> None:
        if self.stale or not self.proto.send(frame):
            if not self.stale and not self.proto.closed:
                log.warning("worker %d is not reading its state channel: dropping changes until it "
                            "catches up, then resending the whole state", self.index)
            self.stale = True

    def send_snapshot(self) -> None:
        self.stale = not self.proto.send(self.control.snapshot_frame(), force=True)

    def _on_drain(self) -> None:
        if self.stale:
            self.send_snapshot()

    def _on_frame(self, frame: dict[str, Any]) -> None:
        if self.control.on_worker_frame is not None:
            self.control.on_worker_frame(self, frame)     # any frame: the worker is alive
        t = frame.get("t")
        if t in LIVENESS_FRAMES:
            return
        if t == "ack":
            seq = frame.get("seq")
            if isinstance(seq, int) and (seq > self.applied or not self.acked):
                self.applied = max(seq, self.applied)
                self.acked = True
                self.control._acked()
        elif t == "event":
            ev = frame.get("event")
            if isinstance(ev, dict):
                self.control.hub.deliver(ev)
        elif t == "resync":
            self.send_snapshot()
        else:
            log.warning("worker %d channel: unknown frame type %r", self.index, t)

    def _on_close(self, exc: Exception | None) -> None:
        if self.control.workers.get(self.index) is self:
            del self.control.workers[self.index]
        self.control._acked()
        if self.control.on_worker_closed is not None:
            self.control.on_worker_closed(self)

class ControlPlane:
    def __init__(self, loop: asyncio.AbstractEventLoop, hub: EventHub, *,
                 redis_factory: Callable[[ControlPlane], tuple[Any, Any]] | None = None) -> None:
        """`redis_factory(self)` returns (RedisLink, RedisStore) wired to this plane's callbacks."""
        self.loop = loop
        self.hub = hub
        self.view = StateView()
        self.seq = 0
        self._sizes: dict[str, int] = {}   # JSON bytes of each key's value: each value encoded once
        self.state_bytes = 0               # sum of _sizes: what MAX_STATE bounds
        self.workers: dict[int, WorkerChannel] = {}
        self.status: dict[str, Any] = {"redis": "off", "instances": 1}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.link: Any = None       # RedisLink, with GATEWAY_REDIS_URL
        self.store: Any = None      # RedisStore
        if redis_factory is not None:
            self.link, self.store = redis_factory(self)
        self._membership: asyncio.Task[None] | None = None
        # Called with (channel, frame) for every frame a worker sends: the supervisor's liveness
        # bookkeeping (heartbeats, listening, a worker's last error) lives there, not here.
        self.on_worker_frame: Callable[[WorkerChannel, dict[str, Any]], None] | None = None
        # Called when a worker's channel closes (its process exited, or it was detached): every
        # frame it sent has been handed to on_worker_frame by then.
        self.on_worker_closed: Callable[[WorkerChannel], None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Returns at once: Redis connects in the background (a node starts and serves while
        Redis is down; /ready says so)."""
        if self.store is not None:
            self.status["redis"] = "down"       # until the link says otherwise
            await self.link.start()
            await self.store.start()
            self._membership = self.loop.create_task(self._watch_membership())

    async def _watch_membership(self) -> None:
        # The store counts live instances on its heartbeat; workers learn changes of the count.
        while True:
            await asyncio.sleep(MEMBERSHIP_POLL)
            self.set_instances(self.store.live_instances)

    async def close(self) -> None:
        if self._membership is not None:
            self._membership.cancel()
        if self.store is not None:
            await self.store.close()            # leaves the membership set; then the connection
            await self.link.close()
        for w in list(self.workers.values()):
            w.proto.close()
        for _, fut in self._waiters:
            if not fut.done():
                fut.cancel()
        self._waiters.clear()

    @property
    def ready(self) -> bool:
        """False while a configured Redis is unreachable (GET /ready answers 503)."""
        return self.status["redis"] != "down"

    # --- workers ------------------------------------------------------------------------------------
    def attach_worker(self, index: int) -> Any:
        """A new channel for worker `index` (replacing any previous one); returns the child's
        socket, to be passed to the worker process and closed here once it is spawned."""
        old = self.workers.pop(index, None)
        if old is not None:
            old.proto.close()
        parent, child = socketpair()
        ch = WorkerChannel(self, index)
        self.workers[index] = ch

        async def connect() -> None:
            try:
                parent.setblocking(False)
                await self.loop.connect_accepted_socket(lambda: ch.proto, sock=parent)
            except Exception:  # noqa: BLE001 - the worker then runs without changes; log it loudly
                log.exception("could not open worker %d's state channel", index)
                parent.close()
                return
            ch.connected()

        self.loop.create_task(connect())
        return child

    def detach_worker(self, index: int) -> None:
        ch = self.workers.pop(index, None)
        if ch is not None:
            ch.proto.close()
        self._acked()

    @property
    def applied(self) -> dict[int, int]:
        return {i: w.applied for i, w in sorted(self.workers.items())}

    async def wait_applied(self, seq: int | None = None, timeout: float = 5.0) -> bool:
        """Wait until every connected worker has applied `seq` (default: the latest)."""
        seq = self.seq if seq is None else seq
        if self._all_applied(seq):
            return True
        fut: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append((seq, fut))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters = [(s, f) for s, f in self._waiters if f is not fut]

    def _all_applied(self, seq: int) -> bool:
        return all(w.acked and w.applied >= seq for w in self.workers.values())

    def _acked(self) -> None:
        for seq, fut in self._waiters:
            if not fut.done() and self._all_applied(seq):
                fut.set_result(None)

    def snapshot_frame(self) -> dict[str, Any]:
        return {"t": "snapshot", "seq": self.seq, "state": self.view.data, "status": self.status}

    def _broadcast(self, frame: dict[str, Any]) -> None:
        for w in self.workers.values():
            w.send(frame)

    # --- writes (admin API) -------------------------------------------------------------------------
    async def put(self, key: str, value: Any) -> int:
        """Set `key` everywhere; returns the local seq. StateUnavailable: nothing changed."""
        size = self._check(key, value)
        if self.store is not None:
            return await self._persist(self.store.put, key, value)
        return self._apply(key, value, size)

    async def delete(self, key: str) -> int:
        self._check(key, None)
        if self.store is not None:
            return await self._persist(self.store.delete, key)
        return self._apply(key, None, 0)

    async def _persist(self, op: Callable[..., Any], *args: Any) -> int:
        """Through Redis: the store applies the write here itself, through on_remote_change, in
        global version order (applying it again after it returns could undo another instance's
        later write to the same key that arrived meanwhile)."""
        from .redis_link import RedisUnavailable

        try:
            await op(*args)
        except RedisUnavailable as exc:
            raise StateUnavailable(f"the state store (Redis) is unavailable: {exc}") from None
        except ValueError as exc:
            raise StateLimit(str(exc)) from None
        return self.seq

    def _check(self, key: str, value: Any) -> int:
        if not isinstance(key, str) or not key or len(key.encode()) > MAX_KEY:
            raise StateLimit(f"state keys are 1-{MAX_KEY} bytes of text")
        if value is None:
            return 0
        try:
            size = len(orjson.dumps(value))
        except TypeError as exc:
            raise StateLimit(f"value of {key} is not JSON: {exc}") from None
        if size > MAX_VALUE:
            raise StateLimit(f"value of {key} is {size} bytes; the limit is {MAX_VALUE}")
        if self.state_bytes + size - self._sizes.get(key, 0) > MAX_STATE:
            raise StateLimit(f"the dynamic state would exceed {MAX_STATE} bytes")
        return size

    def _apply(self, key: str, value: Any, size: int) -> int:
        if self.view.get(key) == value:
            return self.seq
        self.state_bytes += size - (self._sizes.pop(key, 0))
        if value is not None:
            self._sizes[key] = size
        self.seq += 1
        self.view.apply(self.seq, key, value)
        self._broadcast({"t": "set", "seq": self.seq, "k": key, "v": value})
        return self.seq

    # --- from the Redis store -----------------------------------------------------------------------
    def on_remote_change(self, version: int, key: str, value: Any) -> None:
        size = len(orjson.dumps(value)) if value is not None else 0
        self._apply(key, value, size)

    def on_remote_resync(self, version: int, state: dict[str, Any]) -> None:
        if state == self.view.data:
            return
        self.seq += 1
        changed = self.view.replace(self.seq, state)
        self._sizes = {k: len(orjson.dumps(v)) for k, v in state.items()}
        self.state_bytes = sum(self._sizes.values())
        log.info("state resynced from Redis at version %d: %d keys, %d changed", version, len(state), changed)
        for w in self.workers.values():
            w.send_snapshot()

    def on_redis_up(self) -> None:
        self.status["redis"] = "up"
        self.hub.emit("redis_up")
        self._broadcast({"t": "status", "status": self.status})

    def on_redis_down(self, reason: str) -> None:
        self.status["redis"] = "down"
        self.hub.emit("redis_down", details={"reason": reason})
        self._broadcast({"t": "status", "status": self.status})

    def set_instances(self, n: int) -> None:
        if n != self.status["instances"]:
            self.status["instances"] = n
            self._broadcast({"t": "status", "status": self.status})

    def describe(self) -> dict[str, Any]:
        """For GET /health: what this node holds and how far each worker has applied it."""
        out: dict[str, Any] = {"seq": self.seq, "keys": len(self.view), "bytes": self.state_bytes, **self.status}
        if self.workers:
            out["workers"] = {str(i): {"applied": w.applied, "synced": w.acked and not w.stale}
                              for i, w in sorted(self.workers.items())}
        if self.link is not None:
            out["redis_errors"] = dict(self.link.errors)
        return out
