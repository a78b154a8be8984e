from typing import Any

from gateway.pipeline.context import RequestContext
from gateway.pipeline.reply import LocalReply

class CachedIdentity:
    sub: str
    org: str | None
    scopes: frozenset[str]
    until: float
    jti: str | None
    headers: list[tuple[bytes, bytes]]
    kid: str | None
    token: bytes | None
    def __init__(self, sub: str, org: str | None, scopes: frozenset[str], until: float,
                 jti: str | None, method: str, kid: str | None = None) -> None: ...

def token_key(token: bytes) -> int: ...

class CachedJwtAccess:
    def __init__(self, filter: Any, sec: Any, required: frozenset[str]) -> None: ...
    def __call__(self, ctx: RequestContext) -> LocalReply | None: ...
