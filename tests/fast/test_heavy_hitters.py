"""HeavyHitters (space-saving): compiled vs model, the guarantee, bounded memory, shared memory."""
from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._fast.heavy_hitters import HeavyHitters, layout_bytes
from gateway._fast.shm import SharedSegment
from tests.fast.reference import timeline
from tests.fast.reference.heavy_hitters import HeavyHittersModel


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 8), st.sampled_from([1.0, 60.0]), st.data())
def test_matches_the_model(k: int, period: float, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 120))
    times = data.draw(timeline(n, scale=period / 20))
    keys = data.draw(st.lists(st.sampled_from(["a", "b", "c", "ip:1.2.3.4", "é", "x" * 80, "d", "e"]),
                              min_size=n, max_size=n))
    hh, model = HeavyHitters(k, period), HeavyHittersModel(k, period)
    for now, key in zip(times, keys, strict=True):
        hh.record(key, now)
        model.record(key, now)
        assert hh.top(k * 2, now) == model.top(k * 2, now)


def test_a_heavy_key_survives_a_flood_of_distinct_keys() -> None:
    hh = HeavyHitters(16, 60.0)
    for i in range(20000):
        hh.record(f"flood{i}", 5.0)
        if i % 5 == 0:
            hh.record("heavy", 5.0)             # 4000 of 24000: far above n/k = 1500
    key, count, error = hh.top(1, 5.0)[0]
    assert key == "heavy" and count - error <= 4000 <= count
    assert hh.total == 24000


def test_generations_cover_the_last_one_to_two_periods() -> None:
    hh = HeavyHitters(4, 60.0)
    hh.record("old", 10.0)
    hh.record("new", 70.0)
    assert [t[0] for t in hh.top(5, 70.0)] == ["new", "old"]
    assert [t[0] for t in hh.top(5, 130.0)] == ["new"]          # "old" is two periods back
    assert hh.top(5, 250.0) == []


def test_bounded_memory_and_shared_by_processes() -> None:
    assert layout_bytes(128) == 64 + 2 * 128 * 128
    seg = SharedSegment(layout_bytes(32))
    a = HeavyHitters(32, 60.0, buffer=seg)
    pid = os.fork()
    if pid == 0:
        try:
            b = HeavyHitters(32, 60.0, buffer=seg)
            for _ in range(500):
                b.record("child", 1.0)
        finally:
            os._exit(0)
    for _ in range(300):
        a.record("parent", 1.0)
    os.waitpid(pid, 0)
    assert dict((k, c) for k, c, _ in a.top(5, 1.0)) == {"child": 500, "parent": 300}
