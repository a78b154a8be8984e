# Input checks shared by the _fast primitives' Python-facing entries (header-only: each module
# inlines them). The nogil arithmetic never checks; these run once at the API edge, so a NaN or a
# negative number raises ValueError there instead of silently poisoning limiter or breaker state.
from libc.math cimport isfinite


cdef inline int check_positive(str name, double v) except -1:
    # `not (v > 0)` also catches NaN, which compares false with everything.
    if not (v > 0.0) or not isfinite(v):
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return 0


cdef inline int check_non_negative(str name, double v) except -1:
    if not (v >= 0.0) or not isfinite(v):
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return 0


cdef inline int check_now(double now) except -1:
    # 0 is a legitimate clock reading; negative or non-finite is a caller bug.
    if not (now >= 0.0) or not isfinite(now):
        raise ValueError(f"now must be a finite number >= 0 (seconds), got {now!r}")
    return 0
