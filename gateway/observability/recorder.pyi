from collections.abc import Callable
from typing import Any

from gateway._fast.counters import CounterArray, Histogram
from gateway.pipeline.context import RequestContext

class RouteCells:
    counts: CounterArray
    duration: Histogram
    frag: bytes
    def __init__(self, counts: CounterArray, duration: Histogram, frag: bytes = b"") -> None: ...

class TargetCells:
    duration: Histogram
    errors: CounterArray
    marks: CounterArray
    frag: bytes
    def __init__(self, duration: Histogram, errors: CounterArray, marks: CounterArray, frag: bytes = b"") -> None: ...

class LineBuffer:
    lines: int
    def __init__(self, cap: int = ...) -> None: ...
    @property
    def size(self) -> int: ...
    def take(self) -> bytes: ...

class Recorder:
    access: Any
    tracer: Any
    errors: Any   # the process's ErrorLog (errorlog.py): report(ctx, status) for a failed exchange
    def __init__(self, routes: dict[Any, RouteCells], targets: dict[Any, TargetCells], unrouted: RouteCells,
                 methods: dict[bytes, int], other_method: int, codes: list[int], ncodes: int,
                 kinds: dict[str, int], late: Callable[[Any, bool], Any] | None = None) -> None: ...
    def observe(self, ctx: RequestContext) -> None: ...
