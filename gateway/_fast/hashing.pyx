"""Consistent hashing: xxHash64, a weighted ketama-style ring and a weighted Maglev table.

Targets are small int indices; the service layer maps an index to its Target. Lookups hash a
str/bytes key (or take a precomputed 64-bit hash), allocate nothing and read no clock.

Both tables place a target by the hash of its *name* (default: ``str(index)``), not by its
index, so two processes (or a reload that lists the same targets in another order, given the same
names) agree on where every key goes.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_Check
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memset

from gateway._fast.xxh64 cimport gw_xxh64

# Bounds that keep a rebuild in the milliseconds and the tables in cache-sized memory. A weight is
# a relative share, so nobody needs 10^6:1 ratios; the point cap keeps the ring < 64 MiB.
cdef enum:
    MAX_WEIGHT = 1000000
    MAX_POINTS = 1 << 22
# Second seed for Maglev's skip hash: offset and skip must be independent functions of the name.
cdef uint64_t SKIP_SEED_XOR = 0x9E3779B97F4A7C15ULL


cdef uint64_t hash_key(object key, uint64_t seed) except? 0:
    cdef const char *p
    cdef Py_ssize_t n
    if PyUnicode_Check(key):
        # For an ASCII str this is the object's own buffer: no copy, no allocation. Non-ASCII
        # strings get their UTF-8 form cached on the object on first use.
        p = PyUnicode_AsUTF8AndSize(key, &n)
    elif PyBytes_Check(key):
        p = PyBytes_AS_STRING(key)
        n = PyBytes_GET_SIZE(key)
    else:
        raise TypeError(f"hash key must be str or bytes, not {type(key).__name__}")
    return gw_xxh64(p, <size_t>n, seed)


def xxh64(data, seed=0):
    """XXH64 of ``data`` (bytes, or str hashed as UTF-8) with a 64-bit ``seed``; an int."""
    return hash_key(data, <uint64_t>seed)


cdef inline uint64_t _ident_hash(object name, uint64_t seed) except? 0:
    if name is None:
        raise ValueError("target name must not be None")
    return hash_key(name, seed)


cdef inline uint64_t _point_hash(uint64_t ident, uint64_t vnode, uint64_t seed) noexcept nogil:
    # One ring point = xxh64 of the 16 little-endian bytes (ident, vnode). Points of one target
    # depend on nothing else, so changing another target never moves them (minimal disruption).
    cdef uint64_t buf[2]
    buf[0] = ident
    buf[1] = vnode
    return gw_xxh64(buf, 16, seed)


ctypedef struct _Point:
    uint64_t h
    int32_t owner


cdef int _cmp_points(const void *a, const void *b) noexcept nogil:
    # Ties between equal hashes (astronomically rare) are broken by owner so the order, and so
    # every lookup, is deterministic and matches the reference model.
    cdef const _Point *x = <const _Point *>a
    cdef const _Point *y = <const _Point *>b
    if x.h < y.h:
        return -1
    if x.h > y.h:
        return 1
    return (x.owner > y.owner) - (x.owner < y.owner)


cdef uint64_t _seed_of(object seed) except? 0:
    # Explicit range check: a negative seed would otherwise surface as OverflowError.
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be in 0..2**64-1, got {seed}")
    return <uint64_t>seed


def _is_prime(uint64_t m):
    cdef uint64_t d = 3
    if m < 2 or m % 2 == 0:
        return m == 2
    while d * d <= m:
        if m % d == 0:
            return False
        d += 2
    return True


def maglev_table_size(n_targets):
    """The smallest prime ≥ max(65537, 100 × n_targets): the table size Maglev wants (M ≫ N keeps
    every target's share within ~1 % of its ideal)."""
    cdef uint64_t m = max(65537, 100 * int(n_targets))
    while not _is_prime(m):
        m += 1
    return m


cdef class _TargetSet:
    """Shared target bookkeeping; not used on its own."""

    def __cinit__(self, *args, **kwargs):
        self._n = 0
        self._cap = 0
        self._weights = NULL
        self._idents = NULL
        self._avail = NULL
        self._n_live = 0
        self._total_weight = 0

    def __dealloc__(self):
        PyMem_Free(self._weights)
        PyMem_Free(self._idents)
        PyMem_Free(self._avail)

    cdef int _grow(self, int32_t need) except -1:
        # Growth happens on add(), never on a lookup.
        cdef int32_t cap = self._cap if self._cap else 8
        cdef void *p
        if need <= self._cap:
            return 0
        while cap < need:
            cap *= 2
        p = PyMem_Realloc(self._weights, cap * sizeof(uint32_t))
        if p == NULL:
            raise MemoryError()
        self._weights = <uint32_t *>p
        p = PyMem_Realloc(self._idents, cap * sizeof(uint64_t))
        if p == NULL:
            raise MemoryError()
        self._idents = <uint64_t *>p
        p = PyMem_Realloc(self._avail, cap * sizeof(uint8_t))
        if p == NULL:
            raise MemoryError()
        self._avail = <uint8_t *>p
        self._cap = cap
        return 0

    cdef int _check_weight(self, int32_t index, long long weight) except -1:
        # Subclasses add their own size limits; this one only checks the range.
        if weight < 0 or weight > MAX_WEIGHT:
            raise ValueError(f"weight must be in 0..{MAX_WEIGHT}, got {weight}")
        return 0

    cdef int _rebuild(self) except -1:
        # Overridden: each table decides how to lay out its targets.
        return 0

    cdef void _count_live(self) noexcept nogil:
        # Lookups return -1 at once when nothing is live, so the skip-walk always terminates.
        cdef int32_t i, live = 0
        cdef uint64_t total = 0
        for i in range(self._n):
            total += self._weights[i]
            if self._weights[i] and self._avail[i]:
                live += 1
        self._n_live = live
        self._total_weight = total

    cdef int32_t _index(self, index) except -1:
        cdef long long i = index
        if i < 0 or i >= self._n:
            raise IndexError(f"target index {i} out of range 0..{self._n - 1}")
        return <int32_t>i

    def add(self, weight=1, name=None):
        """Append a target; return its index. ``name`` (str/bytes) places it; default str(index)."""
        cdef int32_t i = self._n
        cdef long long w = weight
        self._check_weight(-1, w)
        cdef uint64_t ident = _ident_hash(str(i) if name is None else name, self._seed)
        _check_unique(self, ident, i)
        self._grow(i + 1)
        self._weights[i] = <uint32_t>w
        self._idents[i] = ident
        self._avail[i] = 1
        self._n = i + 1
        self._count_live()
        if w:
            self._rebuild()
        return i

    def set_weight(self, index, weight):
        """Change a target's weight; 0 takes it out of the table (it keeps its index)."""
        cdef int32_t i = self._index(index)
        cdef long long w = weight
        if w == self._weights[i]:
            return
        self._check_weight(i, w)
        self._weights[i] = <uint32_t>w
        self._count_live()
        self._rebuild()

    def remove(self, index):
        """Take a target out (weight 0); other targets' keys do not move (ring) or barely (Maglev)."""
        self.set_weight(index, 0)

    def weight(self, index):
        return self._weights[self._index(index)]

    def set_available(self, index, bint available):
        """Mark a target (un)healthy: lookups walk past it; no rebuild, no allocation."""
        cdef int32_t i = self._index(index)
        self._avail[i] = 1 if available else 0
        self._count_live()

    def is_available(self, index):
        return bool(self._avail[self._index(index)])

    def hash(self, key):
        """The hash lookup() uses for ``key`` (xxh64 with this table's seed)."""
        return hash_key(key, self._seed)

    @property
    def n_targets(self):
        return self._n

    def __len__(self):
        return self._n


cdef inline int32_t _next_available(const int32_t *owners, const uint8_t *avail, uint64_t n,
                                    uint64_t start) noexcept nogil:
    # Shared by the ring (owners = points in ring order) and Maglev (owners = table slots): the
    # owner at `start` is down, so walk on to the first entry whose target is available. Callers
    # check n_live > 0 first, which guarantees a hit within one lap.
    cdef uint64_t k
    cdef int32_t owner
    for k in range(1, n):
        owner = owners[(start + k) % n]
        if avail[owner]:
            return owner
    return -1


cdef class HashRing(_TargetSet):
    """Weighted ketama-style ring: ``vnodes × weight`` points per target on a sorted uint64 array;
    a key belongs to the first point at or after its hash (wrapping around)."""

    def __cinit__(self, *args, **kwargs):
        self._points = NULL
        self._owners = NULL
        self._npoints = 0

    def __init__(self, weights=(), names=None, *, vnodes=160, seed=0):
        if vnodes < 1 or vnodes > 65536:
            raise ValueError("vnodes must be in 1..65536")
        self._vnodes = vnodes
        self._seed = _seed_of(seed)
        _init_targets(self, weights, names)

    def __dealloc__(self):
        PyMem_Free(self._points)
        PyMem_Free(self._owners)

    cdef int _check_weight(self, int32_t index, long long weight) except -1:
        _TargetSet._check_weight(self, index, weight)
        cdef long long old = self._weights[index] if index >= 0 else 0
        cdef long long total = <long long>self._total_weight - old + weight
        if total * self._vnodes > MAX_POINTS:
            raise ValueError(f"ring would need {total * self._vnodes} points (max {MAX_POINTS})")
        return 0

    cdef int _rebuild(self) except -1:
        # Rebuilt whole on every change: ~2k points for 10 targets, microseconds, and never on a
        # lookup. Sorting (hash, owner) pairs then splitting keeps the searched array dense.
        cdef Py_ssize_t total = <Py_ssize_t>(self._total_weight * self._vnodes)
        cdef Py_ssize_t k = 0
        cdef uint64_t v
        cdef int32_t i
        cdef _Point *tmp = NULL
        cdef void *p
        if total:
            tmp = <_Point *>PyMem_Malloc(total * sizeof(_Point))
            if tmp == NULL:
                raise MemoryError()
            for i in range(self._n):
                for v in range(<uint64_t>self._weights[i] * self._vnodes):
                    tmp[k].h = _point_hash(self._idents[i], v, self._seed)
                    tmp[k].owner = i
                    k += 1
            qsort(tmp, total, sizeof(_Point), _cmp_points)
        try:
            p = PyMem_Realloc(self._points, (total or 1) * sizeof(uint64_t))
            if p == NULL:
                raise MemoryError()
            self._points = <uint64_t *>p
            p = PyMem_Realloc(self._owners, (total or 1) * sizeof(int32_t))
            if p == NULL:
                raise MemoryError()
            self._owners = <int32_t *>p
            for k in range(total):
                self._points[k] = tmp[k].h
                self._owners[k] = tmp[k].owner
            self._npoints = total
        finally:
            PyMem_Free(tmp)
        return 0

    cdef int32_t _lookup_hash(self, uint64_t h) noexcept nogil:
        cdef Py_ssize_t lo = 0, hi = self._npoints, mid
        cdef int32_t owner
        if self._n_live == 0:
            return -1
        # lower_bound: first point >= h; past the last point wraps to the first.
        # Branchy binary search is fine here: 1.6k points = 11 probes, the top levels stay in L1.
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._points[mid] < h:
                lo = mid + 1
            else:
                hi = mid
        if lo == self._npoints:
            lo = 0
        owner = self._owners[lo]
        if self._avail[owner]:
            return owner
        # The owner is down: its keys go to the next available point, i.e. spread over the other
        # targets by their ring share, while every other key stays where it was.
        return _next_available(self._owners, self._avail, <uint64_t>self._npoints, <uint64_t>lo)

    def lookup(self, key):
        """Target index for a str/bytes key; -1 if no target is live."""
        return self._lookup_hash(hash_key(key, self._seed))

    def lookup_hash(self, uint64_t h):
        """Target index for a precomputed 64-bit hash; -1 if no target is live."""
        return self._lookup_hash(h)

    @property
    def n_points(self):
        return self._npoints

    def points(self):
        """(hash, owner) pairs in ring order, for tests and debugging."""
        return [(self._points[k], self._owners[k]) for k in range(self._npoints)]


cdef class Maglev(_TargetSet):
    """Maglev lookup table (Eisenbud et al., NSDI 2016), weighted.

    Each target walks its own permutation of the M slots (offset = h1(name) mod M, skip =
    h2(name) mod (M-1) + 1; M prime so every skip visits every slot) and the targets take turns
    claiming their next free slot until the table is full. Weighted variant (as in Envoy): with
    W = max weight, in round r a target of weight w takes a turn only when r·w ≥ its running
    quota, then the quota grows by W; so it claims ≈ w/W as often as the heaviest target and its
    share of slots is ≈ w/Σw. Equal weights reduce to the paper's algorithm.
    """

    def __cinit__(self, *args, **kwargs):
        self._table = NULL
        self._m = 0

    def __init__(self, weights=(), names=None, *, table_size=65537, seed=0):
        cdef uint64_t m = table_size
        if not _is_prime(m):
            raise ValueError(f"table_size must be prime, got {m} (see maglev_table_size)")
        self._m = m
        self._seed = _seed_of(seed)
        self._table = <int32_t *>PyMem_Malloc(m * sizeof(int32_t))
        if self._table == NULL:
            raise MemoryError()
        memset(self._table, 0xFF, m * sizeof(int32_t))  # all -1: no target yet
        _init_targets(self, weights, names)

    def __dealloc__(self):
        PyMem_Free(self._table)

    cdef int _check_weight(self, int32_t index, long long weight) except -1:
        # M ≥ 100 N is what keeps shares near their ideal (paper §3.4); refuse a table that
        # would be lopsided rather than balance badly in silence.
        _TargetSet._check_weight(self, index, weight)
        cdef int32_t i, weighted = 1 if weight else 0
        for i in range(self._n):
            if i != index and self._weights[i]:
                weighted += 1
        if <uint64_t>weighted * 100 > self._m:
            raise ValueError(f"table_size {self._m} is below 100 x {weighted} targets; "
                             f"use maglev_table_size({weighted})")
        return 0

    cdef int _rebuild(self) except -1:
        cdef uint64_t m = self._m, filled = 0, r, maxw = 0, c
        cdef int32_t i, n = self._n
        # Per-target scratch (position in its permutation, skip, quota), freed below: ~24 B/target.
        cdef uint64_t *scratch = <uint64_t *>PyMem_Malloc((3 * n or 1) * sizeof(uint64_t))
        if scratch == NULL:
            raise MemoryError()
        cdef uint64_t *pos = scratch
        cdef uint64_t *skip = scratch + n
        cdef uint64_t *quota = scratch + 2 * n
        memset(self._table, 0xFF, m * sizeof(int32_t))
        for i in range(n):
            pos[i] = _ident_hash_c(self._idents[i], self._seed) % m
            skip[i] = _ident_hash_c(self._idents[i], self._seed ^ SKIP_SEED_XOR) % (m - 1) + 1
            quota[i] = 0
            if self._weights[i] > maxw:
                maxw = self._weights[i]
        if maxw:
            # r counts rounds; every round the heaviest target claims exactly one slot, so the
            # loop ends after at most M rounds. Targets take turns in index order, as in the
            # paper, which makes the table a pure function of (names, weights, seed, M).
            r = 1
            while filled < m:
                for i in range(n):
                    if filled >= m:
                        break
                    if self._weights[i] == 0 or r * self._weights[i] < quota[i]:
                        continue
                    quota[i] += maxw
                    c = pos[i]
                    while self._table[c] >= 0:   # next preferred slot that is still free
                        c += skip[i]
                        if c >= m:
                            c -= m
                    self._table[c] = i
                    c += skip[i]
                    pos[i] = c - m if c >= m else c
                    filled += 1
                r += 1
        PyMem_Free(scratch)
        return 0

    cdef int32_t _lookup_hash(self, uint64_t h) noexcept nogil:
        cdef uint64_t slot
        cdef int32_t owner
        if self._n_live == 0:
            return -1
        # One modulo and one load: this is why Maglev exists (O(1) lookup, 256 KiB table).
        slot = h % self._m
        owner = self._table[slot]
        if self._avail[owner]:
            return owner
        # Down target: walk the following slots. Slots are interleaved pseudo-randomly, so the
        # down target's keys spread over the others in proportion to their weight, and the
        # table is not rebuilt on every health flip.
        return _next_available(self._table, self._avail, self._m, slot)

    def lookup(self, key):
        """Target index for a str/bytes key; -1 if no target is live."""
        return self._lookup_hash(hash_key(key, self._seed))

    def lookup_hash(self, uint64_t h):
        """Target index for a precomputed 64-bit hash; -1 if no target is live."""
        return self._lookup_hash(h)

    @property
    def table_size(self):
        return self._m

    def table(self):
        """The slot → target list, for tests and share measurements."""
        return [self._table[k] for k in range(self._m)]


cdef inline uint64_t _ident_hash_c(uint64_t ident, uint64_t seed) noexcept nogil:
    # Maglev's h1/h2 are functions of the target's identity hash (8 LE bytes) under two seeds.
    return gw_xxh64(&ident, 8, seed)


cdef int _check_unique(_TargetSet ts, uint64_t ident, int32_t upto) except -1:
    # Two targets with one name would share every ring point / permutation, and the lower
    # index would silently take all of both targets' keys.
    cdef int32_t j
    for j in range(upto):
        if ts._idents[j] == ident:
            raise ValueError(f"target name collides with target {j}'s")
    return 0


cdef _init_targets(_TargetSet ts, weights, names):
    # Construct through add() semantics but rebuild once at the end, not once per target.
    weights = list(weights)
    if names is not None:
        names = list(names)
        if len(names) != len(weights):
            raise ValueError("names and weights differ in length")
        if len(set(names)) != len(names):
            raise ValueError("target names must be unique")
    cdef int32_t i
    cdef long long w
    ts._grow(len(weights))
    for i in range(len(weights)):
        w = weights[i]
        ts._check_weight(-1, w)
        ts._idents[i] = _ident_hash(str(i) if names is None else names[i], ts._seed)
        _check_unique(ts, ts._idents[i], i)
        ts._weights[i] = <uint32_t>w
        ts._avail[i] = 1
        ts._n = i + 1
        ts._count_live()
    ts._rebuild()
