# Declarations of the circuit breaker, so other Cython modules (the breaker filter, the balancer
# skipping open targets) can cimport it and call the c_* methods without Python overhead.
from libc.stdint cimport uint32_t, uint64_t

# Values match the gateway_circuit_state metric: 0 closed, 1 half-open, 2 open.
cdef enum BreakerState:
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

cdef enum:
    GW_BREAKER_MAX_BUCKETS = 64
    GW_BREAKER_MAGIC = 0x42524B31   # "BRK1": the struct at this address was initialised

# Policy knobs, all doubles so the block has no padding and attaching workers can memcmp it
# against the copy stored in shared memory (one breaker, one policy).
ctypedef struct gw_breaker_cfg:
    double failure_threshold
    double error_rate
    double min_requests
    double window
    double nbuckets
    double bucket_width
    double open_timeout
    double max_open_timeout
    double half_open_requests
    double success_threshold
    double slow_call_duration
    double ramp
    double settle            # a trip this soon after a recovery close counts as a repeat trip

# Every piece of mutable breaker state. Fixed size, no pointers: it may live in a MAP_SHARED
# mapping at a different address in each worker.
ctypedef struct gw_breaker_shm:
    uint32_t magic            # 0 fresh; a claimer's pid while it initialises; GW_BREAKER_MAGIC
    uint32_t lock             # shm_lock word (owner pid): guards every field below
    uint32_t state            # BreakerState
    uint32_t epoch            # bumped by every transition; admission ticket
    uint32_t head             # ring index of the newest bucket
    uint32_t consecutive      # consecutive failures while CLOSED
    uint32_t probes_admitted  # this half-open period
    uint32_t probe_successes
    uint32_t streak           # trips since the last full close (drives the timeout doubling)
    uint32_t window_requests  # sums over the ring, kept incrementally
    uint32_t window_failures
    uint32_t seq              # seqlock sequence: odd while a locked section is writing (see
                              # _write_begin in breaker.pyx); the lock-free allow() validates on it
    uint64_t to_open          # transition counters: exact node-wide, for the metrics exporter
    uint64_t to_half_open
    uint64_t to_closed
    uint64_t stale            # results ignored: their ticket came from an earlier epoch
    uint64_t slow_calls
    double last_now           # clamp: time never goes backwards
    double changed_at
    double head_id            # floor(now / bucket_width) of the newest bucket
    double open_until         # OPEN: first probe time (inf: forced); HALF_OPEN: probe deadline
    double open_timeout       # current, possibly doubled, timeout
    double closed_at
    double ramp_end
    double ramp_credit
    gw_breaker_cfg cfg
    uint32_t req[GW_BREAKER_MAX_BUCKETS]
    uint32_t fail[GW_BREAKER_MAX_BUCKETS]

# What a locked section changed, so the callback fires after the lock is released.
ctypedef struct gw_transition:
    int happened
    uint32_t old
    uint32_t new
    double now


cdef class CircuitBreaker:
    cdef gw_breaker_shm *_s
    cdef gw_breaker_shm *_owned      # malloc'd block (private breaker) or NULL
    cdef gw_breaker_cfg _cfg
    cdef object _view                # memoryview pinning the shared buffer
    cdef object _epoch_obj           # cached int of the last ticket: no allocation per allow()
    cdef uint32_t _epoch_cached
    cdef readonly object on_transition
    cdef readonly uint64_t callback_errors

    # 1 admitted (ticket in *epoch), 0 rejected, -1 ValueError raised.
    cdef int c_allow(self, double now, uint32_t *epoch) except -1
    cdef int c_record(self, double now, bint success, double duration, uint32_t epoch) except -1
    cdef BreakerState c_state(self) noexcept
    cdef void _fire(self, gw_transition *tr)
    cdef _attach(self, buffer, Py_ssize_t offset)
    cdef bint _claim_or_wait(self, gw_breaker_shm *s) except -1
    cdef _force(self, double now, uint32_t target)
