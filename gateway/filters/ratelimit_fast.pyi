from typing import Any

from gateway.pipeline.context import RequestContext

def eligible(policies: Any, counters: Any) -> bool: ...

class Lease:
    window: int
    tokens: int
    grant: int
    pending: Any
    waiters: int
    remaining: int
    denied_until: float
    failed: bool

class FastAccess:
    def __init__(self, filter: Any, policies: Any, counters: Any, clock: Any) -> None: ...
    def __call__(self, ctx: RequestContext, may_wait: bool = True) -> Any: ...
