"""Type stub for the compiled exchange layer (exchange.pyx / exchange.pxd): a base of DownstreamProtocol."""
from __future__ import annotations

from typing import Any

from .reader import _ReaderBase

IDEMPOTENT: frozenset[bytes]

class _ExchangeBase(_ReaderBase):
    def upstream_ready(self, up: Any) -> None: ...
    def write_response(self, data: bytes) -> None: ...
    def upstream_failed(self, kind: str) -> None: ...
    def exchange_done(self) -> None: ...
