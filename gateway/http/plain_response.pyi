"""Type stub for the compiled plain-response scan (plain_response.pyx)."""
from __future__ import annotations

def plain_response(
    data: bytes,
) -> tuple[int, int, int, bool, list[tuple[bytes, bytes]], int] | None: ...
