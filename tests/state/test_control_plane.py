"""ControlPlane ↔ StateClient over real socketpairs, in one loop: snapshots, ordered changes, acks,
and peers that misbehave (never read, send one byte at a time, send garbage or huge frames)."""
from __future__ import annotations

import asyncio
import os
import socket
import struct
from typing import Any

import orjson
import pytest

from gateway.state.client import StateClient
from gateway.state.control import MAX_VALUE, ControlPlane, StateLimit
from gateway.state.events import EventHub
from tests.state.helpers import run_on_uvloop, until


async def plane_with_workers(n: int, events: list[dict[str, Any]] | None = None) -> tuple[ControlPlane, list[StateClient]]:
    loop = asyncio.get_running_loop()
    hub = EventHub("test", sinks=[events.append] if events is not None else [])
    cp = ControlPlane(loop, hub)
    clients = []
    for i in range(n):
        child = cp.attach_worker(i)
        c = StateClient(loop)
        await c.start(os.dup(child.fileno()))
        child.close()
        clients.append(c)
    await until(lambda: all(c.synced for c in clients))
    return cp, clients


def test_changes_reach_every_worker_in_order_and_are_acked() -> None:
    async def main() -> None:
        cp, clients = await plane_with_workers(2)
        logs: list[list[tuple[str, Any]]] = [[], []]
        for c, log in zip(clients, logs, strict=True):
            c.view.subscribe("k/", lambda k, v, log=log: log.append((k, v)))
        for i in range(100):
            await cp.put(f"k/{i % 7}", i)
        await cp.delete("k/0")
        assert await cp.wait_applied(timeout=5)
        assert cp.applied == {0: cp.seq, 1: cp.seq}
        expected = [(f"k/{i % 7}", i) for i in range(100)] + [("k/0", None)]
        assert logs == [expected, expected]
        assert all(c.view.data == cp.view.data for c in clients)
        assert cp.state_bytes == sum(len(orjson.dumps(v)) for v in cp.view.data.values())
        await cp.close()

    run_on_uvloop(main)


def test_a_worker_attached_later_starts_from_the_current_state() -> None:
    async def main() -> None:
        cp, _ = await plane_with_workers(1)
        for i in range(20):
            await cp.put(f"targets/s/{i}", {"url": f"http://h:{i}"})
        await cp.delete("targets/s/3")
        loop = asyncio.get_running_loop()
        child = cp.attach_worker(1)
        late = StateClient(loop)
        seen: list[str] = []
        await late.start(os.dup(child.fileno()))
        child.close()
        await until(lambda: late.synced)
        late.view.subscribe("targets/", lambda k, v: seen.append(k))
        assert late.view.data == cp.view.data and len(seen) == 19 and late.view.seq == cp.seq
        assert await cp.wait_applied(timeout=5)
        await cp.close()

    run_on_uvloop(main)


def test_replacing_a_worker_s_channel_closes_the_old_one() -> None:
    async def main() -> None:
        cp, (old,) = await plane_with_workers(1)
        loop = asyncio.get_running_loop()
        child = cp.attach_worker(0)        # the slot's replacement
        new = StateClient(loop)
        await new.start(os.dup(child.fileno()))
        child.close()
        await until(lambda: new.synced and old.proto.closed)
        await cp.put("k", 1)
        assert await cp.wait_applied(timeout=5) and new.view.get("k") == 1 and old.view.get("k") is None
        await cp.close()

    run_on_uvloop(main)


def test_a_worker_that_never_reads_does_not_grow_the_supervisor_and_catches_up_later() -> None:
    """The hostile peer: a worker that stops reading. Its queued changes stay bounded (the
    channel's write buffer), it is marked stale, and once it reads again it gets one snapshot."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        cp = ControlPlane(loop, EventHub("t", sinks=[]))
        child = cp.attach_worker(0)
        raw = socket.socket(fileno=os.dup(child.fileno()))
        child.close()
        raw.setblocking(False)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await until(lambda: 0 in cp.workers and cp.workers[0].proto.transport is not None)
        value = "x" * 60_000
        for i in range(300):                     # 18 MB of changes for a peer that reads nothing
            await cp.put(f"k/{i}", value)
        ch = cp.workers[0]
        assert ch.stale
        buffered = ch.proto.transport.get_write_buffer_size()  # type: ignore[union-attr]
        assert buffered < 9 << 20, buffered      # the high-water mark (8 MiB) plus one frame
        # The worker wakes up: drain its socket as a StateClient would and check it gets a
        # snapshot of everything.
        reader = StateClient(loop)
        frames: list[dict[str, Any]] = []
        reader.proto.on_frame = frames.append
        raw.setblocking(True)
        fd = raw.detach()
        await reader.start(fd)
        await until(lambda: any(f.get("t") == "snapshot" and len(f["state"]) == 300 for f in frames), 20)
        await until(lambda: not ch.stale)
        await cp.close()

    run_on_uvloop(main)


def test_frames_split_into_single_bytes_are_reassembled() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        c = StateClient(loop)
        await c.start(b.detach())
        frames = [{"t": "snapshot", "seq": 5, "state": {"k": 1}, "status": {"redis": "off", "instances": 1}},
                  {"t": "set", "seq": 6, "k": "j", "v": [1, 2]}, {"t": "set", "seq": 7, "k": "k", "v": None}]
        wire = b"".join(struct.pack(">I", len(body)) + body for body in map(orjson.dumps, frames))
        for i in range(len(wire)):
            a.send(wire[i:i + 1])
            await asyncio.sleep(0)
        await until(lambda: c.view.seq == 7)
        assert c.view.data == {"j": [1, 2]}
        a.close()
        c.close()

    run_on_uvloop(main)


@pytest.mark.parametrize("wire", [
    struct.pack(">I", 200 << 20),                          # announces a frame over the limit
    struct.pack(">I", 5) + b"nope!",                       # not JSON
    struct.pack(">I", 2) + b"[]",                          # JSON, not an object
])
def test_a_bad_frame_from_a_worker_cuts_only_that_worker(wire: bytes) -> None:
    async def main() -> None:
        cp, (good,) = await plane_with_workers(1)
        loop = asyncio.get_running_loop()
        child = cp.attach_worker(1)
        bad = socket.socket(fileno=os.dup(child.fileno()))
        child.close()
        await until(lambda: 1 in cp.workers and cp.workers[1].proto.transport is not None)
        bad.sendall(wire)
        await until(lambda: 1 not in cp.workers)
        await cp.put("still", "works")
        assert await cp.wait_applied(timeout=5) and good.view.get("still") == "works"
        bad.close()
        await cp.close()
        del loop

    run_on_uvloop(main)


def test_events_from_workers_are_deduplicated_per_node() -> None:
    async def main() -> None:
        events: list[dict[str, Any]] = []
        cp, clients = await plane_with_workers(3, events)
        for c in clients:
            for _ in range(10):
                c.emit("circuit_opened", service="users", target="http://a:1")
        clients[0].emit("target_down", service="users", target="http://a:1")
        await until(lambda: len(events) == 2 and cp.hub.suppressed >= 2)
        await asyncio.sleep(0.05)
        assert [e["event"] for e in events] == ["circuit_opened", "target_down"]
        # each worker sent its first copy only (local dedup); the hub dropped the other two
        assert cp.hub.suppressed == 2
        await cp.close()

    run_on_uvloop(main)


def test_bounds_on_keys_and_values() -> None:
    async def main() -> None:
        cp = ControlPlane(asyncio.get_running_loop(), EventHub("t", sinks=[]))
        with pytest.raises(StateLimit):
            await cp.put("", 1)
        with pytest.raises(StateLimit):
            await cp.put("k" * 600, 1)
        with pytest.raises(StateLimit):
            await cp.put("k", "x" * MAX_VALUE)
        with pytest.raises(StateLimit):
            await cp.put("k", {1, 2})          # not JSON
        assert cp.seq == 0 and len(cp.view) == 0
        await cp.close()

    run_on_uvloop(main)
