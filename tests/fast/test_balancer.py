"""gateway/_fast/balancer: smooth WRR, least-connections, P2C over peak-EWMA.

Example tests pin the behaviour each algorithm is chosen for; property tests drive the compiled
classes and tests/fast/reference/balancer.py with the same random operations (picks,
availability flips, weight changes, observations with timestamps) and compare every answer.
"""
from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._fast import balancer as fast
from tests.fast.reference import balancer as ref

# -- smooth weighted round-robin -----------------------------------------------------------------

def test_swrr_nginx_sequence_for_5_1_1() -> None:
    s = fast.SmoothWeightedRR([5, 1, 1])
    assert "".join("abc"[s.pick()] for _ in range(14)) == "aabacaa" * 2


def test_swrr_all_ones_is_round_robin_and_weights_are_exact_per_cycle() -> None:
    rr = fast.SmoothWeightedRR([1, 1, 1])
    assert [rr.pick() for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    w = fast.SmoothWeightedRR([3, 0, 2, 1])
    assert Counter(w.pick() for _ in range(600)) == {0: 300, 2: 200, 3: 100}


def test_swrr_skips_unavailable_and_returns_minus_one_when_none() -> None:
    s = fast.SmoothWeightedRR([5, 1, 1])
    s.set_available(0, False)
    assert [s.pick() for _ in range(4)] == [1, 2, 1, 2]
    s.set_available(1, False)
    s.set_available(2, False)
    assert s.pick() == -1
    assert fast.SmoothWeightedRR([]).pick() == -1


def test_swrr_failure_eases_target_off_then_back() -> None:
    s = fast.SmoothWeightedRR([10, 10], max_fails=2)
    s.report_failure(0)
    assert s.state(0)[1] == 5  # effective weight 10 - 10 // 2
    s.report_failure(0)
    s.report_failure(0)
    assert s.state(0)[1] == 0  # clamped at zero
    assert [s.pick() for _ in range(4)] == [1, 1, 1, 1]  # eased off...
    assert s.state(0)[1] == 4  # ...while regrowing by one per pick
    assert Counter(s.pick() for _ in range(200)) == {0: 100, 1: 100}  # ...back to equal


def test_swrr_validation() -> None:
    with pytest.raises(ValueError):
        fast.SmoothWeightedRR([-1])
    with pytest.raises(ValueError):
        fast.SmoothWeightedRR([1], max_fails=0)
    s = fast.SmoothWeightedRR([1])
    with pytest.raises(IndexError):
        s.set_available(1, True)
    with pytest.raises(ValueError):
        s.set_weight(0, 10**7)


# -- least connections ----------------------------------------------------------------------------

def test_least_conn_ties_rotate_so_load_spreads() -> None:
    lc = fast.LeastConnections(4)
    assert [lc.pick() for _ in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    # With each pick acquired and nothing released, load stays even.
    lc = fast.LeastConnections(3)
    for _ in range(9):
        lc.acquire(lc.pick())
    assert [lc.active(i) for i in range(3)] == [3, 3, 3]


def test_least_conn_prefers_idle_and_honours_weights() -> None:
    lc = fast.LeastConnections(3)
    lc.acquire(0)
    lc.acquire(0)
    lc.acquire(1)
    assert lc.pick() == 2
    w = fast.LeastConnections(2, weights=[1, 3])
    for _ in range(400):
        w.acquire(w.pick())
    assert (w.active(0), w.active(1)) == (100, 300)
    lc.release(2)
    lc.release(2)  # stray release: clamped
    assert lc.active(2) == 0
    lc.set_available(2, False)
    assert lc.pick() == 1
    for i in range(3):
        lc.set_available(i, False)
    assert lc.pick() == -1


# -- P2C over peak EWMA --------------------------------------------------------------------------

def test_p2c_prefers_the_faster_target() -> None:
    p = fast.P2CEwma(5, 10.0, seed=42)
    for t in range(50):
        for i in range(5):
            p.observe(i, 0.01 * (i + 1), t * 0.1)
    picks = Counter(p.pick(5.0) for _ in range(10_000))
    assert picks[0] > picks[1] > picks[2] > picks[3]
    assert picks[4] == 0  # the slowest loses every comparison
    assert picks[0] > 3500  # ~ 2/5 of picks: it wins whenever it is drawn


def test_p2c_in_flight_requests_push_load_away() -> None:
    p = fast.P2CEwma(2, 10.0)
    p.observe(0, 0.010, 0.0)
    p.observe(1, 0.030, 0.0)
    assert p.pick(0.0) == 0
    for _ in range(3):
        p.acquire(0)  # 0.010 × 4 > 0.030 × 1
    assert p.pick(0.0) == 1
    p.release(0)
    p.release(0)
    assert p.pick(0.0) == 0


def test_p2c_peak_then_decay() -> None:
    p = fast.P2CEwma(2, 1.0)
    p.observe(0, 0.010, 0.0)
    p.observe(0, 0.500, 0.1)
    assert p.cost(0) == 0.5  # a slow response counts in full at once
    p.observe(0, 0.010, 0.2)
    assert 0.45 < p.cost(0) < 0.5  # fast responses pull it down gradually
    p.observe(1, 0.050, 0.2)
    assert p.pick(0.3) == 1
    # Idle long enough, the slow target's score decays below the other's: it gets probed again.
    assert p.score(0, 5.0) < p.score(1, 0.3)
    assert math.isclose(p.score(1, 1.2), 0.050 * math.exp(-1.0))


def test_p2c_time_backwards_is_clamped_and_bad_inputs_rejected() -> None:
    p = fast.P2CEwma(2, 2.0)
    p.observe(0, 0.1, 10.0)
    p.observe(0, 0.05, 4.0)  # earlier than the last stamp: no decay weight, stamp stays
    assert p.cost(0) == 0.1
    assert p.score(0, 3.0) == 0.1  # reading in the past does not inflate it
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            p.pick(bad)
        with pytest.raises(ValueError):
            p.observe(0, bad, 1.0)
        with pytest.raises(ValueError):
            p.observe(0, 0.1, bad)
    with pytest.raises(ValueError):
        p.observe(0, -0.001, 1.0)
    for kwargs in ({"decay_seconds": 0.0}, {"decay_seconds": math.nan},
                   {"initial_latency": -1.0}, {"seed": -1}, {"seed": 2**64}):
        with pytest.raises(ValueError):
            fast.P2CEwma(2, **kwargs)
    with pytest.raises(IndexError):
        p.acquire(2)


def test_p2c_draws_are_uniform_over_available_and_deterministic() -> None:
    p = fast.P2CEwma(5, 10.0, seed=7)
    p.set_available(1, False)
    picks = Counter(p.pick(0.0) for _ in range(20_000))
    assert 1 not in picks and set(picks) == {0, 2, 3, 4}
    assert min(picks.values()) > 0.2 * 20_000  # untied scores all equal: first draw, uniform
    q = fast.P2CEwma(5, 10.0, seed=7)
    q.set_available(1, False)
    assert Counter(q.pick(0.0) for _ in range(20_000)) == picks
    for i in (0, 2, 3):
        p.set_available(i, False)
    assert {p.pick(1.0) for _ in range(10)} == {4}
    p.set_available(4, False)
    assert p.pick(1.0) == -1
    assert fast.P2CEwma(0).pick(0.0) == -1


# -- compiled vs reference -----------------------------------------------------------------------



def mostly(normal: st.SearchStrategy, *special: object) -> st.SearchStrategy:
    """``normal`` 9 times in 10, else one of the edge values: invalid inputs must be exercised
    without drowning the valid sequences that compare state."""
    return st.tuples(st.integers(0, 9), normal, st.sampled_from(special)).map(
        lambda t: t[2] if t[0] == 0 else t[1])


# Times within a few decay constants (so estimates stay comparable), going backwards at times,
# with rare huge gaps and NaN/inf; latencies with zero, negative and NaN edges.
TIME = mostly(st.floats(0, 60), 1e12, -5.0, math.nan, math.inf)
LATENCY = mostly(st.floats(0, 2), 0.0, -0.1, math.nan, math.inf)
IDX = mostly(st.integers(0, 5), -1, 6)


def drive(compiled: object, model: object, ops: list[tuple]) -> None:
    for name, *args in ops:
        results = []
        for obj in (compiled, model):
            try:
                results.append(getattr(obj, name)(*args))
            except (ValueError, IndexError) as e:
                results.append(type(e))
        assert results[0] == results[1], (name, args, results)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=6), st.integers(1, 4), st.data())
def test_swrr_matches_reference(weights: list[int], max_fails: int, data: st.DataObject) -> None:
    ops = data.draw(st.lists(st.one_of(
        st.tuples(st.just("pick")),
        st.tuples(st.just("set_available"), IDX, st.booleans()),
        st.tuples(st.just("set_weight"), IDX, st.integers(0, 6)),
        st.tuples(st.just("report_failure"), IDX),
        st.tuples(st.just("state"), IDX),
    ), max_size=60))
    drive(fast.SmoothWeightedRR(weights, max_fails=max_fails),
          ref.SmoothWeightedRR(weights, max_fails=max_fails), ops)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 4), max_size=6), st.data())
def test_least_conn_matches_reference(weights: list[int], data: st.DataObject) -> None:
    ops = data.draw(st.lists(st.one_of(
        st.tuples(st.just("pick")),
        st.tuples(st.just("acquire"), IDX),
        st.tuples(st.just("release"), IDX),
        st.tuples(st.just("set_available"), IDX, st.booleans()),
        st.tuples(st.just("set_weight"), IDX, st.integers(0, 4)),
        st.tuples(st.just("active"), IDX),
    ), max_size=60))
    drive(fast.LeastConnections(len(weights), weights),
          ref.LeastConnections(len(weights), weights), ops)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 6), st.floats(0.5, 100), st.integers(0, 2**64 - 1), st.data())
def test_p2c_matches_reference(n: int, decay: float, seed: int, data: st.DataObject) -> None:
    words = st.integers(0, 2**64 - 1)
    ops = data.draw(st.lists(st.one_of(
        st.tuples(st.just("pick"), TIME),
        st.tuples(st.just("pick_with"), TIME, words, words),
        st.tuples(st.just("observe"), IDX, LATENCY, TIME),
        st.tuples(st.just("acquire"), IDX),
        st.tuples(st.just("release"), IDX),
        st.tuples(st.just("set_available"), IDX, st.booleans()),
        st.tuples(st.just("score"), IDX, TIME),
    ), max_size=60))
    drive(fast.P2CEwma(n, decay, seed=seed), ref.P2CEwma(n, decay, seed=seed), ops)
