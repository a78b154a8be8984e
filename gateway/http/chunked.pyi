"""Type stub for the compiled chunked request-body decoder (chunked.pyx / chunked.pxd)."""
from __future__ import annotations

from typing import Any

MAX_CHUNK_LINE: int
MORE: int
FIRST: int
END: int
FAILED: int

class ChunkDecoder:
    event: int
    reply: Any
    body: bytes | None
    pieces: int
    def __init__(self, lim_body: int, lim_trailer: int) -> None: ...
    def begin(self, defer: bool = False) -> None: ...
    def decode(self, data: bytes) -> int: ...
