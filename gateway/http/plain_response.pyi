"""Type stub for the compiled plain-response scan (plain_response.pyx)."""
from __future__ import annotations

def plain_response(
    data: bytes, max_fields: int = ..., max_field_bytes: int = ...,
) -> tuple[int, int, int, bool, list[tuple[bytes, bytes]], int] | None: ...
