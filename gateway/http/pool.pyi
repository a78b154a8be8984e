"""Type stub for the compiled upstream pool (pool.pyx / pool.pxd)."""
from __future__ import annotations

import asyncio
import ssl
from typing import Any

from gateway.tls import UpstreamTLS

from .upstream import UpstreamProtocol

MAX_IDLE: int
IDLE_TIMEOUT: float

class UpstreamPool:
    loop: asyncio.AbstractEventLoop
    host: str
    port: int
    settings: Any
    idle: list[UpstreamProtocol]
    max_idle: int
    idle_timeout: float
    closed: bool
    connecting: set[asyncio.Task[None]]
    tls: UpstreamTLS | None
    ssl: ssl.SSLContext | None
    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, settings: Any,
                 tls: UpstreamTLS | None = None) -> None: ...
    def acquire(self) -> UpstreamProtocol | None: ...
    def release(self, up: UpstreamProtocol) -> None: ...
    def forget(self, up: UpstreamProtocol) -> None: ...
    def connect(self, down: Any) -> None: ...
    def close(self) -> None: ...
