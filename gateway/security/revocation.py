"""Revoked JWT ids: `revoked/<jti>` = {"exp": <unix seconds>} in the dynamic state.

Written by the admin API (POST /tokens/revoke) through the control plane, so a revocation reaches
every worker and, with Redis, every instance (and survives restarts). Each process keeps a set
from its StateView subscription; the hot path reads the set, never the state.

An entry is needed only until its token would have expired anyway: the control-plane process
sweeps expired entries (`sweep`), and MAX_REVOKED bounds the list (a revocation beyond it is
refused with a clear error rather than growing the state without end).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

PREFIX = "revoked/"
MAX_REVOKED = 100_000
SWEEP_EVERY = 30.0


class Revocations:
    def __init__(self) -> None:
        self.revoked: dict[str, float] = {}          # jti → exp
        self.listeners: list[Callable[[str], None]] = []

    def on_change(self, key: str, value: Any) -> None:
        jti = key[len(PREFIX):]
        if value is None:
            self.revoked.pop(jti, None)
            return
        exp = value.get("exp") if isinstance(value, dict) else None
        self.revoked[jti] = float(exp) if isinstance(exp, int | float) else time.time() + 86400.0
        for listener in self.listeners:
            listener(jti)

    def __contains__(self, jti: str) -> bool:
        return jti in self.revoked


def expired_keys(items: Any, now: float) -> list[str]:
    """Keys of `revoked/...` entries whose token has expired (with a minute's margin for leeway)."""
    out = []
    for key, value in items:
        exp = value.get("exp") if isinstance(value, dict) else None
        if not isinstance(exp, int | float) or exp + 60.0 < now:
            out.append(key)
    return out
