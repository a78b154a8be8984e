"""Type stub for the compiled request builder (request.pyx / request.pxd)."""
from __future__ import annotations

from typing import Any

class RequestBuilder:
    settings: Any
    peer: str
    peer_b: bytes
    trusted: bool
    scheme: bytes
    has_body: bool
    expect: bool
    def __init__(self, settings: Any, peer: str) -> None: ...

def new_request_id() -> bytes: ...
def plain_target(url: bytes) -> int: ...
