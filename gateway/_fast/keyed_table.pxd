# Keyed limiter table: millions of limiter keys (user, org, ip ...) in one flat, fixed-capacity
# open-addressing table (linear probing, bounded probe window). The same bytes work in private
# memory and in a MAP_SHARED segment (shm.pyx), so N workers of a node share exact limits.
#
# The per-key arithmetic is not here: each slot embeds token_bucket.pxd's tb_state or
# sliding_window.pxd's sw_state and calls their inline functions, so there is one copy of it.
cimport cython
from libc.stdint cimport int64_t, uint32_t, uint64_t
from cpython.buffer cimport Py_buffer

from gateway._fast.atomic cimport gw_atomic_load_u64
from gateway._fast.sliding_window cimport sw_state
from gateway._fast.token_bucket cimport tb_state

cdef extern from * nogil:
    """
    /* Lemire's multiply-shift range reduction: maps a 64-bit hash onto [0, n) without a division,
       using the hash's high bits (XXH64's are well mixed). */
    static inline uint64_t gw_kt_home(uint64_t h, uint64_t n) {
        return (uint64_t)(((unsigned __int128)h * n) >> 64);
    }
    """
    uint64_t gw_kt_home(uint64_t h, uint64_t n)


ctypedef union kt_limiter:
    tb_state tb
    sw_state sw

# 32 bytes per slot: two slots per cache line and never one split across two lines, so a lookup
# costs one memory miss. There is no separate last-seen field: the limiter state already holds
# the key's recency (token bucket `last` = the latest `now` it saw; sliding window
# `window_start` = the start of the window of the latest `now`), see _recency in the .pyx.
ctypedef struct kt_slot:
    uint64_t hash        # SipHash-2-4(key, the table's secret); 0 = empty, 1 = tombstone (0/1 -> 2/3)
    uint32_t check       # low 32 bits of XXH64(key, the table's check seed): 96-bit identity per key
    uint32_t lock        # owner pid while locked (shm_lock), 0 when free; unused when private
    kt_limiter st        # the limiter state (one algorithm per table)

# At the start of the table's memory. In a shared segment, the first process to attach fills it
# (CAS on `ready`), including the random secret of the keyed hash, so every worker of the node
# hashes alike; later attachers check every parameter against their own and adopt the secret.
ctypedef struct kt_header:
    uint64_t magic
    uint32_t version
    uint32_t ready       # 0 fresh, 1 being initialized, 2 ready
    uint64_t capacity
    uint64_t nstripes
    uint32_t algorithm
    uint32_t max_probe
    uint32_t slot_size
    uint32_t reserved0
    double p1            # token bucket: rate;     sliding window: limit
    double p2            # token bucket: capacity; sliding window: window
    double idle_ttl
    int64_t count        # slots holding a key (idle ones included until reclaimed)
    uint64_t sweep_cursor
    uint64_t overflows   # checks of new keys answered by the overflow limiter (window full)
    uint64_t reclaimed   # idle or recovered keys whose slot was reused or swept
    uint64_t sip_k0      # the keyed hash's secret (random per table, set by its creator)
    uint64_t sip_k1
    uint64_t check_seed
    kt_slot overflow     # one limiter shared by every key that found its probe window full
    uint64_t reserved[4]

cdef enum:
    KT_TOKEN_BUCKET = 1
    KT_SLIDING_WINDOW = 2
    KT_EMPTY = 0            # slot hash values with a meaning; real hashes are >= 2
    KT_TOMBSTONE = 1
    KT_STRIPE_SHIFT = 6     # one insert lock per 64 home slots
    KT_HEADER_BYTES = 192


cdef inline size_t kt_stripes_for(uint64_t capacity) noexcept nogil:
    return <size_t>((capacity + (1 << KT_STRIPE_SHIFT) - 1) >> KT_STRIPE_SHIFT)


cdef inline size_t kt_slots_offset(uint64_t capacity) noexcept nogil:
    # Slots start on a 64-byte boundary (relative to a 64-aligned base: mmap, SharedSegment),
    # so 32-byte slots never straddle two cache lines.
    return (KT_HEADER_BYTES + 4 * kt_stripes_for(capacity) + 63) & ~(<size_t>63)


cdef inline bint kt_lookup(kt_slot* slots, uint64_t cap, uint32_t max_probe, uint64_t home,
                           uint64_t h, uint32_t chk, kt_slot** found) noexcept nogil:
    # Unlocked walk over the probe window. An empty slot ends it: keys are only ever placed at
    # the first free slot of their window and slots never become empty again, so no key of this
    # home lies beyond an empty slot. A hit must still be re-checked under the slot's lock in
    # shared memory (the slot may be reassigned in between).
    cdef uint64_t i = home
    cdef uint32_t p
    cdef uint64_t hv
    cdef kt_slot* s
    for p in range(max_probe):
        s = &slots[i]
        hv = gw_atomic_load_u64(&s.hash)
        if hv == h and s.check == chk:
            found[0] = s
            return True
        if hv == KT_EMPTY:
            return False
        i += 1
        if i == cap:
            i = 0
    return False


# final: no subclass can override the cdef methods, so calls to them are direct (inlinable).
@cython.final
cdef class KeyedLimiterTable:
    cdef kt_header* _hdr
    cdef uint32_t* _stripes     # insert locks, one per 64 home slots (shared mode only)
    cdef kt_slot* _slots
    cdef uint64_t _cap
    cdef uint32_t _max_probe
    cdef int _algo
    cdef double _p1, _p2, _ttl
    cdef bint _shared           # lock slots (the memory is a caller's buffer, maybe MAP_SHARED)
    cdef uint32_t* _pid         # shm.pyx's per-process pid, refreshed after fork
    cdef void* _own             # private allocation, or NULL
    cdef Py_buffer _view        # held on the caller's buffer for the table's lifetime
    cdef bint _has_view
    cdef size_t _bytes
    cdef readonly object buffer

    # Fast entry for Cython callers (filters): key bytes, validated now/cost. Returns 1 allowed /
    # 0 denied; out1 = tokens left (token bucket) or remaining (sliding window); out2 =
    # retry-after (token bucket) or reset (sliding window), both in seconds. nogil-safe for
    # shared tables (every update is under a slot lock); a private table takes no locks, so its
    # callers must serialize (hold the GIL), as every Python caller does.
    cdef int c_check(self, const char* key, size_t n, double now, double cost,
                     double* out1, double* out2) noexcept nogil

    cdef _init_or_check(self)
    cdef int _apply(self, kt_slot* s, double now, double cost, double* o1, double* o2) noexcept nogil
    cdef void _fresh(self, kt_slot* s, double now) noexcept nogil
    cdef double _recency(self, kt_slot* s) noexcept nogil
    cdef bint _reclaimable(self, kt_slot* s, double now) noexcept nogil
    cdef bint _idle(self, kt_slot* s, double now) noexcept nogil
    cdef bint _recovered(self, kt_slot* s, double now) noexcept nogil
    cdef void _hash(self, const char* key, size_t n, uint64_t* h, uint32_t* chk) noexcept nogil
    cdef int _overflow(self, double now, double cost, double* out1, double* out2) noexcept nogil
    cdef int _insert(self, uint64_t home, uint64_t h, uint32_t chk, double now, double cost,
                     double* out1, double* out2) noexcept nogil
    # Reclaims idle keys in n slots from the cursor. Shared: locks each slot it changes; private:
    # the caller holds the GIL (sweep() does), as c_check's callers do.
    cdef Py_ssize_t _sweep(self, double now, uint64_t n) noexcept nogil
