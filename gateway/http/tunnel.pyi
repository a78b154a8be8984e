"""Type stub for the compiled tunnel (tunnel.pyx / tunnel.pxd)."""
from __future__ import annotations

from typing import Any

from gateway.pipeline.context import RequestContext

class Tunnel:
    ctx: RequestContext
    idle: float
    deadline: float
    down_eof: bool
    up_eof: bool
    closed: bool
    gone: int
    def __init__(self, down_t: Any, up_t: Any, gate: Any, ticker: Any, ctx: RequestContext, idle: float,
                 on_end: Any) -> None: ...
    def on_tick(self, now: float) -> None: ...
    def shut(self) -> None: ...
