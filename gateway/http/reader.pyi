"""Type stub for the compiled read path (reader.pyx / reader.pxd): the base of DownstreamProtocol."""
from __future__ import annotations

MAX_PIPELINE: int
MAX_BUFFERED_BODY: int

class _ReaderBase:
    def data_received(self, data: bytes) -> None: ...
