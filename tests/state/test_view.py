"""StateView: ordered changes, snapshots that notify only real differences, isolated subscribers."""
from __future__ import annotations

from typing import Any

import pytest

from gateway.state.view import StateView


def recorder() -> tuple[list[tuple[str, Any]], Any]:
    seen: list[tuple[str, Any]] = []
    return seen, lambda k, v: seen.append((k, v))


def test_subscribers_see_their_prefix_in_order() -> None:
    view = StateView()
    targets, on_targets = recorder()
    limits, on_limits = recorder()
    view.subscribe("targets/", on_targets)
    view.subscribe("limits/", on_limits)
    assert view.apply(1, "targets/users/a", {"url": "http://a"})
    assert view.apply(2, "limits/routes/x", {"limit": 5})
    assert view.apply(3, "targets/users/a", None)
    assert targets == [("targets/users/a", {"url": "http://a"}), ("targets/users/a", None)]
    assert limits == [("limits/routes/x", {"limit": 5})]
    assert view.seq == 3 and len(view) == 1


def test_an_unchanged_value_or_a_missing_delete_notifies_nobody() -> None:
    view = StateView()
    seen, cb = recorder()
    view.subscribe("", cb)
    view.apply(1, "k", 1)
    assert not view.apply(2, "k", 1)
    assert not view.apply(3, "absent", None)
    assert seen == [("k", 1)] and view.seq == 3


def test_a_late_subscriber_starts_from_the_current_state() -> None:
    view = StateView()
    view.apply(1, "revoked/j1", {"exp": 10})
    view.apply(2, "revoked/j2", {"exp": 20})
    view.apply(3, "other", 1)
    seen, cb = recorder()
    view.subscribe("revoked/", cb)
    assert sorted(seen) == [("revoked/j1", {"exp": 10}), ("revoked/j2", {"exp": 20})]


def test_replace_notifies_exactly_the_differences() -> None:
    view = StateView()
    for i, (k, v) in enumerate({"a": 1, "b": 2, "c": 3}.items(), 1):
        view.apply(i, k, v)
    seen, cb = recorder()
    view.subscribe("", cb, replay=False)
    assert view.replace(10, {"a": 1, "b": 20, "d": 4}) == 3
    assert sorted(seen, key=lambda kv: kv[0]) == [("b", 20), ("c", None), ("d", 4)]
    assert view.data == {"a": 1, "b": 20, "d": 4} and view.seq == 10


def test_a_failing_subscriber_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    view = StateView()
    seen, cb = recorder()

    def broken(k: str, v: Any) -> None:
        raise RuntimeError("bug")

    view.subscribe("", broken)
    view.subscribe("", cb)
    view.apply(1, "k", 1)
    assert seen == [("k", 1)] and view.errors == 1 and view.get("k") == 1
    assert "state subscriber" in caplog.text
