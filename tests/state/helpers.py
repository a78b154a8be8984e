"""Small async helpers for the Redis state tests (deadline polling, transition recording)."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop


async def poll(pred: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Wait until pred() is true, at most `timeout` seconds (no timing luck: a deadline, not a sleep)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


def run_on_uvloop(coro_fn: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """Run `coro_fn()` on a fresh uvloop loop (what the gateway runs on), bounded by `timeout`."""
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro_fn(), timeout))
    finally:
        loop.close()


async def until(pred: Callable[[], Any], timeout: float = 5.0) -> Any:
    """pred()'s first truthy value; AssertionError when none comes within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := pred()):
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)
    return value


class Transitions:
    """Records on_up / on_down calls of a RedisLink."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, float]] = []

    def on_up(self) -> None:
        self.events.append(("up", None, time.monotonic()))

    def on_down(self, reason: str) -> None:
        self.events.append(("down", reason, time.monotonic()))

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e[0] == kind)

    def kinds(self) -> list[str]:
        return [e[0] for e in self.events]


class CountingListener:
    """Takes over a dead server's port: accepts, counts and closes every connection attempt."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
