"""Circuit breaker (compiled in breaker.pyx; rules in its module docstring).

Time is always passed in (``now``: seconds on one monotonic clock, the same clock in every worker
sharing a breaker); ``now`` going backwards is clamped to the latest seen (by calls that take the lock: an
allow() answered by the lock-free CLOSED fast path only reads). NaN, infinite or negative
``now``/``duration`` raise ValueError.

Shared memory: with ``buffer`` (a writable buffer such as ``mmap.mmap(-1, n)`` made before fork)
the state lives at ``offset`` (a multiple of SHM_ALIGN, SHM_SIZE bytes) and every breaker built
over those bytes with the same policy is one breaker. The first one initialises zeroed bytes;
the others attach (a different policy raises ValueError). A worker that died while initialising
them is taken over from; one still initialising after 2 s raises ValueError, as do bytes that
are neither zero nor a breaker. ``on_transition(old, new, now)`` fires
in the process whose call caused the transition, after the lock is released; node-wide transition
counts are in ``snapshot()["transitions"]``, read from the shared bytes.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from _typeshed import WriteableBuffer

CLOSED: Final = 0
HALF_OPEN: Final = 1
OPEN: Final = 2
STATE_NAMES: tuple[str, str, str]
SHM_SIZE: int
SHM_ALIGN: int

class CircuitBreaker:
    on_transition: Callable[[int, int, float], Any] | None
    callback_errors: int

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        error_rate: float = 0.5,
        min_requests: int = 20,
        window: float = 10.0,
        buckets: int = 10,
        open_timeout: float = 60.0,
        max_open_timeout: float | None = None,  # default 8 * open_timeout
        half_open_requests: int = 3,
        success_threshold: int = 3,
        slow_call_duration: float = ...,        # default inf: slow-call counting off
        ramp: float = 0.0,                      # seconds of linear recovery ramp; 0 off
        settle: float | None = None,            # default max(window, ramp)
        on_transition: Callable[[int, int, float], Any] | None = None,
        buffer: WriteableBuffer | None = None,
        offset: int = 0,
    ) -> None: ...
    def allow(self, now: float) -> int:
        """0: rejected. Otherwise the ticket (epoch, truthy) to hand back to record()."""
    def record(self, now: float, success: bool, duration: float, epoch: int = 0) -> None:
        """A finished call; a ticket from an earlier epoch is ignored, 0 counts it regardless."""
    def force_open(self, now: float) -> bool: ...
    def force_close(self, now: float) -> bool: ...
    def open_for(self, now: float, timeout: float) -> bool:
        """CLOSED -> OPEN for `timeout` s (another instance's opening); True if it changed."""
    def cancel(self, now: float, epoch: int) -> bool:
        """Hand back the half-open probe slot of an abandoned call; True if one was freed."""
    def transitions(self) -> tuple[int, int, int]:
        """(to_open, to_half_open, to_closed), lock-free."""
    def _transition(self, new: int, now: float) -> None: ...
    @property
    def state(self) -> int: ...
    @property
    def shared(self) -> bool: ...
    def snapshot(self) -> dict[str, Any]:
        """Admin view: state, code, epoch, changed_at, consecutive_failures, window_requests,
        window_failures, forced_open, open_until (OPEN: first probe time; HALF_OPEN: probe
        deadline; None when closed or forced), open_timeout, trips, probes_admitted,
        probe_successes, ramp_until (end of this closed period's recovery ramp, possibly past; None
        without one), transitions {open, half_open, closed} (node-wide when
        shared), stale, slow_calls."""

# Test hooks for the lock-free reader (see _read_closed in breaker.pyx).
def _read_closed_interleaved(b: CircuitBreaker, now: float, step: Callable[[int], Any]) -> int: ...
def _write_section_begin(b: CircuitBreaker) -> None: ...
def _write_section_end(b: CircuitBreaker) -> None: ...
def _store_raw(b: CircuitBreaker, field: str, value: int) -> None: ...
