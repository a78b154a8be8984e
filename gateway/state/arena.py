"""The node memory segment's header, directory and quarantine, over gateway/state/layout.py.

``gateway.state.memory.NodeMemory`` owns the segment and its lock and drives an ``Arena``; nothing
here locks: every method runs with the allocator lock held (except the constructor, which lays
out a mapping nobody else sees yet, or checks one laid out before). Entries are the source of
truth: their ``state`` word is written last, and ``repair`` rebuilds everything else from them.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from itertools import pairwise

from gateway._fast.hashing import xxh64
from gateway.state.heap import Heap
from gateway.state.layout import (
    ALIGN,
    BYTES_PER_ENTRY,
    E_BLOCK,
    E_FREED,
    E_HASH,
    E_HOLDERS,
    E_NAME_LEN,
    E_NAME_OFF,
    E_OFF,
    E_QNEXT,
    E_QPREV,
    E_SIZE,
    E_STATE,
    ENTRY_BYTES,
    FREE,
    HEADER_BYTES,
    I_CAP,
    I_DIRTY,
    I_FREE_ENTRY,
    I_HEADER,
    I_HW,
    I_ISLOTS,
    I_NCLASSES,
    I_NQUAR,
    I_OBJECTS,
    I_QHEAD,
    I_QTAIL,
    I_REPAIRS,
    I_VERSION,
    KIND_AT,
    KIND_MAX,
    LAYOUT_VERSION,
    LIVE,
    MAGIC,
    NAME_AT,
    NAME_INLINE,
    NAME_MAX,
    QUARANTINED,
    SIZE_CLASSES,
    W_AREA,
    W_ENTRIES,
    W_GEN,
    W_GRACE,
    W_HEAP,
    W_HEAP_END,
    W_INDEX,
    W_MAGIC,
    W_QBYTES,
    W_USED,
    W_ZERO_HW,
    LayoutMismatch,
    ObjectInfo,
    SharedMemoryFull,
    block_size,
    fmt_size,
    layout,
)

log = logging.getLogger("gateway.state.memory")


class Arena(Heap):
    """Views over one mapping laid out as above, and the operations on them (lock held)."""

    def __init__(self, view: memoryview, where: str, init: tuple[int | None, float] | None,
                 timeout: float = 1.0) -> None:
        """Lay out a fresh (zeroed) mapping when `init` = (max_objects, grace) is given, else
        check the layout found (waiting up to `timeout` for its creator to publish the magic)."""
        self.view = v = view
        self.where = where
        self.fault: Callable[[str], None] | None = None     # test hook: crash at a named step
        if len(v) < HEADER_BYTES:
            raise LayoutMismatch(f"{where}: {len(v)} bytes is too small for a node memory header")
        self.h64 = v[:HEADER_BYTES].cast("Q")
        self.h32 = v[:HEADER_BYTES].cast("I")
        self.hd = v[:HEADER_BYTES].cast("d")
        if init is not None:
            self._write_header(*init)
        else:
            self._check_header(timeout)
        h32, h64 = self.h32, self.h64
        self.cap, self.islots = h32[I_CAP], h32[I_ISLOTS]
        self.heap_off, self.heap_end = h64[W_HEAP], h64[W_HEAP_END]
        eo = self.entries_off = h64[W_ENTRIES]
        self.idx = v[HEADER_BYTES:HEADER_BYTES + 4 * self.islots].cast("I")
        self.e64 = v[eo:eo + self.cap * ENTRY_BYTES].cast("Q")
        self.e32 = v[eo:eo + self.cap * ENTRY_BYTES].cast("I")
        self.ed = v[eo:eo + self.cap * ENTRY_BYTES].cast("d")
        self.p64 = v[:self.heap_end].cast("Q")
        self.grace: float = self.hd[W_GRACE]
        if init is not None:
            # The mapping is fresh (zeroed): index, entries and counters are already empty. The
            # whole heap is one free block, whose header is the only heap byte ever written.
            h64[W_ZERO_HW] = self.heap_off
            self._rebuild_heap([(self.heap_off, self.heap_end - self.heap_off)])
            h64[W_MAGIC] = MAGIC            # last: an attacher that sees it sees the whole layout

    def _write_header(self, max_objects: int | None, grace: float) -> None:
        if not 0 <= grace < float("inf"):
            raise ValueError(f"grace must be a finite number of seconds >= 0, got {grace!r}")
        cap, islots, index_off, entries_off, heap_off, heap_end = layout(len(self.view), max_objects)
        h32, h64 = self.h32, self.h64
        h32[I_VERSION], h32[I_HEADER] = LAYOUT_VERSION, HEADER_BYTES
        h64[W_AREA] = len(self.view)
        h32[I_CAP], h32[I_ISLOTS] = cap, islots
        h64[W_INDEX], h64[W_ENTRIES], h64[W_HEAP], h64[W_HEAP_END] = index_off, entries_off, heap_off, heap_end
        self.hd[W_GRACE] = grace
        h32[I_NCLASSES] = len(SIZE_CLASSES)

    def _check_header(self, timeout: float) -> None:
        h32, h64, where = self.h32, self.h64, self.where
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
        if h64[W_AREA] != len(self.view) or h32[I_NCLASSES] != len(SIZE_CLASSES):
            raise LayoutMismatch(f"{where}: header describes {h64[W_AREA]} bytes and "
                                 f"{h32[I_NCLASSES]} size classes, the segment holds "
                                 f"{len(self.view)} and this build has {len(SIZE_CLASSES)}")
        want = layout(len(self.view), h32[I_CAP])
        have = (h32[I_CAP], h32[I_ISLOTS], h64[W_INDEX], h64[W_ENTRIES], h64[W_HEAP], h64[W_HEAP_END])
        if want != have:
            raise LayoutMismatch(f"{where}: directory layout {have} does not match {want}")

    def release(self) -> None:
        """Drop every view (before the segment is unmapped)."""
        for v in (self.h64, self.h32, self.hd, self.idx, self.e64, self.e32, self.ed, self.p64):
            v.release()

    # -- locking protocol (NodeMemory holds the lock word) ---------------------------------------

    def begin(self, pid: int, now: float) -> None:
        """Just after taking the lock: repair if the previous holder died (or raised) half-way,
        mark this change as in progress, and free what has served its quarantine."""
        if self.h32[I_DIRTY]:
            self.repair(now)
        self.h32[I_DIRTY] = pid
        self.reclaim(now)

    def end(self) -> None:
        """A change completed (a failed one leaves `dirty` set for the next holder to repair)."""
        self.h64[W_GEN] += 1
        self.h32[I_DIRTY] = 0

    def at(self, step: str) -> None:
        if self.fault is not None:
            self.fault(step)

    def stats(self) -> dict[str, int | float]:
        h32, h64 = self.h32, self.h64
        total = self.heap_end - self.heap_off
        return {
            "total": total, "used": h64[W_USED], "quarantined": h64[W_QBYTES],
            "free": total - h64[W_USED] - h64[W_QBYTES], "objects": h32[I_OBJECTS],
            "quarantined_objects": h32[I_NQUAR],
            "largest_free": self.largest_free(),
            "directory_capacity": self.cap, "segment_size": len(self.view), "grace": self.grace,
            "repairs": h32[I_REPAIRS],
        }

    def objects(self) -> list[ObjectInfo]:
        return [self.info(e) for e in range(self.h32[I_HW]) if self.e32[e * 32 + E_STATE]]

    # -- directory -------------------------------------------------------------------------------

    def _name_eq(self, e: int, nb: bytes) -> bool:
        n = len(nb)
        if self.e32[e * 32 + E_NAME_LEN] != n:
            return False
        at = self.entries_off + e * ENTRY_BYTES + NAME_AT
        if self.view[at:at + min(n, NAME_INLINE)] != nb[:NAME_INLINE]:
            return False
        if n <= NAME_INLINE:
            return True
        o = self.e64[e * 16 + E_NAME_OFF]
        return self.view[o:o + n] == nb

    def _entry_name_bytes(self, e: int) -> bytes:
        n = self.e32[e * 32 + E_NAME_LEN]
        if n > NAME_INLINE:
            o = self.e64[e * 16 + E_NAME_OFF]
            return bytes(self.view[o:o + n])
        at = self.entries_off + e * ENTRY_BYTES + NAME_AT
        return bytes(self.view[at:at + n])

    def _entry_name(self, e: int) -> str:
        return self._entry_name_bytes(e).decode(errors="replace")

    def _entry_kind(self, e: int) -> bytes:
        at = self.entries_off + e * ENTRY_BYTES + KIND_AT
        return bytes(self.view[at:at + KIND_MAX]).rstrip(b"\0")

    def info(self, e: int) -> ObjectInfo:
        b = e * 16
        return ObjectInfo(self._entry_name(e), self.e64[b + E_OFF], self.e64[b + E_SIZE],
                          self.e64[b + E_BLOCK], self._entry_kind(e).decode(),
                          self.e64[b + E_HOLDERS], self.e32[e * 32 + E_STATE] == QUARANTINED,
                          self.ed[b + E_FREED])

    def lookup(self, h: int, nb: bytes) -> tuple[int, int]:
        """(index slot, entry) of the name, or (the empty slot where it would go, -1)."""
        idx, e64, mask, hw = self.idx, self.e64, self.islots - 1, self.h32[I_HW]
        i = h & mask
        for _ in range(self.islots):
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
        idx, e64, mask = self.idx, self.e64, self.islots - 1
        i = e64[e * 16] & mask
        for _ in range(self.islots):
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
        for _ in range(self.islots):
            j = (j + 1) & mask
            v = idx[j]
            if v == 0:
                break
            k = e64[(v - 1) * 16] & mask      # home slot of the entry at j
            if (i <= j and i < k <= j) or (i > j and (k > i or k <= j)):
                continue                      # its home lies after the hole: it stays
            idx[i] = v
            self.at("shift")
            i = j
        idx[i] = 0

    def _new_entry(self) -> int:
        h32 = self.h32
        head = h32[I_FREE_ENTRY]
        if head:
            e = head - 1
            if e >= h32[I_HW] or self.e32[e * 32 + E_STATE] != FREE:
                raise self._corrupt(f"free-entry list points at entry {e}, which is not free")
            h32[I_FREE_ENTRY] = self.e32[e * 32 + E_QNEXT]
            return e
        e = h32[I_HW]
        h32[I_HW] = e + 1
        return e

    def place(self, name: str, nb: bytes, h: int, size: int, kb: bytes, bit: int, now: float) -> int:
        """Offset of `name`'s object: found (holder added, revived if quarantined) or new."""
        h32, h64, e64, e32 = self.h32, self.h64, self.e64, self.e32
        slot, e = self.lookup(h, nb)
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
        if h32[I_OBJECTS] + h32[I_NQUAR] >= self.cap:
            raise SharedMemoryFull(
                f"shared memory directory full: cannot place {name!r} ({size} bytes): all "
                f"{self.cap} entries in use ({h32[I_OBJECTS]} live, {h32[I_NQUAR]} quarantined "
                f"for up to {self.grace:g} s); raise GATEWAY_SHM_SIZE (now "
                f"{fmt_size(len(self.view))}): the directory gets one entry per "
                f"{BYTES_PER_ENTRY} bytes of segment", name=name, size=size, free=self.free_bytes(),
                segment_size=len(self.view))
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
            self.at("alloc")
            self._raise_zero_hw(noff + blob)  # before writing: a repair must never trust stale zeros
            self.view[noff:noff + len(nb)] = nb
        self._zero(off, block)
        self._raise_zero_hw(off + block)
        self.at("zero")
        e = self._new_entry()
        b = e * 16
        e64[b + E_HASH], e64[b + E_OFF], e64[b + E_SIZE], e64[b + E_BLOCK] = h, off, size, block
        e64[b + E_HOLDERS], e64[b + E_NAME_OFF] = bit, noff
        self.ed[b + E_FREED] = 0.0
        e32[e * 32 + E_NAME_LEN] = len(nb)
        at = self.entries_off + e * ENTRY_BYTES
        self.view[at + KIND_AT:at + ENTRY_BYTES] = (kb.ljust(KIND_MAX, b"\0")
                                                    + nb[:NAME_INLINE].ljust(NAME_INLINE, b"\0"))
        e32[e * 32 + E_STATE] = LIVE          # last: a repair trusts entries whose state is set
        self.at("entry")
        self.idx[slot] = e + 1
        h32[I_OBJECTS] += 1
        h64[W_USED] += block + blob
        return off

    @staticmethod
    def _blob_size(name_len: int) -> int:
        return block_size(name_len) if name_len > NAME_INLINE else 0

    # -- release, quarantine, reclaim ------------------------------------------------------------

    def release_where(self, bit: int, keep: Callable[[str], bool], now: float) -> list[str]:
        """Clear `bit` on every live object whose name `keep` refuses; quarantine the unowned."""
        released = []
        e64, e32 = self.e64, self.e32
        for e in range(self.h32[I_HW]):
            if e32[e * 32 + E_STATE] != LIVE or not e64[e * 16 + E_HOLDERS] & bit:
                continue
            name = self._entry_name(e)
            if keep(name):
                continue
            released.append(name)
            holders = e64[e * 16 + E_HOLDERS] & ~bit
            e64[e * 16 + E_HOLDERS] = holders
            if holders == 0:
                self.at("release")
                self._quarantine(e, now)
        return sorted(released)

    def _quarantine(self, e: int, now: float) -> None:
        h32, e32 = self.h32, self.e32
        self.ed[e * 16 + E_FREED] = now
        e32[e * 32 + E_STATE] = QUARANTINED
        e32[e * 32 + E_QNEXT] = 0
        tail = h32[I_QTAIL]
        e32[e * 32 + E_QPREV] = tail
        if tail:
            e32[(tail - 1) * 32 + E_QNEXT] = e + 1
        else:
            h32[I_QHEAD] = e + 1
        h32[I_QTAIL] = e + 1
        blk = self.e64[e * 16 + E_BLOCK] + self._blob_size(e32[e * 32 + E_NAME_LEN])
        self.h64[W_USED] -= blk
        self.h64[W_QBYTES] += blk
        h32[I_OBJECTS] -= 1
        h32[I_NQUAR] += 1

    def _q_unlink(self, e: int) -> None:
        h32, e32 = self.h32, self.e32
        prev, nxt = e32[e * 32 + E_QPREV], e32[e * 32 + E_QNEXT]
        if prev:
            e32[(prev - 1) * 32 + E_QNEXT] = nxt
        else:
            h32[I_QHEAD] = nxt
        if nxt:
            e32[(nxt - 1) * 32 + E_QPREV] = prev
        else:
            h32[I_QTAIL] = prev

    def reclaim(self, now: float) -> None:
        """Free the quarantined objects whose grace has passed (FIFO: oldest first). A clock
        that went backwards only makes later entries wait longer, never shorter."""
        h32, e32, e64 = self.h32, self.e32, self.e64
        for _ in range(self.cap + 1):
            head = h32[I_QHEAD]
            if not head:
                return
            e = head - 1
            if e >= h32[I_HW] or e32[e * 32 + E_STATE] != QUARANTINED:
                raise self._corrupt(f"quarantine list points at entry {e}, which is not quarantined")
            if self.ed[e * 16 + E_FREED] + self.grace > now:
                return
            self._q_unlink(e)
            self._index_remove(e)
            b = e * 16
            off, block, nlen = e64[b + E_OFF], e64[b + E_BLOCK], e32[e * 32 + E_NAME_LEN]
            e32[e * 32 + E_STATE] = FREE
            self.at("reclaim")
            self._free_block(off, block)
            blob = self._blob_size(nlen)
            if blob:
                self._free_block(e64[b + E_NAME_OFF], blob)
            e32[e * 32 + E_QNEXT] = h32[I_FREE_ENTRY]
            h32[I_FREE_ENTRY] = e + 1
            h32[I_NQUAR] -= 1
            self.h64[W_QBYTES] -= block + blob
        raise self._corrupt("quarantine list is longer than the directory (cycle?)")

    # -- repair and verification -----------------------------------------------------------------

    def _scan(self) -> tuple[list[tuple[int, int, int]], list[int]]:
        """Validate every entry; ([(offset, bytes, entry) of every used block], free entries)."""
        hw = self.h32[I_HW]
        if hw > self.cap:
            raise self._corrupt(f"{hw} entries used in a directory of {self.cap}")
        used, free = [], []
        e64, e32 = self.e64, self.e32
        for e in range(hw):
            st = e32[e * 32 + E_STATE]
            if st == FREE:
                free.append(e)
                continue
            b = e * 16
            off, size, block, nlen = e64[b + E_OFF], e64[b + E_SIZE], e64[b + E_BLOCK], e32[e * 32 + E_NAME_LEN]
            if (st not in (LIVE, QUARANTINED) or block != block_size(size) or off % ALIGN
                    or not self.heap_off <= off <= self.heap_end - block or not 0 < nlen <= NAME_MAX):
                raise self._corrupt(f"directory entry {e} is invalid (state {st}, offset {off}, "
                                    f"size {size}, block {block}, name length {nlen})")
            used.append((off, block, e))
            blob = self._blob_size(nlen)
            if blob:
                noff = e64[b + E_NAME_OFF]
                if noff % ALIGN or not self.heap_off <= noff <= self.heap_end - blob:
                    raise self._corrupt(f"directory entry {e} has a bad name block {noff}")
                used.append((noff, blob, e))
            if e64[b + E_HASH] != (xxh64(self._entry_name_bytes(e)) or 1):
                raise self._corrupt(f"directory entry {e}'s hash does not match its name")
        used.sort()
        for (a, n, ea), (b2, _, eb) in pairwise(used):
            if a + n > b2:
                raise self._corrupt(f"entries {ea} and {eb} overlap at {b2}")
        return used, free

    def repair(self, now: float) -> None:
        """Rebuild every derived structure from the directory entries (the source of truth) after
        a holder died mid-change. Live and quarantined bytes are not touched."""
        log.warning("node memory %s: rebuilding the allocator metadata from the directory (process "
                    "%d died or failed half-way through a change)", self.where, self.h32[I_DIRTY])
        used, free_entries = self._scan()
        h32, h64, e64, e32 = self.h32, self.h64, self.e64, self.e32
        self.idx[:] = memoryview(bytes(4 * self.islots)).cast("I")
        live = quar = 0
        live_b = quar_b = 0
        queue = []
        for e in sorted({u[2] for u in used}):
            b = e * 16
            # A change cut short may leave an owned quarantined entry or an unowned live one.
            if e32[e * 32 + E_STATE] == LIVE and e64[b + E_HOLDERS] == 0:
                self.ed[b + E_FREED] = now
                e32[e * 32 + E_STATE] = QUARANTINED
            elif e32[e * 32 + E_STATE] == QUARANTINED and e64[b + E_HOLDERS]:
                e32[e * 32 + E_STATE] = LIVE
            blk = e64[b + E_BLOCK] + self._blob_size(e32[e * 32 + E_NAME_LEN])
            if e32[e * 32 + E_STATE] == LIVE:
                live, live_b = live + 1, live_b + blk
            else:
                quar, quar_b = quar + 1, quar_b + blk
                queue.append((self.ed[b + E_FREED], e))
            slot, found = self.lookup(e64[b], self._entry_name_bytes(e))
            if found >= 0:
                raise self._corrupt(f"entries {found} and {e} have the same name")
            self.idx[slot] = e + 1
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
        gaps, at = [], self.heap_off
        for off, n, _ in used:
            if off > at:
                gaps.append((at, off - at))
            at = off + n
        if self.heap_end > at:
            gaps.append((at, self.heap_end - at))
        self._rebuild_heap(gaps)
        h32[I_OBJECTS], h32[I_NQUAR], h64[W_USED], h64[W_QBYTES] = live, quar, live_b, quar_b
        h32[I_REPAIRS] += 1

    def _chain(self, head: int, what: str) -> list[int]:
        out: list[int] = []
        for _ in range(self.cap + 1):
            if not head:
                return out
            out.append(head - 1)
            head = self.e32[(head - 1) * 32 + E_QNEXT]
        raise self._corrupt(f"the {what} list is longer than the directory (cycle?)")

    def verify(self) -> None:
        """Check every invariant: index <-> entries, no overlaps, free lists and objects tiling
        the payload exactly, counters. NodeMemoryCorrupt on the first breach."""
        used, free_entries = self._scan()
        h32, h64 = self.h32, self.h64
        owners = {u[2] for u in used}
        quar = {e for e in owners if self.e32[e * 32 + E_STATE] == QUARANTINED}
        chain = self._chain(h32[I_QHEAD], "quarantine")
        if sorted(chain) != sorted(quar) or h32[I_QTAIL] != (chain[-1] + 1 if chain else 0) or any(
                self.e32[e * 32 + E_QPREV] != (chain[i - 1] + 1 if i else 0) for i, e in enumerate(chain)):
            raise self._corrupt("the quarantine list is not the quarantined entries, doubly linked")
        if sorted(self._chain(h32[I_FREE_ENTRY], "free-entry")) != free_entries:
            raise self._corrupt("the free-entry list is not the free entries")
        if (len(owners) - len(quar), len(quar)) != (h32[I_OBJECTS], h32[I_NQUAR]):
            raise self._corrupt(f"counted {len(owners) - len(quar)} live / {len(quar)} quarantined, "
                                f"header says {h32[I_OBJECTS]} / {h32[I_NQUAR]}")
        if sum(1 for v in self.idx if v) != len(owners):
            raise self._corrupt("index and directory disagree on the number of objects")
        for e in owners:
            if self.lookup(self.e64[e * 16], self._entry_name_bytes(e))[1] != e:
                raise self._corrupt(f"entry {e} is not found through the index")
        at = self.heap_off
        for o, n in sorted([(o, n) for o, n, _ in used] + self.free_blocks()):
            if o != at:
                raise self._corrupt(f"payload not tiled at {at}: next span at {o}")
            at = o + n
        if at != self.heap_end:
            raise self._corrupt(f"payload tiles end at {at}, not {self.heap_end}")
        qbytes = sum(n for _, n, e in used if e in quar)
        if (h64[W_USED], h64[W_QBYTES]) != (sum(n for _, n, _ in used) - qbytes, qbytes):
            raise self._corrupt(f"used/quarantined bytes {h64[W_USED]}/{h64[W_QBYTES]} do not "
                                f"match the directory")


