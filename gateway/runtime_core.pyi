from typing import Any

class WorkerCore:
    runtime: Any
    draining: bool

class RuntimeCore:
    router: Any
    metrics: Any
