"""NodeState: what one serving process sees of the node's shared state, in one object.

A feature (discovery, breakers, limits, revocation, metrics) is handed `worker.state` and finds
everything it shares with the other workers and instances here, never in plumbing of its own:

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
from .view import StateView

if TYPE_CHECKING:
    from gateway.config import Settings


def new_instance_id() -> str:
    """This start of this node: host, pid and a random tag (pids repeat across restarts)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def make_control_plane(loop: asyncio.AbstractEventLoop, settings: Settings, instance: str,
                       hub: EventHub | None = None) -> ControlPlane:
    """The node's ControlPlane, with the Redis store when GATEWAY_REDIS_URL is set."""
    hub = hub if hub is not None else EventHub(instance)
    factory = None
    if settings.redis_url:
        def factory(control: ControlPlane) -> Any:
            from .redis_link import RedisLink
            from .redis_store import RedisStore

            link = RedisLink(settings.redis_url, cluster=settings.redis_cluster, timeout=settings.redis_timeout,
                             prefix=settings.redis_prefix, on_up=control.on_redis_up, on_down=control.on_redis_down)
            return RedisStore(link, instance, on_change=control.on_remote_change,
                              on_resync=control.on_remote_resync, on_instances=control.set_instances)
    return ControlPlane(loop, hub, store_factory=factory)


class NodeState:
    def __init__(self, view: StateView, *, control: ControlPlane | None = None,
                 client: StateClient | None = None, instance: str | None = None) -> None:
        self.view = view
        self.control = control
        self.client = client
        self.instance = instance

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
        instance = new_instance_id()
        control = make_control_plane(loop, settings, instance)
        await control.start()
        return cls(control.view, control=control, instance=instance)

    @classmethod
    async def for_worker(cls, loop: asyncio.AbstractEventLoop, environ: Any = os.environ) -> NodeState:
        """A supervised worker: its channel fd comes from the supervisor (FD_ENV). Without one
        (a worker started by hand) it has a view nothing writes to."""
        client = StateClient(loop)
        raw = environ.get(FD_ENV)
        if raw:
            await client.start(int(raw))
        return cls(client.view, client=client)

    async def close(self) -> None:
        if self.control is not None:
            await self.control.close()
        if self.client is not None:
            self.client.close()

    def describe(self) -> dict[str, Any]:
        if self.control is not None:
            return self.control.describe()
        return {"seq": self.view.seq, "keys": len(self.view), **self.status}
