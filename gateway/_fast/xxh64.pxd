# Header-only XXH64 (Yann Collet's xxHash, 64-bit variant), so every _fast module that needs a
# stable, fast, non-cryptographic hash (keyed tables, the ketama ring, Maglev) inlines the same
# function. Stable across processes and runs, unlike Python's hash(), which is what keys shared
# between worker processes need. Checked against the `xxhash` package in tests/fast.
from libc.stdint cimport uint64_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #define GW_P64_1 0x9E3779B185EBCA87ULL
    #define GW_P64_2 0xC2B2AE3D27D4EB4FULL
    #define GW_P64_3 0x165667B19E3779F9ULL
    #define GW_P64_4 0x85EBCA77C2B2AE63ULL
    #define GW_P64_5 0x27D4EB2F165667C5ULL
    static inline uint64_t gw_rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
    static inline uint64_t gw_read64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
    static inline uint32_t gw_read32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
    static inline uint64_t gw_xxh_round(uint64_t acc, uint64_t input) {
        acc += input * GW_P64_2; acc = gw_rotl64(acc, 31); return acc * GW_P64_1;
    }
    static inline uint64_t gw_xxh_merge(uint64_t acc, uint64_t val) {
        acc ^= gw_xxh_round(0, val); return acc * GW_P64_1 + GW_P64_4;
    }
    /* Little-endian hosts only (x86_64, aarch64): the reads above are native-order memcpy. */
    static inline uint64_t gw_xxh64(const void *data, size_t len, uint64_t seed) {
        const unsigned char *p = (const unsigned char *)data;
        const unsigned char *end = p + len;
        uint64_t h;
        if (len >= 32) {
            const unsigned char *limit = end - 32;
            uint64_t v1 = seed + GW_P64_1 + GW_P64_2, v2 = seed + GW_P64_2;
            uint64_t v3 = seed, v4 = seed - GW_P64_1;
            do {
                v1 = gw_xxh_round(v1, gw_read64(p)); p += 8;
                v2 = gw_xxh_round(v2, gw_read64(p)); p += 8;
                v3 = gw_xxh_round(v3, gw_read64(p)); p += 8;
                v4 = gw_xxh_round(v4, gw_read64(p)); p += 8;
            } while (p <= limit);
            h = gw_rotl64(v1, 1) + gw_rotl64(v2, 7) + gw_rotl64(v3, 12) + gw_rotl64(v4, 18);
            h = gw_xxh_merge(h, v1); h = gw_xxh_merge(h, v2);
            h = gw_xxh_merge(h, v3); h = gw_xxh_merge(h, v4);
        } else {
            h = seed + GW_P64_5;
        }
        h += (uint64_t)len;
        while (p + 8 <= end) {
            h ^= gw_xxh_round(0, gw_read64(p)); h = gw_rotl64(h, 27) * GW_P64_1 + GW_P64_4; p += 8;
        }
        if (p + 4 <= end) {
            h ^= (uint64_t)gw_read32(p) * GW_P64_1; h = gw_rotl64(h, 23) * GW_P64_2 + GW_P64_3; p += 4;
        }
        while (p < end) {
            h ^= (uint64_t)(*p) * GW_P64_5; h = gw_rotl64(h, 11) * GW_P64_1; p++;
        }
        h ^= h >> 33; h *= GW_P64_2; h ^= h >> 29; h *= GW_P64_3; h ^= h >> 32;
        return h;
    }
    """
    uint64_t gw_xxh64(const void *data, size_t length, uint64_t seed) nogil
