"""Plain-Python model of gateway/_fast/breaker.pyx: the executable spec of the breaker rules.

Written for clarity, not speed, but with the same floating-point operations in the same order as
the compiled code (bucket ids as floored floats, the ramp credit, timeout doubling), so property
tests can demand identical answers, not merely similar ones.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

CLOSED, HALF_OPEN, OPEN = 0, 1, 2
STATE_NAMES = ("closed", "half_open", "open")
LEGAL = {(CLOSED, OPEN), (HALF_OPEN, OPEN), (HALF_OPEN, CLOSED), (OPEN, HALF_OPEN), (OPEN, CLOSED)}
U32 = 2**32


class ReferenceBreaker:
    def __init__(self, *, failure_threshold: int = 5, error_rate: float = 0.5, min_requests: int = 20,
                 window: float = 10.0, buckets: int = 10, open_timeout: float = 60.0,
                 max_open_timeout: float | None = None, half_open_requests: int = 3,
                 success_threshold: int = 3, slow_call_duration: float = math.inf, ramp: float = 0.0,
                 settle: float | None = None,
                 on_transition: Callable[[int, int, float], Any] | None = None) -> None:
        max_to = 8.0 * open_timeout if max_open_timeout is None else float(max_open_timeout)
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if not (0.0 < error_rate <= 1.0):
            raise ValueError("error_rate must be in (0, 1]")
        if min_requests < 1:
            raise ValueError("min_requests must be >= 1")
        if not (window > 0.0) or not math.isfinite(window):
            raise ValueError("window must be a finite number > 0")
        if not (1 <= buckets <= 64):
            raise ValueError("buckets must be in 1..64")
        if not (open_timeout > 0.0) or not math.isfinite(open_timeout):
            raise ValueError("open_timeout must be a finite number > 0")
        if not (max_to >= open_timeout) or not math.isfinite(max_to):
            raise ValueError("max_open_timeout must be finite and >= open_timeout")
        if half_open_requests < 1:
            raise ValueError("half_open_requests must be >= 1")
        if not (1 <= success_threshold <= half_open_requests):
            raise ValueError("success_threshold must be in 1..half_open_requests")
        if not (slow_call_duration > 0.0):
            raise ValueError("slow_call_duration must be > 0 (inf disables it)")
        if not (ramp >= 0.0) or not math.isfinite(ramp):
            raise ValueError("ramp must be a finite number >= 0")
        self.failure_threshold = failure_threshold
        self.error_rate = error_rate
        self.min_requests = min_requests
        self.window = window
        self.nbuckets = buckets
        self.bucket_width = window / buckets
        self.base_timeout = open_timeout
        self.max_open_timeout = max_to
        self.half_open_requests = half_open_requests
        self.success_threshold = success_threshold
        self.slow_call_duration = slow_call_duration
        self.ramp = ramp
        self.settle = max(window, ramp) if settle is None else float(settle)
        if not (self.settle >= 0.0):
            raise ValueError("settle must be >= 0")
        self.on_transition = on_transition
        self.callback_errors = 0

        self.state = CLOSED
        self.epoch = 1
        self.consecutive = 0
        self.probes_admitted = 0
        self.probe_successes = 0
        self.streak = 0
        self.req = [0] * buckets
        self.fail = [0] * buckets
        self.head = 0
        self.head_id = 0.0
        self.transitions = {"open": 0, "half_open": 0, "closed": 0}
        self.stale = 0
        self.slow_calls = 0
        self.last_now = 0.0
        self.changed_at = 0.0
        self.open_until = 0.0
        self.open_timeout = open_timeout
        self.closed_at = 0.0
        self.ramp_end = 0.0
        self.ramp_credit = 0.0
        self._pending: tuple[int, int, float] | None = None

    # -- the state machine ----------------------------------------------------------------------

    def _set_state(self, new: int, now: float) -> bool:
        if (self.state, new) not in LEGAL:
            return False
        self._pending = (self.state, new, now)
        self.state = new
        self.epoch = (self.epoch + 1) % U32 or 1
        self.changed_at = now
        self.transitions[STATE_NAMES[new]] += 1
        return True

    def _rotate(self, now: float) -> None:
        cur = float(math.floor(now / self.bucket_width))
        gap = cur - self.head_id
        if gap <= 0.0:
            return
        if gap >= self.nbuckets:
            self.req = [0] * self.nbuckets
            self.fail = [0] * self.nbuckets
        else:
            for _ in range(int(gap)):
                self.head = (self.head + 1) % self.nbuckets
                self.req[self.head] = 0
                self.fail[self.head] = 0
        self.head_id = cur

    def _trip(self, now: float) -> None:
        repeat = self.state == HALF_OPEN or (self.streak > 0 and now - self.closed_at < self.settle)
        timeout = min(self.open_timeout * 2.0, self.max_open_timeout) if repeat else self.base_timeout
        if not self._set_state(OPEN, now):
            return
        self.streak = self.streak + 1 if repeat else 1
        self.open_timeout = timeout
        self.open_until = now + timeout

    def _close(self, now: float, recovered: bool) -> None:
        if not self._set_state(CLOSED, now):
            return
        self.req = [0] * self.nbuckets
        self.fail = [0] * self.nbuckets
        self.consecutive = 0
        self.closed_at = now
        self.ramp_end = now
        if recovered:
            if self.ramp > 0.0:
                self.ramp_end = now + self.ramp
                self.ramp_credit = 1.0
        else:
            self.streak = 0
            self.open_timeout = self.base_timeout

    def _clamp(self, now: float) -> float:
        if not (now >= 0.0) or not math.isfinite(now):
            raise ValueError(f"now must be a finite number >= 0, got {now!r}")
        if now < self.last_now:
            return self.last_now
        self.last_now = now
        return now

    def _fire(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None or self.on_transition is None:
            return
        try:
            self.on_transition(*pending)
        except Exception:
            self.callback_errors += 1

    # -- public API -----------------------------------------------------------------------------

    def allow(self, now: float) -> int:
        if not (now >= 0.0) or not math.isfinite(now):
            raise ValueError(f"now must be a finite number >= 0, got {now!r}")
        # CLOSED past any ramp: a pure read (the compiled fast path takes no lock), so the clock
        # high-water mark is not advanced either.
        if self.state == CLOSED and max(now, self.last_now) >= self.ramp_end:
            return self.epoch
        now = self._clamp(now)
        ok = self._allow(now)
        self._fire()
        return self.epoch if ok else 0

    def _allow(self, now: float) -> bool:
        if self.state == CLOSED:
            if now >= self.ramp_end:
                return True
            self.ramp_credit += (now - self.closed_at) / self.ramp
            if self.ramp_credit >= 1.0:
                self.ramp_credit -= 1.0
                return True
            return False
        if self.state == OPEN:
            if now < self.open_until:
                return False
            self._set_state(HALF_OPEN, now)
            self.probes_admitted = 0
            self.probe_successes = 0
            self.open_until = now + self.open_timeout
        if self.probes_admitted < self.half_open_requests:
            self.probes_admitted += 1
            return True
        if now >= self.open_until:
            self._trip(now)
        return False

    def record(self, now: float, success: bool, duration: float, epoch: int = 0) -> None:
        now = self._clamp(now)
        if not (duration >= 0.0) or not math.isfinite(duration):
            raise ValueError(f"duration must be a finite number >= 0, got {duration!r}")
        failed = not success
        if duration > self.slow_call_duration:
            self.slow_calls += 1
            failed = True
        self._record(now, failed, epoch)
        self._fire()

    def _record(self, now: float, failed: bool, epoch: int) -> None:
        if epoch != 0 and epoch != self.epoch:
            self.stale += 1
            return
        if self.state == CLOSED:
            self._rotate(now)
            self.req[self.head] += 1
            if not failed:
                self.consecutive = 0
                return
            self.fail[self.head] += 1
            self.consecutive += 1
            requests, failures = sum(self.req), sum(self.fail)
            if self.consecutive >= self.failure_threshold or (
                    requests >= self.min_requests and failures / requests >= self.error_rate):
                self._trip(now)
        elif self.state == HALF_OPEN:
            if failed:
                self._trip(now)
            else:
                self.probe_successes += 1
                if self.probe_successes >= self.success_threshold:
                    self._close(now, True)
        else:
            self.stale += 1

    def force_open(self, now: float) -> bool:
        now = self._clamp(now)
        if self.state != OPEN:
            self._set_state(OPEN, now)
        self.open_until = math.inf
        changed = self._pending is not None
        self._fire()
        return changed

    def force_close(self, now: float) -> bool:
        now = self._clamp(now)
        if self.state != CLOSED:
            self._close(now, False)
        elif self.ramp_end > now:
            self.ramp_end = now
        changed = self._pending is not None
        self._fire()
        return changed

    def open_for(self, now: float, timeout: float) -> bool:
        if not (now >= 0.0) or not math.isfinite(now):
            raise ValueError(f"now must be a finite number >= 0, got {now!r}")
        if not (timeout > 0.0) or not math.isfinite(timeout):
            raise ValueError("timeout must be a finite number > 0")
        now = self._clamp(now)
        if self.state == CLOSED and self._set_state(OPEN, now):
            self.open_until = now + timeout
        changed = self._pending is not None
        self._fire()
        return changed

    def cancel(self, now: float, epoch: int) -> bool:
        self._clamp(now)
        if self.state == HALF_OPEN and epoch == self.epoch and self.probes_admitted > self.probe_successes:
            self.probes_admitted -= 1
            return True
        return False

    def snapshot(self) -> dict[str, Any]:
        s = self.state
        return {
            "state": STATE_NAMES[s], "code": s, "epoch": self.epoch, "changed_at": self.changed_at,
            "consecutive_failures": self.consecutive,
            "window_requests": sum(self.req), "window_failures": sum(self.fail),
            "forced_open": s == OPEN and self.open_until == math.inf,
            "open_until": self.open_until if s != CLOSED and self.open_until != math.inf else None,
            "open_timeout": self.open_timeout, "trips": self.streak,
            "probes_admitted": self.probes_admitted if s == HALF_OPEN else 0,
            "probe_successes": self.probe_successes if s == HALF_OPEN else 0,
            "ramp_until": self.ramp_end if s == CLOSED and self.ramp_end > self.closed_at else None,
            "transitions": dict(self.transitions),
            "stale": self.stale, "slow_calls": self.slow_calls,
        }
