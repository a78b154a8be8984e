# Counters and fixed-bucket histograms that a metrics exporter reads at scrape time.
#
# Increments take no lock and allocate nothing. The cells live either in private memory (one
# worker, plain adds: the GIL already serialises that worker) or in a caller-provided buffer
# such as a MAP_SHARED mmap that several worker processes write at once (then every update is a
# relaxed GCC __atomic add from atomic.pxd; relaxed is enough because each cell is independent
# and a scrape only needs each cell's own latest value).
from cpython.buffer cimport Py_buffer
from libc.stdint cimport int64_t, uint64_t


cdef class _Cells:
    cdef char* _mem             # first byte of this object's cells (8-byte aligned)
    cdef Py_ssize_t _nbytes
    cdef bint _shared           # True: memory is the caller's buffer, updates are atomic
    cdef bint _has_view         # a Py_buffer is held (keeps the mmap/bytearray exported)
    cdef Py_buffer _view
    # `what` names the object in errors; nbytes must be overflow-checked already (_cells_nbytes).
    cdef int _attach(self, object buffer, Py_ssize_t offset, Py_ssize_t nbytes, str what) except -1


cdef class Counter(_Cells):
    cdef uint64_t* _p
    # For Cython callers: no argument parsing, no checks.
    cdef void add(self, uint64_t n) noexcept
    cdef uint64_t get(self) noexcept


cdef class CounterArray(_Cells):
    cdef uint64_t* _p
    cdef readonly Py_ssize_t size
    # For Cython callers: `i` is an index precomputed at config load; NOT bounds-checked.
    cdef void add(self, Py_ssize_t i, uint64_t n) noexcept
    cdef uint64_t get(self, Py_ssize_t i) noexcept
    cdef Py_ssize_t _index(self, Py_ssize_t i) except -1


cdef class Histogram(_Cells):
    cdef double* _bounds        # private copy of the upper bounds (same config in every worker)
    cdef Py_ssize_t _n          # number of finite bounds; bucket _n is +Inf
    cdef uint64_t* _counts      # _n + 1 per-bucket (non-cumulative) counts
    cdef int64_t* _sum          # fixed-point sum: round(v / resolution) summed
    cdef readonly double resolution
    cdef double _scale          # 1 / resolution
    # For Cython callers: non-finite or out-of-range values are dropped (never raise).
    cdef void c_observe(self, double v) noexcept
    cdef Py_ssize_t _bucket(self, double v) noexcept
    cdef uint64_t _load(self, Py_ssize_t i) noexcept
