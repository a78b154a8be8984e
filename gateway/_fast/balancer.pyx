"""Balancer picks: nginx's smooth weighted round-robin, least-connections, and power-of-two-choices
over a peak-EWMA latency score (Finagle / Linkerd style).

Index-based: the service layer owns the Targets and tells each picker which indices may be used
(``set_available``: healthy and the circuit allows). A pick scans or indexes preallocated C arrays,
allocates nothing and reads no clock; time-dependent pickers take ``now`` (seconds) as an argument.
A pick returns -1 when no target is available.
"""
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport exp, isfinite
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.string cimport memset

cdef enum:
    MAX_WEIGHT = 1000000

# Prior latency for a target never observed (seconds): without one a fresh target would score 0
# and take every request until its first response came back.
DEFAULT_INITIAL_LATENCY = 0.03


cdef void *_alloc(Py_ssize_t n, size_t size) except NULL:
    # Zeroed, at least one byte so an empty picker still has valid pointers.
    cdef void *p = PyMem_Malloc((n or 1) * size)
    if p == NULL:
        raise MemoryError()
    memset(p, 0, (n or 1) * size)
    return p


cdef int64_t _weight(object w) except -1:
    cdef long long v = w
    if v < 0 or v > MAX_WEIGHT:
        raise ValueError(f"weight must be in 0..{MAX_WEIGHT}, got {v}")
    return v


cdef class _Picker:
    """Availability bookkeeping shared by the pickers; not used on its own."""

    def __cinit__(self, *args, **kwargs):
        self._n = 0
        self._avail = NULL

    def __dealloc__(self):
        # Subclass __dealloc__ runs first and frees its own arrays; the base frees its own.
        PyMem_Free(self._avail)

    cdef int _init_avail(self, Py_ssize_t n) except -1:
        if n < 0 or n > 1 << 20:
            raise ValueError("target count must be in 0..2**20")
        self._n = <int32_t>n
        self._avail = <uint8_t *>_alloc(n, sizeof(uint8_t))
        memset(self._avail, 1, n)   # every target starts available
        return 0

    cdef int32_t _index(self, object index) except -1:
        cdef long long i = index
        if i < 0 or i >= self._n:
            raise IndexError(f"target index {i} out of range 0..{self._n - 1}")
        return <int32_t>i

    cdef void _avail_changed(self) noexcept nogil:
        pass

    def set_available(self, index, bint available):
        """Let (or stop) a target be picked: healthy and its breaker allows. No allocation."""
        self._avail[self._index(index)] = 1 if available else 0
        self._avail_changed()

    def is_available(self, index):
        return bool(self._avail[self._index(index)])

    def __len__(self):
        return self._n


cdef class SmoothWeightedRR(_Picker):
    """nginx's smooth weighted round-robin. Each pick: every available target's current weight
    grows by its effective weight; the largest current weight wins (first on ties) and pays back
    the total. Weights 5,1,1 give a,a,b,a,c,a,a: the heavy target is interleaved, not bursty.
    All weights 1 is plain round-robin.

    ``report_failure(i)`` lowers the target's effective weight by weight // max_fails (nginx);
    it regrows by 1 per pick that considers it, so a flaky target is eased back in.
    """

    def __cinit__(self, *args, **kwargs):
        self._weight = NULL
        self._effective = NULL
        self._current = NULL

    def __init__(self, weights, *, max_fails=1):
        weights = list(weights)
        cdef Py_ssize_t i, n = len(weights)
        if max_fails < 1:
            raise ValueError("max_fails must be >= 1")
        self._max_fails = max_fails
        self._init_avail(n)
        self._weight = <int64_t *>_alloc(n, sizeof(int64_t))
        self._effective = <int64_t *>_alloc(n, sizeof(int64_t))
        self._current = <int64_t *>_alloc(n, sizeof(int64_t))
        for i in range(n):
            self._weight[i] = _weight(weights[i])
            self._effective[i] = self._weight[i]

    def __dealloc__(self):
        PyMem_Free(self._weight)
        PyMem_Free(self._effective)
        PyMem_Free(self._current)

    cdef int32_t _pick(self) noexcept nogil:
        # A straight copy of nginx's ngx_http_upstream_get_peer() minus the per-request "tried"
        # bitmap (retries here go through the service layer, which can mark targets down).
        # O(n) per pick, but n is a service's target list: tens, all in one cache line or two.
        cdef int32_t i, best = -1
        cdef int64_t total = 0
        for i in range(self._n):
            if not self._avail[i] or self._weight[i] == 0:
                continue
            self._current[i] += self._effective[i]
            total += self._effective[i]
            # Recovery after report_failure(): one unit per pick, so a target that failed is
            # eased back in over about `weight` picks instead of at full weight at once.
            if self._effective[i] < self._weight[i]:
                self._effective[i] += 1
            # Strict >: on ties the lowest index wins, as in nginx; that is what makes the
            # 5,1,1 sequence come out as a,a,b,a,c,a,a.
            if best < 0 or self._current[i] > self._current[best]:
                best = i
        if best >= 0:
            # Paying back the total keeps the sum of current weights at 0: state never grows.
            self._current[best] -= total
        return best

    def pick(self):
        """Index of the next target, or -1 if none is available."""
        return self._pick()

    def report_failure(self, index):
        """A request to this target failed: ease it off (nginx effective_weight)."""
        cdef int32_t i = self._index(index)
        self._effective[i] -= self._weight[i] // self._max_fails
        if self._effective[i] < 0:
            self._effective[i] = 0

    def set_weight(self, index, weight):
        """New configured weight; the effective weight restarts at it, the rotation state stays."""
        cdef int32_t i = self._index(index)
        self._weight[i] = _weight(weight)
        self._effective[i] = self._weight[i]

    def weight(self, index):
        return self._weight[self._index(index)]

    def state(self, index):
        """(current, effective) weights, for tests and debugging."""
        cdef int32_t i = self._index(index)
        return (self._current[i], self._effective[i])


cdef class LeastConnections(_Picker):
    """Pick the available target with the fewest in-flight requests per unit of weight
    (active/weight, compared as active_i·w_j < active_j·w_i, exact in integers). Each scan starts
    after the last pick, so equal targets are taken in turn and load spreads even before any
    request completes. The caller brackets each request with ``acquire(i)`` / ``release(i)``.
    """

    def __cinit__(self, *args, **kwargs):
        self._weight = NULL
        self._active = NULL
        self._cursor = 0

    def __init__(self, n, weights=None):
        cdef Py_ssize_t i
        self._init_avail(n)
        self._weight = <int64_t *>_alloc(n, sizeof(int64_t))
        self._active = <int64_t *>_alloc(n, sizeof(int64_t))
        if weights is not None:
            weights = list(weights)
            if len(weights) != n:
                raise ValueError("weights must have n entries")
        for i in range(n):
            self._weight[i] = 1 if weights is None else _weight(weights[i])

    def __dealloc__(self):
        PyMem_Free(self._weight)
        PyMem_Free(self._active)

    cdef int32_t _pick(self) noexcept nogil:
        # Full scan instead of a heap: n is small, a pick must see availability flips at once,
        # and acquire/release stay O(1) without heap maintenance.
        cdef int32_t k, i, best = -1
        for k in range(self._n):
            i = self._cursor + k
            if i >= self._n:
                i -= self._n
            if not self._avail[i] or self._weight[i] == 0:
                continue
            # Strict < keeps the first target met in scan order on ties: round-robin.
            # active <= 2^63 / 10^6 in practice, so the cross products cannot overflow.
            if best < 0 or self._active[i] * self._weight[best] < self._active[best] * self._weight[i]:
                best = i
        if best >= 0:
            self._cursor = best + 1 if best + 1 < self._n else 0
        return best

    def pick(self):
        """Index of the least-loaded available target, or -1."""
        return self._pick()

    def acquire(self, index):
        """A request was sent to this target."""
        self._active[self._index(index)] += 1

    def release(self, index):
        """A request to this target finished. Clamped at 0: a stray release must not make a
        target look less than idle and attract all traffic."""
        cdef int32_t i = self._index(index)
        if self._active[i] > 0:
            self._active[i] -= 1

    def active(self, index):
        return self._active[self._index(index)]

    def set_weight(self, index, weight):
        cdef int32_t i = self._index(index)
        self._weight[i] = _weight(weight)

    def weight(self, index):
        return self._weight[self._index(index)]


cdef inline double _finite(object value, str what) except? -1.0:
    cdef double v = value
    if not isfinite(v):
        raise ValueError(f"{what} must be finite, got {v}")
    return v


cdef class P2CEwma(_Picker):
    """Power of two choices over peak-EWMA latency (Finagle's / Linkerd's load balancer).

    Score of a target at time ``now``: decayed_cost × (active + 1), where decayed_cost =
    cost · exp(-(now - stamp) / decay_seconds). The cost jumps to any latency above it (peak:
    react to a slow target at once) and otherwise moves towards each observation with weight
    1 - exp(-Δt / decay_seconds); reading decays it towards 0, so a target that went quiet after
    being slow is probed again. Two distinct available targets are drawn at random; the lower
    score wins (then fewer active, then the first draw). Unweighted, as in Finagle.

    Time going backwards is clamped (Δt = 0 and the stamp never moves back); NaN, infinite or
    negative inputs raise ValueError.
    """

    def __cinit__(self, *args, **kwargs):
        self._cost = NULL
        self._stamp = NULL
        self._observed = NULL
        self._active = NULL
        self._live = NULL

    def __init__(self, n, decay_seconds=10.0, *, initial_latency=DEFAULT_INITIAL_LATENCY,
                 seed=0x2545F4914F6CDD1D):
        cdef Py_ssize_t i
        self._tau = _finite(decay_seconds, "decay_seconds")
        self._initial = _finite(initial_latency, "initial_latency")
        if self._tau <= 0 or self._initial < 0:
            raise ValueError("decay_seconds must be > 0 and initial_latency >= 0")
        # xorshift state must be non-zero or it stays zero forever.
        if not 0 <= seed < 2 ** 64:
            raise ValueError(f"seed must be in 0..2**64-1, got {seed}")
        self._rng = <uint64_t>seed or 0x2545F4914F6CDD1D
        self._init_avail(n)
        self._cost = <double *>_alloc(n, sizeof(double))
        self._stamp = <double *>_alloc(n, sizeof(double))
        self._observed = <uint8_t *>_alloc(n, sizeof(uint8_t))
        self._active = <int64_t *>_alloc(n, sizeof(int64_t))
        self._live = <int32_t *>_alloc(n, sizeof(int32_t))
        for i in range(n):
            self._cost[i] = self._initial
        self._avail_changed()

    def __dealloc__(self):
        PyMem_Free(self._cost)
        PyMem_Free(self._stamp)
        PyMem_Free(self._observed)
        PyMem_Free(self._active)
        PyMem_Free(self._live)

    cdef void _avail_changed(self) noexcept nogil:
        # O(n) on a health flip (rare) buys O(1) uniform draws on every pick (hot).
        cdef int32_t i, k = 0
        for i in range(self._n):
            if self._avail[i]:
                self._live[k] = i
                k += 1
        self._n_live = k

    cdef uint64_t _next_rand(self) noexcept nogil:
        # xorshift64* (Vigna): a few ns, deterministic from the seed, no Python random.
        cdef uint64_t x = self._rng
        x ^= x >> 12
        x ^= x << 25
        x ^= x >> 27
        self._rng = x
        return x * 0x2545F4914F6CDD1DULL

    cdef double _score(self, int32_t i, double now) noexcept nogil:
        # Reading never writes: the decay is applied on the fly (exp composes, so this equals
        # Finagle's decay-on-read), and a pick leaves no trace that could make two workers'
        # or the reference model's answers diverge.
        cdef double c = self._cost[i], dt
        if self._observed[i]:
            dt = now - self._stamp[i]
            if dt > 0:
                c = c * exp(-dt / self._tau)
        return c * <double>(self._active[i] + 1)

    cdef int32_t _pick2(self, double now, uint64_t ra, uint64_t rb) noexcept nogil:
        cdef uint64_t k = <uint64_t>self._n_live, a, b
        cdef int32_t x, y
        cdef double sx, sy
        if k == 0:
            return -1
        if k == 1:
            return self._live[0]
        # Two distinct uniform draws: b skips over a.
        a = ra % k
        b = rb % (k - 1)
        if b >= a:
            b += 1
        # Comparing two random targets instead of all n: O(1), and it avoids the herd effect
        # of every worker sending to the single best-scored target (Mitzenmacher 2001).
        x = self._live[a]
        y = self._live[b]
        sx = self._score(x, now)
        sy = self._score(y, now)
        if sy < sx or (sy == sx and self._active[y] < self._active[x]):
            return y
        return x

    def pick(self, now):
        """Pick with the internal PRNG; -1 if no target is available."""
        cdef double t = _finite(now, "now")
        cdef uint64_t ra = self._next_rand()
        return self._pick2(t, ra, self._next_rand())

    def pick_with(self, now, uint64_t rand_a, uint64_t rand_b):
        """Pick with caller-supplied random words (for tests and replay)."""
        return self._pick2(_finite(now, "now"), rand_a, rand_b)

    def observe(self, index, latency, now):
        """Record a response latency (seconds) from this target at time ``now``."""
        cdef int32_t i = self._index(index)
        cdef double lat = _finite(latency, "latency"), t = _finite(now, "now"), dt, w
        if lat < 0:
            raise ValueError(f"latency must be >= 0, got {lat}")
        if not self._observed[i]:
            self._cost[i] = lat     # the first real sample replaces the prior
            self._stamp[i] = t
            self._observed[i] = 1
            return
        dt = t - self._stamp[i]
        if dt < 0:
            dt = 0                  # clock went backwards: no decay, stamp stays
        else:
            self._stamp[i] = t
        # Peak: a slower sample replaces the estimate outright, so one slow target is avoided at
        # once; faster samples only pull it down at the pace of the decay constant.
        if lat > self._cost[i]:
            self._cost[i] = lat
        else:
            w = exp(-dt / self._tau)
            self._cost[i] = self._cost[i] * w + lat * (1.0 - w)

    def acquire(self, index):
        self._active[self._index(index)] += 1

    def release(self, index):
        cdef int32_t i = self._index(index)
        if self._active[i] > 0:
            self._active[i] -= 1

    def active(self, index):
        return self._active[self._index(index)]

    def score(self, index, now):
        """The load score pick() compares, at time ``now``."""
        return self._score(self._index(index), _finite(now, "now"))

    def cost(self, index):
        """Stored (undecayed) latency estimate."""
        return self._cost[self._index(index)]
