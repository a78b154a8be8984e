"""Type stub for the compiled flow control and ticker (flow.pyx / flow.pxd)."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

PAUSE_PIPELINE: int
PAUSE_UPSTREAM: int
PAUSE_BUFFER: int
PAUSE_CLOSING: int
PAUSE_WRITE: int
PAUSE_TURN: int
PAUSE_UPGRADE: int
DEFAULT_INTERVAL: float

class ReadGate:
    transport: asyncio.Transport
    reasons: int
    on_open: Callable[[], None] | None
    ended: bool
    def __init__(self, transport: asyncio.Transport) -> None: ...
    def pause(self, reason: int) -> None: ...
    def resume(self, reason: int) -> None: ...

class Ticking(Protocol):
    def on_tick(self, now: float) -> None: ...

class Ticker:
    loop: asyncio.AbstractEventLoop
    interval: float
    now: float
    members: set[Ticking]
    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = ...) -> None: ...
    def add(self, member: Ticking) -> None: ...
    def discard(self, member: Ticking) -> None: ...

def ticker_for(loop: asyncio.AbstractEventLoop) -> Ticker: ...
