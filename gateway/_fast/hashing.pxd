# Consistent hashing for the balancer strategies `consistent_hash` and `ip_hash` (SPEC §3).
# Declared here so other _fast modules can cimport the classes and call the nogil lookups
# without going through Python.
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t


# xxh64 of a str (its UTF-8 bytes) or bytes key; raises TypeError for anything else.
cdef uint64_t hash_key(object key, uint64_t seed) except? 0


# Target bookkeeping shared by both tables: targets are small int indices owned by the service
# layer; each has a weight (0 = no share), an identity hash (from its name, so a target keeps its
# place when the list is rebuilt in another order) and an availability byte.
cdef class _TargetSet:
    cdef int32_t _n              # targets known (indices 0.._n-1)
    cdef int32_t _cap            # allocated slots in the arrays below
    cdef uint32_t *_weights
    cdef uint64_t *_idents
    cdef uint8_t *_avail
    cdef int32_t _n_live         # targets with weight > 0 that are available
    cdef uint64_t _seed
    cdef uint64_t _total_weight

    cdef int _grow(self, int32_t need) except -1
    cdef int32_t _index(self, index) except -1
    cdef int _check_weight(self, int32_t index, long long weight) except -1
    cdef int _rebuild(self) except -1
    cdef void _count_live(self) noexcept nogil


cdef class HashRing(_TargetSet):
    cdef uint32_t _vnodes        # ring points per unit of weight
    cdef uint64_t *_points       # sorted point hashes
    cdef int32_t *_owners        # _owners[k] is the target of _points[k]
    cdef Py_ssize_t _npoints

    cdef int32_t _lookup_hash(self, uint64_t h) noexcept nogil


cdef class Maglev(_TargetSet):
    cdef uint64_t _m             # table size, a prime
    cdef int32_t *_table         # slot -> target index, -1 when no target has weight

    cdef int32_t _lookup_hash(self, uint64_t h) noexcept nogil
