# How far back a caller's `now` may step before a limiter re-anchors its state on it.
#
# Limiters read no clock: the caller passes `now`. A small step back (NTP stepping a wall clock,
# two workers reading it a moment apart) is clamped: no refill, no rotation, nothing forgotten. A
# big one means the state's own time is wrong (it was written under a clock far in the future):
# clamping it forever would freeze the key until the clock caught up (no refill, no rotation,
# never idle). So a state time more than GW_MAX_STEP_BACK seconds ahead of `now` is moved back
# to `now`, keeping what it counts (tokens taken, hits in the window): a wrong clock can freeze a
# key for at most this long, and re-anchoring never hands out tokens or forgets hits.
cdef extern from *:
    """
    #define GW_MAX_STEP_BACK 1.0
    """
    const double GW_MAX_STEP_BACK


# The data plane's clocks, read in C (a Python call to time.monotonic() cost ~180 instructions,
# three times per request): monotonic_now is CLOCK_MONOTONIC in seconds, the clock of
# time.monotonic() (and of ctx.start, the attempt times and the latency histograms); wall_now is
# CLOCK_REALTIME, time.time()'s (token expiry, RateLimit-Reset's wall windows, access-log times).
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec


cdef inline double monotonic_now() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline double wall_now() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9
