"""Node-wide shared memory: one segment, every shared object placed in it by name.

With GATEWAY_WORKERS > 1 the supervisor creates the node's segment (``NodeMemory.create``) before it
starts workers; each worker, and each replacement, maps it by name (``NodeMemory.attach``) and asks
for its objects by name (``place("breaker/<service>/<url>", SHM_SIZE, holder)``): every worker and
every reload gets the same bytes. With one worker the same code runs on a private anonymous mapping
(``NodeMemory.private``). Placing is a config-load / reload / admin-time operation, never per
request: plain Python over a memoryview, under one lock.

Decisions, and why:

- **Everything is in the segment** (header, directory, allocator metadata, payload): a worker
  spawned later (workers are exec'd, not forked) finds every object by name, with no side channel.
- **Holders** are a 64-bit mask per object: bit i for worker i (0..61), bit 62 (``SUPERVISOR``)
  for the supervisor / control plane, bit 63 unused. A mask costs one word per object and makes
  "who still uses this" one AND; it caps shared-memory workers at 62 (ValueError beyond).
- **Deferred free.** An object nobody holds is *quarantined* for ``grace`` seconds (default 60,
  fixed at create time and stored in the header so every process applies the same one) before its
  bytes can be reused: a worker that reloaded may still finish in-flight requests on its old
  runtime and write to an object it just released. 60 s covers the default upstream timeout (30 s)
  with room; a node with longer requests should pass ``max(60, upstream_timeout * tries)``.
  Placing a quarantined name again (same size and kind) revives it with its bytes intact, so a
  target removed and re-added within the grace keeps its breaker state. Time comes from
  ``clock`` (default ``time.monotonic``: CLOCK_MONOTONIC is system-wide, so every process of the
  node agrees); tests inject a fake clock.
- **Reuse: size classes for small objects, first fit with coalescing for large ones.** The
  workload is many small fixed-size objects (768-byte breakers, counter arrays of tens of bytes)
  and a few large limiter tables of MBs. Objects up to 64 KiB get a class size (64 x 1, 2, 3, 4,
  6, 8, 12, ... up to 64 KiB: every class a multiple of 64, at most 1/3 of a block wasted; a
  breaker fits its 768-byte class exactly) and a freed one goes to its class's free list, so the
  next object of that class takes it in O(1) and small holes never splinter the heap. Larger ones
  are rounded to 4 KiB and taken first-fit from an address-ordered free list that coalesces
  neighbours on free. Fragmentation stays bounded: a class list only holds what that class once
  used, and when an allocation finds no room, every class list is flushed back into the
  address-ordered list (merging neighbours) before ``SharedMemoryFull`` is raised, so a reload
  that swaps 5,000 breakers for 5,000 counters is not refused for memory parked in the wrong class.
- **Directory**: a fixed array of 128-byte entries, one per ``BYTES_PER_ENTRY`` (2 KiB) of segment
  (min 64; or ``max_objects``), 32,768 for the default 64 MiB: 4 MiB, 6 % of the segment. It counts
  live and quarantined objects. Lookups go through an open-addressed index of uint32 slots (a power
  of two >= 2 x entries, so at most half full; linear probing, backward-shift deletion, no
  tombstones) keyed by xxh64 of the UTF-8 name. A name of up to 40 bytes is stored whole in its
  entry; a longer one (up to 1,024 bytes) keeps its first 40 bytes there and its full text in a
  small block of the payload, so a lookup compares hash, length and the *whole* name: two names
  never collide silently, and ``names()`` returns every name exactly.
- **One lock** word in the header (``gateway._fast.shm``'s owner-pid lock: a holder that dies is
  detected and the lock broken), plus a ``dirty`` word set to the holder's pid for the time of a
  change. Whoever takes the lock and finds ``dirty`` set knows the previous holder died (or raised)
  half-way, and rebuilds every derived structure (index, quarantine list, free lists, counters)
  from the directory entries, which are the source of truth and whose ``state`` word is written
  last. Live and quarantined bytes are never moved or touched by a repair. A directory that is
  inconsistent in itself (overlapping blocks, impossible fields) raises ``NodeMemoryCorrupt``.
- **Out of space** (payload or directory) is ``SharedMemoryFull`` from ``place()``, i.e. at start or
  reload, naming the object, its size, the free space and GATEWAY_SHM_SIZE. Nothing is changed.
- **Layout versioning**: the header starts with ``MAGIC`` and ``LAYOUT_VERSION``; a mapping whose
  header does not match is refused (``LayoutMismatch``) so a worker of another build never
  misreads it.
- **Bounds**: every walk (index probe, free lists, quarantine list, directory scan) is bounded by
  the structure's capacity and validates each link; corrupted metadata raises, never loops.
- **Zero-filling**: a new object's bytes are zeroed, except those above a high-water mark
  (``zero_hw``) that no object or free-list header has ever touched: the segment starts zeroed, so
  a fresh 10 MB table costs no memset and commits no pages until used.

Layout (offsets from the segment's payload start, which is 64-byte aligned):

    0     header, 512 bytes (H_* below)
    512   index: islots x uint32 (entry number + 1; 0 = empty)
    ...   entries: capacity x 128 bytes (64-aligned)
    ...   payload heap (64-aligned) up to the segment size rounded down to 64

    entry: 0 hash u64 | 8 offset u64 | 16 size u64 (asked) | 24 block u64 (allocated) |
           32 holders u64 | 40 freed_at f64 | 48 name_off u64 (long names, else 0) |
           56 state u32 (0 free, 1 live, 2 quarantined) | 60 name_len u32 |
           64 q_prev u32 | 68 q_next u32 (also the free-entry list) | 72 kind 16 bytes |
           88 name (first 40 bytes)
    free block (in the block itself): tag u64 (FREE_TAG << 32 | class, HEAP_CLASS for the
           address-ordered list) | size u64 | next u64

Cost: placing 10,000 new 768-byte objects takes about 0.2 s on this machine (see
tests/state/test_memory.py::test_placing_ten_thousand_objects_is_fast).
"""
from __future__ import annotations

import bisect
import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from gateway._fast.hashing import xxh64
from gateway._fast.shm import SharedSegment, _lock_word, _unlock_word

log = logging.getLogger("gateway.state.memory")

MAGIC = 0x4D4D45444F4E5747          # b"GWNODEMM" read as a little-endian uint64
LAYOUT_VERSION = 1
HEADER_BYTES = 512
ENTRY_BYTES = 128
ALIGN = 64
NAME_INLINE = 40
NAME_MAX = 1024
KIND_MAX = 16
BYTES_PER_ENTRY = 2048
MIN_ENTRIES = 64
MAX_ENTRIES = 1 << 24
SUPERVISOR = 62
MAX_WORKERS = 62
DEFAULT_GRACE = 60.0
SMALL_MAX = 64 << 10
LARGE_ROUND = 4096
# 64, then every power of two from 128 and 1.5 times it: 64, 128, 192, 256, 384, ... 49152, 65536.
SIZE_CLASSES = tuple(sorted({64} | {c for k in range(7, 17) for c in (1 << k, 3 << (k - 1))
                                    if c <= SMALL_MAX}))
HEAP_CLASS = 0xFFFFFFFF
FREE_TAG = 0x46524545                           # "FREE"

FREE, LIVE, QUARANTINED = 0, 1, 2

# Header words: byte offset // 4 (u32), // 8 (u64 / f64).
I_LOCK_BYTE = 16                    # the allocator lock word, as a byte offset for _lock_word
W_MAGIC, W_AREA, W_INDEX, W_ENTRIES, W_HEAP, W_HEAP_END = 0, 3, 5, 6, 7, 8
W_GRACE, W_USED, W_QBYTES, W_HEAP_HEAD, W_ZERO_HW, W_GEN = 9, 10, 11, 15, 16, 17
W_CLASS_HEAD = 32                   # byte 256: one u64 per size class
I_VERSION, I_HEADER, I_DIRTY, I_CAP, I_ISLOTS = 2, 3, 5, 8, 9
I_OBJECTS, I_NQUAR, I_HW, I_FREE_ENTRY, I_QHEAD, I_QTAIL = 24, 25, 26, 27, 28, 29
I_REPAIRS, I_NCLASSES = 36, 37
I_CLASS_COUNT = 104                 # byte 416: one u32 per size class (ends at byte 496)
assert I_CLASS_COUNT * 4 >= (W_CLASS_HEAD + len(SIZE_CLASSES)) * 8
assert (I_CLASS_COUNT + len(SIZE_CLASSES)) * 4 <= HEADER_BYTES

# Entry fields: index into the entry's 16 u64 words / 32 u32 words.
E_HASH, E_OFF, E_SIZE, E_BLOCK, E_HOLDERS, E_FREED, E_NAME_OFF = 0, 1, 2, 3, 4, 5, 6
E_STATE, E_NAME_LEN, E_QPREV, E_QNEXT = 14, 15, 16, 17
KIND_AT, NAME_AT = 72, 88


class SharedMemoryFull(Exception):
    """An object does not fit (payload or directory): raised by place(), at start or reload."""

    def __init__(self, message: str, *, name: str, size: int, free: int, segment_size: int) -> None:
        super().__init__(message)
        self.name = name
        self.size = size
        self.free = free
        self.segment_size = segment_size


class LayoutMismatch(ValueError):
    """The segment was not laid out by this build's NodeMemory (magic, version or size)."""


class NodeMemoryCorrupt(RuntimeError):
    """The segment's metadata is inconsistent (a bounded walk found a cycle, a bad link, ...)."""


class ObjectInfo(NamedTuple):
    name: str
    offset: int         # from the segment's payload start; 64-byte aligned
    size: int
    block: int          # bytes reserved for it (its size class)
    kind: str
    holders: int        # bit mask
    quarantined: bool
    freed_at: float     # quarantine start (clock seconds), 0.0 when live


def block_size(size: int) -> int:
    """Bytes reserved for an object of `size` bytes: its size class, or 4 KiB-rounded above 64 KiB."""
    if size <= SMALL_MAX:
        return SIZE_CLASSES[bisect.bisect_left(SIZE_CLASSES, size)]
    return -(-size // LARGE_ROUND) * LARGE_ROUND


def _class_of(block: int) -> int:
    return bisect.bisect_left(SIZE_CLASSES, block)


def _fmt_size(n: int) -> str:
    # GATEWAY_SHM_SIZE's own syntax, so the operator can copy it.
    for shift, unit in ((30, "g"), (20, "m"), (10, "k")):
        if n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def _layout(size: int, max_objects: int | None) -> tuple[int, int, int, int, int, int]:
    """(capacity, islots, index_off, entries_off, heap_off, heap_end) for a segment of `size`."""
    cap = max_objects if max_objects is not None else max(MIN_ENTRIES, size // BYTES_PER_ENTRY)
    if not 1 <= cap <= MAX_ENTRIES:
        raise ValueError(f"max_objects must be in [1, {MAX_ENTRIES}], got {cap}")
    islots = 1
    while islots < 2 * cap:
        islots <<= 1
    index_off = HEADER_BYTES
    entries_off = -(-(index_off + 4 * islots) // ALIGN) * ALIGN
    heap_off = entries_off + cap * ENTRY_BYTES
    heap_end = size // ALIGN * ALIGN
    if heap_end - heap_off < 4 * ALIGN:
        raise ValueError(f"a segment of {size} bytes cannot hold a directory of {cap} entries "
                         f"({heap_off} bytes) and a payload")
    return cap, islots, index_off, entries_off, heap_off, heap_end


class NodeMemory:
    """The node's shared objects, placed by name in one segment (see the module docstring)."""

    def __init__(self, seg: SharedSegment, *, clock: Callable[[], float] = time.monotonic,
                 _init: tuple[int | None, float] | None = None, timeout: float = 1.0) -> None:
        """Use create(), attach() or private()."""
        self._seg = seg
        self.name: str | None = seg.name
        self._clock = clock
        self._tlock = threading.Lock()      # threads of one process: the word holds the pid only
        self._fault: Callable[[str], None] | None = None    # test hook: crash at a named step
        self._closed = False
        v = self._view = memoryview(seg)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(v))
        if addr % ALIGN:
            raise ValueError(f"segment payload at {addr:#x} is not {ALIGN}-byte aligned")
        if len(v) < HEADER_BYTES:
            raise LayoutMismatch(f"segment of {len(v)} bytes is too small for a node memory header")
        self._h64 = v[:HEADER_BYTES].cast("Q")
        self._h32 = v[:HEADER_BYTES].cast("I")
        self._hd = v[:HEADER_BYTES].cast("d")
        if _init is not None:
            self._write_header(*_init)
        else:
            self._check_header(timeout)
        h32, h64 = self._h32, self._h64
        self._cap, self._islots = h32[I_CAP], h32[I_ISLOTS]
        self._heap_off, self._heap_end = h64[W_HEAP], h64[W_HEAP_END]
        eo = self._entries_off = h64[W_ENTRIES]
        self._idx = v[HEADER_BYTES:HEADER_BYTES + 4 * self._islots].cast("I")
        self._e64 = v[eo:eo + self._cap * ENTRY_BYTES].cast("Q")
        self._e32 = v[eo:eo + self._cap * ENTRY_BYTES].cast("I")
        self._ed = v[eo:eo + self._cap * ENTRY_BYTES].cast("d")
        self._p64 = v[:self._heap_end].cast("Q")
        self.grace: float = self._hd[W_GRACE]
        if _init is not None:
            # The mapping is fresh (zeroed): index, entries and counters are already empty. The
            # whole heap is one free block, whose header is the only heap byte ever written.
            h64[W_ZERO_HW] = self._heap_off
            self._write_free(self._heap_off, self._heap_end - self._heap_off, HEAP_CLASS, 0)
            h64[W_HEAP_HEAD] = self._heap_off
            h64[W_MAGIC] = MAGIC            # last: an attacher that sees it sees the whole layout

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def create(cls, size: int, name: str, *, grace: float = DEFAULT_GRACE,
               max_objects: int | None = None,
               clock: Callable[[], float] = time.monotonic) -> NodeMemory:
        """Supervisor: a new named segment of `size` payload bytes (FileExistsError if it exists)."""
        _layout(size, max_objects)           # refuse before creating a file
        seg = SharedSegment(size, name=name)
        try:
            return cls(seg, clock=clock, _init=(max_objects, grace))
        except BaseException:
            seg.unlink()
            raise

    @classmethod
    def attach(cls, name: str, *, clock: Callable[[], float] = time.monotonic,
               timeout: float = 1.0) -> NodeMemory:
        """Worker: map the node's segment by name. LayoutMismatch if another build laid it out."""
        try:
            seg = SharedSegment.attach(name)
        except ValueError as exc:
            raise LayoutMismatch(str(exc)) from exc
        return cls(seg, clock=clock, timeout=timeout)

    @classmethod
    def private(cls, size: int, *, grace: float = DEFAULT_GRACE, max_objects: int | None = None,
                clock: Callable[[], float] = time.monotonic) -> NodeMemory:
        """One worker: the same layout on an anonymous mapping (shared only with fork()ed children)."""
        _layout(size, max_objects)
        return cls(SharedSegment(size), clock=clock, _init=(max_objects, grace))

    def _write_header(self, max_objects: int | None, grace: float) -> None:
        if not 0 <= grace < float("inf"):
            raise ValueError(f"grace must be a finite number of seconds >= 0, got {grace!r}")
        cap, islots, index_off, entries_off, heap_off, heap_end = _layout(len(self._view), max_objects)
        h32, h64 = self._h32, self._h64
        h32[I_VERSION], h32[I_HEADER] = LAYOUT_VERSION, HEADER_BYTES
        h64[W_AREA] = len(self._view)
        h32[I_CAP], h32[I_ISLOTS] = cap, islots
        h64[W_INDEX], h64[W_ENTRIES], h64[W_HEAP], h64[W_HEAP_END] = index_off, entries_off, heap_off, heap_end
        self._hd[W_GRACE] = grace
        h32[I_NCLASSES] = len(SIZE_CLASSES)

    def _check_header(self, timeout: float) -> None:
        h32, h64 = self._h32, self._h64
        where = self.name or "anonymous segment"
        deadline = time.monotonic() + timeout
        while h64[W_MAGIC] == 0 and time.monotonic() < deadline:
            time.sleep(0.001)              # the creator is still laying it out
        if h64[W_MAGIC] != MAGIC:
            raise LayoutMismatch(f"{where} is not a gateway node memory segment (bad magic "
                                 f"{h64[W_MAGIC]:#x}; uninitialised, or another program's)")
        if h32[I_VERSION] != LAYOUT_VERSION or h32[I_HEADER] != HEADER_BYTES:
            raise LayoutMismatch(
                f"{where}: node memory layout version {h32[I_VERSION]} (header {h32[I_HEADER]} "
                f"bytes), this build reads version {LAYOUT_VERSION} ({HEADER_BYTES}): a worker of "
                f"another build must not misread it; restart the node with one build")
        if h64[W_AREA] != len(self._view) or h32[I_NCLASSES] != len(SIZE_CLASSES):
            raise LayoutMismatch(f"{where}: header describes {h64[W_AREA]} bytes and "
                                 f"{h32[I_NCLASSES]} size classes, the segment holds "
                                 f"{len(self._view)} and this build has {len(SIZE_CLASSES)}")
        want = _layout(len(self._view), h32[I_CAP])
        have = (h32[I_CAP], h32[I_ISLOTS], h64[W_INDEX], h64[W_ENTRIES], h64[W_HEAP], h64[W_HEAP_END])
        if want != have:
            raise LayoutMismatch(f"{where}: directory layout {have} does not match {want}")

    # -- locking ---------------------------------------------------------------------------------

    def _acquire(self, now: float) -> None:
        if self._closed:
            raise ValueError("node memory is closed")
        self._tlock.acquire()
        try:
            _lock_word(self._seg, I_LOCK_BYTE)
            try:
                if self._h32[I_DIRTY]:
                    self._repair(now)       # the previous holder died (or raised) mid-change
                self._h32[I_DIRTY] = os.getpid()
                self._reclaim(now)
            except BaseException:
                _unlock_word(self._seg, I_LOCK_BYTE)
                raise
        except BaseException:
            self._tlock.release()
            raise

    def _release(self, clean: bool) -> None:
        # An unexpected exception leaves `dirty` set: the next holder rebuilds the metadata.
        if clean:
            self._h64[W_GEN] += 1
            self._h32[I_DIRTY] = 0
        _unlock_word(self._seg, I_LOCK_BYTE)
        self._tlock.release()

    def _at(self, step: str) -> None:
        if self._fault is not None:
            self._fault(step)

    # -- public API ------------------------------------------------------------------------------

    def place(self, name: str, size: int, holder: int, *, kind: str = "") -> memoryview:
        """The object's bytes (zeroed the first time the name is placed); marks `holder` a user.

        The same bytes for every process asking the same name with the same size and kind;
        ValueError for another size or kind (a layout change needs a new name), also while the
        name is quarantined. SharedMemoryFull if it does not fit.
        """
        nb = self._name_bytes(name)
        kb = kind.encode()
        if len(kb) > KIND_MAX or "\0" in kind:
            raise ValueError(f"kind {kind!r} must be at most {KIND_MAX} bytes without NUL")
        if not 1 <= size <= self._heap_end:
            raise ValueError(f"size of {name!r} must be in [1, {self._heap_end}], got {size}")
        bit = self._bit(holder)
        h = xxh64(nb) or 1
        now = self._clock()
        self._acquire(now)
        clean = False
        try:
            off = self._place_locked(name, nb, h, size, kb, bit, now)
            clean = True
        except (ValueError, SharedMemoryFull):
            clean = True                    # refused before anything changed
            raise
        finally:
            self._release(clean)
        return self._view[off:off + size]

    def sync_holder(self, holder: int, names: Iterable[str]) -> list[str]:
        """After a reload: `holder` now uses exactly `names`. Releases the others it held and
        returns them (sorted). Names it does not hold are ignored: place() is what takes one."""
        keep = set(names)
        return self._release_where(self._bit(holder), keep.__contains__)

    def drop_holder(self, holder: int) -> list[str]:
        """Worker `holder` died: release everything it held (before its replacement starts)."""
        return self._release_where(self._bit(holder), lambda name: False)

    def stats(self) -> dict[str, int | float]:
        """total/used/free/quarantined payload bytes (used + free + quarantined == total),
        objects, quarantined_objects, largest_free, directory_capacity, segment_size, grace,
        repairs."""
        now = self._clock()
        self._acquire(now)
        clean = False
        try:
            h32, h64 = self._h32, self._h64
            largest = max((s for _, s in self._free_blocks()), default=0)
            total = self._heap_end - self._heap_off
            out: dict[str, int | float] = {
                "total": total, "used": h64[W_USED], "quarantined": h64[W_QBYTES],
                "free": total - h64[W_USED] - h64[W_QBYTES], "objects": h32[I_OBJECTS],
                "quarantined_objects": h32[I_NQUAR], "largest_free": largest,
                "directory_capacity": self._cap, "segment_size": len(self._view),
                "grace": self.grace, "repairs": h32[I_REPAIRS],
            }
            clean = True
            return out
        finally:
            self._release(clean)

    def names(self, *, quarantined: bool = False) -> list[str]:
        """Names of live objects (and of quarantined ones with quarantined=True), sorted."""
        return sorted(i.name for i in self.objects() if quarantined or not i.quarantined)

    def objects(self) -> list[ObjectInfo]:
        """Every live and quarantined object, in directory order (admin view)."""
        now = self._clock()
        self._acquire(now)
        clean = False
        try:
            out = [self._info(e) for e in range(self._h32[I_HW]) if self._e32[e * 32 + E_STATE]]
            clean = True
            return out
        finally:
            self._release(clean)

    def info(self, name: str) -> ObjectInfo | None:
        """The object placed under `name` (live or quarantined), or None."""
        nb = self._name_bytes(name)
        now = self._clock()
        self._acquire(now)
        clean = False
        try:
            _, e = self._lookup(xxh64(nb) or 1, nb)
            out = self._info(e) if e >= 0 else None
            clean = True
            return out
        finally:
            self._release(clean)

    def close(self) -> None:
        """Unmap (this process). BufferError while a placed object's view (or anything built on
        one, such as a breaker) is still alive; call again once they are gone."""
        if not self._closed:
            self._closed = True
            for v in (self._h64, self._h32, self._hd, self._idx, self._e64, self._e32, self._ed,
                      self._p64, self._view):
                v.release()
        self._seg.close()

    def unlink(self) -> None:
        """Remove the segment's name (supervisor, at exit); mappings stay valid. No-op if private."""
        self._seg.unlink()

    def __repr__(self) -> str:
        return f"<NodeMemory {self.name or 'private'} {len(self._view)} bytes>"

    # -- directory -------------------------------------------------------------------------------

    @staticmethod
    def _name_bytes(name: str) -> bytes:
        if not isinstance(name, str) or not name:
            raise ValueError(f"object name must be a non-empty str, got {name!r}")
        nb = name.encode()
        if len(nb) > NAME_MAX:
            raise ValueError(f"object name longer than {NAME_MAX} bytes: {name[:60]!r}...")
        return nb

    @staticmethod
    def _bit(holder: int) -> int:
        if not 0 <= holder <= SUPERVISOR:
            raise ValueError(f"holder must be a worker index 0..{MAX_WORKERS - 1} or SUPERVISOR "
                             f"({SUPERVISOR}), got {holder}")
        return 1 << holder

    def _corrupt(self, what: str) -> NodeMemoryCorrupt:
        return NodeMemoryCorrupt(f"node memory {self.name or 'private'}: {what}")

    def _name_eq(self, e: int, nb: bytes) -> bool:
        n = len(nb)
        if self._e32[e * 32 + E_NAME_LEN] != n:
            return False
        at = self._entries_off + e * ENTRY_BYTES + NAME_AT
        if self._view[at:at + min(n, NAME_INLINE)] != nb[:NAME_INLINE]:
            return False
        if n <= NAME_INLINE:
            return True
        o = self._e64[e * 16 + E_NAME_OFF]
        return self._view[o:o + n] == nb

    def _entry_name(self, e: int) -> str:
        n = self._e32[e * 32 + E_NAME_LEN]
        if n > NAME_INLINE:
            o = self._e64[e * 16 + E_NAME_OFF]
            return bytes(self._view[o:o + n]).decode()
        at = self._entries_off + e * ENTRY_BYTES + NAME_AT
        return bytes(self._view[at:at + n]).decode()

    def _entry_kind(self, e: int) -> bytes:
        at = self._entries_off + e * ENTRY_BYTES + KIND_AT
        return bytes(self._view[at:at + KIND_MAX]).rstrip(b"\0")

    def _info(self, e: int) -> ObjectInfo:
        b = e * 16
        return ObjectInfo(self._entry_name(e), self._e64[b + E_OFF], self._e64[b + E_SIZE],
                          self._e64[b + E_BLOCK], self._entry_kind(e).decode(),
                          self._e64[b + E_HOLDERS], self._e32[e * 32 + E_STATE] == QUARANTINED,
                          self._ed[b + E_FREED])

    def _lookup(self, h: int, nb: bytes) -> tuple[int, int]:
        """(index slot, entry) of the name, or (the empty slot where it would go, -1)."""
        idx, e64, mask, hw = self._idx, self._e64, self._islots - 1, self._h32[I_HW]
        i = h & mask
        for _ in range(self._islots):
            v = idx[i]
            if v == 0:
                return i, -1
            e = v - 1
            if e >= hw:
                raise self._corrupt(f"index slot {i} points at entry {e} beyond {hw} used")
            if e64[e * 16] == h and self._name_eq(e, nb):
                return i, e
            i = (i + 1) & mask
        raise self._corrupt("the directory index has no empty slot")

    def _index_remove(self, e: int) -> None:
        idx, e64, mask = self._idx, self._e64, self._islots - 1
        i = e64[e * 16] & mask
        for _ in range(self._islots):
            if idx[i] == e + 1:
                break
            if idx[i] == 0:
                raise self._corrupt(f"entry {e} is missing from the index")
            i = (i + 1) & mask
        else:
            raise self._corrupt(f"entry {e} is missing from the index")
        # Backward-shift deletion: pull later members of the probe run into the hole, so lookups
        # never need tombstones and the index never fills with dead slots.
        j = i
        for _ in range(self._islots):
            j = (j + 1) & mask
            v = idx[j]
            if v == 0:
                break
            k = e64[(v - 1) * 16] & mask      # home slot of the entry at j
            if (i <= j and i < k <= j) or (i > j and (k > i or k <= j)):
                continue                      # its home lies after the hole: it stays
            idx[i] = v
            self._at("shift")
            i = j
        idx[i] = 0

    def _new_entry(self) -> int:
        h32 = self._h32
        head = h32[I_FREE_ENTRY]
        if head:
            e = head - 1
            if e >= h32[I_HW] or self._e32[e * 32 + E_STATE] != FREE:
                raise self._corrupt(f"free-entry list points at entry {e}, which is not free")
            h32[I_FREE_ENTRY] = self._e32[e * 32 + E_QNEXT]
            return e
        e = h32[I_HW]
        h32[I_HW] = e + 1
        return e

    def _place_locked(self, name: str, nb: bytes, h: int, size: int, kb: bytes, bit: int,
                      now: float) -> int:
        h32, h64, e64, e32 = self._h32, self._h64, self._e64, self._e32
        slot, e = self._lookup(h, nb)
        if e >= 0:
            b = e * 16
            if e64[b + E_SIZE] != size or self._entry_kind(e) != kb:
                state = "quarantined" if e32[e * 32 + E_STATE] == QUARANTINED else "live"
                raise ValueError(
                    f"{name!r} is already placed ({state}) with size {e64[b + E_SIZE]} and kind "
                    f"{self._entry_kind(e).decode()!r}, asked {size} and {kb.decode()!r}: a layout "
                    f"change needs a new name")
            if e32[e * 32 + E_STATE] == QUARANTINED:
                self._q_unlink(e)             # revive: its bytes are intact
                e64[b + E_HOLDERS] = bit
                e32[e * 32 + E_STATE] = LIVE
                blk = e64[b + E_BLOCK] + self._blob_size(e32[e * 32 + E_NAME_LEN])
                h64[W_QBYTES] -= blk
                h64[W_USED] += blk
                h32[I_NQUAR] -= 1
                h32[I_OBJECTS] += 1
            else:
                e64[b + E_HOLDERS] |= bit
            return e64[b + E_OFF]
        if h32[I_OBJECTS] + h32[I_NQUAR] >= self._cap:
            raise SharedMemoryFull(
                f"shared memory directory full: cannot place {name!r} ({size} bytes): all "
                f"{self._cap} entries in use ({h32[I_OBJECTS]} live, {h32[I_NQUAR]} quarantined "
                f"for up to {self.grace:g} s); raise GATEWAY_SHM_SIZE (now "
                f"{_fmt_size(len(self._view))}): the directory has one entry per "
                f"{BYTES_PER_ENTRY} bytes", name=name, size=size, free=self._free_bytes(),
                segment_size=len(self._view))
        block = block_size(size)
        blob = self._blob_size(len(nb))
        off = self._alloc(block, name, size)
        noff = 0
        if blob:
            try:
                noff = self._alloc(blob, name, size)
            except SharedMemoryFull:
                self._free_block(off, block)
                raise
            self._at("alloc")
            self._raise_zero_hw(noff + blob)  # before writing: a repair must never trust stale zeros
            self._view[noff:noff + len(nb)] = nb
        self._zero(off, block)
        self._raise_zero_hw(off + block)
        self._at("zero")
        e = self._new_entry()
        b = e * 16
        e64[b + E_HASH], e64[b + E_OFF], e64[b + E_SIZE], e64[b + E_BLOCK] = h, off, size, block
        e64[b + E_HOLDERS], e64[b + E_NAME_OFF] = bit, noff
        self._ed[b + E_FREED] = 0.0
        e32[e * 32 + E_NAME_LEN] = len(nb)
        at = self._entries_off + e * ENTRY_BYTES
        self._view[at + KIND_AT:at + ENTRY_BYTES] = (kb.ljust(KIND_MAX, b"\0")
                                                    + nb[:NAME_INLINE].ljust(NAME_INLINE, b"\0"))
        e32[e * 32 + E_STATE] = LIVE          # last: a repair trusts entries whose state is set
        self._at("entry")
        self._idx[slot] = e + 1
        h32[I_OBJECTS] += 1
        h64[W_USED] += block + blob
        return off

    @staticmethod
    def _blob_size(name_len: int) -> int:
        return block_size(name_len) if name_len > NAME_INLINE else 0

    # -- release, quarantine, reclaim ------------------------------------------------------------

    def _release_where(self, bit: int, keep: Callable[[str], bool]) -> list[str]:
        now = self._clock()
        self._acquire(now)
        clean = False
        try:
            released = []
            e64, e32 = self._e64, self._e32
            for e in range(self._h32[I_HW]):
                if e32[e * 32 + E_STATE] != LIVE or not e64[e * 16 + E_HOLDERS] & bit:
                    continue
                name = self._entry_name(e)
                if keep(name):
                    continue
                released.append(name)
                holders = e64[e * 16 + E_HOLDERS] & ~bit
                e64[e * 16 + E_HOLDERS] = holders
                if holders == 0:
                    self._at("release")
                    self._quarantine(e, now)
            clean = True
            return sorted(released)
        finally:
            self._release(clean)

    def _quarantine(self, e: int, now: float) -> None:
        h32, e32 = self._h32, self._e32
        self._ed[e * 16 + E_FREED] = now
        e32[e * 32 + E_STATE] = QUARANTINED
        e32[e * 32 + E_QNEXT] = 0
        tail = h32[I_QTAIL]
        e32[e * 32 + E_QPREV] = tail
        if tail:
            e32[(tail - 1) * 32 + E_QNEXT] = e + 1
        else:
            h32[I_QHEAD] = e + 1
        h32[I_QTAIL] = e + 1
        blk = self._e64[e * 16 + E_BLOCK] + self._blob_size(e32[e * 32 + E_NAME_LEN])
        self._h64[W_USED] -= blk
        self._h64[W_QBYTES] += blk
        h32[I_OBJECTS] -= 1
        h32[I_NQUAR] += 1

    def _q_unlink(self, e: int) -> None:
        h32, e32 = self._h32, self._e32
        prev, nxt = e32[e * 32 + E_QPREV], e32[e * 32 + E_QNEXT]
        if prev:
            e32[(prev - 1) * 32 + E_QNEXT] = nxt
        else:
            h32[I_QHEAD] = nxt
        if nxt:
            e32[(nxt - 1) * 32 + E_QPREV] = prev
        else:
            h32[I_QTAIL] = prev

    def _reclaim(self, now: float) -> None:
        """Free the quarantined objects whose grace has passed (FIFO: oldest first). A clock
        that went backwards only makes later entries wait longer, never shorter."""
        h32, e32, e64 = self._h32, self._e32, self._e64
        for _ in range(self._cap + 1):
            head = h32[I_QHEAD]
            if not head:
                return
            e = head - 1
            if e >= h32[I_HW] or e32[e * 32 + E_STATE] != QUARANTINED:
                raise self._corrupt(f"quarantine list points at entry {e}, which is not quarantined")
            if self._ed[e * 16 + E_FREED] + self.grace > now:
                return
            self._q_unlink(e)
            self._index_remove(e)
            b = e * 16
            off, block, nlen = e64[b + E_OFF], e64[b + E_BLOCK], e32[e * 32 + E_NAME_LEN]
            e32[e * 32 + E_STATE] = FREE
            self._at("reclaim")
            self._free_block(off, block)
            blob = self._blob_size(nlen)
            if blob:
                self._free_block(e64[b + E_NAME_OFF], blob)
            e32[e * 32 + E_QNEXT] = h32[I_FREE_ENTRY]
            h32[I_FREE_ENTRY] = e + 1
            h32[I_NQUAR] -= 1
            self._h64[W_QBYTES] -= block + blob
        raise self._corrupt("quarantine list is longer than the directory (cycle?)")

    # -- payload allocator -----------------------------------------------------------------------

    def _raise_zero_hw(self, end: int) -> None:
        if end > self._h64[W_ZERO_HW]:
            self._h64[W_ZERO_HW] = end

    def _zero(self, off: int, n: int) -> None:
        end = min(off + n, self._h64[W_ZERO_HW])
        while off < end:
            k = min(end - off, len(_ZEROS))
            self._view[off:off + k] = _ZEROS[:k]
            off += k

    def _write_free(self, off: int, size: int, cls: int, nxt: int) -> None:
        self._raise_zero_hw(off + ALIGN)      # before writing: a repair must never trust stale zeros
        p = off >> 3
        self._p64[p], self._p64[p + 1], self._p64[p + 2] = FREE_TAG << 32 | cls, size, nxt

    def _read_free(self, off: int, cls: int) -> tuple[int, int]:
        """(size, next) of the free block at `off`, validated."""
        if off % ALIGN or not self._heap_off <= off < self._heap_end:
            raise self._corrupt(f"free list link {off} is outside the payload or misaligned")
        p = off >> 3
        tag, size, nxt = self._p64[p], self._p64[p + 1], self._p64[p + 2]
        if tag != FREE_TAG << 32 | cls or size < ALIGN or size % ALIGN or off + size > self._heap_end:
            raise self._corrupt(f"free block at {off} has a bad header (tag {tag:#x}, size {size}): "
                                f"something wrote into freed memory")
        return size, nxt

    def _alloc(self, block: int, name: str, size: int) -> int:
        c = _class_of(block) if block <= SMALL_MAX else -1
        if c >= 0 and self._h32[I_CLASS_COUNT + c]:
            off = self._h64[W_CLASS_HEAD + c]
            _, nxt = self._read_free(off, c)
            self._h64[W_CLASS_HEAD + c] = nxt
            self._h32[I_CLASS_COUNT + c] -= 1
            return off
        off = self._heap_take(block)
        if off < 0 and any(self._h32[I_CLASS_COUNT:I_CLASS_COUNT + len(SIZE_CLASSES)]):
            self._flush_classes()
            off = self._heap_take(block)
        if off >= 0:
            return off
        free = self._free_bytes()
        largest = max((s for _, s in self._free_blocks()), default=0)
        raise SharedMemoryFull(
            f"shared memory full: cannot place {name!r} ({size} bytes, a {block}-byte block): "
            f"{free} bytes free, largest free block {largest}, {self._h64[W_QBYTES]} bytes "
            f"quarantined for up to {self.grace:g} s; raise GATEWAY_SHM_SIZE (now "
            f"{_fmt_size(len(self._view))})", name=name, size=size, free=free,
            segment_size=len(self._view))

    def _heap_take(self, n: int) -> int:
        """First fit in the address-ordered list, split from the front; -1 if nothing fits."""
        prev, off = 0, self._h64[W_HEAP_HEAD]
        for _ in range((self._heap_end - self._heap_off) // ALIGN + 1):
            if not off:
                return -1
            size, nxt = self._read_free(off, HEAP_CLASS)
            if nxt and nxt <= off + size:
                raise self._corrupt(f"free list is not address-ordered at {off} -> {nxt}")
            if size >= n:
                if size > n:
                    self._write_free(off + n, size - n, HEAP_CLASS, nxt)
                    nxt = off + n
                if prev:
                    self._p64[(prev >> 3) + 2] = nxt
                else:
                    self._h64[W_HEAP_HEAD] = nxt
                return off
            prev, off = off, nxt
        raise self._corrupt("free list is longer than the payload (cycle?)")

    def _free_block(self, off: int, n: int) -> None:
        if n <= SMALL_MAX:
            c = _class_of(n)
            self._write_free(off, n, c, self._h64[W_CLASS_HEAD + c])
            self._h64[W_CLASS_HEAD + c] = off
            self._h32[I_CLASS_COUNT + c] += 1
            return
        prev, cur = 0, self._h64[W_HEAP_HEAD]
        for _ in range((self._heap_end - self._heap_off) // ALIGN + 1):
            if not cur or cur > off:
                break
            size, nxt = self._read_free(cur, HEAP_CLASS)
            if cur + size > off:
                raise self._corrupt(f"block {off} overlaps free block {cur}+{size}")
            prev, cur = cur, nxt
        else:
            raise self._corrupt("free list is longer than the payload (cycle?)")
        if cur and off + n > cur:
            raise self._corrupt(f"block {off}+{n} overlaps free block {cur}")
        if cur and off + n == cur:            # merge with the next free block
            size, cur = self._read_free(cur, HEAP_CLASS)
            n += size
        if prev:
            psize, _ = self._read_free(prev, HEAP_CLASS)
            if prev + psize == off:           # merge into the previous one
                self._write_free(prev, psize + n, HEAP_CLASS, cur)
                return
            self._p64[(prev >> 3) + 2] = off
        else:
            self._h64[W_HEAP_HEAD] = off
        self._write_free(off, n, HEAP_CLASS, cur)

    def _free_blocks(self) -> list[tuple[int, int]]:
        """Every free block (offset, size): the address-ordered list and every class list."""
        out = []
        off = self._h64[W_HEAP_HEAD]
        limit = (self._heap_end - self._heap_off) // ALIGN + 1
        for _ in range(limit):
            if not off:
                break
            size, off2 = self._read_free(off, HEAP_CLASS)
            if off2 and off2 <= off + size:
                raise self._corrupt(f"free list is not address-ordered at {off} -> {off2}")
            out.append((off, size))
            off = off2
        else:
            raise self._corrupt("free list is longer than the payload (cycle?)")
        for c in range(len(SIZE_CLASSES)):
            off = self._h64[W_CLASS_HEAD + c]
            for _ in range(self._h32[I_CLASS_COUNT + c]):
                size, off2 = self._read_free(off, c)
                out.append((off, size))
                off = off2
                if len(out) > limit:
                    raise self._corrupt(f"size-class list {c} is longer than the payload (cycle?)")
        return out

    def _free_bytes(self) -> int:
        return self._heap_end - self._heap_off - self._h64[W_USED] - self._h64[W_QBYTES]

    def _flush_classes(self) -> None:
        """Give every class list's blocks back to the address-ordered list, merging neighbours."""
        self._rebuild_heap(self._free_blocks())

    def _rebuild_heap(self, blocks: list[tuple[int, int]]) -> None:
        blocks.sort()
        merged: list[list[int]] = []
        for off, size in blocks:
            if merged and merged[-1][0] + merged[-1][1] > off:
                raise self._corrupt(f"free blocks overlap at {off}")
            if merged and merged[-1][0] + merged[-1][1] == off:
                merged[-1][1] += size
            else:
                merged.append([off, size])
        for c in range(len(SIZE_CLASSES)):
            self._h64[W_CLASS_HEAD + c] = 0
            self._h32[I_CLASS_COUNT + c] = 0
        for i, (off, size) in enumerate(merged):
            self._write_free(off, size, HEAP_CLASS, merged[i + 1][0] if i + 1 < len(merged) else 0)
        self._h64[W_HEAP_HEAD] = merged[0][0] if merged else 0

    # -- repair and verification -----------------------------------------------------------------

    def _scan(self) -> tuple[list[tuple[int, int, int]], list[int]]:
        """Validate every entry; ([(offset, bytes, entry) of every used block], free entries)."""
        hw = self._h32[I_HW]
        if hw > self._cap:
            raise self._corrupt(f"{hw} entries used in a directory of {self._cap}")
        used, free = [], []
        e64, e32 = self._e64, self._e32
        for e in range(hw):
            st = e32[e * 32 + E_STATE]
            if st == FREE:
                free.append(e)
                continue
            b = e * 16
            off, size, block, nlen = e64[b + E_OFF], e64[b + E_SIZE], e64[b + E_BLOCK], e32[e * 32 + E_NAME_LEN]
            if (st not in (LIVE, QUARANTINED) or block != block_size(size) or off % ALIGN
                    or not self._heap_off <= off <= self._heap_end - block or not 0 < nlen <= NAME_MAX):
                raise self._corrupt(f"directory entry {e} is invalid (state {st}, offset {off}, "
                                    f"size {size}, block {block}, name length {nlen})")
            used.append((off, block, e))
            blob = self._blob_size(nlen)
            if blob:
                noff = e64[b + E_NAME_OFF]
                if noff % ALIGN or not self._heap_off <= noff <= self._heap_end - blob:
                    raise self._corrupt(f"directory entry {e} has a bad name block {noff}")
                used.append((noff, blob, e))
        used.sort()
        for (a, n, ea), (b2, _, eb) in zip(used, used[1:]):
            if a + n > b2:
                raise self._corrupt(f"entries {ea} and {eb} overlap at {b2}")
        return used, free

    def _repair(self, now: float) -> None:
        """Rebuild every derived structure from the directory entries (the source of truth) after
        a holder died mid-change. Live and quarantined bytes are not touched."""
        log.warning("node memory %s: rebuilding allocator metadata (a process died while "
                    "changing it, pid %d)", self.name or "private", self._h32[I_DIRTY])
        used, free_entries = self._scan()
        h32, h64, e64, e32 = self._h32, self._h64, self._e64, self._e32
        self._idx[:] = memoryview(bytes(4 * self._islots)).cast("I")
        live = quar = 0
        live_b = quar_b = 0
        queue = []
        for e in sorted({u[2] for u in used}):
            b = e * 16
            # A change cut short may leave an owned quarantined entry or an unowned live one.
            if e32[e * 32 + E_STATE] == LIVE and e64[b + E_HOLDERS] == 0:
                self._ed[b + E_FREED] = now
                e32[e * 32 + E_STATE] = QUARANTINED
            elif e32[e * 32 + E_STATE] == QUARANTINED and e64[b + E_HOLDERS]:
                e32[e * 32 + E_STATE] = LIVE
            blk = e64[b + E_BLOCK] + self._blob_size(e32[e * 32 + E_NAME_LEN])
            if e32[e * 32 + E_STATE] == LIVE:
                live, live_b = live + 1, live_b + blk
            else:
                quar, quar_b = quar + 1, quar_b + blk
                queue.append((self._ed[b + E_FREED], e))
            slot, found = self._lookup(e64[b], self._entry_name(e).encode())
            if found >= 0:
                raise self._corrupt(f"entries {found} and {e} have the same name")
            self._idx[slot] = e + 1
        queue.sort()
        h32[I_QHEAD] = h32[I_QTAIL] = 0
        for i, (_, e) in enumerate(queue):
            e32[e * 32 + E_QPREV] = queue[i - 1][1] + 1 if i else 0
            e32[e * 32 + E_QNEXT] = queue[i + 1][1] + 1 if i + 1 < len(queue) else 0
        if queue:
            h32[I_QHEAD], h32[I_QTAIL] = queue[0][1] + 1, queue[-1][1] + 1
        h32[I_FREE_ENTRY] = 0
        for e in reversed(free_entries):
            e32[e * 32 + E_QNEXT] = h32[I_FREE_ENTRY]
            h32[I_FREE_ENTRY] = e + 1
        gaps, at = [], self._heap_off
        for off, n, _ in used:
            if off > at:
                gaps.append((at, off - at))
            at = off + n
        if self._heap_end > at:
            gaps.append((at, self._heap_end - at))
        self._rebuild_heap(gaps)
        h32[I_OBJECTS], h32[I_NQUAR], h64[W_USED], h64[W_QBYTES] = live, quar, live_b, quar_b
        h32[I_REPAIRS] += 1

    def verify(self) -> None:
        """Check every invariant (tests, diagnostics): index <-> entries, no overlaps, free lists
        and objects tiling the payload exactly, counters. NodeMemoryCorrupt on the first breach."""
        now = self._clock()
        self._acquire(now)
        clean = False
        try:
            used, _ = self._scan()
            h32, h64 = self._h32, self._h64
            live = [u for u in {u[2] for u in used} if self._e32[u * 32 + E_STATE] == LIVE]
            quar = {u[2] for u in used} - set(live)
            if (len(live), len(quar)) != (h32[I_OBJECTS], h32[I_NQUAR]):
                raise self._corrupt(f"counted {len(live)} live / {len(quar)} quarantined, header "
                                    f"says {h32[I_OBJECTS]} / {h32[I_NQUAR]}")
            if sum(1 for v in self._idx if v) != len(live) + len(quar):
                raise self._corrupt("index and directory disagree on the number of objects")
            for e in set(live) | quar:
                if self._lookup(self._e64[e * 16], self._entry_name(e).encode())[1] != e:
                    raise self._corrupt(f"entry {e} is not found through the index")
            spans = sorted([(o, n) for o, n, _ in used] + self._free_blocks())
            at = self._heap_off
            for o, n in spans:
                if o != at:
                    raise self._corrupt(f"payload not tiled at {at}: next span at {o}")
                at = o + n
            if at != self._heap_end:
                raise self._corrupt(f"payload tiles end at {at}, not {self._heap_end}")
            qbytes = sum(n for _, n, e in used if e in quar)
            if (h64[W_USED], h64[W_QBYTES]) != (sum(n for _, n, _ in used) - qbytes, qbytes):
                raise self._corrupt(f"used/quarantined bytes {h64[W_USED]}/{h64[W_QBYTES]} do not "
                                    f"match the directory")
            clean = True
        finally:
            self._release(clean)


_ZEROS = bytes(1 << 20)
