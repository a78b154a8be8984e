"""Node-wide metrics that belong to no route: open downstream connections (`gateway_connections`),
failed Redis calls (`gateway_redis_errors_total{op}`), error-log lines, and config reloads
(`gateway_config_reloads_total{result}`), with the metric source that reads them at scrape time.

Write side, per process:
- connections: each worker stores its own count of open client connections, a plain 8-byte
  store into its own cell (one per worker index, layout.CONNECTIONS_NAME) when a connection opens
  or closes, and its idle pooled upstream connections on its heartbeat (every 0.5 s); a worker
  starting in a slot stores 0 first (its predecessor's counts died with it), and the supervisor
  clears the slots of a worker it reaped. The exporter sums the cells. A lone process (no
  heartbeat) has its pools counted at scrape time instead, from its own runtime.
- Redis errors: every RedisLink of the process counts a failed call into its `errors` dict and,
  through `redis_link.error_sink`, into node memory (layout.REDIS_ERRORS_NAME, atomic adds).
- reloads: counted by the process that decides them for the node (the supervisor, or the only
  process with GATEWAY_WORKERS=1), which is also the one serving /metrics and /ready: `RELOADS`.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gateway._fast.counters import CounterArray

from .layout import CONNECTION_SLOTS, CONNECTIONS_NAME, ERROR_LOG_NAME, REDIS_ERRORS_NAME, REDIS_OPS

if TYPE_CHECKING:
    from gateway.state.memory import NodeMemory

CONNECTIONS_SIZE = 8 * 2 * CONNECTION_SLOTS     # [downstream open] * slots, then [upstream idle] * slots
REDIS_ERRORS_SIZE = 8 * len(REDIS_OPS)
_OPS = {op: i for i, op in enumerate(REDIS_OPS)}
_OTHER_OP = _OPS["other"]
KIND = "metrics"     # the kind every metrics object is placed with (metrics.py's place())


class ConnectionGauge:
    """This worker's cell of gateway_connections{side="downstream"}."""

    __slots__ = ("cells", "slot")

    def __init__(self, view: memoryview, slot: int) -> None:
        self.cells = view.cast("q")
        self.slot = slot
        self.cells[slot] = 0
        self.cells[CONNECTION_SLOTS + slot] = 0

    def set(self, n: int) -> None:
        self.cells[self.slot] = n

    def set_upstream_idle(self, n: int) -> None:
        self.cells[CONNECTION_SLOTS + self.slot] = n


def upstream_idle(runtime: Any) -> int:
    """Idle pooled upstream connections of a runtime (O(pools))."""
    pools = getattr(runtime, "pools", None) or {}
    return sum(len(getattr(p, "idle", ())) for p in pools.values())


class RedisErrorCounts:
    """`redis_link.error_sink`: one atomic add per failed call, into the node's cells by op."""

    __slots__ = ("counts",)

    def __init__(self, view: memoryview | None) -> None:
        self.counts = CounterArray(len(REDIS_OPS), view, 0) if view is not None else CounterArray(len(REDIS_OPS))

    def __call__(self, op: str) -> None:
        self.counts.inc(_OPS.get(op, _OTHER_OP), 1)


_gauge: ConnectionGauge | None = None


def bind_process_cells(place: Any, slot: int) -> None:
    """Called for every runtime build (build_recorder) with its `place(name, size)`: the
    connection gauge (once per process: a reload must not zero the count) and the Redis error
    sink. Placing them with every runtime keeps their names held across reloads."""
    global _gauge
    view = place(CONNECTIONS_NAME, CONNECTIONS_SIZE)
    if view is not None and 0 <= slot < CONNECTION_SLOTS and _gauge is None:
        _gauge = ConnectionGauge(view, slot)
    bind_redis_errors(place(REDIS_ERRORS_NAME, REDIS_ERRORS_SIZE))


def bind_redis_errors(view: memoryview | None) -> None:
    from gateway.state import redis_link

    if view is not None or redis_link.error_sink is None:
        redis_link.error_sink = RedisErrorCounts(view)


def connection_gauge() -> ConnectionGauge | None:
    """The process's gauge cell (None without node memory: a bare runtime in a test)."""
    return _gauge


def bind_supervisor_cells(memory: NodeMemory, holder: int) -> None:
    """The supervisor's part: its control plane's Redis link counts into the node's cells, and it
    holds the connection cells (so they outlive any one worker)."""
    bind_redis_errors(memory.place(REDIS_ERRORS_NAME, REDIS_ERRORS_SIZE, holder, kind=KIND))
    memory.place(CONNECTIONS_NAME, CONNECTIONS_SIZE, holder, kind=KIND)


def clear_worker_slot(memory: NodeMemory, slot: int, holder: int) -> None:
    """The supervisor reaped worker `slot`: its connections are gone with it."""
    if 0 <= slot < CONNECTION_SLOTS:
        cells = memory.place(CONNECTIONS_NAME, CONNECTIONS_SIZE, holder, kind=KIND).cast("q")
        cells[slot] = cells[CONNECTION_SLOTS + slot] = 0


# --- reloads --------------------------------------------------------------------------------------
class Reloads:
    """The node's reload outcomes: counts by result and the last one (GET /ready's last_reload)."""

    def __init__(self) -> None:
        self.counts = {"ok": 0, "refused": 0}
        self.last: dict[str, Any] | None = None

    def record(self, ok: bool, errors: Iterable[str] = ()) -> None:
        self.counts["ok" if ok else "refused"] += 1
        self.last = {"ok": ok, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "errors": list(errors)}

    def worker_failed(self, worker: int, error: str) -> None:
        """A worker could not apply the last reload the supervisor found valid: that reload failed
        for the node (counted refused instead of ok; the worker keeps its previous config)."""
        last = self.last
        if last is None:
            return
        if last["ok"]:
            self.counts["ok"] -= 1
            self.counts["refused"] += 1
            last["ok"] = False
        if len(last["errors"]) < 64:
            last["errors"].append(f"worker {worker}: {error}")


RELOADS = Reloads()


# --- read side ------------------------------------------------------------------------------------
def _cells(memory: NodeMemory, name: str) -> list[int] | None:
    info = memory.info(name)
    if info is None or info.quarantined:
        return None
    return memory.view_of(info).cast("q").tolist()


def metric_samples(ctx: Any) -> list[tuple[str, str, str, dict[str, str], float]]:
    """METRIC_SOURCES entry (gateway/admin/features.py)."""
    out: list[tuple[str, str, str, dict[str, str], float]] = []
    memory = ctx.state.memory if ctx.state is not None else None
    if memory is not None:
        conns = _cells(memory, CONNECTIONS_NAME) or [0] * (2 * CONNECTION_SLOTS)
        runtime = ctx.runtime() if callable(getattr(ctx, "runtime", None)) else None
        idle = sum(max(n, 0) for n in conns[CONNECTION_SLOTS:]) + (upstream_idle(runtime) if runtime is not None else 0)
        out.append(("gateway_connections", "gauge", "Connections of the node's workers: client connections "
                    "open (downstream), pooled upstream connections idle (upstream)",
                    {"side": "downstream", "state": "open"}, float(sum(max(n, 0) for n in conns[:CONNECTION_SLOTS]))))
        out.append(("gateway_connections", "gauge", "Connections of the node's workers: client connections "
                    "open (downstream), pooled upstream connections idle (upstream)",
                    {"side": "upstream", "state": "idle"}, float(idle)))
        errors = _cells(memory, REDIS_ERRORS_NAME) or [0] * len(REDIS_OPS)
        for op, n in zip(REDIS_OPS, errors, strict=True):
            out.append(("gateway_redis_errors_total", "counter", "Redis calls that failed or timed out, by operation",
                        {"op": op}, float(n & ((1 << 64) - 1))))
        lines = _cells(memory, ERROR_LOG_NAME) or [0, 0]
        for result, n in zip(("logged", "suppressed"), lines, strict=True):
            out.append(("gateway_error_log_lines_total", "counter", "Error-log lines of failed exchanges: logged, "
                        "or suppressed by its rate limit", {"result": result}, float(n)))
    for result, n in RELOADS.counts.items():
        out.append(("gateway_config_reloads_total", "counter", "Config reloads (SIGHUP) by result: ok or refused "
                    "(the previous config stays)", {"result": result}, float(n)))
    return out
