"""TokenBucket: documented behaviour, input validation, and compiled-vs-model property tests."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._fast.token_bucket import TokenBucket
from tests.fast.reference import timeline
from tests.fast.reference.token_bucket import TokenBucketModel

# ---------------------------------------------------------------- documented behaviour


def test_starts_full_then_refills_at_rate() -> None:
    tb = TokenBucket(2.0, 3.0)
    assert [tb.try_acquire(10.0)[0] for _ in range(4)] == [True, True, True, False]
    # Empty: one token takes 1/rate = 0.5 s.
    assert tb.try_acquire(10.0) == (False, 0.0, 0.5)
    assert tb.try_acquire(10.25) == (False, 0.5, 0.25)
    assert tb.try_acquire(10.5) == (True, 0.0, 0.0)


def test_refill_is_capped_at_capacity() -> None:
    tb = TokenBucket(100.0, 5.0)
    tb.try_acquire(0.0, 5.0)
    assert tb.try_acquire(1000.0) == (True, 4.0, 0.0)


def test_cost_and_retry_after_for_multi_token_requests() -> None:
    tb = TokenBucket(1.0, 10.0)
    assert tb.try_acquire(0.0, 8.0) == (True, 2.0, 0.0)
    allowed, left, retry = tb.try_acquire(0.0, 5.0)
    assert (allowed, left, retry) == (False, 2.0, 3.0)
    # A denied request takes nothing.
    assert tb.try_acquire(3.0, 5.0) == (True, 0.0, 0.0)


def test_cost_above_capacity_is_never_satisfiable() -> None:
    tb = TokenBucket(1.0, 2.0)
    assert tb.try_acquire(0.0, 3.0) == (False, 2.0, math.inf)


def test_time_going_backwards_refills_nothing() -> None:
    tb = TokenBucket(1.0, 2.0)
    tb.try_acquire(100.0, 2.0)
    assert tb.try_acquire(99.5) == (False, 0.0, 1.0)     # within GW_MAX_STEP_BACK (1 s)
    assert tb.last == 100.0
    # Forward again: refilled from the old `last`, once.
    assert tb.try_acquire(101.0) == (True, 0.0, 0.0)


def test_huge_gap_and_first_call_at_any_clock_origin() -> None:
    tb = TokenBucket(1e-3, 10.0)
    assert tb.try_acquire(1e15) == (True, 9.0, 0.0)      # full at the first call, whatever `now`
    assert tb.try_acquire(1e15 + 1e12)[1] == 9.0          # capped, not overflowed
    tb2 = TokenBucket(1e300, 1e300)
    tb2.try_acquire(0.0, 1e300)
    assert tb2.try_acquire(1e300)[0] is True               # rate * gap = inf, capped


def test_reset_after_is_when_a_whole_token_returns() -> None:
    tb = TokenBucket(4.0, 10.0)
    assert tb.try_acquire(0.0, 2.5)[1] == 7.5
    assert tb.reset_after() == 0.125            # 7.5 -> 8 at 4 tokens/s
    tb.try_acquire(0.0, 7.5)
    assert tb.reset_after() == 0.25
    part = TokenBucket(1.0, 3.0)
    part.try_acquire(0.0, 0.5)
    assert part.reset_after() == 0.5            # 2.5 -> 3
    odd = TokenBucket(1.0, 2.5)
    odd.try_acquire(0.0, 0.25)
    assert odd.reset_after() == 0.0             # floor(tokens) is already floor(capacity)
    assert TokenBucket(1.0, 3.0).reset_after() == 0.0   # full


def test_from_policy_maps_limit_window_burst() -> None:
    tb = TokenBucket.from_policy(100, 1.0, burst=20)
    assert (tb.rate, tb.capacity) == (100.0, 120.0)
    assert sum(tb.try_acquire(5.0)[0] for _ in range(200)) == 120
    assert sum(tb.try_acquire(6.0)[0] for _ in range(200)) == 100   # one window later: the rate
    tb = TokenBucket.from_policy(60, 60.0)
    assert (tb.rate, tb.capacity) == (1.0, 60.0)


@pytest.mark.parametrize("rate,capacity", [(0, 1), (-1, 1), (math.nan, 1), (math.inf, 1),
                                           (1, 0), (1, -2), (1, math.nan), (1, math.inf)])
def test_bad_construction_is_rejected(rate: float, capacity: float) -> None:
    with pytest.raises(ValueError, match="rate|capacity"):
        TokenBucket(rate, capacity)


@pytest.mark.parametrize("kw", [{"limit": 0}, {"window": -1.0}, {"burst": -1.0},
                                {"burst": math.nan}, {"limit": math.nan}])
def test_bad_policy_is_rejected(kw: dict[str, float]) -> None:
    args = {"limit": 10.0, "window": 1.0, "burst": 0.0, **kw}
    with pytest.raises(ValueError):
        TokenBucket.from_policy(args["limit"], args["window"], args["burst"])


@pytest.mark.parametrize("now,cost", [(-1.0, 1.0), (math.nan, 1.0), (math.inf, 1.0),
                                      (1.0, 0.0), (1.0, -1.0), (1.0, math.nan), (1.0, math.inf)])
def test_bad_call_is_rejected_and_changes_nothing(now: float, cost: float) -> None:
    tb = TokenBucket(1.0, 2.0)
    tb.try_acquire(1.0)
    with pytest.raises(ValueError, match="now|cost"):
        tb.try_acquire(now, cost)
    assert (tb.tokens, tb.last) == (1.0, 1.0)


# ---------------------------------------------------------------- compiled == model


@st.composite
def scenario(draw: st.DrawFn) -> tuple[float, float, list[tuple[float, float]]]:
    rate = draw(st.floats(1e-3, 1e6))
    capacity = draw(st.floats(0.5, 1e6))
    n = draw(st.integers(1, 60))
    times = draw(timeline(n, scale=draw(st.sampled_from([1.0 / rate, 1.0, capacity / rate]))))
    costs = draw(st.lists(st.one_of(st.just(1.0), st.floats(1e-3, capacity * 1.5),
                                    st.integers(1, 5).map(float)), min_size=n, max_size=n))
    return rate, capacity, list(zip(times, costs, strict=True))


@settings(max_examples=400, deadline=None)
@given(scenario())
def test_compiled_matches_model_exactly(case: tuple[float, float, list[tuple[float, float]]]) -> None:
    rate, capacity, ops = case
    tb, model = TokenBucket(rate, capacity), TokenBucketModel(rate, capacity)
    for now, cost in ops:
        # Exact: both are IEEE doubles doing the same operations in the same order.
        assert tb.try_acquire(now, cost) == model.try_acquire(now, cost)
        assert (tb.tokens, tb.last) == (model.tokens, model.last)
        assert tb.reset_after() == model.reset_after()


@settings(max_examples=200, deadline=None)
@given(st.floats(0.1, 1e3), st.floats(1.0, 1e3), timeline(80, scale=0.01))
def test_never_admits_more_than_capacity_plus_refill(rate: float, capacity: float,
                                                     times: list[float]) -> None:
    """The bucket's contract, independent of the model: over any run, admitted <= capacity +
    rate * (elapsed forward time)."""
    tb = TokenBucket(rate, capacity)
    admitted, forward, last = 0, 0.0, times[0]
    for now in times:
        forward += max(0.0, now - last)
        last = max(last, now)
        admitted += tb.try_acquire(now)[0]
        assert admitted <= capacity + rate * forward + 1e-9 * capacity


def test_a_bucket_written_under_a_future_clock_refills_when_time_returns() -> None:
    """A `now` far in the future left `last` there: no refill until the clock caught up. A
    `last` more than GW_MAX_STEP_BACK (1 s) ahead is moved back to `now`, tokens kept (never
    minted). Failed before the fix (denied until 1e9)."""
    tb = TokenBucket(1.0, 2.0)
    assert tb.try_acquire(1e9, 2.0)[0] is True
    assert tb.try_acquire(100.0) == (False, 0.0, 1.0)
    assert tb.last == 100.0
    assert tb.try_acquire(101.0) == (True, 0.0, 0.0)
    # A step back within the bound refills nothing and keeps `last`.
    tb.try_acquire(100.5)
    assert tb.last == 101.0
