"""Events: one delivery per key per cooldown on the node, bounded memory, unknown names refused."""
from __future__ import annotations

from typing import Any

import pytest

from gateway.state.events import EventHub, make_event


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def hub_with_sink(**kw: Any) -> tuple[EventHub, list[dict[str, Any]], Clock]:
    got: list[dict[str, Any]] = []
    clock = Clock()
    return EventHub("gw-1", sinks=[got.append], clock=clock, **kw), got, clock


def test_same_key_once_per_cooldown_different_keys_independent() -> None:
    hub, got, clock = hub_with_sink()
    for _ in range(50):   # fifty workers (or one flapping target) saying the same thing
        hub.emit("circuit_opened", service="users", target="http://a:1")
    hub.emit("circuit_opened", service="users", target="http://b:1")
    hub.emit("target_down", service="users", target="http://a:1")
    assert [(e["event"], e["target"]) for e in got] == [
        ("circuit_opened", "http://a:1"), ("circuit_opened", "http://b:1"), ("target_down", "http://a:1")]
    assert hub.suppressed == 49
    clock.now += 59.9
    assert not hub.emit("circuit_opened", service="users", target="http://a:1")
    clock.now += 0.2
    assert hub.emit("circuit_opened", service="users", target="http://a:1")


def test_delivered_event_has_the_webhook_fields() -> None:
    hub, got, _ = hub_with_sink()
    hub.emit("redis_down", details={"reason": "timeout"})
    (ev,) = got
    assert set(ev) == {"event", "severity", "service", "target", "details", "time", "gateway"}
    assert ev["severity"] == "critical" and ev["gateway"] == "gw-1" and ev["details"] == {"reason": "timeout"}


def test_worker_events_are_deduplicated_with_the_node_s_own() -> None:
    hub, got, _ = hub_with_sink()
    ev = make_event("target_down", service="s", target="t")
    assert hub.deliver(ev)
    assert not hub.deliver(dict(ev))      # the same event from a second worker
    assert not hub.deliver({"event": "not_an_event"})
    assert len(got) == 1


def test_dedup_memory_is_bounded() -> None:
    hub, got, _ = hub_with_sink(max_keys=100)
    for i in range(1000):
        hub.emit("target_down", service="s", target=f"t{i}")
    assert len(got) == 1000 and len(hub.dedup._last) == 100


def test_unknown_event_is_a_programming_error() -> None:
    hub, _, _ = hub_with_sink()
    with pytest.raises(ValueError, match="unknown event"):
        hub.emit("circuit_exploded")


def test_a_failing_sink_does_not_lose_the_event_for_the_others() -> None:
    got: list[dict[str, Any]] = []

    def broken(ev: dict[str, Any]) -> None:
        raise RuntimeError("webhook bug")

    hub = EventHub("gw", sinks=[broken, got.append])
    assert hub.emit("redis_up")
    assert len(got) == 1 and hub.sink_errors == 1
