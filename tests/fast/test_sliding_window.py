"""SlidingWindow and SlidingLog: documented behaviour, validation, compiled-vs-model properties."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._fast.sliding_window import MAX_LOG_LIMIT, MAX_WINDOW_LIMIT, SlidingLog, SlidingWindow
from tests.fast.reference import timeline
from tests.fast.reference.sliding_window import SlidingLogModel, SlidingWindowModel

# ---------------------------------------------------------------- SlidingWindow, by example


def test_window_counts_and_reset_rule() -> None:
    sw = SlidingWindow(3, 1.0)
    # Allowed: reset = when remaining grows by one. One hit at 0.5 in [0, 1): it becomes the
    # previous window at 1.0 and has decayed to nothing at 2.0.
    assert sw.check(0.5) == (True, 2, 1.5)
    assert sw.check(0.5) == (True, 1, 1.0)    # estimate 2 -> 1 at 1.5 (2 * (1 - 0.5))
    assert sw.check(0.5)[:2] == (True, 0)
    allowed, remaining, retry = sw.check(0.5)
    assert (allowed, remaining) == (False, 0)
    assert retry == pytest.approx(1 / 3 + 0.5)  # estimate 3 -> 2 once 1/3 of prev has decayed
    assert sw.check(0.5 + retry + 1e-9)[0] is True


def test_previous_window_is_weighted_by_overlap() -> None:
    sw = SlidingWindow(10, 10.0)
    for _ in range(10):
        sw.check(5.0)
    # At 12.5: 75 % of the previous window still overlaps -> estimate 7.5, room for 2.
    assert [sw.check(12.5)[0] for _ in range(3)] == [True, True, False]
    assert (sw.prev_count, sw.curr_count, sw.window_start) == (10.0, 2.0, 10.0)


def test_gap_of_two_windows_forgets_everything() -> None:
    sw = SlidingWindow(2, 1.0)
    sw.check(0.1)
    sw.check(0.1)
    assert sw.check(2.0) == (True, 1, 2.0)   # the new hit fully decays at 4.0
    assert sw.prev_count == 0.0


def test_time_going_backwards_never_rotates_or_forgets() -> None:
    sw = SlidingWindow(2, 1.0)
    sw.check(5.5)
    sw.check(5.5)
    assert sw.check(4.0)[0] is False          # same counts, no rotation back
    assert sw.window_start == 5.0
    assert sw.check(5.9)[0] is False
    assert sw.check(6.0 + 0.5)[0] is True     # forward again: normal decay


def test_cost_above_limit_is_never_satisfiable_and_costs_count() -> None:
    sw = SlidingWindow(5, 1.0)
    assert sw.check(0.0, 6) == (False, 5, math.inf)
    assert sw.check(0.0, 4)[:2] == (True, 1)
    assert sw.check(0.0, 2)[:2] == (False, 1)


def test_huge_timestamps_and_gaps() -> None:
    sw = SlidingWindow(1, 0.001)
    assert sw.check(1e12)[0] is True
    assert sw.check(1e12)[0] is False
    assert sw.check(1e12 + 1e9)[0] is True


@pytest.mark.parametrize("limit,window", [(0, 1), (-1, 1), (math.nan, 1), (math.inf, 1),
                                          (MAX_WINDOW_LIMIT + 1, 1), (1, 0), (1, -1), (1, math.nan)])
def test_window_bad_construction(limit: float, window: float) -> None:
    with pytest.raises(ValueError, match="limit|window"):
        SlidingWindow(limit, window)


@pytest.mark.parametrize("now,cost", [(-0.5, 1), (math.nan, 1), (math.inf, 1), (1, 0), (1, -1),
                                      (1, math.nan)])
def test_window_bad_call(now: float, cost: float) -> None:
    sw = SlidingWindow(3, 1.0)
    with pytest.raises(ValueError, match="now|cost"):
        sw.check(now, cost)
    assert sw.curr_count == 0.0


# ---------------------------------------------------------------- SlidingLog, by example


def test_log_is_exact_at_the_window_edge() -> None:
    log = SlidingLog(2, 1.0)
    assert log.check(10.0) == (True, 1, 1.0)
    assert log.check(10.4) == (True, 0, pytest.approx(0.6))
    assert log.check(10.9) == (False, 0, pytest.approx(0.1))
    assert log.check(11.0) == (True, 0, pytest.approx(0.4))    # the 10.0 hit left exactly at 11.0
    assert len(log) == 2


def test_log_retry_after_for_costly_request() -> None:
    log = SlidingLog(4, 10.0)
    for t in (0.0, 1.0, 2.0):
        log.check(t)
    # 3 stored, cost 3 needs 2 of them gone: the second-oldest leaves at 11.0.
    assert log.check(5.0, 3) == (False, 1, 6.0)
    assert log.check(5.0, 5) == (False, 1, math.inf)


def test_log_clamps_backwards_time() -> None:
    log = SlidingLog(1, 1.0)
    log.check(10.0)
    assert log.check(3.0) == (False, 0, 1.0)      # measured from the clamped now (10.0)
    assert log.check(11.0)[0] is True


@pytest.mark.parametrize("limit,window", [(0, 1.0), (-3, 1.0), (MAX_LOG_LIMIT + 1, 1.0),
                                          (5, 0.0), (5, math.nan)])
def test_log_bad_construction(limit: int, window: float) -> None:
    with pytest.raises(ValueError, match="limit|window"):
        SlidingLog(limit, window)


def test_log_bad_call() -> None:
    log = SlidingLog(3, 1.0)
    for now, cost in ((-1.0, 1), (math.nan, 1), (1.0, 0)):
        with pytest.raises(ValueError, match="now|cost"):
            log.check(now, cost)
    assert len(log) == 0


# ---------------------------------------------------------------- compiled == model


@st.composite
def window_case(draw: st.DrawFn) -> tuple[float, float, list[tuple[float, float]]]:
    limit = draw(st.one_of(st.integers(1, 200).map(float), st.integers(1, 10**9).map(float)))
    window = draw(st.floats(1e-3, 3600.0))
    n = draw(st.integers(1, 80))
    times = draw(timeline(n, scale=window / draw(st.sampled_from([1.0, 4.0, limit]))))
    costs = draw(st.lists(st.one_of(st.just(1.0), st.just(1.0), st.integers(1, 5).map(float),
                                    st.integers(1, int(limit) + 2).map(float)),
                          min_size=n, max_size=n))
    return limit, window, list(zip(times, costs, strict=True))


@settings(max_examples=300, deadline=None)
@given(window_case())
def test_window_matches_model_exactly(case: tuple[float, float, list[tuple[float, float]]]) -> None:
    limit, window, ops = case
    sw, model = SlidingWindow(limit, window), SlidingWindowModel(limit, window)
    for now, cost in ops:
        # Exact: same double operations; counts are integers in both.
        assert sw.check(now, cost) == model.check(now, cost)
        assert (sw.window_start, sw.prev_count, sw.curr_count) == \
            (model.window_start, model.prev, model.curr)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.floats(1e-2, 100.0), st.data())
def test_log_matches_definition_model(limit: int, window: float, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 120))
    times = data.draw(timeline(n, scale=window / limit))
    costs = data.draw(st.lists(st.one_of(st.just(1), st.integers(1, limit + 2)),
                               min_size=n, max_size=n))
    log, model = SlidingLog(limit, window), SlidingLogModel(limit, window)
    for now, cost in zip(times, costs, strict=True):
        assert log.check(now, cost) == model.check(now, cost)
        assert len(log) == len(model.hits)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.floats(0.1, 10.0), timeline(150, scale=0.01))
def test_log_never_admits_more_than_limit_per_window(limit: int, window: float,
                                                     times: list[float]) -> None:
    """The exactness contract itself: any `window`-long interval holds at most `limit` hits."""
    log = SlidingLog(limit, window)
    admitted: list[float] = []
    last = -math.inf
    for now in times:
        last = max(last, now)
        if log.check(now)[0]:
            admitted.append(last)
            assert sum(1 for t in admitted if t > last - window) <= limit


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 100).map(float), st.floats(0.01, 10.0), timeline(150, scale=0.01))
def test_window_never_exceeds_limit_within_a_fixed_window(limit: float, window: float,
                                                          times: list[float]) -> None:
    sw = SlidingWindow(limit, window)
    for now in times:
        sw.check(now)
        assert sw.curr_count <= limit


# ---------------------------------------------------------------- the reset rule, by probing


def _replay(cls: type, limit: float, window: float, ops: list[tuple[float, float]]) -> object:
    lim = cls(int(limit) if cls is SlidingLog else limit, window)
    for now, cost in ops:
        lim.check(now, cost)
    return lim


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([SlidingWindow, SlidingLog]), st.integers(1, 20), st.floats(0.01, 100.0),
       st.data())
def test_reset_is_when_the_probe_turns(cls: type, limit: int, window: float,
                                       data: st.DataObject) -> None:
    """The documented rule, checked against the limiter itself: replaying the same history, a
    probe just after `now + reset` succeeds and one just before fails. The probe is the request
    itself when denied (Retry-After), or a request of remaining + 1 when allowed (remaining
    grows by one). `eps` is far above float rounding at these magnitudes."""
    steps = data.draw(st.lists(st.floats(0.0, window / 2), min_size=1, max_size=30))
    costs = data.draw(st.lists(st.integers(1, limit), min_size=len(steps), max_size=len(steps)))
    ops, now = [], 1000.0
    for dt, cost in zip(steps, costs, strict=True):
        now += dt
        ops.append((now, float(cost) if cls is SlidingWindow else cost))
    allowed, remaining, reset = _replay(cls, limit, window, ops[:-1]).check(*ops[-1])
    probe = ops[-1][1] if not allowed else remaining + 1
    if allowed and remaining + 1 > limit:
        assert reset == 0.0
        return
    eps = 1e-6 * window
    after = _replay(cls, limit, window, ops).check(now + reset + eps, probe)
    assert after[0] is True
    if reset > 2 * eps:
        before = _replay(cls, limit, window, ops).check(now + reset - eps, probe)
        assert before[0] is False


# ---------------------------------------------------------------- defects found in review


def test_log_huge_cost_is_denied_at_once() -> None:
    """A cost near 2**63 made `_count + cost` overflow, read as allowed, and `range(cost)` looped
    about 2**63 times holding the GIL (a hang). Run in a child with a deadline, so a regression
    fails instead of hanging the suite. Failed (timed out) before the fix."""
    import subprocess
    import sys

    code = ("from gateway._fast.sliding_window import SlidingLog\n"
            "log = SlidingLog(10, 1.0)\n"
            "log.check(0.0, 3)\n"
            "for cost in (2**63 - 1, 2**63 - 3, 2**62, 11):\n"
            "    print(log.check(0.0, cost))\n"
            "print(len(log))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:5] == ["(False, 7, inf)"] * 4 + ["3"]


def test_counts_are_exact_integers_at_any_size() -> None:
    """float32 counts lost costs: at a count of 9,000,000 a cost of 0.5 rounded away, so every
    later request was admitted (limit 10,000,000 at cost 0.5 admitted 24,000,000), and limits
    above 2**24 were refused. Counts are now exact integers and costs whole numbers (refused
    otherwise). Failed before the fix (0.5 accepted; a limit of 10**9 refused)."""
    sw = SlidingWindow(10_000_000, 1.0)
    assert sw.check(0.0, 9_000_000)[0] is True
    with pytest.raises(ValueError, match="cost"):
        sw.check(0.0, 0.5)
    assert sw.curr_count == 9_000_000
    big = SlidingWindow(1_000_000_000, 60.0)
    assert big.check(0.0, 999_999_999)[:2] == (True, 1)
    assert big.check(0.0, 1)[:2] == (True, 0)
    assert big.check(0.0, 1)[:2] == (False, 0)
    assert (big.prev_count, big.curr_count) == (0, 1_000_000_000)
    with pytest.raises(ValueError, match="limit"):
        SlidingWindow(2.5, 1.0)


def _exact_estimate(prev: int, curr: int, window_start: float, window: float, now: float) -> Fraction:
    elapsed = min(max(Fraction(now) - Fraction(window_start), Fraction(0)), Fraction(window))
    return prev * (1 - elapsed / Fraction(window)) + curr


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**9), st.floats(1e-3, 3600.0), st.data())
def test_model_and_compiled_agree_with_exact_arithmetic(limit: int, window: float,
                                                        data: st.DataObject) -> None:
    """The model is checked against exact arithmetic, not only against the compiled code (it
    shared the float32 error, so the property tests could not see it): counts equal the sum of
    the admitted costs of each fixed window, exactly; each decision is the exact one except
    within a relative 1e-12 of the boundary (the weight is a double), so no admitted hit takes
    the exact estimate past the limit by more than that."""
    n = data.draw(st.integers(1, 60))
    times = data.draw(timeline(n, scale=window / 3))
    costs = data.draw(st.lists(st.one_of(st.integers(1, 3), st.integers(1, limit + 2),
                                         st.just(max(1, limit // 2))), min_size=n, max_size=n))
    sw, model = SlidingWindow(limit, window), SlidingWindowModel(limit, window)
    ledger = [0, 0]                          # exact admitted cost: previous, current window
    ledger_start = -math.inf
    for now, cost in zip(times, costs, strict=True):
        got = sw.check(now, cost)
        # The window the model is in after rotation (rotation does not depend on the cost).
        shadow = SlidingWindowModel(limit, window)
        shadow.window_start, shadow.prev, shadow.curr = model.window_start, model.prev, model.curr
        shadow.check(now, limit + 1)         # rotates only (a cost above the limit is denied)
        est_before = _exact_estimate(shadow.prev, shadow.curr, shadow.window_start, window, now)
        want = model.check(now, cost)
        assert got == want
        exact_allowed = est_before + cost <= limit
        if got[0] != exact_allowed:
            assert abs(est_before + cost - limit) <= Fraction(limit) * Fraction(1, 10**12), (now, cost)
        if model.window_start > ledger_start:  # rotated: the adjacent window's count carries
            adjacent = model.window_start - ledger_start < 1.5 * window
            ledger = [ledger[1] if adjacent else 0, 0]
        ledger_start = model.window_start    # (a re-anchor back keeps both counts)
        if got[0]:
            ledger[1] += cost
        assert [model.prev, model.curr] == ledger
        assert sw.curr_count == model.curr and sw.prev_count == model.prev
        assert isinstance(model.curr, int) and isinstance(model.prev, int)


def test_a_state_written_under_a_future_clock_recovers_when_time_returns() -> None:
    """A `now` far in the future (a wrong clock) left state that never rotated, refilled or
    expired until the clock caught up. A state time more than GW_MAX_STEP_BACK (1 s) ahead of
    `now` is re-anchored on `now` with its counts: limited at once, recovered within the window.
    Small steps back stay clamped. Failed before the fix (limited until 1e9)."""
    sw = SlidingWindow(2, 1.0)
    sw.check(1e9)
    sw.check(1e9)
    assert sw.check(100.0)[0] is False               # the debt is kept, not forgiven
    assert sw.window_start == 100.0
    assert sw.check(102.5)[0] is True                # rotated out two windows later
    log = SlidingLog(1, 1.0)
    log.check(1e9)
    assert log.check(100.0)[0] is False
    assert log.check(100.5)[0] is False              # the hit moved back to 100.0: 1 s window
    assert log.check(101.25)[0] is True
    # Within the bound, time going back is clamped as before: nothing rotates or expires.
    sw = SlidingWindow(1, 1.0)
    sw.check(10.5)
    assert sw.check(9.6)[0] is False and sw.window_start == 10.0
