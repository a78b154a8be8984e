"""Lock-free counters and fixed-bucket latency histograms for the metrics exporter.

Memory: by default each object allocates its own zeroed cells (one worker's private counts).
Give `buffer` (any writable buffer: a MAP_SHARED mmap, a bytearray) and an 8-aligned `offset` to
place the cells there instead; then every update is an atomic add, so N worker processes can share
one set of counts. The cells of a buffer are NOT zeroed (other workers may already have counted):
a fresh anonymous mmap is zero-filled, which is how a segment should start. `nbytes(...)` says how
many bytes an object needs. The object holds a buffer export while it lives (an mmap cannot be
closed under it).

Layouts (8-byte little-endian cells, host order):
  Counter         [value u64]
  CounterArray    [value u64] * n
  Histogram       [bucket u64] * (len(bounds) + 1)   per-bucket counts, the last one is +Inf
                  [sum i64]                           fixed point: sum of round(v / resolution)

Histogram sum: an integer, not a double, because a double cannot be added atomically without a
CAS loop and two workers' float sums would round differently. With the default resolution of
1e-6 (microseconds for latencies in seconds) the sum overflows only past ~9.2e12 seconds in total.
`count` is the sum of the bucket cells (no separate cell: one atomic add per observation fewer).
A scrape reads cells one by one, so it may see an observation's bucket but not yet its sum:
harmless for Prometheus, which tolerates that skew.
"""
import operator

cimport cython
from cpython.buffer cimport PyBuffer_Release

from gateway._fast.pin cimport pin_writable
from libc.math cimport floor, isfinite
from libc.stdint cimport int64_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc

from gateway._fast.atomic cimport gw_atomic_add_i64, gw_atomic_add_u64, gw_atomic_load_u64

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

# |round(v / resolution)| must stay well inside int64 so one observation cannot wrap the sum.
cdef double _MAX_SCALED = 4611686018427387904.0   # 2**62

# The most 8-byte cells whose byte count is still a Py_ssize_t (what buffers and calloc measure).
cdef Py_ssize_t _MAX_CELLS = PY_SSIZE_T_MAX // 8


cdef Py_ssize_t _cells_nbytes(str name, object n, Py_ssize_t extra) except -1:
    """8 * (n + extra): the bytes of `n` things (`name`: the caller's argument) plus `extra`
    cells. `n` is checked as a Python int, before any C arithmetic: 8 * n in C wraps for absurd n
    (2**61 -> 0 bytes), and every size check after it would pass."""
    n = operator.index(n)
    if n < 1 or n > _MAX_CELLS - extra:
        raise ValueError(f"{name} must be in 1..{_MAX_CELLS - extra} ({8 * _MAX_CELLS} bytes of "
                         f"cells at most), got {n}")
    return 8 * (<Py_ssize_t>n + extra)


@cython.no_gc_clear   # the buffer must outlive the view on it (released in __dealloc__)
cdef class _Cells:
    """Owns or borrows the 8-aligned memory of a counter-like object (not for direct use)."""

    cdef int _attach(self, object buffer, Py_ssize_t offset, Py_ssize_t nbytes,
                     str what) except -1:
        # nbytes is >= 8 and came from _cells_nbytes (or a constant): no overflow behind it.
        cdef char* start
        cdef Py_ssize_t held = 0
        if buffer is None:
            if offset != 0:
                raise ValueError("offset is only meaningful with a buffer")
            # calloc: private counts start at zero.
            self._mem = <char*>calloc(1, nbytes if nbytes > 0 else 1)
            if self._mem == NULL:
                raise MemoryError()
            self._shared = False
        else:
            if offset < 0 or offset % 8 != 0:
                raise ValueError(f"offset must be a multiple of 8 and >= 0, got {offset}")
            start = pin_writable(buffer, &self._view, &held)       # see pin.pxd
            self._has_view = True
            # Not `offset + nbytes > len`: that sum wraps for an offset near 2**63.
            if offset > held or nbytes > held - offset:
                raise ValueError(f"buffer too small: {what} needs {nbytes} bytes at offset "
                                 f"{offset}, the buffer has {held}")
            self._mem = start + offset
            # Atomics on a cell that straddles cache lines are slow (split locks) or undefined.
            if (<uintptr_t>self._mem) % 8 != 0:
                raise ValueError("buffer address + offset is not 8-byte aligned")
            self._shared = True
        self._nbytes = nbytes
        return 0

    def __dealloc__(self):
        if self._has_view:
            PyBuffer_Release(&self._view)
        elif self._mem != NULL:
            free(self._mem)
        self._mem = NULL

    @property
    def shared(self) -> bool:
        """True when the cells live in a caller's buffer (updates are atomic)."""
        return self._shared


cdef inline long long _check_n(long long n) except -1:
    # Counters only go up (Prometheus semantics); a negative increment is a caller bug.
    if n < 0:
        raise ValueError(f"increment must be >= 0, got {n}")
    return n


@cython.no_gc_clear   # the buffer must outlive the view on it (released in __dealloc__)
cdef class Counter(_Cells):
    """One monotonically increasing uint64 counter."""

    NBYTES = 8

    def __cinit__(self, object buffer=None, Py_ssize_t offset=0):
        self._attach(buffer, offset, 8, "Counter")
        self._p = <uint64_t*>self._mem

    cdef void add(self, uint64_t n) noexcept:
        if self._shared:
            # Other processes add to the same cell: a plain += would lose their updates.
            gw_atomic_add_u64(self._p, n)
        else:
            # Private: only this worker (holding the GIL) writes, a plain add is enough and
            # avoids the locked instruction.
            self._p[0] += n

    cdef uint64_t get(self) noexcept:
        # Atomic load in shared memory: never a torn read of a cell another process is updating.
        return gw_atomic_load_u64(self._p) if self._shared else self._p[0]

    def inc(self, long long n=1) -> None:
        """Add n (>= 0)."""
        _check_n(n)
        self.add(<uint64_t>n)

    @property
    def value(self) -> int:
        return self.get()

    def __repr__(self) -> str:
        return f"Counter(value={self.get()}, shared={self._shared})"


@cython.no_gc_clear   # the buffer must outlive the view on it (released in __dealloc__)
cdef class CounterArray(_Cells):
    """n counters in one flat array, indexed by an int the caller computed at config load.

    This is how the metrics layer keeps label children: each (route, status class, ...)
    combination gets its index once, so a request does an indexed add, no dict lookup.
    """

    @staticmethod
    def nbytes(n) -> int:
        return _cells_nbytes("n", n, 0)

    def __cinit__(self, n, object buffer=None, Py_ssize_t offset=0):
        # `n` as a Python int: a Py_ssize_t argument would turn n >= 2**63 into OverflowError
        # before the check, and this check must come before any arithmetic on it.
        cdef Py_ssize_t nbytes = _cells_nbytes("n", n, 0)
        # One flat block: label children sit next to each other, so a scrape walks one array.
        self._attach(buffer, offset, nbytes, f"CounterArray(n={n})")
        self._p = <uint64_t*>self._mem
        self.size = nbytes // 8

    cdef void add(self, Py_ssize_t i, uint64_t n) noexcept:
        if self._shared:
            gw_atomic_add_u64(&self._p[i], n)
        else:
            self._p[i] += n

    cdef uint64_t get(self, Py_ssize_t i) noexcept:
        return gw_atomic_load_u64(&self._p[i]) if self._shared else self._p[i]

    cdef Py_ssize_t _index(self, Py_ssize_t i) except -1:
        if i < 0 or i >= self.size:
            raise IndexError(f"counter index {i} out of range 0..{self.size - 1}")
        return i

    def inc(self, Py_ssize_t i, long long n=1) -> None:
        """Add n (>= 0) to counter i."""
        _check_n(n)
        self.add(self._index(i), <uint64_t>n)

    def __getitem__(self, Py_ssize_t i) -> int:
        return self.get(self._index(i))

    def __len__(self) -> int:
        return self.size

    def values(self) -> list:
        """All counts, in index order (what a scrape reads)."""
        cdef Py_ssize_t i
        return [self.get(i) for i in range(self.size)]


@cython.no_gc_clear   # the buffer must outlive the view on it (released in __dealloc__)
cdef class Histogram(_Cells):
    """Fixed-bucket histogram: `observe(v)` counts v in the first bucket whose bound is >= v.

    `bounds` are the finite upper bounds, strictly increasing (Prometheus `le`, inclusive); a
    final +Inf bucket is implied. `resolution` is the unit of the fixed-point sum.
    """

    @staticmethod
    def nbytes(nbounds) -> int:
        return _cells_nbytes("nbounds", nbounds, 2)

    def __cinit__(self, object bounds, object buffer=None, Py_ssize_t offset=0,
                  double resolution=1e-6):
        cdef Py_ssize_t i, n
        cdef double b
        # Validated once here so observe() can binary-search without any check.
        values = [float(x) for x in bounds]
        n = len(values)
        if n < 1:
            raise ValueError("bounds must hold at least one finite upper bound")
        for i in range(n):
            b = values[i]
            if not isfinite(b):
                raise ValueError(f"bounds must be finite (+Inf is implied), got {b!r}")
            if i and not (b > values[i - 1]):
                raise ValueError(f"bounds must be strictly increasing, got {values!r}")
        if not (resolution > 0.0) or not isfinite(resolution):
            raise ValueError(f"resolution must be a finite number > 0, got {resolution!r}")
        # Bounds are configuration, identical in every worker: a private copy, not in `buffer`.
        self._bounds = <double*>malloc(n * sizeof(double))
        if self._bounds == NULL:
            raise MemoryError()
        for i in range(n):
            self._bounds[i] = values[i]
        self._n = n
        self.resolution = resolution
        self._scale = 1.0 / resolution
        self._attach(buffer, offset, _cells_nbytes("nbounds", n, 2), f"Histogram({n} bounds)")
        self._counts = <uint64_t*>self._mem
        self._sum = <int64_t*>(self._mem + 8 * (n + 1))

    def __dealloc__(self):
        # The base class's __dealloc__ releases the cells; only the bounds are ours.
        free(self._bounds)

    cdef Py_ssize_t _bucket(self, double v) noexcept:
        # Binary search (lower bound): the first i with bounds[i] >= v; _n = the +Inf bucket.
        cdef Py_ssize_t lo = 0, hi = self._n, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._bounds[mid] < v:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef void c_observe(self, double v) noexcept:
        cdef double scaled = floor(v * self._scale + 0.5)   # round half up, as the model does
        if not (scaled < _MAX_SCALED and scaled > -_MAX_SCALED):
            return   # NaN, inf or absurd: dropped rather than poisoning the sum
        cdef Py_ssize_t i = self._bucket(v)
        if self._shared:
            gw_atomic_add_u64(&self._counts[i], 1)
            gw_atomic_add_i64(self._sum, <int64_t>scaled)
        else:
            self._counts[i] += 1
            self._sum[0] += <int64_t>scaled

    def observe(self, double v) -> None:
        """Count one observation of v (finite; |v| / resolution below 2**62)."""
        # Same test as c_observe, but a Python caller gets an error instead of a silent drop.
        cdef double scaled = floor(v * self._scale + 0.5)
        if not (scaled < _MAX_SCALED and scaled > -_MAX_SCALED):
            raise ValueError(f"observation must be finite and |v|/resolution < 2**62, got {v!r}")
        self.c_observe(v)

    cdef uint64_t _load(self, Py_ssize_t i) noexcept:
        return gw_atomic_load_u64(&self._counts[i]) if self._shared else self._counts[i]

    @property
    def bounds(self) -> tuple:
        return tuple([self._bounds[i] for i in range(self._n)])

    def buckets(self) -> list:
        """Cumulative [(upper_bound, count <= bound), ..., (inf, count)] for the exporter."""
        cdef Py_ssize_t i
        cdef uint64_t acc = 0
        out = []
        # Cells are per bucket; Prometheus wants cumulative `le` counts, summed at scrape time
        # so that an observation costs one add, not one per larger bucket.
        for i in range(self._n + 1):
            acc += self._load(i)
            out.append((self._bounds[i] if i < self._n else float("inf"), acc))
        return out

    @property
    def count(self) -> int:
        cdef Py_ssize_t i
        cdef uint64_t acc = 0
        for i in range(self._n + 1):
            acc += self._load(i)
        return acc

    @property
    def sum(self) -> float:
        """Sum of observations, to `resolution` (each one rounded half up to it)."""
        cdef int64_t raw = <int64_t>gw_atomic_load_u64(<uint64_t*>self._sum) if self._shared \
            else self._sum[0]
        return raw * self.resolution

    @property
    def sum_raw(self) -> int:
        """The fixed-point sum cell itself (units of `resolution`)."""
        return <int64_t>gw_atomic_load_u64(<uint64_t*>self._sum) if self._shared else self._sum[0]
