"""Type stub for the compiled connection writes (outlet.pyx / outlet.pxd)."""
from __future__ import annotations

from typing import Any

class Outlet:
    transport: Any
    fd: int
    def __init__(self, transport: Any) -> None: ...
    def __call__(self, data: bytes) -> None: ...
    def write_pieces(self, pieces: list[bytes]) -> int: ...
