"""NodeState: what one serving process sees of the node's shared state, in one object.

A feature (discovery, breakers, limits, revocation, metrics) is handed `worker.state` and finds
everything it shares with the other workers and instances here, never in plumbing of its own:

- `memory` / `placer()`: node memory (NodeMemory): a feature building its part of a runtime asks
  `placer.place("breaker/<service>/<url>", size)` for its object's bytes, the same in every worker
  and across reloads; after a reload the worker releases what the new runtime no longer placed;
- `view`: the dynamic state written through the admin API (StateView; subscribe by key prefix);
- `emit(event, ...)`: an operational event, deduplicated per node and delivered by one process;
- `status`: {"redis": "off" | "up" | "down", "instances": live instances (1 without Redis)};
- `control`: the ControlPlane, only in the process that owns the admin listener (the single
  worker of GATEWAY_WORKERS=1; with more workers it lives in the supervisor, and workers get
  their changes through `client`, their end of the state channel).

Two ways to build it, one per process shape: `for_worker()` in a supervised worker (reads the
channel fd the supervisor passed), `standalone()` when there is no supervisor (the process is its
own control plane: admin writes apply to its view directly, with the same code).
"""
from __future__ import annotations

import asyncio
import os
import secrets
import socket
from typing import TYPE_CHECKING, Any

from .client import FD_ENV, StateClient
from .control import ControlPlane
from .events import EventHub
from .memory import NodeMemory
from .view import StateView

SEGMENT_ENV = "_GATEWAY_STATE_SEGMENT"   # the node memory's segment name, set by the supervisor
SEGMENT_PREFIX = "gateway-state-"        # /dev/shm/<prefix><start tag>: a fresh name every start

if TYPE_CHECKING:
    from gateway.config import Settings


def new_segment_name() -> str:
    """A name no earlier start used: a restarted node (even in a fresh pid namespace, where the dead
    instance's lock owners' pids may be live processes) never maps a dead instance's memory."""
    return SEGMENT_PREFIX + secrets.token_hex(8)


def new_instance_id() -> str:
    """This start of this node: host, pid and a random tag (pids repeat across restarts)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def make_control_plane(loop: asyncio.AbstractEventLoop, settings: Settings, instance: str,
                       hub: EventHub | None = None) -> ControlPlane:
    """The node's ControlPlane, with the Redis store when GATEWAY_REDIS_URL is set."""
    hub = hub if hub is not None else EventHub(instance)
    from gateway.observability.webhooks import attach

    attach(hub, loop, settings)     # GATEWAY_ALERT_WEBHOOKS: a sink that POSTs each delivered event
    if not settings.redis_url:
        return ControlPlane(loop, hub)
    url = settings.redis_url

    def redis(control: ControlPlane) -> tuple[Any, Any]:
        from .redis_link import RedisLink
        from .redis_store import RedisStore

        link = RedisLink(url, cluster=settings.redis_cluster, timeout=settings.redis_timeout,
                         prefix=settings.redis_prefix, on_up=control.on_redis_up, on_down=control.on_redis_down)
        store = RedisStore(link, instance, on_change=control.on_remote_change, on_resync=control.on_remote_resync)
        return link, store

    return ControlPlane(loop, hub, redis_factory=redis)


class Placer:
    """Places a runtime's shared objects and remembers their names, so that the worker can release
    what a reload dropped (NodeState.release_unplaced)."""

    __slots__ = ("memory", "holder", "names")

    def __init__(self, memory: NodeMemory, holder: int) -> None:
        self.memory = memory
        self.holder = holder
        self.names: set[str] = set()

    def place(self, name: str, size: int, *, kind: str = "") -> memoryview:
        """The object's bytes (zeroed the first time); SharedMemoryFull names GATEWAY_SHM_SIZE."""
        view = self.memory.place(name, size, self.holder, kind=kind)
        self.names.add(name)
        return view


class NodeState:
    def __init__(self, view: StateView, *, memory: NodeMemory | None = None, holder: int = 0,
                 control: ControlPlane | None = None, client: StateClient | None = None,
                 instance: str | None = None) -> None:
        self.view = view
        self.memory = memory
        self.holder = holder
        self.control = control
        self.client = client
        self.instance = instance

    def placer(self) -> Placer | None:
        return Placer(self.memory, self.holder) if self.memory is not None else None

    def release_unplaced(self, placed: set[str]) -> list[str]:
        """After a reload: this process now uses exactly `placed`; the rest is released (and
        freed, after node memory's quarantine, once no other worker holds it)."""
        if self.memory is None:
            return []
        return self.memory.sync_holder(self.holder, placed)

    @property
    def status(self) -> dict[str, Any]:
        if self.control is not None:
            return self.control.status
        if self.client is not None:
            return self.client.status
        return {"redis": "off", "instances": 1}

    def emit(self, event: str, *, service: str | None = None, target: str | None = None,
             details: dict[str, Any] | None = None) -> bool:
        if self.control is not None:
            return self.control.hub.emit(event, service=service, target=target, details=details)
        if self.client is not None:
            return self.client.emit(event, service=service, target=target, details=details)
        return False

    # --- construction ---------------------------------------------------------------------------------
    @classmethod
    async def standalone(cls, loop: asyncio.AbstractEventLoop, settings: Settings) -> NodeState:
        """No supervisor: private node memory (the same code on an anonymous mapping) and this
        process as its own control plane."""
        instance = new_instance_id()
        memory = NodeMemory.private(settings.shm_size)
        control = make_control_plane(loop, settings, instance)
        await control.start()
        return cls(control.view, memory=memory, control=control, instance=instance)

    @classmethod
    async def for_worker(cls, loop: asyncio.AbstractEventLoop, settings: Settings,
                         environ: Any = os.environ) -> NodeState:
        """A supervised worker: the node's segment and its channel fd come from the supervisor
        (SEGMENT_ENV, FD_ENV); its holder number is its worker index. A worker started by hand,
        without them, gets private memory and a view nothing writes to."""
        holder = int(environ.get("GATEWAY_WORKER_INDEX", "0"))
        segment = environ.get(SEGMENT_ENV)
        memory = NodeMemory.attach(segment) if segment else NodeMemory.private(settings.shm_size)
        client = StateClient(loop)
        raw = environ.get(FD_ENV)
        if raw:
            await client.start(int(raw))
        return cls(client.view, memory=memory, holder=holder, client=client)

    async def close(self) -> None:
        discovery = getattr(self, "discovery", None)    # the lone process's checker (gateway/discovery/wiring.py)
        if discovery is not None:
            discovery.close()
        if self.control is not None:
            await self.control.close()
        if self.client is not None:
            self.client.close()
        if self.memory is not None:
            try:
                self.memory.close()
            except BufferError:     # a runtime object still maps its bytes: the exit unmaps them
                pass

    def describe(self) -> dict[str, Any]:
        out = (self.control.describe() if self.control is not None
               else {"seq": self.view.seq, "keys": len(self.view), **self.status})
        if self.memory is not None:
            out["memory"] = describe_memory(self.memory)
        return out


def describe_memory(memory: NodeMemory) -> dict[str, Any]:
    stats = memory.stats()
    return {"segment": memory.name, **{k: stats[k] for k in ("total", "used", "free", "quarantined", "objects")}}
