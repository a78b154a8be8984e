"""gateway/allocator.py: the worker's glibc thresholds and periodic trim (issue 17)."""
from __future__ import annotations

import asyncio
import ctypes
import platform

import pytest

from gateway.allocator import Allocator

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


@glibc
def test_thresholds_set_and_trim_scheduled() -> None:
    loop = asyncio.new_event_loop()
    try:
        a = Allocator(loop, interval=0.01)
        calls = []
        real_trim = a.trim
        a.trim = lambda: (calls.append(1), real_trim())  # type: ignore[method-assign]
        assert a.start() and a.tuned
        loop.run_until_complete(asyncio.sleep(0.1))
        assert len(calls) >= 2, "the trim runs again and again on the loop"
        a.stop()
        n = len(calls)
        loop.run_until_complete(asyncio.sleep(0.05))
        assert len(calls) == n, "stop() ends it"
    finally:
        loop.close()


@glibc
def test_a_large_block_freed_and_taken_again_faults_no_page() -> None:
    """With the thresholds raised, a read's blocks (the read, a copy, a join: 256 KiB each) freed
    and taken again reuse heap memory: no page faults. (With glibc's defaults the heap's top is
    trimmed after each cycle and faulted in again: ~16,000 faults in these 100 cycles.)"""
    import resource

    loop = asyncio.new_event_loop()
    try:
        assert Allocator(loop).start()
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = (ctypes.c_size_t,)
        libc.free.argtypes = (ctypes.c_void_p,)
        size = 256 * 1024

        def cycle() -> None:
            blocks = [libc.malloc(size) for _ in range(3)]
            for p in blocks:
                ctypes.memset(p, 1, size)
            for p in blocks:
                libc.free(p)

        cycle()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(100):
            cycle()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        assert faults < 100, f"{faults} page faults in 100 cycles (19,200 if every page were fresh)"
    finally:
        loop.close()
