"""Shared-memory segments: one MAP_SHARED mapping that N worker processes see at the same address
range of physical memory, so keyed limiter tables and breakers hold exact per-node state without
Redis.

Two kinds:
- anonymous (``SharedSegment(size)``): made by the supervisor before it forks; every fork()ed
  worker inherits the same pages. Nothing on disk; it disappears with the last process.
- named (``SharedSegment(size, name="gw-limits")`` / ``SharedSegment.attach(name)`` /
  ``SharedSegment.open(name, size)``): a file under /dev/shm, for processes that are not forked
  from one parent. The creator unlinks it (``unlink()``) when the node's workers are done.

A named segment is never reused across starts. Its lock words hold pids, and a pid means nothing
once its process is gone: after a restart (a container's in particular, in a fresh pid namespace
where the dead owner's small pid is a live process, often pid 1) a lock it held would never be
broken. So each start creates its segments under fresh names and deletes those of dead instances
with ``SharedSegment.remove_orphans(prefix)``. What tells dead from alive is not a pid but a lock
the kernel drops with its holder: the creator holds an exclusive flock on the file for as long
as its SharedSegment is open (``owner``); attachers take none.

Every mapping starts with a 64-byte header (magic, version, header size, payload size). Attaching
to a file whose header does not match raises ValueError: a layout change can never be silently
reinterpreted by a worker running older code.

A named segment appears under its name only complete (built under a temporary name, then linked).
A file that stays too small or without magic (its creator died part-way, or older code made it)
is replaced by ``open()``; one with another magic or version is someone else's and is left alone.

Dead lock owners. Slot locks in shared state (``shm_lock`` in shm.pxd) store the owner's pid, not
just 1. A waiter that has spun for a while (about 8k tries with 64 sched_yield() calls: a few ms
on a loaded box, far above any real critical section of tens of ns) checks whether the owner pid
is still alive (``shm_pid_gone``: ``kill(pid, 0)``, then /proc/<pid>/stat so that an exited but
not yet reaped owner, a zombie, counts as dead); if the owner is gone, the waiter takes the lock
over with a CAS, so exactly one waiter inherits it. Consequences, documented rather than hidden:
- a worker killed inside a critical section costs the others a few ms once, never a wedge;
- the one slot it was updating may hold a half-applied update (e.g. a new key's hash with the
  previous key's limiter state): bounded, never "unlimited", and the key heals on its next window;
- pid reuse: if the dead owner's pid is recycled before anyone probes, the lock waits until that
  new process exits. Workers of one node share a pid namespace (the supervisor's), so this needs
  pid wrap-around within milliseconds: accepted. Across starts it is not rare, hence the rule
  above: a segment never outlives its instance's use.
- every process mapping one segment must live in the same pid namespace (a named segment shared
  across containers would see foreign pids as dead, or dead ones as alive), and must fork
  through Python's os.fork() (which runs the at-fork hook refreshing the pid); exec'd workers
  import afresh and are fine.
"""
import fcntl
import os
import secrets
import time

from cpython.buffer cimport PyBuffer_FillInfo
from libc.errno cimport errno
from libc.stdint cimport uint32_t, uint64_t
from posix.mman cimport MAP_ANONYMOUS, MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap
from posix.unistd cimport close, getpid

from gateway._fast.atomic cimport gw_atomic_load_u32, gw_atomic_load_u64, gw_atomic_store_u64

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from * nogil:
    # Owner liveness, in plain C: it runs without the GIL on the lock's slow path (once per ~8k
    # spins), so no Python file objects, just open/read of one small /proc file.
    """
    #include <errno.h>
    #include <fcntl.h>
    #include <signal.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    #include <unistd.h>

    /* Linux pids are below PID_MAX_LIMIT (2^22); a word above it is not a pid. */
    #define GW_PID_LIMIT (1u << 22)

    /* Whether /proc shows this process's pid namespace. After unshare(CLONE_NEWPID) without a
       fresh /proc mount, /proc/<n> is pid n of *another* namespace: reading it would judge a
       stranger, so the caller then trusts kill() alone. */
    static int gw_proc_is_ours(void) {
        char buf[32];
        ssize_t n = readlink("/proc/self", buf, sizeof buf - 1);
        if (n <= 0)
            return 0;
        buf[n] = 0;
        return strtol(buf, NULL, 10) == (long)getpid();
    }

    /* 1 when `pid` no longer runs: it does not exist (ESRCH), or it has exited and waits to be
       reaped (state Z or X). A zombie passes kill(pid, 0), yet it will never unlock anything, and
       its parent may take its time (or be the very process that is waiting). A thread-group
       leader that called pthread_exit() while its other threads run also shows Z, but with
       num_threads > 1: that process is alive. Anything unreadable counts as alive: breaking a
       live owner's lock is the one mistake this must never make. */
    static int gw_pid_gone(uint32_t pid) {
        char path[48], buf[1024];
        const char *p;
        ssize_t n;
        int fd, i;
        if (pid == 0 || pid >= GW_PID_LIMIT)
            return 1;                       /* no process has this id: a corrupt word */
        if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
            return 1;
        if (!gw_proc_is_ours())
            return 0;
        snprintf(path, sizeof path, "/proc/%u/stat", (unsigned)pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return errno == ENOENT;         /* reaped since kill() saw it */
        n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0)
            return 0;
        buf[n] = 0;
        /* "pid (comm) S ppid ...": comm may hold spaces and ')', so parse after the last ')'. */
        p = strrchr(buf, ')');
        if (p == NULL || p[1] != ' ')
            return 0;
        p += 2;
        if (*p == 'X' || *p == 'x')
            return 1;
        if (*p != 'Z')
            return 0;
        /* num_threads is field 20, the 18th after the ')' (state is the 1st). */
        for (i = 0; i < 17; i++) {
            p = strchr(p, ' ');
            if (p == NULL)
                return 0;
            p++;
        }
        return strtol(p, NULL, 10) <= 1;
    }
    """
    bint gw_pid_gone(uint32_t pid)


cdef extern from * nogil:
    # atomic.pxd's 64-bit store and load are relaxed; the header publish needs release ordering so
    # the header fields' stores cannot move after the magic, and the attacher a matching acquire
    # after it reads the magic so its reads of those fields cannot move before it.
    """
    static inline void gw_shm_release_fence(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
    static inline void gw_shm_acquire_fence(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
    """
    void gw_shm_release_fence()
    void gw_shm_acquire_fence()

# b"GWSHMSEG" read as a little-endian uint64.
cdef uint64_t SHM_MAGIC = 0x4745534D48535747ULL
SHM_DIR = "/dev/shm"
HEADER_SIZE = SHM_HEADER_SIZE

# Spin budget of shm_lock_slow: spins between yields, and yields between owner-liveness probes.
cdef enum:
    SPINS_PER_YIELD = 128
    YIELDS_PER_PROBE = 64

cdef uint32_t _self_pid = <uint32_t>getpid()


def _refresh_pid() -> None:
    # Runs in every fork()ed child (os.register_at_fork): the child's locks must carry its own
    # pid, or a parent's death would let a waiter break a lock the child really holds.
    global _self_pid
    _self_pid = <uint32_t>getpid()


os.register_at_fork(after_in_child=_refresh_pid)


cdef uint32_t* shm_pid_ptr() noexcept nogil:
    return &_self_pid


cdef bint shm_pid_gone(uint32_t pid) noexcept nogil:
    return gw_pid_gone(pid)


cdef void shm_lock_slow(uint32_t* word, uint32_t me) noexcept nogil:
    cdef uint32_t owner
    cdef unsigned long spins = 0
    while True:
        owner = gw_atomic_load_u32(word)
        if owner == 0:
            if gw_cas_u32(word, 0, me):
                return
            continue
        spins += 1
        if spins % SPINS_PER_YIELD != 0:
            continue
        # On 2 shared cores the owner may be descheduled: give it the CPU instead of burning ours.
        sched_yield()
        if spins % (SPINS_PER_YIELD * YIELDS_PER_PROBE) == 0 and owner != me:
            if gw_pid_gone(owner):
                # Owner is dead (or a zombie). CAS from *that* owner: among several waiters
                # exactly one wins; the others keep waiting on the new (live) owner.
                if gw_cas_u32(word, owner, me):
                    return


# open(): create/attach/recover rounds before giving up. One round normally suffices; more are
# needed only while other processes are replacing the same unfinished file at the same moment.
_OPEN_ATTEMPTS = 8


class _Unfinished(ValueError):
    """The named file is still too small or has no magic after attach's deadline: its creator
    died part-way (older code published the file before writing its header). open() replaces
    it; the file is identified by inode, so only that very file is ever removed."""

    def __init__(self, message: str, st: os.stat_result) -> None:
        super().__init__(message)
        self.dev = st.st_dev
        self.ino = st.st_ino


cdef size_t _wait_finished(int fd, str path, double timeout) except 0:
    # Returns the file's size once it is at least a header long and its magic is non-zero. The
    # published file of a live creator always is (it is linked only when complete); files of
    # older code or of a creator that died part-way may not be. A short file with non-zero bytes
    # was never ours (our creators only ftruncate, which zero-fills): refused at once.
    deadline = time.monotonic() + timeout
    while True:
        st = os.fstat(fd)
        head = os.pread(fd, SHM_HEADER_SIZE, 0)
        if head.count(0) != len(head) and len(head) < SHM_HEADER_SIZE:
            raise ValueError(f"{path}: {st.st_size} bytes is too small to be a gateway shared segment")
        if len(head) == SHM_HEADER_SIZE and head[:8] != _NO_MAGIC:
            return <size_t>st.st_size
        if time.monotonic() >= deadline:
            if len(head) < SHM_HEADER_SIZE:
                raise _Unfinished(f"{path}: {st.st_size} bytes is too small to be a gateway "
                                  f"shared segment", st)
            raise _Unfinished(f"{path}: no magic after {timeout} s (its creator died before "
                              f"finishing it?)", st)
        time.sleep(0.001)


_NO_MAGIC = bytes(8)


def _remove_stale(path: str, dev: int, ino: int) -> bool:
    """Unlink ``path`` if it still names the file (dev, ino) and no one holds that file's flock;
    True when removed.

    POSIX has no "unlink if this inode", so the name is checked, then unlinked. What makes that
    safe: the remover first takes the file's flock itself (LOCK_EX|LOCK_NB), and every remover
    does, so while it holds it no other remover can delete this file and let a new segment be
    published under the name between the check and the unlink. A segment published since (a
    new inode) is never touched, nor a file whose creator still holds its lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (dev, ino):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False        # a live creator (or another remover) holds it
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if (st.st_dev, st.st_ino) != (dev, ino):
            return False
        os.unlink(path)
        return True
    finally:
        os.close(fd)            # releases the lock


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _valid_name(name: str) -> str:
    # A plain file name under /dev/shm: no separators, no hidden files, nothing to traverse.
    if not isinstance(name, str) or not name or len(name) > 200 or name[0] == ".":
        raise ValueError(f"invalid shared segment name {name!r}")
    for ch in name:
        if not (ch.isascii() and (ch.isalnum() or ch in "._-")):
            raise ValueError(f"invalid shared segment name {name!r}: use [A-Za-z0-9._-]")
    return name


cdef class SharedSegment:
    """A MAP_SHARED memory segment with a checked header; exposes its payload as a writable buffer.

    ``SharedSegment(size)``: anonymous, inherited by fork()ed children.
    ``SharedSegment(size, name=...)``: creates /dev/shm/<name> (FileExistsError if it exists),
    published only once sized and with its header written.
    ``SharedSegment.attach(name, size=None)``: maps an existing named segment, checking its header.
    ``SharedSegment.open(name, size)``: create, or attach if another process created it first;
    replaces a file its creator left unfinished.
    ``SharedSegment.remove_orphans(prefix)``: delete the named segments no live creator holds.
    """

    def __cinit__(self):
        self._map = NULL
        self._map_size = 0
        self.base = NULL
        self.size = 0
        self.name = None
        self.path = None
        self._exports = 0
        self._lock_fd = -1
        self._file_id = None

    def __init__(self, Py_ssize_t size, name=None):
        if size <= 0:
            raise ValueError(f"segment size must be > 0, got {size}")
        cdef size_t total = SHM_HEADER_SIZE + <size_t>size
        cdef void* p
        if name is None:
            p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
            if p == MAP_FAILED:
                raise OSError(errno, f"mmap of {total} anonymous shared bytes failed")
            self._adopt(p, total, size)
        else:
            self._create_named(_valid_name(name), size)

    cdef _adopt(self, void* p, size_t total, Py_ssize_t size):
        # Take a fresh mapping of `total` bytes and write its header.
        self._map = <unsigned char*>p
        self._map_size = total
        self.base = self._map + SHM_HEADER_SIZE
        self.size = size
        cdef shm_header* h = <shm_header*>self._map
        h.version = SHM_VERSION
        h.header_size = SHM_HEADER_SIZE
        h.payload_size = <uint64_t>size
        h.creator_pid = _self_pid
        # Magic last, after a release fence: an attacher that sees it sees the whole header.
        gw_shm_release_fence()
        gw_atomic_store_u64(&h.magic, SHM_MAGIC)

    cdef _create_named(self, str name, Py_ssize_t size):
        # The file is built under a temporary name and published complete: created, locked,
        # sized, mapped and given its header there, then hard-linked to /dev/shm/<name>. link()
        # is atomic and fails with EEXIST when the name exists, so it is O_EXCL's "first creator
        # wins" without O_EXCL's window (an empty file under the final name, which an attacher
        # racing the creator's ftruncate refused as "too small"). The temporary name starts with
        # '.', which _valid_name refuses, so no one can attach to a file that is not finished.
        path = os.path.join(SHM_DIR, name)
        for _ in range(_OPEN_ATTEMPTS):
            tmp = os.path.join(SHM_DIR, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(8)}")
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                if self._build_and_link(fd, tmp, path, size):
                    self._lock_fd = fd
                    fd = -1
                    self.name = name
                    self.path = path
                    return
            finally:
                if fd >= 0:
                    os.close(fd)
                _unlink_quietly(tmp)
        raise OSError(f"{path}: could not publish a segment in {_OPEN_ATTEMPTS} attempts "
                      f"(its temporary files kept being removed)")

    cdef bint _build_and_link(self, int fd, str tmp, str path, Py_ssize_t size) except -1:
        # False when remove_orphans() took the fresh temporary file in the instant between its
        # creation and our flock (it was lock-free then): the caller tries a new one.
        cdef size_t total = SHM_HEADER_SIZE + <size_t>size
        cdef void* p
        try:
            # The creator's lock, for as long as this object is open: it is what tells
            # remove_orphans() that the segment's instance is alive (see the module docstring).
            # Taken before the link, so the published name never shows an unlocked file.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        os.ftruncate(fd, total)
        p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if p == MAP_FAILED:
            raise OSError(errno, f"mmap of {tmp} failed")
        self._adopt(p, total, size)
        try:
            os.link(tmp, path)          # FileExistsError: another creator published first
        except FileNotFoundError:
            self._unmap()               # removed before our flock: start over
            return False
        except BaseException:
            self._unmap()
            raise
        st = os.fstat(fd)
        self._file_id = (st.st_dev, st.st_ino)
        return True

    cdef void _unmap(self) noexcept:
        if self._map != NULL:
            munmap(self._map, self._map_size)
            self._map = NULL
            self.base = NULL

    @classmethod
    def attach(cls, name: str, size: int | None = None, timeout: float = 1.0) -> SharedSegment:
        """Map an existing named segment. ValueError if its header or size does not match, or if
        it is still unfinished (too small, or no magic) after ``timeout`` seconds."""
        path = os.path.join(SHM_DIR, _valid_name(name))
        cdef SharedSegment seg = SharedSegment.__new__(SharedSegment)
        cdef int fd = os.open(path, os.O_RDWR)
        cdef void* p
        cdef size_t total
        try:
            total = _wait_finished(fd, path, timeout)
            st = os.fstat(fd)
            seg._file_id = (st.st_dev, st.st_ino)
            p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
            if p == MAP_FAILED:
                raise OSError(errno, f"mmap of {path} failed")
        finally:
            os.close(fd)
        seg._map = <unsigned char*>p
        seg._map_size = total
        seg.name = name
        seg.path = path
        cdef shm_header* h = <shm_header*>p
        if gw_atomic_load_u64(&h.magic) != SHM_MAGIC:
            seg.close()
            raise ValueError(f"{path} is not a gateway shared segment (bad magic)")
        gw_shm_acquire_fence()      # pairs with the creator's release: the fields below are whole
        if h.version != SHM_VERSION or h.header_size != SHM_HEADER_SIZE:
            v, hs = h.version, h.header_size
            seg.close()
            raise ValueError(f"{path}: segment version {v}/header {hs}, this code expects "
                             f"{SHM_VERSION}/{SHM_HEADER_SIZE}")
        if h.payload_size + SHM_HEADER_SIZE != total:
            ps = h.payload_size
            seg.close()
            raise ValueError(f"{path}: header says {ps} payload bytes but the file holds {total}")
        if size is not None and <uint64_t>size != h.payload_size:
            ps = h.payload_size
            seg.close()
            raise ValueError(f"{path}: segment holds {ps} bytes, expected {size}")
        seg.base = seg._map + SHM_HEADER_SIZE
        seg.size = <Py_ssize_t>h.payload_size
        return seg

    @classmethod
    def open(cls, name: str, size: int, timeout: float = 1.0) -> SharedSegment:
        """Create the named segment, or attach to it (same size required) if it already exists.

        A file left unfinished by a creator that died (still too small, or without magic, after
        ``timeout`` seconds) is removed and a fresh segment made in its place; a file with
        another magic or version is someone else's: ValueError, and it is left alone.
        """
        path = os.path.join(SHM_DIR, _valid_name(name))
        last = None
        for _ in range(_OPEN_ATTEMPTS):
            try:
                return SharedSegment(size, name)
            except FileExistsError:
                pass
            try:
                return SharedSegment.attach(name, size, timeout)
            except FileNotFoundError:
                continue        # removed since our create failed: create it ourselves
            except _Unfinished as e:
                # Deletes only the very file inspected, and only when no creator holds it;
                # otherwise someone else recovered it meanwhile: look again either way.
                _remove_stale(path, e.dev, e.ino)
                last = e
        raise ValueError(f"{path}: no usable segment after {_OPEN_ATTEMPTS} attempts "
                         f"(other processes keep replacing it?)") from last

    cdef int _check_open(self) except -1:
        if self._map == NULL:
            raise ValueError("shared segment is closed")
        return 0

    @property
    def closed(self) -> bool:
        return self._map == NULL

    @property
    def owner(self) -> bool:
        """True while this object is the open creator of a named segment, holding its lock."""
        return self._lock_fd >= 0

    @property
    def creator_pid(self) -> int:
        self._check_open()
        return (<shm_header*>self._map).creator_pid

    def close(self) -> None:
        """Unmap (this process only). BufferError while a table or memoryview still uses it.

        The creator also gives up its lock here: from then on remove_orphans() may delete the
        file (a fork()ed copy of the creator shares that lock until it closes or exits too)."""
        if self._exports > 0:
            raise BufferError(f"shared segment has {self._exports} live buffer export(s)")
        self._unmap()
        self._release_lock()

    cdef void _release_lock(self) noexcept:
        # Closing the descriptor, never flock(LOCK_UN): a fork()ed child shares the creator's
        # open file description, and an unlock through it would drop the lock for the parent.
        if self._lock_fd >= 0:
            close(self._lock_fd)
            self._lock_fd = -1

    def unlink(self) -> None:
        """Remove the /dev/shm name if it still names this segment's file (mappings stay valid
        until closed). No-op when anonymous, or when the name now holds another segment."""
        if self.path is None:
            return
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._file_id:
            _unlink_quietly(self.path)

    @classmethod
    def remove_orphans(cls, prefix: str) -> list[str]:
        """Delete the segments under /dev/shm whose names start with ``prefix`` and whose creator
        no longer holds them (dead, or closed them), and the temporary files of creators that
        died before publishing (``.<prefix>....tmp-...``). Returns the names removed, sorted.

        For a start-up that never reuses a segment: each start creates its segments under fresh
        names beginning with a prefix of the product's, after removing those of dead instances.
        A segment whose creator is alive (its lock held) is left alone, whoever else maps it.
        """
        _valid_name(prefix)
        removed = []
        for entry in os.scandir(SHM_DIR):
            name = entry.name
            if not (name.startswith(prefix)
                    or (name.startswith("." + prefix) and ".tmp-" in name)):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
                if _remove_stale(entry.path, st.st_dev, st.st_ino):
                    removed.append(name)
            except (FileNotFoundError, PermissionError):
                continue        # gone meanwhile, or not ours to judge
        return sorted(removed)

    def __enter__(self) -> SharedSegment:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.size if self._map != NULL else 0

    def __getbuffer__(self, Py_buffer* view, int flags):
        self._check_open()
        PyBuffer_FillInfo(view, self, self.base, self.size, 0, flags)
        self._exports += 1

    def __releasebuffer__(self, Py_buffer* view):
        self._exports -= 1

    def __dealloc__(self):
        # Exports hold a reference to self, so none can be live here.
        self._unmap()
        self._release_lock()

    def __repr__(self) -> str:
        where = "anonymous" if self.name is None else self.path
        state = "closed" if self._map == NULL else f"{self.size} bytes"
        return f"<SharedSegment {where} {state}>"


# Test and diagnostics hooks for the owner-aware lock: operate on a uint32 word at `offset` in a
# segment's payload (tests kill a process holding one and check that a waiter breaks it).
def _lock_word(SharedSegment seg, Py_ssize_t offset) -> None:
    seg._check_open()
    if offset < 0 or offset % 4 or offset + 4 > seg.size:
        raise ValueError("offset must be 4-byte aligned and inside the segment")
    with nogil:
        shm_lock(<uint32_t*>(seg.base + offset), _self_pid)


def _unlock_word(SharedSegment seg, Py_ssize_t offset) -> None:
    seg._check_open()
    if offset < 0 or offset % 4 or offset + 4 > seg.size:
        raise ValueError("offset must be 4-byte aligned and inside the segment")
    shm_unlock(<uint32_t*>(seg.base + offset))


def _word_owner(SharedSegment seg, Py_ssize_t offset) -> int:
    seg._check_open()
    if offset < 0 or offset % 4 or offset + 4 > seg.size:
        raise ValueError("offset must be 4-byte aligned and inside the segment")
    return gw_atomic_load_u32(<uint32_t*>(seg.base + offset))
