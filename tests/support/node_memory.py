"""Helpers shared by the NodeMemory tests (tests/state/)."""
from __future__ import annotations

import ctypes
import os
import uuid
from collections.abc import Callable

from gateway._fast.shm import SHM_DIR
from gateway.state.memory import NodeMemory

MiB = 1 << 20
Make = Callable[..., NodeMemory]     # the `make` fixture: make(size, **kw) -> NodeMemory


class Clock:
    """Injected time: tests advance it instead of sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def unique_name() -> str:
    return f"gw-test-mem-{uuid.uuid4().hex[:12]}"


def unlink_shm(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        pass


def addr(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def offset(mem: NodeMemory, name: str) -> int:
    info = mem.info(name)
    assert info is not None, name
    return info.offset
