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
  "who still uses this" one AND; it caps shared-memory workers at 62 (ValueError beyond), so the
  supervisor must refuse GATEWAY_WORKERS > 62 (Settings accepts up to 1024) while this is used.
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
  6, 8, 12, ... up to 64 KiB: every class a multiple of 64, so at most 1/3 of a block is wasted
  above 128 bytes, half below; a breaker fits its 768-byte class exactly) and a freed one goes to
  its class's free list, so the next object of that class takes it in O(1) and small holes never
  splinter the heap. Larger ones are rounded to 4 KiB and taken first-fit from an address-ordered
  list of blocks above 64 KiB that coalesces neighbours on free (smaller remnants are cut into
  class pieces, so that list stays short and never makes an allocation walk past holes).
  Fragmentation stays bounded: a class list only holds what that class once used (or remnants),
  and when an allocation finds no room, every free block is merged with its neighbours and the
  lists rebuilt before ``SharedMemoryFull`` is raised, so a reload that swaps 5,000 breakers for
  5,000 counters is not refused for memory parked in the wrong class.
- **Directory**: a fixed array of 128-byte entries, one per ``BYTES_PER_ENTRY`` (2 KiB) of segment
  (min 64; or ``max_objects``): 32,768 objects for the default 64 MiB, costing 4 MiB plus a
  256 KiB index (6.6 % of the segment); past that, SharedMemoryFull says to raise
  GATEWAY_SHM_SIZE. It counts
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
  the structure's capacity and validates each link; corrupted metadata raises
  ``NodeMemoryCorrupt``, never loops. The failed call leaves ``dirty`` set, so the next call
  rebuilds the free lists and index from the directory (a free-list header overwritten by a stray
  write heals; a directory that contradicts itself keeps raising).
- **Zero-filling**: a new object's bytes are zeroed, except those above a high-water mark
  (``zero_hw``) that no object or free-list header has ever touched: the segment starts zeroed, so
  a fresh 10 MB table costs no memset and commits no pages until used.

The bytes: ``gateway/state/layout.py``; the allocator: ``heap.py``; directory, quarantine and
repair: ``arena.py``.

Cost (tests/state/test_memory.py::test_placing_ten_thousand_objects_is_fast, 2 shared cores):
10,000 new 768-byte objects place in 75-120 ms when the box is idle (8-12 us each: hash, index
probe, allocation, entry write, lock word), up to 235 ms while other work shares the cores;
placing them again from another worker 45-115 ms; a sync_holder that releases 5,000 of them
10-30 ms. A 10,000-route config loads its shared objects well under 1 s (the test asserts 1 s).

Integration (the supervisor): ``NodeMemory.create(settings.shm_size, name)`` before starting
workers, with a fresh name per start; hand the name to each worker, which calls
``NodeMemory.attach(name)`` and ``place(..., holder=its index)``; after a reload each worker calls
``sync_holder(index, names its new runtime uses)``; when worker i dies, ``drop_holder(i)``
before spawning its replacement; at exit ``unlink()``. Control-plane objects use ``SUPERVISOR``.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from gateway._fast.hashing import xxh64
from gateway._fast.shm import SharedSegment, _lock_word, _unlock_word
from gateway.state.arena import Arena
from gateway.state.layout import (
    ALIGN,
    BYTES_PER_ENTRY,
    DEFAULT_GRACE,
    I_LOCK_BYTE,
    KIND_MAX,
    MAX_WORKERS,
    NAME_MAX,
    SUPERVISOR,
    LayoutMismatch,
    NodeMemoryCorrupt,
    ObjectInfo,
    SharedMemoryFull,
    block_size,
    layout,
)

__all__ = ["BYTES_PER_ENTRY", "DEFAULT_GRACE", "MAX_WORKERS", "SUPERVISOR", "LayoutMismatch",
           "NodeMemory", "NodeMemoryCorrupt", "ObjectInfo", "SharedMemoryFull", "block_size"]

T = TypeVar("T")


class NodeMemory:
    """The node's shared objects, placed by name in one segment (see the module docstring)."""

    def __init__(self, seg: SharedSegment, *, clock: Callable[[], float] = time.monotonic,
                 _init: tuple[int | None, float] | None = None, timeout: float = 1.0) -> None:
        """Use create(), attach() or private()."""
        self._seg = seg
        self.name: str | None = seg.name
        self._clock = clock
        self._tlock = threading.Lock()      # threads of one process: the lock word holds a pid
        self._closed = False
        self._view = memoryview(seg)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(self._view))
        if addr % ALIGN:
            raise ValueError(f"segment payload at {addr:#x} is not {ALIGN}-byte aligned")
        self._arena = Arena(self._view, seg.name or "private node memory", _init, timeout)
        self.grace: float = self._arena.grace

    @classmethod
    def create(cls, size: int, name: str, *, grace: float = DEFAULT_GRACE,
               max_objects: int | None = None,
               clock: Callable[[], float] = time.monotonic) -> NodeMemory:
        """Supervisor: a new named segment of `size` payload bytes (FileExistsError if it exists).
        `grace` (seconds of quarantine) and `max_objects` (directory entries; default one per
        2 KiB) are stored in the segment, so every process applies the same."""
        layout(size, max_objects)            # refuse before creating a file
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
        layout(size, max_objects)
        return cls(SharedSegment(size), clock=clock, _init=(max_objects, grace))

    # -- locking ---------------------------------------------------------------------------------

    def _acquire(self, now: float) -> None:
        if self._closed:
            raise ValueError("node memory is closed")
        self._tlock.acquire()
        try:
            _lock_word(self._seg, I_LOCK_BYTE)
            try:
                self._arena.begin(os.getpid(), now)
            except BaseException:
                _unlock_word(self._seg, I_LOCK_BYTE)
                raise
        except BaseException:
            self._tlock.release()
            raise

    def _release(self, clean: bool) -> None:
        # An unexpected exception leaves `dirty` set: the next holder rebuilds the metadata.
        if clean:
            self._arena.end()
        _unlock_word(self._seg, I_LOCK_BYTE)
        self._tlock.release()

    def _locked(self, fn: Callable[[float], T], refusals: tuple[type[BaseException], ...] = ()) -> T:
        """fn(now) under the allocator lock. `refusals` are errors raised before anything changed."""
        now = self._clock()
        self._acquire(now)
        clean = False
        try:
            out = fn(now)
            clean = True
            return out
        except refusals:
            clean = True
            raise
        finally:
            self._release(clean)

    # -- public API ------------------------------------------------------------------------------

    def place(self, name: str, size: int, holder: int, *, kind: str = "") -> memoryview:
        """The object's bytes (len == size, 64-byte aligned, zeroed the first time the name is
        placed); marks `holder` a user.

        The same bytes for every process asking the same name with the same size and kind;
        ValueError for another size or kind (a layout change needs a new name), also while the
        name is quarantined. SharedMemoryFull if it does not fit.
        """
        nb = _name_bytes(name)
        kb = kind.encode()
        if len(kb) > KIND_MAX or "\0" in kind:
            raise ValueError(f"kind {kind!r} must be at most {KIND_MAX} bytes without NUL")
        arena = self._arena
        if not 1 <= size <= arena.heap_end - arena.heap_off:
            raise ValueError(f"size of {name!r} must be in [1, {arena.heap_end - arena.heap_off}], "
                             f"got {size}")
        bit = _bit(holder)
        h = xxh64(nb) or 1
        off = self._locked(lambda now: arena.place(name, nb, h, size, kb, bit, now),
                           (ValueError, SharedMemoryFull))
        return self._view[off:off + size]

    def sync_holder(self, holder: int, names: Iterable[str]) -> list[str]:
        """After a reload: `holder` now uses exactly `names`. Releases the others it held and
        returns them (sorted). Names it does not hold are ignored: place() is what takes one."""
        bit, keep = _bit(holder), set(names)
        return self._locked(lambda now: self._arena.release_where(bit, keep.__contains__, now))

    def drop_holder(self, holder: int) -> list[str]:
        """Worker `holder` died: release everything it held (call before its replacement starts).
        Returns the released names (sorted)."""
        bit = _bit(holder)
        return self._locked(lambda now: self._arena.release_where(bit, lambda name: False, now))

    def stats(self) -> dict[str, int | float]:
        """total, used, free, quarantined (payload bytes: used + free + quarantined == total),
        objects, quarantined_objects, largest_free, directory_capacity, segment_size, grace,
        repairs."""
        return self._locked(lambda now: self._arena.stats())

    def names(self, *, quarantined: bool = False) -> list[str]:
        """Names of live objects (and of quarantined ones with quarantined=True), sorted."""
        return sorted(i.name for i in self.objects() if quarantined or not i.quarantined)

    def objects(self) -> list[ObjectInfo]:
        """Every live and quarantined object, in directory order (admin view)."""
        return self._locked(lambda now: self._arena.objects())

    def info(self, name: str) -> ObjectInfo | None:
        """The object placed under `name` (live or quarantined), or None."""
        nb = _name_bytes(name)
        arena = self._arena

        def find(now: float) -> ObjectInfo | None:
            e = arena.lookup(xxh64(nb) or 1, nb)[1]
            return arena.info(e) if e >= 0 else None
        return self._locked(find)

    def view_of(self, info: ObjectInfo) -> memoryview:
        """The bytes of an object listed by objects() or info(), for a reader that never placed it
        (the metrics exporter in the supervisor). Reading takes no lock: a freed object's bytes
        stay untouched for the quarantine's grace."""
        return self._view[info.offset:info.offset + info.size]

    def verify(self) -> None:
        """Check every invariant of the metadata (tests, diagnostics); NodeMemoryCorrupt if one
        fails."""
        self._locked(lambda now: self._arena.verify())

    def close(self) -> None:
        """Unmap (this process). BufferError while a placed object's view (or anything built on
        one, such as a breaker) is still alive; call again once they are gone."""
        if not self._closed:
            self._closed = True
            self._arena.release()
            self._view.release()
        self._seg.close()

    def unlink(self) -> None:
        """Remove the segment's name (supervisor, at exit); mappings stay valid. No-op if private."""
        self._seg.unlink()

    def __repr__(self) -> str:
        return f"<NodeMemory {self.name or 'private'} {self._seg.size} bytes>"


def _name_bytes(name: str) -> bytes:
    if not isinstance(name, str) or not name:
        raise ValueError(f"object name must be a non-empty str, got {name!r}")
    nb = name.encode()
    if len(nb) > NAME_MAX:
        raise ValueError(f"object name longer than {NAME_MAX} bytes: {name[:60]!r}...")
    return nb


def _bit(holder: int) -> int:
    if not 0 <= holder <= SUPERVISOR:
        raise ValueError(f"holder must be a worker index 0..{MAX_WORKERS - 1} or SUPERVISOR "
                         f"({SUPERVISOR}), got {holder}")
    return 1 << holder
