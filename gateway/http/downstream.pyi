"""Type stub for the compiled downstream protocol (downstream.pyx / downstream.pxd)."""
from __future__ import annotations

import asyncio
from typing import Any

from gateway.pipeline.context import RequestContext

from .exchange import _ExchangeBase
from .request import RequestBuilder
from .upstream import UpstreamProtocol

MAX_PIPELINE: int
MAX_BUFFERED_BODY: int

class _DownstreamBase(_ExchangeBase):
    worker: Any
    loop: asyncio.AbstractEventLoop
    settings: Any
    ticker: Any
    builder: RequestBuilder
    transport: asyncio.Transport | None
    parser: Any
    gate: Any
    peer: str
    queue: Any
    closing: bool
    w_deadline: float
    reject_after: Any
    p_rest: bytes
    eof: bool
    in_head: bool
    p_kind: int
    p_deadline: float
    a_ctx: RequestContext | None
    a_up: UpstreamProtocol | None
    a_body_done: bool
    a_task: asyncio.Task[Any] | None
    tunnel: Any
    def __init__(self, worker: Any) -> None: ...
    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...
    def eof_received(self) -> bool: ...
    def data_received(self, data: bytes) -> None: ...
    def upstream_ready(self, up: UpstreamProtocol) -> None: ...
    def write_response(self, data: bytes) -> None: ...
    def upstream_failed(self, kind: str) -> None: ...
    def exchange_done(self) -> None: ...
    def shutdown(self) -> None: ...
    def on_tick(self, now: float) -> None: ...

class DownstreamProtocol(_DownstreamBase, asyncio.Protocol): ...
