"""Counter, CounterArray, Histogram: behaviour, validation, model properties, shared memory."""
from __future__ import annotations

import math
import mmap
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._fast.counters import Counter, CounterArray, Histogram
from tests.fast.reference.counters import CounterModel, HistogramModel

LATENCY = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]

# ---------------------------------------------------------------- private memory


def test_counter_counts_and_rejects_negative() -> None:
    c = Counter()
    c.inc()
    c.inc(41)
    c.inc(0)
    assert c.value == 42 and not c.shared
    with pytest.raises(ValueError, match=">= 0"):
        c.inc(-1)
    assert c.value == 42


def test_counter_is_uint64() -> None:
    c = Counter()
    c.inc(2**63 - 1)
    c.inc(2**63 - 1)
    assert c.value == 2**64 - 2


def test_counter_array_indexes_and_bounds() -> None:
    a = CounterArray(4)
    a.inc(0)
    a.inc(3, 5)
    assert a.values() == [1, 0, 0, 5] and len(a) == 4 and a[3] == 5
    for bad in (-1, 4):
        with pytest.raises(IndexError):
            a.inc(bad)
        with pytest.raises(IndexError):
            a[bad]
    with pytest.raises(ValueError):
        CounterArray(0)


def test_histogram_buckets_are_inclusive_upper_bounds() -> None:
    h = Histogram([0.1, 0.5, 1.0])
    for v in (0.05, 0.1, 0.1000001, 0.5, 7.0, -1.0):
        h.observe(v)
    assert h.buckets() == [(0.1, 3), (0.5, 5), (1.0, 5), (math.inf, 6)]
    assert h.count == 6
    assert h.sum_raw == round((0.05 + 0.1 + 0.1000001 + 0.5 + 7.0 - 1.0) * 1e6)
    assert h.sum == pytest.approx(6.7500001)
    assert h.bounds == (0.1, 0.5, 1.0)


def test_histogram_resolution_rounds_half_up() -> None:
    h = Histogram([1.0], resolution=1.0)
    for v in (0.5, 1.5, 2.4):
        h.observe(v)
    assert h.sum_raw == 1 + 2 + 2


@pytest.mark.parametrize("bounds", [[], [1.0, 1.0], [2.0, 1.0], [1.0, math.inf], [math.nan]])
def test_histogram_bad_bounds(bounds: list[float]) -> None:
    with pytest.raises(ValueError, match="bounds"):
        Histogram(bounds)


@pytest.mark.parametrize("resolution", [0.0, -1.0, math.nan, math.inf])
def test_histogram_bad_resolution(resolution: float) -> None:
    with pytest.raises(ValueError, match="resolution"):
        Histogram([1.0], resolution=resolution)


@pytest.mark.parametrize("v", [math.nan, math.inf, -math.inf, 1e300])
def test_histogram_rejects_unrepresentable_observation(v: float) -> None:
    h = Histogram([1.0])
    with pytest.raises(ValueError, match="observation"):
        h.observe(v)
    assert h.count == 0 and h.sum_raw == 0


# ---------------------------------------------------------------- caller-provided memory


def test_cells_live_at_the_given_offset() -> None:
    buf = bytearray(64)
    c = Counter(buf, 8)
    a = CounterArray(2, buf, 16)
    h = Histogram([1.0], buf, 32)
    c.inc(3)
    a.inc(1, 2)
    h.observe(2.0)
    assert c.shared and a.shared and h.shared
    cells = [int.from_bytes(buf[i:i + 8], "little", signed=True) for i in range(0, 64, 8)]
    assert cells == [0, 3, 0, 2, 0, 1, 2_000_000, 0]
    assert (Counter.NBYTES, CounterArray.nbytes(2), Histogram.nbytes(1)) == (8, 16, 24)


def test_cells_are_not_zeroed_when_attached() -> None:
    buf = bytearray((7).to_bytes(8, "little"))
    assert Counter(buf).value == 7     # a second worker attaching sees the first one's counts


@pytest.mark.parametrize("offset,size", [(4, 64), (-8, 64), (64, 64), (0, 4)])
def test_bad_buffer_placement(offset: int, size: int) -> None:
    with pytest.raises(ValueError, match="offset|buffer"):
        Counter(bytearray(size), offset)


# Cell counts whose byte size (8 per cell) wraps a 64-bit size, or does not fit one at all. The
# old code computed 8 * n in C: CounterArray(2**61) got 8 * 2**61 = 2**64 -> 0 bytes, so a 1-byte
# calloc that passed every size check, and inc(1) already wrote past it (inc(2**60): anywhere).
ABSURD = [2**61, 2**61 + 1, 2**62, 2**63 - 1, 2**63, 2**64, -1, -(2**63)]


@pytest.mark.parametrize("n", ABSURD)
def test_counter_array_refuses_absurd_sizes(n: int) -> None:
    for buffer in (None, bytearray(64), mmap.mmap(-1, 4096)):
        with pytest.raises(ValueError, match=f"n must be .*got {n}"):
            CounterArray(n, buffer)
    with pytest.raises(ValueError, match=f"got {n}"):
        CounterArray.nbytes(n)


@pytest.mark.parametrize("n", ABSURD)
def test_histogram_sizes_refuse_absurd_bucket_counts(n: int) -> None:
    with pytest.raises(ValueError, match=f"got {n}"):
        Histogram.nbytes(n)


@pytest.mark.parametrize("make", [
    lambda buf: Counter(buf, 2**63 - 8),
    lambda buf: CounterArray(2**59, buf, 2**62),     # offset + bytes = 2**63 wraps negative
    lambda buf: CounterArray(9, buf, 0),
    lambda buf: Histogram([1.0, 2.0], buf, 2**63 - 16),
], ids=["counter-offset", "array-offset-plus-size", "array-too-big", "histogram-offset"])
def test_cells_past_the_end_of_the_buffer_are_refused(make: object) -> None:
    with pytest.raises(ValueError, match="buffer too small"):
        make(bytearray(64))                         # type: ignore[operator]


def test_sizes_at_the_limit_are_still_computed() -> None:
    big = (2**63 - 1) // 8
    assert CounterArray.nbytes(big) == 8 * big
    assert Histogram.nbytes(big - 2) == 8 * big
    with pytest.raises(MemoryError):                # representable, just not there: no overflow
        CounterArray(big)
    with pytest.raises(ValueError, match="buffer too small: CounterArray"):
        CounterArray(big, bytearray(64))


def test_read_only_buffer_is_refused() -> None:
    with pytest.raises(BufferError):
        Counter(bytes(8))


def test_buffer_export_pins_the_mmap() -> None:
    m = mmap.mmap(-1, 4096)
    c = Counter(m)
    with pytest.raises(BufferError):
        m.close()          # the counter still points into it
    del c
    m.close()


def _fork_and_run(n_children: int, body: object) -> None:
    pids = []
    for _ in range(n_children):
        pid = os.fork()
        if pid == 0:   # child: never returns into pytest
            code = 1
            try:
                body()  # type: ignore[operator]
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_shared_counters_are_exact_across_processes() -> None:
    """Two children and the parent hammer the same MAP_SHARED cells: no update is lost."""
    n = 300_000   # enough that the three processes overlap on 2 cores
    m = mmap.mmap(-1, 4096)    # anonymous, MAP_SHARED, zero-filled
    c = Counter(m, 0)
    a = CounterArray(3, m, 8)
    h = Histogram([1.0, 2.0], m, 64)

    def work() -> None:
        for i in range(n):
            c.inc()
            a.inc(i % 3)
            h.observe(1.5)

    _fork_and_run(2, work)
    work()
    assert c.value == 3 * n
    assert sum(a.values()) == 3 * n
    assert h.buckets() == [(1.0, 0), (2.0, 3 * n), (math.inf, 3 * n)]
    assert h.sum_raw == 3 * n * 1_500_000
    # A second object attached to the same cells (another worker) reads the same counts.
    assert Counter(m, 0).value == 3 * n


# ---------------------------------------------------------------- compiled == model


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**40), max_size=50))
def test_counter_matches_model(incs: list[int]) -> None:
    c, model = Counter(), CounterModel()
    for n in incs:
        c.inc(n)
        model.inc(n)
        assert c.value == model.value


@st.composite
def histogram_case(draw: st.DrawFn) -> tuple[list[float], float, list[float]]:
    bounds = sorted(set(draw(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=30))))
    resolution = draw(st.sampled_from([1e-9, 1e-6, 1e-3, 1.0, 0.25]))
    values = draw(st.lists(st.one_of(st.sampled_from(bounds), st.floats(-2e6, 2e6)), max_size=60))
    return bounds, resolution, values


@settings(max_examples=300, deadline=None)
@given(histogram_case(), st.booleans())
def test_histogram_matches_model(case: tuple[list[float], float, list[float]], shared: bool) -> None:
    bounds, resolution, values = case
    buf = bytearray(Histogram.nbytes(len(bounds))) if shared else None
    h, model = Histogram(bounds, buf, 0, resolution), HistogramModel(bounds, resolution)
    for v in values:
        h.observe(v)
        model.observe(v)
    # Exact: integer cells, and values equal to a bound are included (bisect_left).
    assert h.buckets() == model.buckets()
    assert (h.count, h.sum_raw, h.sum) == (model.count, model.sum_raw, model.sum)
