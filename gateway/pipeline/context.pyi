"""Type stub for the compiled RequestContext (context.pyx / context.pxd)."""
from __future__ import annotations

from typing import Any

class RequestContext:
    method: bytes
    target: bytes
    path: bytes
    query: bytes
    http_version: bytes
    host: bytes
    headers: list[tuple[bytes, bytes]]
    content_length: int | None
    chunked: bool
    client_ip: str
    scheme: bytes
    keep_alive: bool
    start: float
    request_id: bytes
    traceparent: bytes
    tracestate: bytes | None
    parent_span_id: bytes | None
    consumer_id: str | None
    consumer_org: str | None
    scopes: frozenset[str] | None
    auth_method: str | None
    api_key_id: str | None
    route: Any
    service: Any
    upstream_target: Any
    upstream_headers: list[tuple[bytes, bytes]]
    response_headers: list[tuple[bytes, bytes]]
    filters_ran: int
    status: int
    local_reply: Any
    upstream_error: str | None
    upstream_reason: str | None
    upstream_start: float
    upstream_end: float
    breaker_ticket: int     # > 0: the breaker ticket of this attempt; -1: a breaker refused a candidate
    bytes_in: int
    bytes_out: int
    vars: dict[str, Any] | None
    def __init__(self) -> None: ...
