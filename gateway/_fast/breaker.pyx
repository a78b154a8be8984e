"""Circuit breaker: CLOSED / HALF_OPEN / OPEN, called twice per proxied request.

The data plane calls ``allow(now)`` before picking a connection and ``record(now, ok, duration,
ticket)`` when the exchange ends; nothing here reads a clock, allocates on the common path, or
holds a lock while running Python code.

Rules (tests/fast/reference/breaker.py is the executable spec; docs in breaker.pyi):
- CLOSED trips to OPEN on ``failure_threshold`` consecutive failures, or when the rolling window
  (``buckets`` buckets over ``window`` seconds) holds at least ``min_requests`` results of which a
  share >= ``error_rate`` failed. Evaluated when a failure is recorded.
- A call slower than ``slow_call_duration`` counts as a failure, whatever its status (one policy,
  not a second ratio: a target that answers in 30 s is as bad as one that answers 502).
- OPEN lasts ``open_timeout``; a repeat trip (a probe failed, or the breaker tripped again within
  ``settle`` seconds of a recovery close) doubles it, capped at ``max_open_timeout``. A close that
  survives ``settle`` seconds resets it.
- The first allow() after the timeout moves to HALF_OPEN, which admits ``half_open_requests``
  probes; ``success_threshold`` successes close, any failure reopens. Probes that stay silent
  past the current open timeout count as failed.
- After a recovery close, for ``ramp`` seconds a growing share (elapsed / ramp) of calls is
  admitted, through a deterministic credit accumulator shared by all workers.
- allow() returns a ticket: the epoch (bumped by every transition) or 0 when rejected. A result
  recorded with a ticket from an earlier epoch is ignored (counted as ``stale``): a slow call from
  the CLOSED era must not count as a probe, nor a straggler from before a trip re-trip the
  recovered breaker. Ticket 0 means "count against the current state".
- force_open holds the breaker OPEN until force_close; force_close closes at once, without ramp,
  and resets the timeout backoff.
- State moves only on calls: an OPEN breaker whose timeout has passed reports OPEN until the next
  allow() (the metric shows 2 until then).

Shared memory: all state is one gw_breaker_shm struct, malloc'd or in a caller's buffer, guarded by
an owner-pid lock word inside it (shm.pxd's shm_lock; allow() in CLOSED past the ramp reads without
it, as a seqlock reader: see _read_closed). Critical sections are straight-line C (no Python, no
allocation); a worker SIGKILLed inside one leaves its pid in the word, and the next waiter breaks the lock once that pid
is gone, so a crashed worker costs the others a one-off delay of a few ms, never a wedged breaker.
"""
import logging
import time

from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.math cimport INFINITY, floor, isfinite
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcmp, memset

from gateway._fast.atomic cimport gw_cas_u32, gw_atomic_load_u32
from gateway._fast.shm cimport shm_lock, shm_pid_gone, shm_pid_ptr, shm_unlock

_log = logging.getLogger("gateway.breaker")

cdef enum:
    _ALIGN = 8
    _PID_LIMIT = 1 << 22    # Linux pids are below PID_MAX_LIMIT: a claim word is one of them

# How long an attacher waits for a live worker to finish initialising a shared breaker: the keyed
# table's wait (keyed_table.pyx, _init_or_check), for the same kind of claim.
_ATTACH_TIMEOUT = 2.0

# Python-level names of the BreakerState values (the enum itself is C-only).
globals().update(CLOSED=CLOSED, HALF_OPEN=HALF_OPEN, OPEN=OPEN)
STATE_NAMES = ("closed", "half_open", "open")   # the metric's `to` label values, by code
SHM_SIZE = sizeof(gw_breaker_shm)               # bytes a shared breaker needs in a buffer
SHM_ALIGN = _ALIGN                              # offset alignment (8-byte atomics and doubles)

# Legal moves as data: one bit per (old, new) pair, bit index old * 3 + new. Everything else
# (self-moves, CLOSED -> HALF_OPEN) is refused: a closed breaker only reaches the probing state by
# way of OPEN and its timeout.
cdef enum:
    _LEGAL = ((1 << (CLOSED * 3 + OPEN))
              | (1 << (HALF_OPEN * 3 + OPEN)) | (1 << (HALF_OPEN * 3 + CLOSED))
              | (1 << (OPEN * 3 + HALF_OPEN)) | (1 << (OPEN * 3 + CLOSED)))


cdef int _set_state(gw_breaker_shm *s, uint32_t new, double now, gw_transition *tr) noexcept nogil:
    """The only writer of ``s.state``. Called under the lock; returns -1 and changes nothing on an
    illegal move, else records the transition (epoch, node-wide counters, ``tr`` for the callback)."""
    cdef uint32_t old = s.state
    if old > OPEN or new > OPEN or not (_LEGAL >> (old * 3 + new)) & 1:
        return -1
    s.state = new
    s.epoch += 1
    if s.epoch == 0:        # 0 means "rejected" / "no ticket": never hand it out
        s.epoch = 1
    s.changed_at = now
    if new == OPEN:
        s.to_open += 1
    elif new == HALF_OPEN:
        s.to_half_open += 1
    else:
        s.to_closed += 1
    tr.happened = 1
    tr.old = old
    tr.new = new
    tr.now = now
    return 0


cdef inline void _clear_window(gw_breaker_shm *s) noexcept nogil:
    memset(s.req, 0, sizeof(s.req))
    memset(s.fail, 0, sizeof(s.fail))
    s.window_requests = 0
    s.window_failures = 0
    s.consecutive = 0


cdef inline void _rotate(gw_breaker_shm *s, const gw_breaker_cfg *c, double now) noexcept nogil:
    # Advance the ring to the bucket holding `now`, zeroing the buckets that fell out. Bucket ids
    # stay doubles (floor of now / width) so a huge gap cannot overflow an integer; the model in
    # the reference does the same arithmetic.
    cdef double cur = floor(now / c.bucket_width)
    cdef double gap = cur - s.head_id
    cdef uint32_t k, n
    if gap <= 0.0:
        return
    if gap >= c.nbuckets:
        memset(s.req, 0, sizeof(s.req))
        memset(s.fail, 0, sizeof(s.fail))
        s.window_requests = 0
        s.window_failures = 0
    else:
        n = <uint32_t>c.nbuckets
        for k in range(<uint32_t>gap):
            s.head = (s.head + 1) % n
            s.window_requests -= s.req[s.head]
            s.window_failures -= s.fail[s.head]
            s.req[s.head] = 0
            s.fail[s.head] = 0
    s.head_id = cur


cdef void _trip(gw_breaker_shm *s, const gw_breaker_cfg *c, double now,
                gw_transition *tr) noexcept nogil:
    # CLOSED -> OPEN or HALF_OPEN -> OPEN, choosing the open timeout: doubled for a repeat trip.
    cdef double timeout = c.open_timeout
    cdef bint repeat = s.state == HALF_OPEN or (s.streak > 0 and now - s.closed_at < c.settle)
    if repeat:
        timeout = s.open_timeout * 2.0
        if timeout > c.max_open_timeout:
            timeout = c.max_open_timeout
    if _set_state(s, OPEN, now, tr) < 0:
        return
    s.streak = s.streak + 1 if repeat else 1
    s.open_timeout = timeout
    s.open_until = now + timeout


cdef void _close(gw_breaker_shm *s, const gw_breaker_cfg *c, double now, bint recovered,
                 gw_transition *tr) noexcept nogil:
    # Into CLOSED with a fresh window. A recovery (probes succeeded) keeps the backoff streak (a
    # quick re-trip doubles) and starts the ramp; an operator's force_close forgets both.
    if _set_state(s, CLOSED, now, tr) < 0:
        return
    _clear_window(s)
    s.closed_at = now
    s.ramp_end = now
    if recovered:
        if c.ramp > 0.0:
            s.ramp_end = now + c.ramp
            s.ramp_credit = 1.0      # the first call after closing passes
    else:
        s.streak = 0
        s.open_timeout = c.open_timeout


cdef int _allow_locked(gw_breaker_shm *s, const gw_breaker_cfg *c, double now,
                       gw_transition *tr) noexcept nogil:
    cdef double f
    if s.state == CLOSED and _max(now, s.last_now) >= s.ramp_end:
        return 1    # the fast path's answer: reads only, so the clock is not advanced either
    now = _clamp(s, now)
    if s.state == CLOSED:
        # Ramp: each call adds the admitted share to a credit; a whole credit admits one call.
        f = (now - s.closed_at) / c.ramp
        s.ramp_credit += f
        if s.ramp_credit >= 1.0:
            s.ramp_credit -= 1.0
            return 1
        return 0
    if s.state == OPEN:
        if now < s.open_until:
            return 0
        if _set_state(s, HALF_OPEN, now, tr) < 0:
            return 0
        s.probes_admitted = 0
        s.probe_successes = 0
        s.open_until = now + s.open_timeout     # probe deadline
    if s.probes_admitted < c.half_open_requests:
        s.probes_admitted += 1
        return 1
    if now >= s.open_until:
        _trip(s, c, now, tr)    # the probes went silent: treat as failed
    return 0


cdef void _record_locked(gw_breaker_shm *s, const gw_breaker_cfg *c, double now, bint failed,
                         uint32_t epoch, gw_transition *tr) noexcept nogil:
    if epoch != 0 and epoch != s.epoch:
        s.stale += 1
        return
    if s.state == CLOSED:
        _rotate(s, c, now)
        s.req[s.head] += 1
        s.window_requests += 1
        if not failed:
            s.consecutive = 0
            return
        s.fail[s.head] += 1
        s.window_failures += 1
        s.consecutive += 1
        if s.consecutive >= c.failure_threshold or (
                s.window_requests >= c.min_requests
                and <double>s.window_failures / <double>s.window_requests >= c.error_rate):
            _trip(s, c, now, tr)
    elif s.state == HALF_OPEN:
        if failed:
            _trip(s, c, now, tr)
        else:
            s.probe_successes += 1
            if s.probe_successes >= c.success_threshold:
                _close(s, c, now, True, tr)
    else:
        s.stale += 1        # an un-ticketed result while OPEN: nothing to count it against


cdef extern from *:
    """
    static inline double gw_load_f64(const double *p) {
        /* One untorn 8-byte load of a double another process may be writing. */
        double d; uint64_t bits = __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED);
        __builtin_memcpy(&d, &bits, sizeof d); return d;
    }
    static inline uint64_t gw_load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void gw_acquire_fence(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
    static inline void gw_release_fence(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
    static inline void gw_seq_store(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    static inline void gw_seq_store_release(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    """
    double _load_f64 "gw_load_f64"(const double *p) noexcept nogil
    void gw_acquire_fence() noexcept nogil
    uint64_t _load_u64 "gw_load_u64"(const uint64_t *p) noexcept nogil
    void gw_release_fence() noexcept nogil
    void _seq_store "gw_seq_store"(uint32_t *p, uint32_t v) noexcept nogil
    void _seq_store_release "gw_seq_store_release"(uint32_t *p, uint32_t v) noexcept nogil


cdef inline double _max(double a, double b) noexcept nogil:
    return a if a > b else b


cdef inline double _clamp(gw_breaker_shm *s, double now) noexcept nogil:
    if now < s.last_now:
        return s.last_now
    s.last_now = now
    return now


from gateway._fast.checks cimport check_non_negative, check_now as _check_now


# A test hook called between the lock-free reader's loads (NULL in production: the branches fold
# away once _read_closed is inlined into c_allow).
ctypedef void (*gw_probe_fn)(void *arg, int step) noexcept nogil


cdef inline bint _read_closed(gw_breaker_shm *s, double now, uint32_t *epoch, gw_probe_fn probe,
                              void *arg) noexcept nogil:
    """The lock-free allow(): 1 with the ticket in *epoch when the breaker is CLOSED past any ramp,
    0 to take the locked path. A seqlock read: every locked section makes ``seq`` odd before its
    first store and even (and different) after its last (_write_begin/_write_end), so a reader
    that saw the same even ``seq`` before and after its loads saw no store of any section, in
    whatever order that section's stores became visible. Checking the lock word and the epoch
    instead is not enough: a writer can take the lock after the first check, make its new epoch
    visible before its new state, and release before the second check."""
    cdef uint32_t seq, seen, state
    cdef bint past
    seq = gw_atomic_load_u32(&s.seq)        # acquire: the loads below cannot move above it
    if seq & 1:
        return 0
    if probe != NULL:
        probe(arg, 1)
    seen = gw_atomic_load_u32(&s.epoch)
    if probe != NULL:
        probe(arg, 2)
    state = gw_atomic_load_u32(&s.state)
    if probe != NULL:
        probe(arg, 3)
    past = _max(now, _load_f64(&s.last_now)) >= _load_f64(&s.ramp_end)
    if probe != NULL:
        probe(arg, 4)
    gw_acquire_fence()                      # the loads above complete before seq is read again
    if gw_atomic_load_u32(&s.seq) != seq or state != CLOSED or not past:
        return 0
    epoch[0] = seen
    return 1


cdef inline void _write_begin(gw_breaker_shm *s) noexcept nogil:
    """Every locked section that may store starts here. (seq + 1) | 1 is odd and new even when a
    writer died mid-section and left seq odd (its lock is then broken by shm_lock)."""
    shm_lock(&s.lock, shm_pid_ptr()[0])
    _seq_store(&s.seq, (s.seq + 1) | 1)
    gw_release_fence()                      # seq odd is visible before any store that follows


cdef inline void _write_end(gw_breaker_shm *s) noexcept nogil:
    _seq_store_release(&s.seq, s.seq + 1)   # every store above is visible before seq turns even
    shm_unlock(&s.lock)


cdef class CircuitBreaker:
    """One breaker (per upstream target). See the module docstring and breaker.pyi."""

    def __cinit__(self):
        self._s = NULL
        self._owned = NULL
        self._epoch_obj = 0
        self._epoch_cached = 0

    def __init__(self, *, int failure_threshold=5, double error_rate=0.5, int min_requests=20,
                 double window=10.0, int buckets=10, double open_timeout=60.0,
                 max_open_timeout=None, int half_open_requests=3, int success_threshold=3,
                 double slow_call_duration=INFINITY, double ramp=0.0, settle=None,
                 on_transition=None, buffer=None, Py_ssize_t offset=0):
        cdef double max_to = 8.0 * open_timeout if max_open_timeout is None else float(max_open_timeout)
        _validate(failure_threshold, error_rate, min_requests, window, buckets, open_timeout,
                  max_to, half_open_requests, success_threshold, slow_call_duration, ramp)
        if on_transition is not None and not callable(on_transition):
            raise TypeError("on_transition must be callable or None")
        c = &self._cfg
        c.failure_threshold = failure_threshold
        c.error_rate = error_rate
        c.min_requests = min_requests
        c.window = window
        c.nbuckets = buckets
        c.bucket_width = window / buckets
        c.open_timeout = open_timeout
        c.max_open_timeout = max_to
        c.half_open_requests = half_open_requests
        c.success_threshold = success_threshold
        c.slow_call_duration = slow_call_duration
        c.ramp = ramp + 0.0         # + 0.0 turns -0.0 into 0.0: attach compares the bytes
        c.settle = (max(window, ramp) if settle is None else float(settle)) + 0.0
        if not (c.settle >= 0.0):
            raise ValueError("settle must be >= 0")
        self.on_transition = on_transition
        if buffer is None:
            if self._owned == NULL:
                self._owned = <gw_breaker_shm *>PyMem_Calloc(1, sizeof(gw_breaker_shm))
                if self._owned == NULL:
                    raise MemoryError()
            self._s = self._owned
            _init_state(self._s, c)
            self._s.magic = GW_BREAKER_MAGIC
        else:
            self._attach(buffer, offset)

    cdef _attach(self, buffer, Py_ssize_t offset):
        # Place the state in a caller's writable buffer (an mmap shared by forked workers). The
        # first breaker to claim the bytes initialises them; later ones attach, provided their
        # policy is identical: two policies over one state would disagree on every answer.
        cdef unsigned char[::1] view = buffer        # raises for read-only buffers
        # The address, not just the offset, must be aligned: a buffer may start anywhere.
        if (offset < 0 or offset + <Py_ssize_t>sizeof(gw_breaker_shm) > view.shape[0]
                or (<size_t>&view[0] + <size_t>offset) % _ALIGN):
            raise ValueError(f"offset {offset} must be a multiple of {_ALIGN} with {SHM_SIZE} "
                             f"bytes after it in a buffer of {view.shape[0]}")
        cdef gw_breaker_shm *s = <gw_breaker_shm *>&view[offset]
        if not self._claim_or_wait(s) and memcmp(&s.cfg, &self._cfg, sizeof(gw_breaker_cfg)) != 0:
            raise ValueError("buffer holds a breaker with a different policy")
        self._view = view
        self._s = s

    cdef bint _claim_or_wait(self, gw_breaker_shm *s) except -1:
        """True when this breaker initialised the bytes, False when it found them initialised.

        The magic word: 0 = fresh, a pid = that worker claimed the bytes and is initialising
        them, GW_BREAKER_MAGIC = ready. Claiming with the pid (not a bare 1) lets a waiter tell
        a claimer that died before publishing (take over: CAS from its pid to ours, so exactly
        one waiter does) from one that is slow (wait) or stuck (give up after _ATTACH_TIMEOUT,
        as the keyed table does). Pids are below 2^22, far from the magic 0x42524B31, so any
        other word is junk, refused at once."""
        cdef uint32_t me = shm_pid_ptr()[0]
        cdef uint32_t seen
        deadline = None
        while True:
            seen = gw_atomic_load_u32(&s.magic)
            if seen == GW_BREAKER_MAGIC:
                return False
            if seen >= _PID_LIMIT:
                raise ValueError("buffer bytes at offset are neither zero nor a breaker")
            # Our own pid as claimer is a dead predecessor's (recycled pid): this process claims,
            # initialises and publishes in one go under the GIL, so it is never mid-way here.
            if seen == 0 or seen == me or shm_pid_gone(seen):
                if gw_cas_u32(&s.magic, seen, me):
                    _init_state(s, &self._cfg)
                    gw_cas_u32(&s.magic, me, GW_BREAKER_MAGIC)   # publish (release) the bytes
                    return True
                continue                    # another waiter moved first: look again
            if deadline is None:
                deadline = time.monotonic() + _ATTACH_TIMEOUT
            elif time.monotonic() > deadline:
                raise ValueError(f"breaker in buffer is still being initialised by pid {seen} "
                                 f"after {_ATTACH_TIMEOUT:g} s (its claimer is stuck?)")
            time.sleep(0.0005)              # yield the CPU: the claimer may need it to finish

    def __dealloc__(self):
        if self._owned != NULL:
            PyMem_Free(self._owned)
            self._owned = NULL

    # -- hot path -----------------------------------------------------------------------------

    cdef int c_allow(self, double now, uint32_t *epoch) except -1:
        cdef gw_transition tr
        cdef int ok
        cdef gw_breaker_shm *s = self._s
        cdef uint32_t seen
        _check_now(now)
        # Lock-free fast path: CLOSED past any ramp only reads (see _read_closed).
        if _read_closed(s, now, epoch, NULL, NULL):
            return 1
        tr.happened = 0
        _write_begin(s)
        ok = _allow_locked(s, &self._cfg, now, &tr)
        epoch[0] = s.epoch
        _write_end(s)
        if tr.happened:
            self._fire(&tr)
        return ok

    cdef int c_record(self, double now, bint success, double duration, uint32_t epoch) except -1:
        cdef gw_transition tr
        cdef bint failed = not success
        _check_now(now)
        check_non_negative("duration", duration)
        tr.happened = 0
        _write_begin(self._s)
        now = _clamp(self._s, now)
        if duration > self._cfg.slow_call_duration:
            self._s.slow_calls += 1
            failed = True
        _record_locked(self._s, &self._cfg, now, failed, epoch, &tr)
        _write_end(self._s)
        if tr.happened:
            self._fire(&tr)
        return 0

    cdef BreakerState c_state(self) noexcept:
        return <BreakerState>gw_atomic_load_u32(&self._s.state)

    cdef void _fire(self, gw_transition *tr):
        # After the unlock, in the process that caused the transition. A failing callback is
        # logged and counted; the breaker's state is already complete and stays correct.
        if self.on_transition is None:
            return
        try:
            self.on_transition(tr.old, tr.new, tr.now)
        except Exception:
            self.callback_errors += 1
            _log.exception("circuit breaker on_transition callback failed")

    def allow(self, double now):
        """Admission: 0 when rejected, else a ticket (the current epoch) to pass to record()."""
        cdef uint32_t epoch
        if not self.c_allow(now, &epoch):
            return 0
        if epoch != self._epoch_cached:         # only after a transition: no per-call int
            self._epoch_obj = epoch
            self._epoch_cached = epoch
        return self._epoch_obj

    def record(self, double now, bint success, double duration, uint32_t epoch=0):
        """Record one finished call admitted with ticket ``epoch`` (0: count it whatever the state)."""
        self.c_record(now, success, duration, epoch)

    # -- operator and inspection ---------------------------------------------------------------

    def force_open(self, double now):
        """Hold OPEN until force_close. Returns True when the state changed."""
        return self._force(now, OPEN)

    def force_close(self, double now):
        """Close now: fresh window, no ramp, backoff reset. Returns True when the state changed."""
        return self._force(now, CLOSED)

    cdef _force(self, double now, uint32_t target):
        cdef gw_transition tr
        _check_now(now)
        tr.happened = 0
        _write_begin(self._s)
        now = _clamp(self._s, now)
        if target == OPEN:
            if self._s.state != OPEN:
                _set_state(self._s, OPEN, now, &tr)
            self._s.open_until = INFINITY
        elif self._s.state != CLOSED:
            _close(self._s, &self._cfg, now, False, &tr)
        elif self._s.ramp_end > now:
            self._s.ramp_end = now      # already closed: cut a running ramp short
        _write_end(self._s)
        if tr.happened:
            self._fire(&tr)
        return bool(tr.happened)

    def open_for(self, double now, double timeout):
        """Open a CLOSED breaker for ``timeout`` seconds (then half-open as usual): another
        instance saw this target fail (cross-instance propagation). An OPEN or HALF_OPEN breaker is
        left to its own probes, and the timeout backoff is not touched: the decision to come back
        stays local. Returns True when the state changed."""
        cdef gw_transition tr
        _check_now(now)
        if not (timeout > 0.0) or not isfinite(timeout):
            raise ValueError("timeout must be a finite number > 0")
        tr.happened = 0
        _write_begin(self._s)
        now = _clamp(self._s, now)
        if self._s.state == CLOSED and _set_state(self._s, OPEN, now, &tr) == 0:
            self._s.open_until = now + timeout
        _write_end(self._s)
        if tr.happened:
            self._fire(&tr)
        return bool(tr.happened)

    def cancel(self, double now, uint32_t epoch):
        """A call admitted with ticket ``epoch`` was given up without a result (the client left):
        while the same half-open period lasts, its probe slot is handed back, so an abandoned
        probe neither blocks the others nor reads as a silent upstream. Returns True if a slot
        was freed."""
        cdef bint freed = False
        _check_now(now)
        _write_begin(self._s)
        _clamp(self._s, now)
        if (self._s.state == HALF_OPEN and epoch == self._s.epoch
                and self._s.probes_admitted > self._s.probe_successes):
            self._s.probes_admitted -= 1
            freed = True
        _write_end(self._s)
        return freed

    def transitions(self):
        """(to_open, to_half_open, to_closed): node-wide counts, read without the lock (each word
        is one untorn 8-byte load; the three together may straddle a concurrent transition)."""
        return (_load_u64(&self._s.to_open), _load_u64(&self._s.to_half_open),
                _load_u64(&self._s.to_closed))

    def _transition(self, int new, double now):
        """Test hook: ask _set_state for a raw move; raises ValueError when it is refused."""
        cdef gw_transition tr
        cdef int rc
        _check_now(now)
        if new < 0 or new > OPEN:
            raise ValueError(f"unknown state {new}")
        tr.happened = 0
        _write_begin(self._s)
        rc = _set_state(self._s, <uint32_t>new, _clamp(self._s, now), &tr)
        old = self._s.state
        _write_end(self._s)
        if rc < 0:
            raise ValueError(f"illegal transition {STATE_NAMES[old]} -> {STATE_NAMES[new]}")
        self._fire(&tr)

    @property
    def state(self):
        """0 closed, 1 half-open, 2 open (the gateway_circuit_state value)."""
        return <int>self.c_state()

    @property
    def shared(self):
        return self._s != self._owned

    def snapshot(self):
        """A consistent copy of the state for the admin API (not for the hot path)."""
        cdef gw_breaker_shm c
        shm_lock(&self._s.lock, shm_pid_ptr()[0])
        c = self._s[0]
        shm_unlock(&self._s.lock)
        return {
            "state": STATE_NAMES[c.state], "code": c.state, "epoch": c.epoch,
            "changed_at": c.changed_at,
            "consecutive_failures": c.consecutive,
            "window_requests": c.window_requests, "window_failures": c.window_failures,
            "forced_open": c.state == OPEN and c.open_until == INFINITY,
            "open_until": c.open_until if c.state != CLOSED and c.open_until != INFINITY else None,
            "open_timeout": c.open_timeout, "trips": c.streak,
            "probes_admitted": c.probes_admitted if c.state == HALF_OPEN else 0,
            "probe_successes": c.probe_successes if c.state == HALF_OPEN else 0,
            "ramp_until": c.ramp_end if c.state == CLOSED and c.ramp_end > c.closed_at else None,
            "transitions": {"open": c.to_open, "half_open": c.to_half_open, "closed": c.to_closed},
            "stale": c.stale, "slow_calls": c.slow_calls,
        }


cdef void _init_state(gw_breaker_shm *s, const gw_breaker_cfg *c) noexcept nogil:
    # Everything after the magic word: attaching workers wait on that word while this runs, so
    # it must not flicker through zero.
    cdef size_t skip = <char *>&s.lock - <char *>s
    memset(<char *>s + skip, 0, sizeof(gw_breaker_shm) - skip)
    s.state = CLOSED
    s.epoch = 1
    s.open_timeout = c.open_timeout
    s.cfg = c[0]


cdef _validate(int failure_threshold, double error_rate, int min_requests, double window,
               int buckets, double open_timeout, double max_open_timeout, int half_open_requests,
               int success_threshold, double slow_call_duration, double ramp):
    # `not (x > 0)` rejects NaN as well as zero and negatives.
    if failure_threshold < 1:
        raise ValueError("failure_threshold must be >= 1")
    if not (0.0 < error_rate <= 1.0):
        raise ValueError("error_rate must be in (0, 1]")
    if min_requests < 1:
        raise ValueError("min_requests must be >= 1")
    if not (window > 0.0) or not isfinite(window):
        raise ValueError("window must be a finite number > 0")
    if not (1 <= buckets <= GW_BREAKER_MAX_BUCKETS):
        raise ValueError(f"buckets must be in 1..{GW_BREAKER_MAX_BUCKETS}")
    if not (open_timeout > 0.0) or not isfinite(open_timeout):
        raise ValueError("open_timeout must be a finite number > 0")
    if not (max_open_timeout >= open_timeout) or not isfinite(max_open_timeout):
        raise ValueError("max_open_timeout must be finite and >= open_timeout")
    if half_open_requests < 1:
        raise ValueError("half_open_requests must be >= 1")
    if not (1 <= success_threshold <= half_open_requests):
        raise ValueError("success_threshold must be in 1..half_open_requests")
    if not (slow_call_duration > 0.0):
        raise ValueError("slow_call_duration must be > 0 (inf disables it)")
    if not (ramp >= 0.0) or not isfinite(ramp):
        raise ValueError("ramp must be a finite number >= 0")


# -- test hooks: drive the lock-free reader with a "writer" interleaved between its loads ---------

cdef void _py_probe(void *arg, int step) noexcept nogil:
    with gil:
        (<object>arg)(step)


def _read_closed_interleaved(CircuitBreaker b, double now, step):
    """Run the lock-free reader, calling ``step(i)`` between its loads (i = 1..4). Returns the
    ticket it would hand out, or 0 when it defers to the locked path."""
    cdef uint32_t epoch = 0
    if _read_closed(b._s, now, &epoch, _py_probe, <void *>step):
        return epoch
    return 0


def _write_section_begin(CircuitBreaker b):
    """Start a writer's locked section, exactly as allow()/record()/force_*() do."""
    _write_begin(b._s)


def _write_section_end(CircuitBreaker b):
    _write_end(b._s)


def _store_raw(CircuitBreaker b, str field, uint32_t value):
    """One plain store of a writer's section (``state`` or ``epoch``), in whatever order a test
    (standing for the compiler and the CPU) chooses."""
    if field == "state":
        b._s.state = value
    elif field == "epoch":
        b._s.epoch = value
    else:
        raise ValueError(field)
