"""The payload allocator of the node memory segment (see gateway/state/memory.py for why).

Two kinds of free list, whose headers live in the free blocks themselves:
- one LIFO list per size class (SIZE_CLASSES, up to SMALL_MAX = 64 KiB): a freed small object
  goes back to its class, and the next object of that class takes it in O(1);
- one address-ordered list of blocks larger than SMALL_MAX, first fit, neighbours coalesced on
  free. A remnant of SMALL_MAX bytes or less (the tail of a split, a run between live objects) is
  cut into class-size pieces instead, so this list never holds a block too small for any small
  object: a small allocation takes its first block in O(1), and the list is at most
  payload / SMALL_MAX long. (Measured: with 25,000 isolated holes in the list, 1,500 allocations
  of an absent class took 27 s; with this rule, 30 ms.)
When nothing fits, every free block is merged with its neighbours and the lists are laid out
anew before SharedMemoryFull is raised. Every link read is validated and every walk bounded, so
a stray write into freed memory raises NodeMemoryCorrupt instead of looping or handing out
overlapping blocks. Runs with the allocator lock held (Arena inherits it).
"""
from __future__ import annotations

import bisect

from gateway.state.layout import (
    ALIGN,
    FREE_TAG,
    HEAP_CLASS,
    I_CLASS_COUNT,
    SIZE_CLASSES,
    SMALL_MAX,
    W_CLASS_HEAD,
    W_HEAP_HEAD,
    W_QBYTES,
    W_USED,
    W_ZERO_HW,
    NodeMemoryCorrupt,
    SharedMemoryFull,
    class_of,
    fmt_size,
)


class Heap:
    """Allocator half of Arena: the attributes below are set by Arena.__init__."""

    view: memoryview
    h64: memoryview
    h32: memoryview
    p64: memoryview
    heap_off: int
    heap_end: int
    where: str
    grace: float

    def _corrupt(self, what: str) -> NodeMemoryCorrupt:
        return NodeMemoryCorrupt(f"node memory {self.where}: {what}")

    def _raise_zero_hw(self, end: int) -> None:
        if end > self.h64[W_ZERO_HW]:
            self.h64[W_ZERO_HW] = end

    def _zero(self, off: int, n: int) -> None:
        end = min(off + n, self.h64[W_ZERO_HW])
        while off < end:
            k = min(end - off, len(_ZEROS))
            self.view[off:off + k] = _ZEROS[:k]
            off += k

    def _write_free(self, off: int, size: int, cls: int, nxt: int) -> None:
        self._raise_zero_hw(off + ALIGN)      # before writing: a repair must never trust stale zeros
        p = off >> 3
        self.p64[p], self.p64[p + 1], self.p64[p + 2] = FREE_TAG << 32 | cls, size, nxt

    def _read_free(self, off: int, cls: int) -> tuple[int, int]:
        """(size, next) of the free block at `off`, validated."""
        if off % ALIGN or not self.heap_off <= off < self.heap_end:
            raise self._corrupt(f"free list link {off} is outside the payload or misaligned")
        p = off >> 3
        tag, size, nxt = self.p64[p], self.p64[p + 1], self.p64[p + 2]
        fits = size > SMALL_MAX if cls == HEAP_CLASS else size == SIZE_CLASSES[cls]
        if tag != FREE_TAG << 32 | cls or size % ALIGN or off + size > self.heap_end or not fits:
            raise self._corrupt(f"free block at {off} has a bad header (tag {tag:#x}, size {size}): "
                                f"something wrote into freed memory")
        return size, nxt

    def _alloc(self, block: int, name: str, size: int) -> int:
        off = self._take(block)
        if off < 0 and any(self.h32[I_CLASS_COUNT:I_CLASS_COUNT + len(SIZE_CLASSES)]):
            self._rebuild_heap(self.free_blocks())     # merge what the class lists hold; retry
            off = self._take(block)
        if off >= 0:
            return off
        free = self.free_bytes()
        raise SharedMemoryFull(
            f"shared memory full: cannot place {name!r} ({size} bytes, a {block}-byte block): "
            f"{free} bytes free, largest free block {self.largest_free()}, "
            f"{self.h64[W_QBYTES]} bytes quarantined for up to {self.grace:g} s; raise "
            f"GATEWAY_SHM_SIZE (now {fmt_size(len(self.view))})", name=name, size=size, free=free,
            segment_size=len(self.view))

    def _take(self, n: int) -> int:
        """A block of `n` bytes (a class size, or a 4 KiB multiple above SMALL_MAX), or -1.

        Small: its class list, else the front of the first address-ordered block (every one of
        them is larger than SMALL_MAX, so the first one fits: O(1)), else a larger class's block
        split. Large: first fit in the address-ordered list, whose length is at most
        payload / SMALL_MAX."""
        if n <= SMALL_MAX:
            c = class_of(n)
            if self.h32[I_CLASS_COUNT + c]:
                return self._pop_class(c)
            off = self._heap_take(n)
            if off >= 0:
                return off
            for bigger in range(c + 1, len(SIZE_CLASSES)):
                if self.h32[I_CLASS_COUNT + bigger]:
                    off = self._pop_class(bigger)
                    self._put_small(off + n, SIZE_CLASSES[bigger] - n)
                    return off
            return -1
        return self._heap_take(n)

    def _pop_class(self, c: int) -> int:
        off = self.h64[W_CLASS_HEAD + c]
        _, nxt = self._read_free(off, c)
        self.h64[W_CLASS_HEAD + c] = nxt
        self.h32[I_CLASS_COUNT + c] -= 1
        return off

    def _push_class(self, off: int, size: int) -> None:
        c = class_of(size)
        self._write_free(off, size, c, self.h64[W_CLASS_HEAD + c])
        self.h64[W_CLASS_HEAD + c] = off
        self.h32[I_CLASS_COUNT + c] += 1

    def _put_small(self, off: int, size: int) -> None:
        """A free run of at most SMALL_MAX bytes becomes class-size pieces, largest first. Only
        blocks larger than SMALL_MAX stay in the address-ordered list, so no small remnant is
        ever walked past by an allocation (a flush merges the pieces again)."""
        for _ in range(size // ALIGN):
            if size <= 0:
                return
            piece = SIZE_CLASSES[bisect.bisect_right(SIZE_CLASSES, size) - 1]
            self._push_class(off, piece)
            off, size = off + piece, size - piece

    def _heap_take(self, n: int) -> int:
        """First fit in the address-ordered list, split from the front; -1 if nothing fits."""
        prev, off = 0, self.h64[W_HEAP_HEAD]
        for _ in range((self.heap_end - self.heap_off) // SMALL_MAX + 1):
            if not off:
                return -1
            size, nxt = self._read_free(off, HEAP_CLASS)
            if nxt and nxt <= off + size:
                raise self._corrupt(f"free list is not address-ordered at {off} -> {nxt}")
            if size >= n:
                if size - n > SMALL_MAX:
                    self._write_free(off + n, size - n, HEAP_CLASS, nxt)
                    nxt = off + n
                if prev:
                    self.p64[(prev >> 3) + 2] = nxt
                else:
                    self.h64[W_HEAP_HEAD] = nxt
                if 0 < size - n <= SMALL_MAX:
                    self._put_small(off + n, size - n)
                return off
            prev, off = off, nxt
        raise self._corrupt("free list is longer than the payload (cycle?)")

    def _free_block(self, off: int, n: int) -> None:
        if n <= SMALL_MAX:
            self._push_class(off, n)
            return
        prev, cur = 0, self.h64[W_HEAP_HEAD]
        for _ in range((self.heap_end - self.heap_off) // SMALL_MAX + 1):
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
            self.p64[(prev >> 3) + 2] = off
        else:
            self.h64[W_HEAP_HEAD] = off
        self._write_free(off, n, HEAP_CLASS, cur)

    def free_blocks(self) -> list[tuple[int, int]]:
        """Every free block (offset, size): the address-ordered list and every class list."""
        out = []
        off = self.h64[W_HEAP_HEAD]
        limit = (self.heap_end - self.heap_off) // ALIGN + 1
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
            off = self.h64[W_CLASS_HEAD + c]
            for _ in range(self.h32[I_CLASS_COUNT + c]):
                size, off2 = self._read_free(off, c)
                out.append((off, size))
                off = off2
                if len(out) > limit:
                    raise self._corrupt(f"size-class list {c} is longer than the payload (cycle?)")
        return out

    def largest_free(self) -> int:
        """The longest run of contiguous free bytes (adjacent class pieces count together)."""
        best = run_end = run = 0
        for off, size in sorted(self.free_blocks()):
            run = run + size if off == run_end else size
            run_end = off + size
            best = max(best, run)
        return best

    def free_bytes(self) -> int:
        return self.heap_end - self.heap_off - self.h64[W_USED] - self.h64[W_QBYTES]

    def _rebuild_heap(self, blocks: list[tuple[int, int]]) -> None:
        """Lay out the free lists anew from `blocks` (every free byte): neighbours merged, runs
        above SMALL_MAX in the address-ordered list, smaller ones as class pieces."""
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
            self.h64[W_CLASS_HEAD + c] = 0
            self.h32[I_CLASS_COUNT + c] = 0
        big = [(off, size) for off, size in merged if size > SMALL_MAX]
        for i, (off, size) in enumerate(big):
            self._write_free(off, size, HEAP_CLASS, big[i + 1][0] if i + 1 < len(big) else 0)
        self.h64[W_HEAP_HEAD] = big[0][0] if big else 0
        for off, size in merged:
            if size <= SMALL_MAX:
                self._put_small(off, size)

_ZEROS = memoryview(bytes(1 << 20))     # sliced without copying
