# Shared-memory segments (MAP_SHARED mmap) for _fast state that N worker processes on one node
# must share exactly: keyed limiter tables, breakers, counters. Cython users cimport the segment's
# payload pointer and the owner-aware slot lock below; Python users see a writable buffer.
from libc.stdint cimport uint32_t, uint64_t
from gateway._fast.atomic cimport gw_cas_u32, gw_spin_unlock

# Segment header, first 64 bytes of every mapping. A mapping whose header does not match (another
# program's file, an older layout, a truncated file) is refused with ValueError at attach time,
# never silently reinterpreted.
ctypedef struct shm_header:
    uint64_t magic          # SHM_MAGIC, written last by the creator (release), so a reader sees
                            # either no magic or a complete header
    uint32_t version        # SHM_VERSION: bumped when this header changes
    uint32_t header_size    # sizeof(the header area) = SHM_HEADER_SIZE
    uint64_t payload_size   # bytes usable after the header
    uint32_t creator_pid
    uint32_t reserved0
    uint64_t reserved[4]

cdef enum:
    SHM_HEADER_SIZE = 64    # keeps the payload 64-byte (cache line) aligned: mmap is page aligned
    SHM_VERSION = 1


cdef class SharedSegment:
    cdef unsigned char* _map        # start of the mapping (the header)
    cdef size_t _map_size           # header + payload
    cdef unsigned char* base        # payload start: what tables and breakers lay their state in
    cdef readonly Py_ssize_t size   # payload bytes
    cdef readonly object name       # None for an anonymous (fork-inherited) segment
    cdef readonly object path       # /dev/shm/<name> or None
    cdef Py_ssize_t _exports        # live buffer exports: close() refuses while > 0
    cdef int _lock_fd               # creator of a named segment: the fd holding its flock; else -1
    cdef object _file_id            # (st_dev, st_ino) of the named file: unlink() checks it
    cdef int _check_open(self) except -1
    cdef _adopt(self, void* p, size_t total, Py_ssize_t size)
    cdef _create_named(self, str name, Py_ssize_t size)
    cdef bint _build_and_link(self, int fd, str tmp, str path, Py_ssize_t size) except -1
    cdef void _unmap(self) noexcept
    cdef void _release_lock(self) noexcept


# The pid of this process, refreshed in every fork()ed child (os.register_at_fork). Lock words
# hold the owner's pid so a waiter can tell a lock held by a dead worker from a busy one. The
# address is stable across fork, so a caller may cache the pointer.
cdef uint32_t* shm_pid_ptr() noexcept nogil

# Whether `pid` has stopped running: it does not exist, or it has exited and is not yet reaped
# (a zombie). False when in doubt. A few syscalls and a /proc read: for slow paths (a lock or a
# claim stuck on a peer), never per operation.
cdef bint shm_pid_gone(uint32_t pid) noexcept nogil

# Slow path of shm_lock: spin, yield, and break the lock once shm_pid_gone(owner).
cdef void shm_lock_slow(uint32_t* word, uint32_t me) noexcept nogil


cdef inline void shm_lock(uint32_t* word, uint32_t me) noexcept nogil:
    # Uncontended case is one CAS 0 -> pid (same cost as gw_spin_lock's exchange).
    if not gw_cas_u32(word, 0, me):
        shm_lock_slow(word, me)


cdef inline void shm_unlock(uint32_t* word) noexcept nogil:
    # Release store of 0: the same unlock as atomic.pxd's spinlock.
    gw_spin_unlock(word)
