# Balancer picks over target indices (SPEC §3 round_robin | weighted | least_conn | p2c_ewma).
# The service layer owns the Target objects; these classes only see indices 0..n-1 and an
# availability byte per index (healthy and the breaker allows), so a pick is array arithmetic.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t


cdef class _Picker:
    cdef int32_t _n
    cdef uint8_t *_avail         # 1 = may be picked; set by set_available()

    cdef int _init_avail(self, Py_ssize_t n) except -1
    cdef int32_t _index(self, object index) except -1
    cdef void _avail_changed(self) noexcept nogil


cdef class SmoothWeightedRR(_Picker):
    cdef int64_t *_weight        # configured weight; 0 = never picked
    cdef int64_t *_effective     # nginx's effective_weight: lowered by failures, regrows by 1/pick
    cdef int64_t *_current       # nginx's current_weight
    cdef int64_t _max_fails

    cdef int32_t _pick(self) noexcept nogil


cdef class LeastConnections(_Picker):
    cdef int64_t *_weight
    cdef int64_t *_active        # in-flight requests per target
    cdef int32_t _cursor         # where the next scan starts: ties go round-robin

    cdef int32_t _pick(self) noexcept nogil


cdef class P2CEwma(_Picker):
    cdef double *_cost           # peak-EWMA latency estimate (seconds)
    cdef double *_stamp          # time of the last observation
    cdef uint8_t *_observed      # 0 until the first observation (then _cost is real)
    cdef int64_t *_active
    cdef int32_t *_live          # indices of available targets, so random draws need no retry
    cdef int32_t _n_live
    cdef double _tau             # decay time constant (seconds)
    cdef double _initial         # prior latency of a target never observed
    cdef uint64_t _rng           # xorshift64* state

    cdef double _score(self, int32_t i, double now) noexcept nogil
    cdef int32_t _pick2(self, double now, uint64_t ra, uint64_t rb) noexcept nogil
    cdef uint64_t _next_rand(self) noexcept nogil
