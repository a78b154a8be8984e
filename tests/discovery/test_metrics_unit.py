"""Discovery's metric source, read the way the /metrics exporter will: target health and upstream
errors by kind, counted in node memory by record()."""
from __future__ import annotations

from typing import Any

from gateway.admin.features import METRIC_SOURCES, AdminContext
from gateway.config import load_settings, loads_config
from gateway.discovery.admin import metric_samples
from gateway.pipeline.context import RequestContext
from gateway.runtime import build_runtime
from gateway.state.memory import NodeMemory
from gateway.state.node import NodeState
from gateway.state.view import StateView


class FakePool:
    def __init__(self, *a: Any) -> None:
        pass

    def close(self) -> None:
        pass


def test_health_and_errors_by_kind() -> None:
    # registered: the exporter reads every METRIC_SOURCE, discovery's among them
    assert any(src.__name__ == "_discovery_metrics" for src in METRIC_SOURCES)
    config = loads_config('[[services]]\nname = "s"\ntargets = ["http://10.0.0.1:1", "http://10.0.0.2:2"]\n'
                          '[[routes]]\nname = "r"\npath = "/"\nservice = "s"\n')
    settings = load_settings({})
    state = NodeState(StateView(), memory=NodeMemory.private(4 << 20))
    rt = build_runtime(config, settings, None, pool_factory=FakePool, state=state)
    s = rt.services["s"]
    t0, t1 = s.targets
    c = RequestContext()
    c.upstream_end = 5.0
    for kind in ("connect", "connect", "timeout", "protocol", "aborted"):
        s.record(c, t0, kind)
    s.record(c, t1, None)
    for _ in range(3):
        s.record(c, t0, "reset")          # 5 consecutive passive failures: out of rotation
    ctx = AdminContext(settings, lambda: config, state, lambda: rt)
    got = {(name, tuple(sorted(labels.items()))): value for name, _t, _h, labels, value in metric_samples(ctx)}

    def val(name: str, target: str, **extra: str) -> float:
        return got[(name, tuple(sorted({"service": "s", "target": target, **extra}.items())))]

    assert val("gateway_upstream_errors_total", "http://10.0.0.1:1", kind="connect") == 2
    assert val("gateway_upstream_errors_total", "http://10.0.0.1:1", kind="timeout") == 1
    assert val("gateway_upstream_errors_total", "http://10.0.0.1:1", kind="protocol") == 1
    assert val("gateway_upstream_errors_total", "http://10.0.0.1:1", kind="reset") == 3
    assert val("gateway_upstream_errors_total", "http://10.0.0.2:2", kind="connect") == 0
    assert val("gateway_target_healthy", "http://10.0.0.1:1") == 0.0
    assert val("gateway_target_healthy", "http://10.0.0.2:2") == 1.0
    # Another runtime (a reload) finds the same counters by name.
    rt2 = build_runtime(config, settings, None, previous=rt, pool_factory=FakePool, state=state)
    assert rt2.services["s"].targets[0].errors.values()[0] == 2
