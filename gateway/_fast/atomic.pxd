# Header-only atomics for the _fast primitives that may live in shared memory (mmap) and be
# touched by several worker processes at once. Nothing here allocates or takes the GIL.
#
# Why GCC builtins and not a lock library: a slot's lock must be a plain word inside the slot
# itself, so the same bytes work in private memory and in a MAP_SHARED segment. The lock built on
# these words is shm.pxd's shm_lock/shm_unlock (owner pid in the word, dead owners broken).
from libc.stdint cimport uint32_t, uint64_t, int64_t

cdef extern from *:
    """
    #include <stdint.h>
    #if defined(__x86_64__) || defined(__i386__)
    #define GW_CPU_RELAX() __builtin_ia32_pause()
    #elif defined(__aarch64__)
    #define GW_CPU_RELAX() __asm__ __volatile__("yield")
    #else
    #define GW_CPU_RELAX() do {} while (0)
    #endif

    /* Release of a lock word. Taking one is shm.pxd's shm_lock: its word holds the owner's pid,
       so a worker that dies holding it cannot wedge the others (an anonymous spinlock could). */
    static inline void gw_spin_unlock(uint32_t *l) {
        __atomic_store_n(l, 0u, __ATOMIC_RELEASE);
    }
    static inline uint64_t gw_atomic_add_u64(uint64_t *p, uint64_t v) {
        return __atomic_add_fetch(p, v, __ATOMIC_RELAXED);
    }
    static inline int64_t gw_atomic_add_i64(int64_t *p, int64_t v) {
        return __atomic_add_fetch(p, v, __ATOMIC_RELAXED);
    }
    static inline uint64_t gw_atomic_load_u64(uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline void gw_atomic_store_u64(uint64_t *p, uint64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELAXED);
    }
    static inline uint32_t gw_atomic_load_u32(uint32_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline int gw_cas_u32(uint32_t *p, uint32_t expected, uint32_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                           __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    """
    void gw_spin_unlock(uint32_t *l) nogil
    uint64_t gw_atomic_add_u64(uint64_t *p, uint64_t v) nogil
    int64_t gw_atomic_add_i64(int64_t *p, int64_t v) nogil
    uint64_t gw_atomic_load_u64(uint64_t *p) nogil
    void gw_atomic_store_u64(uint64_t *p, uint64_t v) nogil
    uint32_t gw_atomic_load_u32(uint32_t *p) nogil
    bint gw_cas_u32(uint32_t *p, uint32_t expected, uint32_t desired) nogil
