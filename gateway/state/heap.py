"""The payload allocator of the node memory segment (see gateway/state/memory.py for why).

Objects up to SMALL_MAX get a size class and a freed one goes to its class's LIFO list; larger
ones are taken first-fit from an address-ordered list that coalesces neighbours on free; when
nothing fits, every class list is flushed back into the address-ordered one (merging neighbours)
before SharedMemoryFull. Free-list headers live in the free blocks themselves; every link read is
validated and every walk bounded, so a stray write into freed memory raises NodeMemoryCorrupt
instead of looping or handing out overlapping blocks. Runs with the allocator lock held (Arena
inherits it).
"""
from __future__ import annotations

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
        if (tag != FREE_TAG << 32 | cls or size < ALIGN or size % ALIGN or off + size > self.heap_end
                or (cls != HEAP_CLASS and size != SIZE_CLASSES[cls])):
            raise self._corrupt(f"free block at {off} has a bad header (tag {tag:#x}, size {size}): "
                                f"something wrote into freed memory")
        return size, nxt

    def _alloc(self, block: int, name: str, size: int) -> int:
        c = class_of(block) if block <= SMALL_MAX else -1
        if c >= 0 and self.h32[I_CLASS_COUNT + c]:
            off = self.h64[W_CLASS_HEAD + c]
            _, nxt = self._read_free(off, c)
            self.h64[W_CLASS_HEAD + c] = nxt
            self.h32[I_CLASS_COUNT + c] -= 1
            return off
        off = self._heap_take(block)
        if off < 0 and any(self.h32[I_CLASS_COUNT:I_CLASS_COUNT + len(SIZE_CLASSES)]):
            self._flush_classes()
            off = self._heap_take(block)
        if off >= 0:
            return off
        free = self.free_bytes()
        largest = max((s for _, s in self.free_blocks()), default=0)
        raise SharedMemoryFull(
            f"shared memory full: cannot place {name!r} ({size} bytes, a {block}-byte block): "
            f"{free} bytes free, largest free block {largest}, {self.h64[W_QBYTES]} bytes "
            f"quarantined for up to {self.grace:g} s; raise GATEWAY_SHM_SIZE (now "
            f"{fmt_size(len(self.view))})", name=name, size=size, free=free,
            segment_size=len(self.view))

    def _heap_take(self, n: int) -> int:
        """First fit in the address-ordered list, split from the front; -1 if nothing fits."""
        prev, off = 0, self.h64[W_HEAP_HEAD]
        for _ in range((self.heap_end - self.heap_off) // ALIGN + 1):
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
                    self.p64[(prev >> 3) + 2] = nxt
                else:
                    self.h64[W_HEAP_HEAD] = nxt
                return off
            prev, off = off, nxt
        raise self._corrupt("free list is longer than the payload (cycle?)")

    def _free_block(self, off: int, n: int) -> None:
        if n <= SMALL_MAX:
            c = class_of(n)
            self._write_free(off, n, c, self.h64[W_CLASS_HEAD + c])
            self.h64[W_CLASS_HEAD + c] = off
            self.h32[I_CLASS_COUNT + c] += 1
            return
        prev, cur = 0, self.h64[W_HEAP_HEAD]
        for _ in range((self.heap_end - self.heap_off) // ALIGN + 1):
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

    def free_bytes(self) -> int:
        return self.heap_end - self.heap_off - self.h64[W_USED] - self.h64[W_QBYTES]

    def _flush_classes(self) -> None:
        """Give every class list's blocks back to the address-ordered list, merging neighbours."""
        self._rebuild_heap(self.free_blocks())

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
            self.h64[W_CLASS_HEAD + c] = 0
            self.h32[I_CLASS_COUNT + c] = 0
        for i, (off, size) in enumerate(merged):
            self._write_free(off, size, HEAP_CLASS, merged[i + 1][0] if i + 1 < len(merged) else 0)
        self.h64[W_HEAP_HEAD] = merged[0][0] if merged else 0


_ZEROS = memoryview(bytes(1 << 20))     # sliced without copying
