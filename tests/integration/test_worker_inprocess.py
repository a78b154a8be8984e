"""Worker mechanics on real sockets, in-process: connection cap, drain, reload.

The protocol here is a minimal line-echo stand-in with the seam DownstreamProtocol has
(`__init__(worker)`, `shutdown()`, worker.connection_made/lost), so the cap and drain logic is
tested on its own; the subprocess tests (test_workers.py, test_drain.py, test_reload.py) cover
the same behaviours through the real data plane.
"""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop

from gateway.config import load_settings
from gateway.worker import Worker, bind_listener


class LineEcho(asyncio.Protocol):
    """Echoes each line; a line "slow" is answered after 0.3 s (an in-flight request)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.closing = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.worker.connection_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.connection_lost(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if data.strip() == b"slow":
            self.busy = True
            asyncio.get_running_loop().call_later(0.3, self._answer, data)
        else:
            self._answer(data)

    def _answer(self, data: bytes) -> None:
        self.busy = False
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(b"echo " + data)
        if self.closing:
            self.transport.close()

    def shutdown(self) -> None:
        self.closing = True
        if not self.busy and self.transport is not None:
            self.transport.close()


class FakeRuntime:
    closed = False
    config = None

    def close(self) -> None:
        self.closed = True


def run(coro: Any) -> Any:
    return uvloop.run(coro)


async def start_worker(env: dict[str, str]) -> tuple[Worker, int]:
    settings = load_settings(env)
    loop = asyncio.get_running_loop()
    worker = Worker(loop, settings, FakeRuntime(), config_path=None, protocol_factory=LineEcho)  # type: ignore[arg-type]
    sock = bind_listener("127.0.0.1", 0, reuse_port=False)
    port = sock.getsockname()[1]
    await worker.start(sock)
    return worker, port


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes, timeout: float = 2.0) -> bytes:
    writer.write(line + b"\n")
    return await asyncio.wait_for(reader.readline(), timeout)


def test_connection_cap_queues_the_third_connection_until_one_closes() -> None:
    async def main() -> None:
        worker, port = await start_worker({"GATEWAY_MAX_CONNECTIONS": "2"})
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        assert await ask(r1, w1, b"one") == b"echo one\n"
        assert await ask(r2, w2, b"two") == b"echo two\n"
        assert len(worker.connections) == 2
        assert not worker.accepting
        # The third connection is accepted by the kernel (backlog), so connect() succeeds ...
        r3, w3 = await asyncio.open_connection("127.0.0.1", port)
        w3.write(b"three\n")
        # ... but nobody serves it while the cap is reached.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(r3.readline(), 0.5)
        assert len(worker.connections) == 2
        # The first two still work.
        assert await ask(r2, w2, b"again") == b"echo again\n"
        w1.close()
        # One slot free: the queued connection is accepted and its bytes answered.
        assert await asyncio.wait_for(r3.readline(), 2.0) == b"echo three\n"
        assert len(worker.connections) == 2
        for w in (w2, w3):
            w.close()
        worker.stop()
        await asyncio.wait_for(worker.wait_stopped(), 5)

    run(main())


def test_drain_finishes_in_flight_closes_idle_and_refuses_new() -> None:
    async def main() -> None:
        worker, port = await start_worker({"GATEWAY_DRAIN_TIMEOUT": "5"})
        r_idle, w_idle = await asyncio.open_connection("127.0.0.1", port)
        assert await ask(r_idle, w_idle, b"hi") == b"echo hi\n"
        r_busy, w_busy = await asyncio.open_connection("127.0.0.1", port)
        w_busy.write(b"slow\n")
        await asyncio.sleep(0.05)
        t0 = asyncio.get_running_loop().time()
        worker.stop()
        await asyncio.sleep(0.05)
        # The idle connection is closed at once (EOF), the busy one gets its answer, then EOF.
        assert await asyncio.wait_for(r_idle.read(), 1.0) == b""
        assert await asyncio.wait_for(r_busy.readline(), 2.0) == b"echo slow\n"
        assert await asyncio.wait_for(r_busy.read(), 1.0) == b""
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        await asyncio.wait_for(worker.wait_stopped(), 2.0)
        assert asyncio.get_running_loop().time() - t0 < 2.0
        assert worker.runtime.closed  # type: ignore[attr-defined]

    run(main())


def test_drain_timeout_aborts_stuck_connections() -> None:
    class Stuck(LineEcho):
        def shutdown(self) -> None:  # never closes on its own
            self.closing = True

    async def main() -> None:
        settings = load_settings({"GATEWAY_DRAIN_TIMEOUT": "0.3"})
        loop = asyncio.get_running_loop()
        worker = Worker(loop, settings, FakeRuntime(), config_path=None, protocol_factory=Stuck)  # type: ignore[arg-type]
        sock = bind_listener("127.0.0.1", 0, reuse_port=False)
        await worker.start(sock)
        r, w = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        assert await ask(r, w, b"x") == b"echo x\n"
        t0 = loop.time()
        worker.stop()
        await asyncio.wait_for(worker.wait_stopped(), 3.0)
        assert 0.25 < loop.time() - t0 < 2.0
        assert await asyncio.wait_for(r.read(), 1.0) == b""

    run(main())


def test_supervisor_backs_off_a_crash_looping_worker() -> None:
    import time

    from gateway.supervisor import MAX_BACKOFF, Supervisor

    class FakeProc:
        def __init__(self, code: int) -> None:
            self.returncode = code
            self.pid = 4242

        def poll(self) -> int:
            return self.returncode

    class FakeLoop:
        def __init__(self) -> None:
            self.delays: list[float] = []

        def call_later(self, delay: float, *a: Any) -> None:
            self.delays.append(delay)

    sup = Supervisor(load_settings({"GATEWAY_WORKERS": "1"}))
    sup.served = True   # a worker served before: the supervisor never gives up (see test_supervisor_faults)
    loop = FakeLoop()
    sup._loop = loop  # type: ignore[assignment]
    sup._done = asyncio.Event()
    slot = sup.slots[0]
    for _ in range(12):  # dies right after each start: crash loop
        slot.proc, slot.started = FakeProc(1), time.monotonic()  # type: ignore[assignment]
        sup._reap()
    assert loop.delays[:4] == [0.2, 0.4, 0.8, 1.6]
    assert loop.delays[-1] == MAX_BACKOFF
    # A worker that ran for a while before dying is replaced at once, and the history resets.
    slot.proc, slot.started, slot.listening = FakeProc(-9), time.monotonic() - 60, True  # type: ignore[assignment]
    sup._reap()
    assert loop.delays[-1] == 0.0 and slot.fast_crashes == 0
    assert sup.restarts == 13
