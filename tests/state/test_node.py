"""NodeState's seams for features: a Placer that remembers a runtime's shared objects, and the
release of what a reload dropped."""
from __future__ import annotations

from gateway.state.memory import NodeMemory
from gateway.state.node import NodeState
from gateway.state.view import StateView


def test_a_reload_releases_exactly_what_the_new_runtime_did_not_place() -> None:
    memory = NodeMemory.private(1 << 20, grace=0.0)
    state = NodeState(StateView(), memory=memory, holder=3)
    first = state.placer()
    assert first is not None
    a = first.place("breaker/users/http://a:1", 768)
    first.place("breaker/users/http://b:1", 768)
    a[:4] = b"live"
    second = state.placer()
    assert second is not None
    again = second.place("breaker/users/http://a:1", 768)     # the reload keeps target a, drops b
    assert bytes(again[:4]) == b"live"
    assert state.release_unplaced(second.names) == ["breaker/users/http://b:1"]
    assert memory.names() == ["breaker/users/http://a:1"]
    del a, again
    memory.close()


def test_without_node_memory_there_is_nothing_to_place_or_release() -> None:
    state = NodeState(StateView())
    assert state.placer() is None and state.release_unplaced(set()) == []
    assert state.status == {"redis": "off", "instances": 1} and not state.emit("redis_up")
