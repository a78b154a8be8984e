"""Space-saving heavy hitters (Metwally, Agrawal, El Abbadi 2005) in bounded memory, private or in
shared memory so every worker of a node counts into one sketch: which keys are refused most.

k counters per generation. A key already counted is incremented; a new key takes a free counter,
or else replaces the counter with the smallest count c and starts at c + 1 with error c. So a
key's true count lies in [count - error, count], and every key seen more than n/k times (n =
total recorded) is in the sketch: a flood of distinct keys cannot push a heavy one out.

"Over the last minutes": two generations of `period` seconds each; record() counts into the
current one and starts a fresh one when `now` passes its end (the old current becomes previous);
top() merges both, so it covers between one and two periods.

Layout (64-byte header, then 2 x k entries of 128 bytes): header = lock word (owner pid, see
shm.pyx), k, period, start of the current generation, which half is current, totals. An entry =
key hash (XXH64 of the whole key), count, error, key length, the key's first 102 bytes (shown;
the hash identifies it).
"""
cimport cython
from cpython.buffer cimport PyBuffer_Release

from gateway._fast.pin cimport pin_writable
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.math cimport floor
from libc.stdint cimport uint16_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcpy, memset

from gateway._fast.checks cimport check_now
from gateway._fast.shm cimport shm_lock, shm_pid_ptr, shm_unlock
from gateway._fast.xxh64 cimport gw_xxh64

DEF KEY_BYTES = 102

ctypedef struct hh_entry:
    uint64_t hash
    uint64_t count
    uint64_t error
    uint16_t length
    unsigned char key[KEY_BYTES]

ctypedef struct hh_header:
    uint32_t lock
    uint32_t k
    double period
    double start         # start of the current generation
    uint64_t current     # 0 or 1: which half of the entries is current
    uint64_t total[2]    # keys recorded per generation
    uint64_t magic
    uint64_t reserved

assert sizeof(hh_entry) == 128 and sizeof(hh_header) == 64
cdef uint64_t HH_MAGIC = 0x5354494848594548ULL


def layout_bytes(k: int) -> int:
    return sizeof(hh_header) + 2 * k * sizeof(hh_entry)


@cython.no_gc_clear   # the buffer must outlive the view on it (released in __dealloc__)
cdef class HeavyHitters:
    """`HeavyHitters(k, period, buffer=None)`; record(key, now); top(n, now)."""

    cdef hh_header* _h
    cdef hh_entry* _e
    cdef uint32_t _k
    cdef bint _shared
    cdef uint32_t* _pid
    cdef Py_buffer _view
    cdef bint _has_view
    cdef bytearray _own
    cdef readonly object buffer

    def __cinit__(self):
        self._has_view = False

    def __init__(self, int k, double period, buffer=None):
        if k < 1 or k > 65536:
            raise ValueError(f"k must be in [1, 65536], got {k}")
        if not (period > 0):
            raise ValueError(f"period must be > 0, got {period!r}")
        cdef size_t need = layout_bytes(k)
        if buffer is None:
            self._own = bytearray(need + 64)
            buffer = self._own
            self._shared = False
        else:
            self._shared = True
        cdef Py_ssize_t held = 0
        cdef unsigned char* base = <unsigned char*>pin_writable(buffer, &self._view, &held)  # pin.pxd
        self._has_view = True
        if <size_t>held < need:
            raise ValueError(f"buffer holds {held} bytes, k={k} needs {need}")
        if not self._shared:
            base += (64 - (<uintptr_t>base) % 64) % 64       # aligned for the lock word
        self.buffer = buffer
        self._h = <hh_header*>base
        self._e = <hh_entry*>(base + sizeof(hh_header))
        self._k = k
        self._pid = shm_pid_ptr()
        self._lock()
        if self._h.magic != HH_MAGIC:
            # First user (the bytes were zeroed by node memory): lay out an empty sketch.
            memset(self._e, 0, 2 * k * sizeof(hh_entry))
            self._h.k = k
            self._h.period = period
            self._h.start = 0.0
            self._h.current = 0
            self._h.total[0] = 0
            self._h.total[1] = 0
            self._h.magic = HH_MAGIC
        elif self._h.k != <uint32_t>k or self._h.period != period:
            self._unlock()
            raise ValueError("buffer holds a sketch of another k or period")
        self._unlock()

    def __dealloc__(self):
        if self._has_view:
            PyBuffer_Release(&self._view)

    cdef inline void _lock(self) noexcept nogil:
        if self._shared:
            shm_lock(&self._h.lock, self._pid[0])

    cdef inline void _unlock(self) noexcept nogil:
        if self._shared:
            shm_unlock(&self._h.lock)

    cdef void _rotate(self, double now) noexcept nogil:
        cdef hh_header* h = self._h
        cdef double start = floor(now / h.period) * h.period
        cdef uint64_t old
        if start <= h.start and now >= h.start - h.period:
            return
        # A generation ended (or the clock stepped far back): the current becomes previous,
        # unless more than one period passed (then both are stale).
        if start - h.start < 1.5 * h.period and start > h.start:
            h.current ^= 1
        else:
            memset(self._e + (h.current ^ 1) * self._k, 0, self._k * sizeof(hh_entry))
            h.total[h.current ^ 1] = 0
        memset(self._e + h.current * self._k, 0, self._k * sizeof(hh_entry))
        h.total[h.current] = 0
        h.start = start

    def record(self, key, double now) -> None:
        """Count one occurrence of `key` (str or bytes) at `now` (seconds)."""
        check_now(now)
        cdef bytes b = key.encode("utf-8", "surrogateescape") if type(key) is str else key
        cdef const char* data = PyBytes_AS_STRING(b)
        cdef size_t n = <size_t>PyBytes_GET_SIZE(b)
        cdef uint64_t hv = gw_xxh64(data, n, 0x485948)
        cdef hh_entry* gen
        cdef hh_entry* e
        cdef hh_entry* low = NULL
        cdef uint32_t i
        cdef bint found
        with nogil:
            self._lock()
            self._rotate(now)
            gen = self._e + self._h.current * self._k
            self._h.total[self._h.current] += 1
            found = False
            for i in range(self._k):
                e = &gen[i]
                if e.count and e.hash == hv:
                    e.count += 1
                    found = True
                    break
                if low == NULL or e.count < low.count:
                    low = e
            if not found:
                # Not counted: the smallest counter (a free one has count 0) takes it over.
                low.error = low.count
                low.count += 1
                low.hash = hv
                low.length = <uint16_t>(n if n < KEY_BYTES else KEY_BYTES)
                memcpy(low.key, data, low.length)
            self._unlock()

    def top(self, int n, double now) -> list:
        """The `n` heaviest keys of the last one to two periods: [(key, count, error)], heaviest
        first (count: an upper bound; count - error: a lower bound)."""
        check_now(now)
        merged: dict = {}
        cdef uint32_t g, i
        cdef hh_entry* e
        self._lock()
        try:
            self._rotate(now)
            for g in range(2):
                for i in range(self._k):
                    e = &self._e[g * self._k + i]
                    if e.count == 0:
                        continue
                    key = (<char*>e.key)[:e.length].decode("utf-8", "replace")
                    c, err = merged.get(e.hash, (key, 0, 0))[1:]
                    merged[e.hash] = (key, c + e.count, err + e.error)
        finally:
            self._unlock()
        return sorted(merged.values(), key=lambda t: (-t[1], t[0]))[:max(0, n)]

    @property
    def total(self) -> int:
        """Keys recorded in the last one to two periods."""
        return self._h.total[0] + self._h.total[1]
