"""Plain-Python reference models of the gateway._fast primitives, and the shared timeline strategy.

The property tests in tests/fast drive a compiled primitive and its model with the same operations
at the same timestamps and compare every answer.
"""
from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def timeline(draw: st.DrawFn, n: int, scale: float) -> list[float]:
    """n timestamps (>= 0): mostly small forward steps of about `scale` seconds, with occasional
    zero steps (same instant), steps backwards (clock stepped back) and huge gaps (idle keys)."""
    now = draw(st.floats(0.0, 1e6, allow_nan=False))
    out = []
    for _ in range(n):
        kind = draw(st.sampled_from("fffffffzbh"))
        if kind == "f":
            now += draw(st.floats(0.0, 2.0 * scale))
        elif kind == "b":
            now = max(0.0, now - draw(st.floats(0.0, 3.0 * scale)))
        elif kind == "h":
            now += draw(st.floats(1e3 * scale, 1e6 * scale))
        out.append(now)
    return out
