from typing import Any

from gateway._fast.breaker import CircuitBreaker

class Admission:
    breaker: CircuitBreaker
    def __init__(self, breaker: CircuitBreaker) -> None: ...
    def __call__(self, ctx: Any) -> bool: ...

class BreakerObserver:
    breakers: dict[Any, CircuitBreaker]
    failing: bytes
    def __init__(self, breakers: dict[Any, CircuitBreaker], failing: bytes) -> None: ...
    def __call__(self, ctx: Any, target: Any, kind: str | None) -> None: ...
