"""Type stub for the compiled router (routing.pyx / routing.pxd)."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .pipeline.chain import FilterChain
from .pipeline.reply import LocalReply

class Route:
    name: str
    service: Any
    methods: frozenset[bytes] | None
    allow: bytes
    host: bytes | None
    path: bytes
    exact: bool
    strip_prefix: bool
    timeout: float | None
    retries: int
    websocket: bool
    chain: FilterChain
    config: Any
    unavailable: Any    # ctx -> LocalReply when pick() finds no target (gateway/discovery/fallback.py)
    def __init__(
        self,
        name: str,
        service: Any,
        path: bytes | str,
        *,
        exact: bool = ...,
        methods: Sequence[bytes | str] | None = ...,
        host: bytes | str | None = ...,
        strip_prefix: bool = ...,
        timeout: float | None = ...,
        retries: int = ...,
        websocket: bool = ...,
        chain: FilterChain = ...,
        config: Any = ...,
    ) -> None: ...
    @classmethod
    def from_config(cls, rc: Any, service: Any, chain: FilterChain = ...) -> Route: ...
    def upstream_path(self, path: bytes) -> bytes: ...
    def allows(self, method: bytes) -> bool: ...

class _Table:
    exact: dict[bytes, tuple[tuple[frozenset[bytes] | None, Route], ...]]
    nodes: int          # trie nodes: one per distinct segment path of the tier's prefixes
    def __init__(self, routes: Sequence[Route]) -> None: ...
    def path_matches(self, path: bytes) -> Iterator[Route]: ...

def normalize_host(host: bytes) -> bytes: ...

class Router:
    HOST_CACHE_SIZE: int
    routes: tuple[Route, ...]
    _host_cache: dict[bytes, _Table | None]
    def __init__(self, routes: Sequence[Route]) -> None: ...
    def match(self, method: bytes, host: bytes, path: bytes) -> Route | LocalReply: ...
