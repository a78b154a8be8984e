from __future__ import annotations

from typing import Literal

from typing_extensions import Buffer

SLOT_BYTES: int
MAX_SW_LIMIT: float
ALGORITHMS: dict[str, int]

def layout_bytes(capacity: int) -> int: ...

class KeyedLimiterTable:
    buffer: Buffer | None
    def __init__(
        self,
        capacity: int,
        algorithm: Literal["token_bucket", "sliding_window"] = "token_bucket",
        *,
        rate: float | None = None,
        bucket: float | None = None,
        limit: float | None = None,
        window: float | None = None,
        idle_ttl: float | None = None,
        max_probe: int = 128,
        buffer: Buffer | None = None,
    ) -> None: ...
    @staticmethod
    def from_policy(
        capacity: int,
        algorithm: Literal["token_bucket", "sliding_window"],
        limit: float,
        window: float,
        burst: float = 0.0,
        **kwargs: object,
    ) -> KeyedLimiterTable: ...
    def check(self, key: str | bytes, now: float, cost: float = 1.0) -> tuple[bool, float, float]:
        """Token bucket: (allowed, tokens_left, retry_after); sliding window: (allowed,
        remaining: int, reset)."""
    def refund(self, key: str | bytes, now: float, cost: float = 1.0) -> bool: ...
    def sweep(self, now: float, max_slots: int = 4096) -> int: ...
    def __contains__(self, key: str | bytes) -> bool: ...
    def __len__(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def memory_bytes(self) -> int: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def idle_ttl(self) -> float: ...
    @property
    def max_probe(self) -> int: ...
    @property
    def shared(self) -> bool: ...
    @property
    def overflows(self) -> int: ...
    @property
    def reclaimed(self) -> int: ...

def siphash24(data: bytes, k0: int, k1: int) -> int: ...
