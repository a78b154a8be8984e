"""gateway/_fast/breaker: the circuit breaker against its reference model, rule by rule, and
shared between forked processes through an mmap."""
from __future__ import annotations

import itertools
import math
import mmap
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._fast import breaker as fast
from tests.fast.reference import breaker as ref

CLOSED, HALF_OPEN, OPEN = 0, 1, 2


def make(**kw: Any) -> tuple[fast.CircuitBreaker, list[tuple[int, int, float]]]:
    events: list[tuple[int, int, float]] = []
    b = fast.CircuitBreaker(on_transition=lambda o, n, t: events.append((o, n, t)), **kw)
    return b, events


def fail(b: fast.CircuitBreaker, now: float, n: int = 1) -> None:
    for _ in range(n):
        b.record(now, False, 0.01)


def test_enum_values_match_the_metric() -> None:
    assert (fast.CLOSED, fast.HALF_OPEN, fast.OPEN) == (0, 1, 2)
    assert fast.STATE_NAMES == ("closed", "half_open", "open")


# -- opening -------------------------------------------------------------------------------------

def test_consecutive_failures_open_at_the_threshold_and_a_success_resets_the_count() -> None:
    b, events = make(failure_threshold=3, min_requests=1000)
    fail(b, 1.0, 2)
    b.record(1.0, True, 0.01)
    fail(b, 1.0, 2)
    assert b.state == CLOSED and b.allow(1.0)
    fail(b, 1.0)
    assert b.state == OPEN and not b.allow(1.0)
    assert events == [(CLOSED, OPEN, 1.0)]


def test_error_rate_needs_the_minimum_volume() -> None:
    b, _ = make(failure_threshold=100, error_rate=0.5, min_requests=10, window=10.0)
    for _ in range(4):
        b.record(1.0, True, 0.01)
        b.record(1.0, False, 0.01)
    assert b.state == CLOSED            # 50 % but only 8 requests
    b.record(1.0, True, 0.01)
    b.record(1.0, False, 0.01)           # 10 requests, 5 failed
    assert b.state == OPEN


def test_error_rate_window_forgets_old_buckets() -> None:
    b, _ = make(failure_threshold=100, error_rate=0.5, min_requests=4, window=10.0, buckets=10)
    fail(b, 0.5, 3)                      # 3 failures in bucket 0
    for _ in range(3):
        b.record(10.5, True, 0.01)       # bucket 0 has rotated out: 0 failures of 3
    fail(b, 10.5)                        # 1 of 4 failed: 25 % < 50 %
    assert b.state == CLOSED
    assert b.snapshot()["window_requests"] == 4


def test_slow_calls_count_as_failures() -> None:
    b, _ = make(failure_threshold=2, slow_call_duration=1.0)
    b.record(1.0, True, 1.5)
    b.record(1.0, True, 1.0)             # exactly at the limit is not slow
    b.record(1.0, True, 2.0)
    assert b.state == CLOSED
    b.record(1.0, True, 2.0)
    assert b.state == OPEN and b.snapshot()["slow_calls"] == 3


# -- open, half-open, close -------------------------------------------------------------------

def test_open_timeout_doubles_on_repeated_trips_up_to_the_cap() -> None:
    b, _ = make(failure_threshold=1, open_timeout=1.0, max_open_timeout=5.0,
                half_open_requests=1, success_threshold=1)
    now = 0.0
    fail(b, now)
    timeouts = []
    for _ in range(5):
        timeouts.append(b.snapshot()["open_timeout"])
        now += timeouts[-1]
        assert not b.allow(now - 0.001)
        ticket = b.allow(now)
        assert b.state == HALF_OPEN and ticket
        b.record(now, False, 0.01, ticket)       # the probe fails: reopen, doubled
    assert timeouts == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_backoff_resets_after_a_close_that_settles_but_not_after_a_flap() -> None:
    b, _ = make(failure_threshold=1, open_timeout=1.0, half_open_requests=1, success_threshold=1,
                window=10.0)
    fail(b, 0.0)
    t = b.allow(1.0)
    b.record(1.0, True, 0.01, t)                 # recovered at 1.0
    fail(b, 2.0)                                 # re-trips within settle (window): a flap
    assert b.snapshot()["open_timeout"] == 2.0 and b.snapshot()["trips"] == 2
    t = b.allow(4.0)
    b.record(4.0, True, 0.01, t)
    fail(b, 14.0)                                # closed for a full window: fresh start
    assert b.snapshot()["open_timeout"] == 1.0 and b.snapshot()["trips"] == 1


def test_half_open_admits_only_the_probe_quota_and_closes_on_success_threshold() -> None:
    b, events = make(failure_threshold=1, open_timeout=5.0, half_open_requests=3,
                     success_threshold=2)
    fail(b, 0.0)
    tickets = [b.allow(5.0) for _ in range(5)]
    assert [bool(t) for t in tickets] == [True, True, True, False, False]
    b.record(5.1, True, 0.01, tickets[0])
    assert b.state == HALF_OPEN
    b.record(5.2, True, 0.01, tickets[1])
    assert b.state == CLOSED
    assert [e[:2] for e in events] == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    b.record(5.3, False, 0.01, tickets[2])       # the third probe answers late: stale now
    assert b.snapshot()["stale"] == 1 and b.snapshot()["consecutive_failures"] == 0


def test_any_probe_failure_reopens() -> None:
    b, _ = make(failure_threshold=1, open_timeout=1.0, half_open_requests=3, success_threshold=3)
    fail(b, 0.0)
    t = b.allow(1.0)
    b.record(1.0, True, 0.01, t)
    b.record(1.0, True, 0.01, t)
    b.record(1.1, False, 0.01, t)
    assert b.state == OPEN


def test_silent_probes_count_as_failed_after_the_timeout() -> None:
    b, _ = make(failure_threshold=1, open_timeout=2.0, half_open_requests=1, success_threshold=1)
    fail(b, 0.0)
    assert b.allow(2.0) and b.state == HALF_OPEN
    assert not b.allow(3.9) and b.state == HALF_OPEN
    assert not b.allow(4.0) and b.state == OPEN
    assert b.snapshot()["open_timeout"] == 4.0


def test_closed_era_result_does_not_count_as_a_probe() -> None:
    b, _ = make(failure_threshold=1, open_timeout=1.0, half_open_requests=1, success_threshold=1)
    slow = b.allow(0.0)                          # a CLOSED-era call, still in flight
    fail(b, 0.1)
    probe = b.allow(1.1)
    assert probe and probe != slow
    b.record(1.2, False, 1.2, slow)              # the old call fails late: ignored
    assert b.state == HALF_OPEN
    b.record(1.3, True, 0.2, probe)
    assert b.state == CLOSED


def test_linear_ramp_admits_a_growing_share_after_recovery() -> None:
    b, _ = make(failure_threshold=1, open_timeout=1.0, half_open_requests=1, success_threshold=1,
                ramp=10.0)
    fail(b, 0.0)
    b.record(1.0, True, 0.01, b.allow(1.0))      # closed at 1.0, ramp until 11.0
    assert b.snapshot()["ramp_until"] == 11.0
    shares = []
    for second in range(10):
        calls = [b.allow(1.0 + second + i / 1000) for i in range(1000)]
        shares.append(sum(map(bool, calls)) / 1000)
    for second, share in enumerate(shares):
        assert abs(share - (second + 0.5) / 10) < 0.01, shares   # mean of elapsed / ramp
    assert all(b.allow(11.0 + i) for i in range(100))
    assert b.snapshot()["ramp_until"] == 11.0    # ended; the next close without a ramp clears it
    b.force_open(20.0)
    b.force_close(21.0)
    assert b.snapshot()["ramp_until"] is None


def test_force_close_cuts_a_running_ramp_short() -> None:
    b, _ = make(failure_threshold=1, open_timeout=1.0, half_open_requests=1, success_threshold=1,
                ramp=10.0)
    fail(b, 0.0)
    b.record(1.0, True, 0.01, b.allow(1.0))
    assert not all(b.allow(2.0) for _ in range(10))
    assert b.force_close(2.0) is False           # no transition: it was closed
    assert all(b.allow(2.0) for _ in range(10)) and b.snapshot()["ramp_until"] == 2.0


def test_force_open_holds_until_force_close() -> None:
    b, events = make(open_timeout=1.0)
    assert b.force_open(1.0) is True
    assert not b.allow(1e6) and b.state == OPEN and b.snapshot()["forced_open"]
    assert b.force_open(2.0) is False
    assert b.force_close(1e6 + 1) is True and b.allow(1e6 + 1)
    assert b.force_close(1e6 + 2) is False
    assert [e[:2] for e in events] == [(CLOSED, OPEN), (OPEN, CLOSED)]


def test_illegal_transitions_are_refused() -> None:
    b, events = make()
    for new in (CLOSED, HALF_OPEN):
        with pytest.raises(ValueError, match="illegal transition closed"):
            b._transition(new, 1.0)
    assert b.state == CLOSED and events == [] and b.snapshot()["epoch"] == 1
    b._transition(OPEN, 1.0)
    with pytest.raises(ValueError, match="illegal transition open -> open"):
        b._transition(OPEN, 1.0)
    b._transition(HALF_OPEN, 1.0)
    with pytest.raises(ValueError, match="half_open -> half_open"):
        b._transition(HALF_OPEN, 1.0)
    b._transition(CLOSED, 1.0)
    assert [e[:2] for e in events] == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_a_failing_callback_leaves_the_breaker_consistent(caplog: pytest.LogCaptureFixture) -> None:
    def boom(old: int, new: int, now: float) -> None:
        raise RuntimeError("alert sink down")

    b = fast.CircuitBreaker(failure_threshold=1, open_timeout=1.0, on_transition=boom)
    fail(b, 0.0)                                 # does not raise
    assert b.state == OPEN and b.callback_errors == 1
    assert "on_transition callback failed" in caplog.text
    assert b.allow(1.0) and b.state == HALF_OPEN and b.callback_errors == 2


def test_callback_runs_outside_the_lock_and_sees_the_completed_state() -> None:
    seen: list[Any] = []
    # snapshot() takes the breaker's lock: called from inside a locked section it would spin forever.
    b = fast.CircuitBreaker(failure_threshold=1,
                            on_transition=lambda o, n, t: seen.append((b.state, b.snapshot()["epoch"])))
    fail(b, 0.0)
    assert seen == [(OPEN, 2)]


def test_time_going_backwards_is_clamped() -> None:
    b, _ = make(failure_threshold=1, open_timeout=10.0)
    fail(b, 100.0)
    assert not b.allow(50.0)                     # treated as 100.0, not as before the trip
    assert b.allow(110.0)


@pytest.mark.parametrize("bad", [math.nan, -1.0, math.inf, -math.inf])
def test_bad_inputs_raise(bad: float) -> None:
    b, _ = make()
    for call in (lambda: b.allow(bad), lambda: b.record(bad, True, 0.1),
                 lambda: b.record(1.0, True, bad), lambda: b.force_open(bad),
                 lambda: b.force_close(bad)):
        with pytest.raises(ValueError):
            call()
    assert b.snapshot() == make()[0].snapshot()


@pytest.mark.parametrize("kw", [
    {"failure_threshold": 0}, {"error_rate": 0.0}, {"error_rate": 1.5}, {"error_rate": math.nan},
    {"min_requests": 0}, {"window": 0.0}, {"window": math.inf}, {"buckets": 0}, {"buckets": 65},
    {"open_timeout": 0.0}, {"open_timeout": 10.0, "max_open_timeout": 5.0},
    {"half_open_requests": 0}, {"half_open_requests": 2, "success_threshold": 3},
    {"success_threshold": 0}, {"slow_call_duration": 0.0}, {"ramp": -1.0}, {"settle": -1.0},
])
def test_config_is_validated_like_the_reference(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        fast.CircuitBreaker(**kw)
    with pytest.raises(ValueError):
        ref.ReferenceBreaker(**kw)


# -- property: compiled == reference ----------------------------------------------------------

# Repeating an entry of sampled_from weights it (one_of would merge equal branches): mostly
# small forward steps and allow/record, so scripts reach repeat trips and ramps, not only forced
# moves. Each op: (kind, time step, success, duration, which earlier ticket to hand back).
steps = st.sampled_from(["zero", "small", "small", "small", "back", "huge"]).flatmap(
    lambda k: {"zero": st.just(0.0), "small": st.floats(0.0, 3.0), "back": st.floats(-3.0, 0.0),
               "huge": st.floats(1e3, 1e9)}[k])
ops = st.tuples(st.sampled_from(["allow"] * 4 + ["record"] * 6 + ["force_open", "force_close", "open_for", "cancel"]),
                steps, st.booleans(), st.sampled_from([0.0, 0.01, 0.5, 3.0]),
                st.sampled_from([-1, -1, -2, -3, 0]))
configs = st.fixed_dictionaries({
    "failure_threshold": st.integers(1, 4), "error_rate": st.sampled_from([0.25, 0.5, 1.0]),
    "min_requests": st.integers(1, 6), "window": st.sampled_from([1.0, 5.0, 0.3]),
    "buckets": st.integers(1, 12), "open_timeout": st.sampled_from([0.5, 1.0, 2.5]),
    "max_open_timeout": st.sampled_from([None, 4.0]), "half_open_requests": st.integers(1, 3),
    "slow_call_duration": st.sampled_from([math.inf, 1.0]), "ramp": st.sampled_from([0.0, 2.0]),
}).map(lambda c: {**c, "success_threshold": max(1, c["half_open_requests"] - 1)})


@settings(max_examples=400, deadline=None)
@given(configs, st.lists(ops, min_size=10, max_size=150), st.booleans())
def test_compiled_matches_reference(cfg: dict[str, Any], script: list[tuple[Any, ...]],
                                    shared: bool) -> None:
    got: list[tuple[int, int, float]] = []
    want: list[tuple[int, int, float]] = []
    buf = mmap.mmap(-1, fast.SHM_SIZE + 64) if shared else None
    b = fast.CircuitBreaker(on_transition=lambda *e: got.append(e), buffer=buf, offset=64, **cfg) \
        if shared else fast.CircuitBreaker(on_transition=lambda *e: got.append(e), **cfg)
    r = ref.ReferenceBreaker(on_transition=lambda *e: want.append(e), **cfg)
    now, tickets = 5.0, [0]
    for op in script:
        now = max(0.0, now + op[1])
        if op[0] == "allow":
            answer = b.allow(now)
            assert answer == r.allow(now)
            tickets.append(answer)
        elif op[0] == "record":
            ticket = tickets[op[4]] if -op[4] < len(tickets) else 0
            b.record(now, op[2], op[3], ticket)
            r.record(now, op[2], op[3], ticket)
        elif op[0] == "cancel":
            ticket = tickets[op[4]] if -op[4] < len(tickets) else 0
            assert b.cancel(now, ticket) == r.cancel(now, ticket)
        elif op[0] == "open_for":
            assert b.open_for(now, op[3] + 0.25) == r.open_for(now, op[3] + 0.25)
        else:
            assert getattr(b, op[0])(now) == getattr(r, op[0])(now)
        assert b.state == r.state
        assert b.snapshot() == r.snapshot()
    assert got == want


# -- shared memory ----------------------------------------------------------------------------

def run_child(fn: Any) -> int:
    pid = os.fork()
    if pid == 0:                                 # child: never return into pytest
        code = 1
        try:
            code = fn()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_failures_in_one_process_open_the_circuit_seen_by_another() -> None:
    buf = mmap.mmap(-1, fast.SHM_SIZE)
    parent_events: list[Any] = []
    b = fast.CircuitBreaker(failure_threshold=3, buffer=buf,
                            on_transition=lambda *e: parent_events.append(e))
    assert b.shared

    def child() -> int:
        events: list[Any] = []
        c = fast.CircuitBreaker(failure_threshold=3, buffer=buf,
                                on_transition=lambda *e: events.append(e))
        fail(c, 1.0, 3)
        return 0 if c.state == OPEN and events == [(CLOSED, OPEN, 1.0)] else 3

    assert run_child(child) == 0
    assert b.state == OPEN and not b.allow(1.0)
    assert parent_events == []                   # callbacks fire where the transition happened
    assert b.snapshot()["transitions"]["open"] == 1


def test_two_processes_contending_lose_no_updates() -> None:
    buf = mmap.mmap(-1, fast.SHM_SIZE)
    kw: dict[str, Any] = {"failure_threshold": 10**9, "min_requests": 10**9, "window": 1e6}
    b = fast.CircuitBreaker(buffer=buf, **kw)
    n = 50_000

    def hammer() -> int:
        c = fast.CircuitBreaker(buffer=buf, **kw)
        for i in range(n):
            c.allow(1.0)
            c.record(1.0, i % 2 == 0, 0.01)
        return 0

    pid = os.fork()
    if pid == 0:
        os._exit(hammer())
    hammer()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    snap = b.snapshot()
    assert snap["window_requests"] == 2 * n and snap["window_failures"] == n


def test_lives_in_a_gateway_shared_segment() -> None:
    # The node's SharedSegment (gateway/_fast/shm) is the buffer the supervisor will hand out;
    # the breaker pins it, so the segment cannot be unmapped under a live breaker.
    from gateway._fast.shm import SharedSegment

    seg = SharedSegment(2 * fast.SHM_SIZE)
    b = fast.CircuitBreaker(failure_threshold=2, buffer=seg, offset=fast.SHM_SIZE)

    def child() -> int:
        fail(fast.CircuitBreaker(failure_threshold=2, buffer=seg, offset=fast.SHM_SIZE), 1.0, 2)
        return 0

    assert run_child(child) == 0
    assert b.state == OPEN
    with pytest.raises(BufferError):
        seg.close()


def _schedules(actions: int, points: int) -> list[tuple[int, ...]]:
    # Every non-decreasing assignment of the writer's actions to the reader's interleaving points.
    return list(itertools.combinations_with_replacement(range(points), actions))


@pytest.mark.parametrize("order", [("epoch", "state"), ("state", "epoch")])
def test_lock_free_allow_never_admits_with_a_ticket_from_an_open_epoch(order: tuple[str, str]) -> None:
    """A writer opening the circuit (state CLOSED -> OPEN, epoch 1 -> 2: two plain stores, which
    the compiler or the CPU may make visible in either order) is interleaved with the lock-free
    reader at every point: before it, between each of its loads, after it. The writer's section is
    begun and ended by the real code (_write_section_begin/_end), so whatever protocol those
    implement is what is checked. An admission with ticket 2 pairs the open epoch with the closed
    state: the race CI once hit by luck (reader saw the new epoch and the old state while the
    writer took and released the lock between its two lock checks)."""
    admitted_before = 0
    for sched in _schedules(4, 6):        # begin, store, store, end; points 0..5
        b, ticket = _open_while_reading(order, sched)
        assert ticket in (0, 1), f"admitted with ticket {ticket} of an open epoch; schedule {sched}"
        admitted_before += ticket == 1
        assert b.state == fast.OPEN
    assert admitted_before > 0           # a reader that finished before the writer began does admit


def _open_while_reading(order: tuple[str, str], sched: tuple[int, ...]) -> tuple[Any, int]:
    b = fast.CircuitBreaker()
    assert b.allow(1.0) == 1
    value = {"epoch": 2, "state": fast.OPEN}
    actions = [
        lambda: fast._write_section_begin(b),
        lambda: fast._store_raw(b, order[0], value[order[0]]),
        lambda: fast._store_raw(b, order[1], value[order[1]]),
        lambda: fast._write_section_end(b),
    ]
    done = [False] * len(actions)

    def run(point: int) -> None:
        # A reader that bails out early skips later points: their actions run at the next one.
        for i, (action, at) in enumerate(zip(actions, sched, strict=True)):
            if at <= point and not done[i]:
                done[i] = True
                action()

    run(0)
    ticket = fast._read_closed_interleaved(b, 1.0, run)
    run(5)
    return b, ticket


def test_lock_free_allow_under_a_flipping_peer_process() -> None:
    # The same property with real concurrency: a peer flips the breaker open and closed as fast as
    # it can while this process asks allow() (mostly on the lock-free fast path). Epochs go 1
    # closed, 2 open, 3 closed, ...: an admission with an even ticket is a torn read.
    buf = mmap.mmap(-1, fast.SHM_SIZE)
    b = fast.CircuitBreaker(buffer=buf)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            peer = fast.CircuitBreaker(buffer=buf)
            while not os.read(r, 1):
                pass
            for _ in range(100_000):
                peer.force_open(1.0)
                peer.force_close(1.0)
        finally:
            os._exit(0)
    os.write(w, b"x")
    tickets = [b.allow(1.0) for _ in range(300_000)]
    os.waitpid(pid, 0)
    admitted = [t for t in tickets if t]
    assert admitted and all(t % 2 == 1 for t in admitted)
    assert len(set(admitted)) > 1                # the flips really ran during the calls


def test_attach_checks_policy_alignment_and_writability() -> None:
    buf = mmap.mmap(-1, 2 * fast.SHM_SIZE)
    fast.CircuitBreaker(failure_threshold=3, buffer=buf, offset=fast.SHM_SIZE)
    with pytest.raises(ValueError, match="different policy"):
        fast.CircuitBreaker(failure_threshold=4, buffer=buf, offset=fast.SHM_SIZE)
    with pytest.raises(ValueError, match="multiple of 8"):
        fast.CircuitBreaker(buffer=buf, offset=4)
    with pytest.raises(ValueError, match="multiple of 8"):           # aligned offset, odd base
        fast.CircuitBreaker(buffer=memoryview(buf)[4:], offset=0)
    fast.CircuitBreaker(ramp=-0.0, buffer=buf)                        # -0.0 is the same policy as 0.0
    fast.CircuitBreaker(ramp=0.0, buffer=buf)
    with pytest.raises(ValueError):
        fast.CircuitBreaker(buffer=buf, offset=fast.SHM_SIZE + 8)   # runs past the end
    with pytest.raises((ValueError, BufferError, TypeError)):
        fast.CircuitBreaker(buffer=bytes(fast.SHM_SIZE))
    junk = bytearray(b"\xff" * fast.SHM_SIZE)
    with pytest.raises(ValueError, match="neither zero nor a breaker"):
        fast.CircuitBreaker(buffer=junk)


BREAKER_MAGIC = 0x42524B31


def _claimed_by(pid: int) -> mmap.mmap:
    """The bytes a worker leaves when it dies between claiming a breaker (magic = its pid) and
    publishing it: its pid in the magic word, whatever garbage after it."""
    buf = mmap.mmap(-1, fast.SHM_SIZE)
    buf[:] = os.urandom(fast.SHM_SIZE)
    buf[:4] = pid.to_bytes(4, "little")
    return buf


def _attach_elsewhere(buf: mmap.mmap) -> tuple[int, str, float]:
    """Attach a breaker to `buf` in a fork()ed child (a regression that spins for ever, GIL held,
    then fails here instead of hanging the suite): (exit code, error message, seconds taken)."""
    import time

    r, w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 4
        try:
            fast.CircuitBreaker(failure_threshold=2, buffer=buf)
            code = 0
        except ValueError as e:
            os.write(w, str(e).encode())
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    deadline = t0 + 20.0
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            message = os.read(r, 4096).decode()
            os.close(r)
            return os.waitstatus_to_exitcode(status), message, time.monotonic() - t0
        time.sleep(0.005)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError("attaching the breaker never returned")


@pytest.mark.parametrize("how", ["exited", "zombie"])
def test_attach_takes_over_from_a_claimer_that_died_before_publishing(how: str) -> None:
    import subprocess
    import sys

    if how == "exited":
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        pid = dead.pid
    else:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        while open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
            pass                                    # exited; deliberately not reaped yet
    try:
        buf = _claimed_by(pid)
        code, message, _ = _attach_elsewhere(buf)
    finally:
        if how == "zombie":
            os.waitpid(pid, 0)
    assert code == 0, message
    assert int.from_bytes(buf[:4], "little") == BREAKER_MAGIC
    b = fast.CircuitBreaker(failure_threshold=2, buffer=buf)
    snap = b.snapshot()                             # initialised: none of the garbage is left
    assert (snap["state"], snap["epoch"], snap["consecutive_failures"], snap["window_requests"],
            snap["transitions"], snap["stale"]) == ("closed", 1, 0, 0,
                                                    {"open": 0, "half_open": 0, "closed": 0}, 0)
    fail(b, 1.0, 2)
    peer = fast.CircuitBreaker(failure_threshold=2, buffer=buf)
    assert peer.state == OPEN


def test_attach_gives_up_on_a_live_claimer_that_never_publishes() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # alive, but never finishes initialising
        os.read(r, 1)
        os._exit(0)
    try:
        buf = _claimed_by(pid)
        code, message, took = _attach_elsewhere(buf)
        assert code == 3 and f"still being initialised by pid {pid}" in message, message
        assert 1.5 <= took < 15.0                   # the 2 s deadline, as the keyed table's
        assert int.from_bytes(buf[:4], "little") == pid   # its claim is left alone
    finally:
        os.write(w, b"x")
        os.waitpid(pid, 0)


def test_attach_never_waits_for_ever_on_a_claim_that_stays() -> None:
    # Older code claimed with 1 and attachers spun `while magic == 1` with no deadline: a worker
    # dying between claim and publish wedged every later attach. 1 now reads as pid 1, which is
    # alive: the attacher gives up after the deadline with a clear error.
    code, message, took = _attach_elsewhere(_claimed_by(1))
    assert code == 3 and "still being initialised by pid 1 " in message, message
    assert 1.5 <= took < 15.0


@pytest.mark.parametrize("word", [1 << 22, BREAKER_MAGIC - 1, 0xFFFFFFFF])
def test_attach_refuses_a_word_that_is_neither_a_pid_nor_the_magic_at_once(word: int) -> None:
    buf = _claimed_by(word)
    code, message, took = _attach_elsewhere(buf)
    assert code == 3 and "neither zero nor a breaker" in message, message
    assert took < 1.5                               # refused at once, no waiting on a "claimer"


def test_lock_left_by_a_dead_worker_is_broken() -> None:
    """A worker SIGKILLed inside a locked section leaves its pid in the lock word; the others must
    recover after a short delay instead of spinning forever (shm.pxd's owner-pid lock)."""
    import struct
    import subprocess
    import sys
    import time

    buf = mmap.mmap(-1, 4096)
    b = fast.CircuitBreaker(failure_threshold=2, buffer=buf, offset=0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    struct.pack_into("=I", buf, 4, dead.pid)   # gw_breaker_shm.lock is the second uint32
    pid = os.fork()
    if pid == 0:  # the call that must not hang runs in a child, so a regression fails, not hangs
        try:
            b.record(1.0, False, 0.01)
            b.record(1.0, False, 0.01)
            os._exit(0 if b.state == OPEN else 3)
        except BaseException:
            os._exit(4)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
            assert struct.unpack_from("=I", buf, 4)[0] == 0   # released by the survivor
            return
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError("breaker lock held by a dead pid was never broken")


# -- cross-instance opening and abandoned probes (issue 9) -------------------------------------

def test_open_for_opens_a_closed_breaker_for_the_given_time_then_probes_locally() -> None:
    b = fast.CircuitBreaker(failure_threshold=5, open_timeout=10.0, half_open_requests=1, success_threshold=1)
    assert b.open_for(1.0, 2.0) is True
    assert b.state == fast.OPEN and b.allow(2.9) == 0
    t = b.allow(3.0)                        # 1.0 + 2.0: half-open, our own probe
    assert t and b.state == fast.HALF_OPEN
    assert b.open_for(3.1, 50.0) is False   # half-open decides locally
    b.record(3.2, True, 0.1, t)
    assert b.state == fast.CLOSED
    assert b.snapshot()["open_timeout"] == 10.0   # the remote duration never touched the backoff
    assert b.transitions() == (1, 1, 1)


def test_cancel_hands_back_a_probe_slot_of_the_same_half_open_period_only() -> None:
    b = fast.CircuitBreaker(failure_threshold=1, open_timeout=1.0, half_open_requests=1, success_threshold=1)
    closed_ticket = b.allow(0.0)
    b.record(0.0, False, 0.0, closed_ticket)
    assert b.cancel(0.5, closed_ticket) is False    # open: nothing to hand back
    t = b.allow(1.0)
    assert t and b.allow(1.0) == 0                  # the one probe is out
    assert b.cancel(1.1, closed_ticket) is False    # a ticket of another epoch frees nothing
    assert b.cancel(1.1, t) is True
    t2 = b.allow(1.2)
    assert t2 == t                                  # the slot came back: same period, same ticket
    assert b.cancel(1.3, t2) is True and b.cancel(1.3, t2) is False
