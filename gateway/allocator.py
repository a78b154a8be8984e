"""The C allocator's thresholds for a worker: large bodies without a page fault per read.

Every socket read hands the data plane a fresh `bytes` of up to ~250 KB (uvloop reads into one
loop-wide buffer and copies each read out). With glibc's defaults a block that large is served
from newly mapped memory, or from the top of the heap, which glibc gives back to the kernel as soon
as the block is freed (its trim threshold follows the largest block freed, ~2x a read): so every
read touches pages the kernel must map and zero again. Measured with bench/bulk.py (1 MiB
downloads, one worker): 370 minor page faults per MiB proxied and 1.7 ms of CPU per MiB; with the
thresholds below, under 1 fault per MiB and 0.6 ms (bench/results/bodies.md).

So a worker raises, once at start:
- M_MMAP_THRESHOLD to 4 MiB: reads, parser pieces and joined writes (all well under it) come from
  the heap and are reused from its free lists instead of being mapped and unmapped each time;
- M_TRIM_THRESHOLD to 32 MiB: free memory at the top of the heap is kept up to that much instead
  of being returned after every large free.

What that keeps is bounded twice: by the trim threshold at the top of the heap, and by a periodic
`malloc_trim(0)` (every TRIM_INTERVAL seconds), which returns every free page of the heap, so the
worker's resident memory comes back to its idle figure within a minute after a burst of large
transfers (tests/integration/test_bodies.py measures it). A trim during a transfer costs one page
fault per page the transfer then takes again (a few thousand faults per interval, against
hundreds per MiB without the thresholds).

Setting a threshold explicitly also turns off glibc's dynamic adjustment of it, which is what we
want: the figures do not depend on the order of the first frees. Only on glibc (musl and others
have no mallopt): elsewhere nothing is changed.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging

log = logging.getLogger("gateway.worker")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 32 << 20
TRIM_INTERVAL = 20.0


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        return libc
    except (OSError, AttributeError):  # not glibc
        return None


class Allocator:
    """The thresholds, set once, and the periodic trim on the worker's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = TRIM_INTERVAL) -> None:
        self.loop = loop
        self.interval = interval
        self.libc = _libc()
        self.tuned = False
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> bool:
        """Set the thresholds and start the trim timer; False when the C library has no mallopt."""
        libc = self.libc
        if libc is None:
            return False
        # mallopt returns 1 on success
        self.tuned = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        if not self.tuned:
            log.warning("mallopt refused the allocator thresholds: large bodies fault pages per read")
            return False
        self._handle = self.loop.call_later(self.interval, self._trim)
        return True

    def _trim(self) -> None:
        self._handle = self.loop.call_later(self.interval, self._trim)
        self.trim()

    def trim(self) -> None:
        """Give every free page of the heap back to the kernel (cheap when there is none)."""
        if self.libc is not None:
            self.libc.malloc_trim(0)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
