from collections.abc import Callable
from typing import Any

from gateway._fast.counters import CounterArray, Histogram
from gateway.pipeline.context import RequestContext

class RouteCells:
    counts: CounterArray
    duration: Histogram
    def __init__(self, counts: CounterArray, duration: Histogram) -> None: ...

class TargetCells:
    duration: Histogram
    errors: CounterArray
    def __init__(self, duration: Histogram, errors: CounterArray) -> None: ...

class Recorder:
    access: Callable[[RequestContext], None] | None
    def __init__(self, routes: dict[Any, RouteCells], targets: dict[Any, TargetCells], unrouted: RouteCells,
                 methods: dict[bytes, int], other_method: int, codes: list[int], ncodes: int,
                 kinds: dict[str, int], late: Callable[[Any, bool], Any] | None = None) -> None: ...
    def observe(self, ctx: RequestContext) -> None: ...
