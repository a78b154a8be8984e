from typing import Any

class TargetCore:
    pool: Any
    admit: Any
    host_header: bytes
    available: bool
    passive_fails: int

class ServiceCore:
    targets: Any
    observers: tuple[Any, ...]
    observed: bool
    _next: int
    def pick(self, ctx: Any = None) -> Any: ...
    def record(self, ctx: Any, target: Any, kind: str | None) -> None: ...
