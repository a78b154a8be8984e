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
