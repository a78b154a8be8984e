"""The node memory segment's layout: offsets, field numbers, size classes, capacities; and the
errors and value types of gateway.state.memory (which gives the decisions and their reasons).

Layout (offsets from the segment's payload start, which is 64-byte aligned):

    0     header, 512 bytes (below)
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

    header (byte offset: field): 0 magic u64 | 8 layout version u32 | 12 header bytes u32 |
           16 allocator lock u32 (owner pid) | 20 dirty u32 (pid mid-change) | 24 segment bytes |
           32 capacity u32 | 36 index slots u32 | 40 index, 48 entries, 56 heap, 64 heap end u64 |
           72 grace f64 | 80 used, 88 quarantined bytes u64 | 96 live, 100 quarantined objects,
           104 entries ever used, 108 free-entry head, 112 quarantine head, 116 tail u32 |
           120 address-ordered free list head u64 | 128 zero_hw u64 | 136 completed locked calls u64 |
           144 repairs u32 | 148 size classes u32 | 256 class list heads u64 x 20 |
           416 class list lengths u32 x 20

Capacities: the directory holds max(64, segment bytes // 2048) entries (or ``max_objects``),
live and quarantined objects together; the index has the next power of two >= 2 x that many
slots. Names up to 1,024 UTF-8 bytes, kinds up to 16.
"""
from __future__ import annotations

import bisect
from typing import NamedTuple

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


def class_of(block: int) -> int:
    return bisect.bisect_left(SIZE_CLASSES, block)


def fmt_size(n: int) -> str:
    # GATEWAY_SHM_SIZE's own syntax, so the operator can copy it.
    for shift, unit in ((30, "g"), (20, "m"), (10, "k")):
        if n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def layout(size: int, max_objects: int | None) -> tuple[int, int, int, int, int, int]:
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
