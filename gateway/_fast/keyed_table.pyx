"""Keyed limiter table: one limiter per key (user, org, ip ...) for millions of keys in bounded
memory, private to a process or shared by the workers of a node through a SharedSegment.

Layout: [header 128 B][insert-stripe locks, 4 B per 64 slots][slots, 32 B each]. Slot = 64-bit key
hash + 32-bit check hash + lock word + the limiter state of token_bucket.pxd or sliding_window.pxd
(one algorithm per table). The key's recency ("last seen") is read from that state: the token
bucket's `last` (the latest `now` it was checked at) or the sliding window's `window_start` (the
start of the window of the latest `now`), so it costs no extra bytes.

Probing: linear, within a window of ``max_probe`` slots from the key's home slot. Keys never move;
a freed slot becomes a tombstone (it keeps later keys reachable and is reused by inserts). The home
slot comes from a keyed hash (SipHash-2-4) under a random 128-bit secret drawn by the table's
creator and kept in its header (so every worker of a node shares it): nobody outside can compute
which keys share a probe window. With XXH64 and a fixed seed they could: about 190,000 hashes
offline found 385 keys sharing a victim's window, and flooding it pushed the victim's exhausted
limit out of the table, so it started fresh.

Idle keys: a key whose recency is more than ``idle_ttl`` seconds away from `now` is forgotten: its
next check starts from a fresh limiter, whether or not its slot was reclaimed yet. ``idle_ttl``
may not be shorter than the time a limiter takes to recover fully (token bucket: capacity/rate;
sliding window: 2*window), so forgetting never changes an answer; it only frees the slot. (A
recency further than that in the *future* was written under a wrong clock that has since gone
back: it is forgotten too, rather than frozen until the clock catches up; smaller steps back
re-anchor the state with its debt, see clock.pxd.)

Full probe window. An insert takes a free slot (empty or tombstone) of its window if it has one;
only when it has none may it reuse a slot whose key's eviction changes no answer: idle, or else
*recovered* (its state at `now` equals a fresh limiter's: a full bucket, an empty window). So a
live key loses its slot only under pressure. When no slot can go among the ``max_probe`` slots,
no key is evicted: the new key is checked against the table's one shared *overflow limiter* (the
same policy, in the header) and not inserted; `overflows` counts those checks.

"Changes no answer" holds for a clock that does not step back. A key forgotten at `now` (idle or
recovered) that comes back after the clock stepped back `s` seconds below `now` starts fresh
where its own limiter would have had up to `s` seconds of recovery left to do: it can be granted
at most what its limiter recovers in `s` seconds (token bucket: s x rate tokens) more than the
limiter it had. Memory is bounded, so some key must be forgettable; forgetting only under
pressure keeps this to tables whose windows are full
(tests/fast/test_keyed_table.py::test_a_key_reclaimed_before_a_clock_step_back_gains_at_most_the_step). So no flood of keys, crafted or random, lets a
limited key through; at worst the flood's new keys share one key's limit until slots recover.
Size the table for the live key count with headroom: filling 1M keys into 1.25M slots (load 0.8)
overflowed 6275 inserts with max_probe=32, 1142 with 64 and 70 with 128 (the default).

Collisions: a key is its 64-bit keyed hash plus a 32-bit check hash (XXH64 under a second random
seed): 96 bits. Two distinct live keys sharing both: about n^2 / 2^97 for n keys, ~1e-17 at a
million keys, and not computable offline. Accepted.

Shared mode (``buffer=`` given): every slot update runs under the slot's lock word (owner pid,
see shm.pyx for what happens when a worker dies holding one); inserts also hold the stripe lock
of the key's home slot, so two workers inserting the same new key cannot put it in two slots.
Lookups walk unlocked and re-check the slot's identity once they hold its lock.
"""
cimport cython
from cpython.buffer cimport PyBuffer_Release

from gateway._fast.pin cimport pin_writable
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.math cimport fabs, floor, isfinite, isnan
from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.string cimport memset
from posix.mman cimport (MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, PROT_READ,
                         PROT_WRITE, madvise, mmap, munmap)

from gateway._fast.atomic cimport (gw_atomic_add_i64, gw_atomic_add_u64, gw_atomic_load_u32,
                                   gw_atomic_load_u64, gw_atomic_store_u64, gw_cas_u32)
from gateway._fast.shm cimport shm_lock, shm_pid_ptr, shm_unlock
from gateway._fast.checks cimport check_non_negative, check_now, check_positive
from gateway._fast.sliding_window cimport sw_check, sw_init
from gateway._fast.token_bucket cimport tb_init, tb_try_acquire
from gateway._fast.siphash cimport gw_siphash24
from gateway._fast.xxh64 cimport gw_xxh64

import os
import time

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL

cdef uint64_t KT_MAGIC = 0x4C42544445594B47ULL      # b"GKYEDTBL"
cdef uint32_t KT_VERSION = 2
MAX_SW_LIMIT = 4_294_967_295.0  # sliding-window counts are uint32: exact whole numbers

SLOT_BYTES = sizeof(kt_slot)
ALGORITHMS = {"token_bucket": KT_TOKEN_BUCKET, "sliding_window": KT_SLIDING_WINDOW}
assert sizeof(kt_header) == KT_HEADER_BYTES
assert <size_t>&(<kt_header*>NULL).ready == 12     # _init_or_check clears from byte 16 on


def layout_bytes(capacity: int) -> int:
    """Bytes a table of `capacity` slots needs (header + stripe locks + slots)."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    return kt_slots_offset(capacity) + <size_t>capacity * sizeof(kt_slot)


cdef double _positive(str name, object v) except -1.0:
    cdef double d
    if v is None:
        raise ValueError(f"{name} is required for this algorithm")
    d = v
    check_positive(name, d)
    return d


@cython.no_gc_clear   # the buffer must outlive the view on it (released in __dealloc__)
cdef class KeyedLimiterTable:
    """A fixed-capacity table of per-key limiters; see the module docstring for the rules.

    ``KeyedLimiterTable(capacity, "token_bucket", rate=..., bucket=...)`` or
    ``KeyedLimiterTable(capacity, "sliding_window", limit=..., window=...)``; optional
    ``idle_ttl`` (default: the full-recovery time), ``max_probe`` (default 128), and ``buffer``:
    a writable, 8-byte aligned buffer of at least ``layout_bytes(capacity)`` bytes, normally a
    ``SharedSegment``; the table is then shared by every process that maps the same memory.
    """

    def __cinit__(self):
        self._own = NULL
        self._has_view = False

    def __init__(self, capacity: int, algorithm: str = "token_bucket", *, rate=None, bucket=None,
                 limit=None, window=None, idle_ttl=None, int max_probe=128, buffer=None):
        if capacity < 1 or capacity > (1 << 40):
            raise ValueError(f"capacity must be in [1, 2**40], got {capacity}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}, got {algorithm!r}")
        if max_probe < 1 or max_probe > 1024:
            raise ValueError(f"max_probe must be in [1, 1024], got {max_probe}")
        self._algo = ALGORITHMS[algorithm]
        cdef double recovery
        if self._algo == KT_TOKEN_BUCKET:
            self._p1 = _positive("rate", rate)
            self._p2 = _positive("bucket", bucket)
            recovery = self._p2 / self._p1
        else:
            self._p1 = _positive("limit", limit)
            self._p2 = _positive("window", window)
            if self._p1 > MAX_SW_LIMIT or floor(self._p1) != self._p1:
                raise ValueError(f"limit must be a whole number <= {MAX_SW_LIMIT:.0f} (exact "
                                 f"integer counts), got {limit!r}")
            recovery = 2.0 * self._p2
        if idle_ttl is None:
            self._ttl = recovery
        else:
            self._ttl = idle_ttl
            if isnan(self._ttl) or self._ttl < recovery:
                raise ValueError(f"idle_ttl must be >= {recovery!r} s (time to recover a full "
                                 f"limiter, so forgetting an idle key changes no answer), got {idle_ttl!r}")
        self._cap = capacity
        self._max_probe = <uint32_t>min(max_probe, capacity)
        self._bytes = layout_bytes(capacity)
        self._pid = shm_pid_ptr()
        cdef unsigned char* base
        cdef Py_ssize_t held = 0
        if buffer is None:
            # Anonymous mmap: zeroed pages, committed lazily as keys arrive. Huge pages (where
            # THP is on "madvise") save a TLB miss per lookup in a table of tens of MB.
            self._own = mmap(NULL, self._bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                             -1, 0)
            if self._own == MAP_FAILED:
                self._own = NULL
                raise MemoryError(f"cannot map {self._bytes} bytes for {capacity} slots")
            madvise(self._own, self._bytes, MADV_HUGEPAGE)   # advisory: failure is harmless
            base = <unsigned char*>self._own
            self._shared = False
        else:
            base = <unsigned char*>pin_writable(buffer, &self._view, &held)   # see pin.pxd
            self._has_view = True
            if <size_t>held < self._bytes:
                raise ValueError(f"buffer holds {held} bytes, a table of {capacity} "
                                 f"slots needs {self._bytes} (layout_bytes)")
            if (<uintptr_t>base) % 8:
                raise ValueError("buffer must be 8-byte aligned (atomics on its words)")
            self._shared = True
            self.buffer = buffer
        self._hdr = <kt_header*>base
        self._stripes = <uint32_t*>(base + KT_HEADER_BYTES)
        self._slots = <kt_slot*>(base + kt_slots_offset(capacity))
        self._init_or_check()

    cdef _init_or_check(self):
        cdef kt_header* h = self._hdr
        if gw_cas_u32(&h.ready, 0, 1):
            # First user of this memory: clear it (a reused buffer may hold anything) and publish.
            # Everything but `ready` (16 bytes in): zeroing it would let a second process win
            # the CAS above and initialize concurrently.
            if self._own == NULL:
                h.magic = 0
                memset(<unsigned char*>h + 16, 0, self._bytes - 16)
            h.version = KT_VERSION
            h.capacity = self._cap
            h.nstripes = kt_stripes_for(self._cap)
            h.algorithm = self._algo
            h.max_probe = self._max_probe
            h.slot_size = sizeof(kt_slot)
            h.p1 = self._p1
            h.p2 = self._p2
            h.idle_ttl = self._ttl
            # The keyed hash's secret: drawn here, by whoever creates the table, and read from
            # the header by every later attacher, so all workers place keys alike.
            secret = os.urandom(24)
            h.sip_k0 = int.from_bytes(secret[0:8], "little")
            h.sip_k1 = int.from_bytes(secret[8:16], "little")
            h.check_seed = int.from_bytes(secret[16:24], "little")
            gw_atomic_store_u64(&h.magic, KT_MAGIC)
            gw_cas_u32(&h.ready, 1, 2)
            return
        deadline = time.monotonic() + 2.0
        while gw_atomic_load_u32(&h.ready) != 2:
            if time.monotonic() > deadline:
                raise ValueError("table in buffer is still being initialized after 2 s "
                                 "(its creator died?)")
            time.sleep(0.0005)
        mine = (KT_VERSION, self._cap, self._algo, self._max_probe, sizeof(kt_slot),
                self._p1, self._p2, self._ttl)
        theirs = (h.version, h.capacity, h.algorithm, h.max_probe, h.slot_size,
                  h.p1, h.p2, h.idle_ttl)
        if h.magic != KT_MAGIC or mine != theirs:
            names = ("version", "capacity", "algorithm", "max_probe", "slot_size", "p1", "p2",
                     "idle_ttl")
            diff = {n: (a, b) for n, a, b in zip(names, mine, theirs) if a != b}
            raise ValueError(f"buffer holds a different keyed table (mine vs theirs): {diff}")

    def __dealloc__(self):
        if self._own != NULL:
            munmap(self._own, self._bytes)
            self._own = NULL
        if self._has_view:
            PyBuffer_Release(&self._view)
            self._has_view = False

    @staticmethod
    def from_policy(capacity: int, algorithm: str, double limit, double window, double burst=0.0,
                    **kwargs) -> KeyedLimiterTable:
        """A table for a SPEC §3 policy, mapped as TokenBucket.from_policy does: token bucket
        rate = limit/window, bucket = limit + burst; sliding window limit/window as given."""
        if algorithm == "token_bucket":
            check_non_negative("burst", burst)
            _positive("limit", limit)
            _positive("window", window)
            return KeyedLimiterTable(capacity, algorithm, rate=limit / window, bucket=limit + burst,
                                     **kwargs)
        return KeyedLimiterTable(capacity, algorithm, limit=limit, window=window, **kwargs)

    # ---- the hot path -------------------------------------------------------------------------

    cdef int _apply(self, kt_slot* s, double now, double cost, double* o1,
                    double* o2) noexcept nogil:
        # Caller holds the slot (lock, or private table). Idle past the TTL: forget the key.
        # (The limiter itself then advances the recency: tb `last`, sw `window_start`.)
        if self._idle(s, now):
            self._fresh(s, now)
        cdef int r
        if self._algo == KT_TOKEN_BUCKET:
            r = tb_try_acquire(&s.st.tb, self._p1, self._p2, now, cost, o2)
            o1[0] = s.st.tb.tokens
        else:
            r = sw_check(&s.st.sw, self._p1, self._p2, now, cost, o1, o2)
        return r

    cdef void _fresh(self, kt_slot* s, double now) noexcept nogil:
        if self._algo == KT_TOKEN_BUCKET:
            tb_init(&s.st.tb, self._p2, now)
        else:
            sw_init(&s.st.sw, now, self._p2)

    cdef double _recency(self, kt_slot* s) noexcept nogil:
        # Only moves forward (neither limiter rewinds on a clock step back), like a last-seen.
        if self._algo == KT_TOKEN_BUCKET:
            return s.st.tb.last
        return s.st.sw.window_start

    cdef bint _reclaimable(self, kt_slot* s, double now) noexcept nogil:
        # May this key's slot go to another key without changing any answer? Idle or recovered
        # (module docstring).
        return self._idle(s, now) or self._recovered(s, now)

    cdef bint _idle(self, kt_slot* s, double now) noexcept nogil:
        # Recency more than the TTL away from `now`, either way (module docstring).
        return fabs(now - self._recency(s)) > self._ttl

    cdef bint _recovered(self, kt_slot* s, double now) noexcept nogil:
        # Its state at `now` equals a fresh limiter's, so the key coming back fresh gets exactly
        # the answers it would have got. Only for a state not ahead of `now`: one ahead refills
        # or rotates later than a fresh one would.
        cdef double t, start
        if self._algo == KT_TOKEN_BUCKET:
            if now < s.st.tb.last:
                return False
            t = s.st.tb.tokens + (now - s.st.tb.last) * self._p1
            return t >= self._p2
        if now < s.st.sw.window_start:
            return False
        start = floor(now / self._p2) * self._p2
        if start > s.st.sw.window_start:
            if start - s.st.sw.window_start < 1.5 * self._p2:
                return s.st.sw.curr_count == 0     # it becomes the previous window's count
            return True
        return s.st.sw.curr_count == 0 and s.st.sw.prev_count == 0

    cdef void _hash(self, const char* key, size_t n, uint64_t* h, uint32_t* chk) noexcept nogil:
        h[0] = gw_siphash24(key, n, self._hdr.sip_k0, self._hdr.sip_k1)
        if h[0] < 2:
            h[0] += 2
        chk[0] = <uint32_t>gw_xxh64(key, n, self._hdr.check_seed)

    cdef int _overflow(self, double now, double cost, double* out1, double* out2) noexcept nogil:
        # A new key found its whole probe window held by keys that cannot go without granting
        # requests: it is counted against the one overflow limiter shared by all such keys.
        cdef kt_slot* s = &self._hdr.overflow
        cdef int r
        gw_atomic_add_u64(&self._hdr.overflows, 1)
        if self._shared:
            shm_lock(&s.lock, self._pid[0])
        if s.hash == KT_EMPTY:
            self._fresh(s, now)
            s.hash = 2
        r = self._apply(s, now, cost, out1, out2)
        if self._shared:
            shm_unlock(&s.lock)
        return r

    cdef int c_check(self, const char* key, size_t n, double now, double cost,
                     double* out1, double* out2) noexcept nogil:
        cdef uint64_t h
        cdef uint32_t chk
        cdef kt_slot* s = NULL
        cdef int r
        self._hash(key, n, &h, &chk)
        cdef uint64_t home = gw_kt_home(h, self._cap)
        if not self._shared:
            if kt_lookup(self._slots, self._cap, self._max_probe, home, h, chk, &s):
                return self._apply(s, now, cost, out1, out2)
            return self._insert(home, h, chk, now, cost, out1, out2)
        while kt_lookup(self._slots, self._cap, self._max_probe, home, h, chk, &s):
            shm_lock(&s.lock, self._pid[0])
            if s.hash == h and s.check == chk:
                r = self._apply(s, now, cost, out1, out2)
                shm_unlock(&s.lock)
                return r
            # Reassigned to another key between the unlocked walk and the lock: walk again.
            shm_unlock(&s.lock)
        cdef uint32_t* stripe = &self._stripes[home >> KT_STRIPE_SHIFT]
        shm_lock(stripe, self._pid[0])
        r = self._insert(home, h, chk, now, cost, out1, out2)
        shm_unlock(stripe)
        return r

    cdef int _insert(self, uint64_t home, uint64_t h, uint32_t chk, double now, double cost,
                     double* out1, double* out2) noexcept nogil:
        # Miss path. Shared mode: the caller holds this home's stripe lock, so no other process
        # inserts this key meanwhile; other keys may still take or free slots of the window, so
        # every choice is re-checked under the chosen slot's lock and the walk redone if stale.
        # Choice: the first free slot (tombstone or empty) of the window; without one, the first
        # idle key's slot; without one, the first recovered key's (module docstring: a live
        # key is forgotten only under pressure, idle ones first).
        cdef kt_slot* s
        cdef kt_slot* cand
        cdef kt_slot* idle
        cdef kt_slot* recovered
        cdef uint64_t i, hv, cand_hash, idle_hash, recovered_hash
        cdef uint32_t p
        cdef bint shared = self._shared, ok
        cdef int r
        while True:
            cand = idle = recovered = NULL
            cand_hash = idle_hash = recovered_hash = 0
            i = home
            for p in range(self._max_probe):
                s = &self._slots[i]
                hv = gw_atomic_load_u64(&s.hash)
                if hv == KT_EMPTY:
                    if cand == NULL:
                        cand = s
                        cand_hash = KT_EMPTY
                    break
                if hv == h and s.check == chk and shared:
                    # Inserted by another process after our unlocked walk (a private table
                    # never gets here: its lookup walked the same slots a moment ago).
                    shm_lock(&s.lock, self._pid[0])
                    if s.hash == h and s.check == chk:
                        r = self._apply(s, now, cost, out1, out2)
                        shm_unlock(&s.lock)
                        return r
                    shm_unlock(&s.lock)
                elif hv == KT_TOMBSTONE:
                    if cand == NULL:
                        cand = s
                        cand_hash = KT_TOMBSTONE
                elif cand == NULL and idle == NULL:
                    if self._idle(s, now):
                        idle = s
                        idle_hash = hv
                    elif recovered == NULL and self._recovered(s, now):
                        recovered = s
                        recovered_hash = hv
                i += 1
                if i == self._cap:
                    i = 0
            if cand == NULL:
                cand = idle if idle != NULL else recovered
                cand_hash = idle_hash if idle != NULL else recovered_hash
            if cand == NULL:
                # Every slot of the window holds a key whose eviction would grant requests.
                return self._overflow(now, cost, out1, out2)
            if shared:
                shm_lock(&cand.lock, self._pid[0])
                ok = cand.hash == cand_hash
                if ok and cand_hash >= 2:
                    ok = self._reclaimable(cand, now)
                if not ok:
                    shm_unlock(&cand.lock)
                    continue
            # Claim. Bookkeeping first, then state, then the hash (readers lock before trusting
            # the state, and the hash is what makes the slot findable).
            if cand_hash < 2:
                gw_atomic_add_i64(&self._hdr.count, 1)
            else:
                gw_atomic_add_u64(&self._hdr.reclaimed, 1)
            self._fresh(cand, now)
            cand.check = chk
            gw_atomic_store_u64(&cand.hash, h)
            r = self._apply(cand, now, cost, out1, out2)
            if shared:
                shm_unlock(&cand.lock)
            return r

    def check(self, key, double now, double cost=1.0):
        """Check (and count) a hit of `cost` for `key` at time `now`.

        Token bucket -> (allowed, tokens_left, retry_after); sliding window -> (allowed,
        remaining, reset): the same answers as TokenBucket.try_acquire / SlidingWindow.check.
        `key`: str (hashed as UTF-8) or bytes.
        """
        cdef const char* data
        cdef Py_ssize_t n
        cdef double a, b
        cdef int r
        check_now(now)
        check_positive("cost", cost)
        if self._algo == KT_SLIDING_WINDOW and floor(cost) != cost:
            raise ValueError(f"cost must be a whole number for a sliding window, got {cost!r}")
        if type(key) is str:
            data = PyUnicode_AsUTF8AndSize(key, &n)
        elif type(key) is bytes:
            data = PyBytes_AS_STRING(key)
            n = PyBytes_GET_SIZE(key)
        else:
            raise TypeError(f"key must be str or bytes, not {type(key).__name__}")
        r = self.c_check(data, <size_t>n, now, cost, &a, &b)
        if self._algo == KT_SLIDING_WINDOW:
            # SlidingWindow.check's shape: remaining is a whole number of hits.
            return r == 1, <long long>a, b
        return r == 1, a, b

    def refund(self, key, double now, double cost=1.0) -> bool:
        """Give back `cost` that a check of `key` at `now` took, when a later policy of the same
        request refused it (two-level quotas, several policies on a route): the request was not
        served, so it must not count. Token bucket: tokens back (capped at the bucket); sliding
        window: taken off the count of `now`'s window (or of the previous one, if the key
        rotated meanwhile). False when the key is not (or no longer) in the table."""
        cdef const char* data
        cdef Py_ssize_t n
        cdef kt_slot* s = NULL
        cdef uint64_t h
        cdef uint32_t chk
        cdef double start
        cdef uint32_t c
        check_now(now)
        check_positive("cost", cost)
        if type(key) is str:
            data = PyUnicode_AsUTF8AndSize(key, &n)
        elif type(key) is bytes:
            data = PyBytes_AS_STRING(key)
            n = PyBytes_GET_SIZE(key)
        else:
            raise TypeError(f"key must be str or bytes, not {type(key).__name__}")
        self._hash(data, <size_t>n, &h, &chk)
        if not kt_lookup(self._slots, self._cap, self._max_probe, gw_kt_home(h, self._cap), h, chk, &s):
            return False
        if self._shared:
            shm_lock(&s.lock, self._pid[0])
        if s.hash != h or s.check != chk:
            if self._shared:
                shm_unlock(&s.lock)
            return False
        if self._algo == KT_TOKEN_BUCKET:
            s.st.tb.tokens = min(s.st.tb.tokens + cost, self._p2)
        else:
            c = <uint32_t>cost
            start = floor(now / self._p2) * self._p2
            if s.st.sw.window_start == start:
                s.st.sw.curr_count -= min(c, s.st.sw.curr_count)
            elif start < s.st.sw.window_start < start + 1.5 * self._p2:
                s.st.sw.prev_count -= min(c, s.st.sw.prev_count)   # rotated once since
        if self._shared:
            shm_unlock(&s.lock)
        return True

    # ---- maintenance --------------------------------------------------------------------------

    def sweep(self, double now, Py_ssize_t max_slots=4096) -> int:
        """Reclaim idle keys in up to `max_slots` slots from a rotating cursor; returns how many.

        Bounded work per call, so a worker can run it from a periodic timer without a pause.
        Answers never change: an idle key is forgotten by `check` anyway.
        """
        check_now(now)
        if max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {max_slots}")
        cdef uint64_t n = min(<uint64_t>max_slots, self._cap)
        cdef Py_ssize_t done
        if self._shared:
            # Every slot change is under its lock, as check() does it: other threads and
            # processes may run meanwhile.
            with nogil:
                done = self._sweep(now, n)
        else:
            # A private table's check() takes no lock: the GIL is its lock (see c_check in the
            # .pxd). So the sweep keeps the GIL too. The other way, slot locks in both, would
            # add a lock and an unlock to every private check() to protect a bounded sweep of
            # a few microseconds (4096 slots by default) that can simply run under the GIL.
            done = self._sweep(now, n)
        return done

    cdef Py_ssize_t _sweep(self, double now, uint64_t n) noexcept nogil:
        cdef uint64_t i = self._hdr.sweep_cursor % self._cap
        cdef uint64_t k
        cdef Py_ssize_t done = 0
        cdef kt_slot* s
        cdef uint64_t hv
        for k in range(n):
            s = &self._slots[i]
            hv = gw_atomic_load_u64(&s.hash)
            if hv >= 2 and self._idle(s, now):
                if self._shared:
                    shm_lock(&s.lock, self._pid[0])
                if s.hash == hv and self._idle(s, now):
                    # Tombstone, not empty: later keys of the same window stay reachable.
                    gw_atomic_store_u64(&s.hash, KT_TOMBSTONE)
                    gw_atomic_add_i64(&self._hdr.count, -1)
                    gw_atomic_add_u64(&self._hdr.reclaimed, 1)
                    done += 1
                if self._shared:
                    shm_unlock(&s.lock)
            i += 1
            if i == self._cap:
                i = 0
        self._hdr.sweep_cursor = i
        return done

    def __contains__(self, key) -> bool:
        """Whether a slot holds `key` (idle keys count until reclaimed)."""
        cdef const char* data
        cdef Py_ssize_t n
        cdef kt_slot* s = NULL
        if type(key) is str:
            data = PyUnicode_AsUTF8AndSize(key, &n)
        elif type(key) is bytes:
            data = PyBytes_AS_STRING(key)
            n = PyBytes_GET_SIZE(key)
        else:
            raise TypeError(f"key must be str or bytes, not {type(key).__name__}")
        cdef uint64_t h
        cdef uint32_t chk
        self._hash(data, <size_t>n, &h, &chk)
        return kt_lookup(self._slots, self._cap, self._max_probe, gw_kt_home(h, self._cap), h,
                          chk, &s)

    def __len__(self) -> int:
        return <Py_ssize_t>gw_atomic_load_u64(<uint64_t*>&self._hdr.count)

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def memory_bytes(self) -> int:
        """Bytes of the table's memory: header, stripe locks and slots (fixed at construction)."""
        return self._bytes

    @property
    def algorithm(self) -> str:
        return "token_bucket" if self._algo == KT_TOKEN_BUCKET else "sliding_window"

    @property
    def idle_ttl(self) -> float:
        return self._ttl

    @property
    def max_probe(self) -> int:
        return self._max_probe

    @property
    def shared(self) -> bool:
        return self._shared

    @property
    def overflows(self) -> int:
        """Checks of new keys answered by the shared overflow limiter (their window was full)."""
        return self._hdr.overflows

    @property
    def reclaimed(self) -> int:
        return self._hdr.reclaimed

    def __repr__(self) -> str:
        return (f"<KeyedLimiterTable {self.algorithm} {len(self)}/{self._cap} keys "
                f"{'shared' if self._shared else 'private'}>")


def siphash24(data: bytes, k0: int, k1: int) -> int:
    """The table's keyed hash (SipHash-2-4 with key k0, k1), for tests against the reference."""
    return gw_siphash24(PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data), k0, k1)
