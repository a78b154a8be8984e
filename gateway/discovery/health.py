"""Health: the node's active checker, the records it writes in node memory, and each worker's tick
that reads them.

One checker per node, in the control plane's process (the supervisor, or the lone worker of
GATEWAY_WORKERS=1): `NodeHealth`. Per checked target it runs one probe loop (HTTP GET of
`[services.health].path`, `timeout`), counts consecutive results against `healthy_threshold` /
`unhealthy_threshold`, and writes the verdict into that target's record in node memory, placed by
name `health/<service>/<url>`, so every worker, every reload and a restarted worker find the same
bytes. It is the only writer of those records; after a verdict change it bumps `health/.gen`.

Intervals are jittered by up to ±20 % (SPEC §3) so the probes of many targets do not beat in
step. A target that stays down is probed ever less often: interval x 2^k up to `max_backoff`
(never above it, so a target that comes back is seen within max_backoff + timeout). Targets start
healthy (a zeroed record reads "up"): a fresh node serves at once, as nginx does, and a dead target
leaves after `unhealthy_threshold` probes. A reload keeps the checker's loop of every target it
keeps (and the record keeps its verdict anyway).

Each worker: `WorkerHealth`, one per process, ticks every TICK seconds on its loop; a tick reads
the generation word and, only when it moved, every checked target's verdict; it also ends the
passive exclusions that expired (service.py). So a verdict reaches every worker within TICK.
"""
from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config.model import HealthConfig
    from .service import Service, Target

log = logging.getLogger("gateway.discovery")

RECORD_SIZE = 64
RECORD_KIND = "health1"
GEN_NAME = "health/.gen"
TICK = 0.2                  # a worker applies verdicts within this (SPEC: 0.5 s)
JITTER = 0.2                # ±20 % of the interval
MAX_RESPONSE_HEAD = 8192    # bytes of a probe's status line we read at most

# Record words (int64): the verdict first; the rest is for GET /services and metrics.
W_DOWN, W_OK_RUN, W_FAIL_RUN, W_LAST_CHECK_MS, W_CHECKS, W_FAILS, W_LAST_STATUS, W_CHANGES = range(8)


def record_name(service: str, url: str) -> str:
    return f"health/{service}/{url}"


class HealthRecord:
    """A view of one target's 64 bytes: eight int64 words (aligned stores are atomic on the
    platforms we run on; the checker is the only writer)."""

    __slots__ = ("words",)

    def __init__(self, buf: memoryview) -> None:
        self.words = buf.cast("q")

    @property
    def down(self) -> bool:
        return self.words[W_DOWN] != 0

    def snapshot(self) -> dict[str, Any]:
        w = self.words
        return {"healthy": w[W_DOWN] == 0, "checks": w[W_CHECKS], "failures": w[W_FAILS],
                "last_check": w[W_LAST_CHECK_MS] / 1000.0 if w[W_LAST_CHECK_MS] else None,
                "last_status": w[W_LAST_STATUS] or None}


def place_record(memory: Any, holder: int, service: str, url: str) -> HealthRecord:
    return HealthRecord(memory.place(record_name(service, url), RECORD_SIZE, holder, kind=RECORD_KIND))


def read_generation(buf: memoryview | None) -> int:
    return struct.unpack_from("q", buf, 0)[0] if buf is not None else 0


# --- the worker side ---------------------------------------------------------------------------------

class WorkerHealth:
    """One per process: applies the checker's verdicts and expires passive exclusions in the
    services of the process's current runtime."""

    def __init__(self, loop: Any, state: Any) -> None:
        self.loop = loop
        self.state = state
        self.services: list[Service] = []
        self._gen_buf: memoryview | None = None
        self._gen = -1
        self._handle: Any = None
        memory = getattr(state, "memory", None)
        if memory is not None:
            self._gen_buf = memory.place(GEN_NAME, 8, state.holder, kind="gen")

    def use(self, services: Iterable[Service]) -> None:
        """The services of the runtime now serving (after a build or a reload)."""
        self.services = list(services)
        self._gen = -1       # read every record once for the new targets
        self.apply()
        if self._handle is None and self.loop is not None and hasattr(self.loop, "call_later"):
            self._handle = self.loop.call_later(TICK, self._tick)

    def _tick(self) -> None:
        self._handle = None
        try:
            self.apply()
        except Exception:  # noqa: BLE001 - the tick must go on whatever one service did
            log.exception("health tick failed")
        if not getattr(self.loop, "is_closed", lambda: False)():
            self._handle = self.loop.call_later(TICK, self._tick)

    def apply(self) -> None:
        gen = read_generation(self._gen_buf)
        if gen != self._gen:
            self._gen = gen
            for s in self.services:
                for t in s.targets:
                    if t.health is not None:
                        s.set_active(t, not t.health.down)
        now = self.loop.time() if self.loop is not None else time.monotonic()
        for s in self.services:
            if s.passive:
                s.expire_passive(now)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


_worker_health: WorkerHealth | None = None


def worker_health(loop: Any, state: Any) -> WorkerHealth:
    """This process's WorkerHealth (one per process: one serving loop)."""
    global _worker_health
    wh = _worker_health
    if wh is None or wh.state is not state or wh.loop is not loop:
        if wh is not None:
            wh.close()
        wh = _worker_health = WorkerHealth(loop, state)
    return wh


def passive_down(service: Service, target: Target) -> None:
    """Passive health took `target` out of this worker's rotation: say so (an operator looking for
    why requests moved finds it), and raise target_down once per node (the hub deduplicates)."""
    log.warning("service %s: target %s out of rotation for %.0f s after %d consecutive failures (passive)",
                service.name, target.url, max(0.0, target.passive_until - _now(wh_loop())), target.passive_fails)
    wh = _worker_health
    if wh is not None and wh.state is not None:
        try:
            wh.state.emit("target_down", service=service.name, target=target.url,
                          details={"by": "passive", "failures": target.passive_fails})
        except Exception:  # noqa: BLE001
            log.exception("target_down event failed")


def wh_loop() -> Any:
    return _worker_health.loop if _worker_health is not None else None


def _now(loop: Any) -> float:
    return loop.time() if loop is not None else time.monotonic()


# --- the node's checker ------------------------------------------------------------------------------

class _Probe:
    """One checked target: its probe loop and its consecutive counts."""

    __slots__ = ("service", "url", "host", "port", "host_header", "cfg", "record", "task", "fails_down", "tls")

    def __init__(self, service: str, url: str, host: str, port: int, cfg: HealthConfig, record: HealthRecord,
                 tls: Any = None) -> None:
        self.service = service
        self.tls = tls              # gateway.tls.UpstreamTLS of an https:// target: probed over TLS
        self.url = url
        self.host = host
        self.port = port
        bracketed = f"[{host}]" if ":" in host else host
        self.host_header = bracketed if port == (80 if tls is None else 443) else f"{bracketed}:{port}"
        self.cfg = cfg
        self.record = record
        self.task: asyncio.Task[None] | None = None
        self.fails_down = 0     # probes failed since it went down (the backoff's exponent)

    def delay(self, rng: random.Random) -> float:
        cfg = self.cfg
        base = cfg.interval
        if self.record.down and self.fails_down > 0:
            base = min(cfg.max_backoff, cfg.interval * (2.0 ** min(self.fails_down, 30)))
            # Jitter below the cap only: max_backoff stays the promised bound.
            return min(cfg.max_backoff, base * (1.0 + rng.uniform(-JITTER, JITTER)))
        return base * (1.0 + rng.uniform(-JITTER, JITTER))


class NodeHealth:
    """The node's health checker (one per node, in the control plane's process).

    targets() → iterable of (service, url, host, port, HealthConfig[, UpstreamTLS]) to check now (the config's
    and the registered targets of services with [services.health]); refresh() re-reads it (after a
    reload or a registration). emit(event, service=, target=, details=) reports transitions."""

    def __init__(self, loop: asyncio.AbstractEventLoop, memory: Any, holder: int,
                 targets: Callable[[], Iterable[tuple[Any, ...]]],
                 emit: Callable[..., Any] | None = None, *, seed: int | None = None) -> None:
        self.loop = loop
        self.memory = memory
        self.holder = holder
        self._targets = targets
        self._emit = emit
        self._rng = random.Random(seed)
        self.probes: dict[tuple[str, str], _Probe] = {}
        self._gen = memory.place(GEN_NAME, 8, holder, kind="gen").cast("q")
        self._closed = False

    def refresh(self) -> None:
        if self._closed:
            return
        want: dict[tuple[str, str], tuple[str, int, HealthConfig, Any]] = {}
        for item in self._targets():
            service, url, host, port, cfg = item[:5]
            want[(service, url)] = (host, port, cfg, item[5] if len(item) > 5 else None)
        for key in list(self.probes):
            p = self.probes[key]
            w = want.get(key)
            if w is None or w[2] != p.cfg or (w[0], w[1], w[3]) != (p.host, p.port, p.tls):
                if p.task is not None:
                    p.task.cancel()
                del self.probes[key]
        for key, (host, port, cfg, tls) in want.items():
            if key in self.probes:
                continue
            record = place_record(self.memory, self.holder, key[0], key[1])
            p = _Probe(key[0], key[1], host, port, cfg, record, tls)
            self.probes[key] = p
            # The first probe within one interval (spread, so a thousand targets do not all go at once).
            p.task = self.loop.create_task(self._run(p, self._rng.uniform(0.0, min(cfg.interval, 1.0))))
        self._release_dropped()

    def _release_dropped(self) -> None:
        names = {record_name(s, u) for s, u in self.probes}
        bit = 1 << self.holder
        keep = [o.name for o in self.memory.objects()
                if o.holders & bit and (not o.name.startswith("health/") or o.name == GEN_NAME or o.name in names)]
        self.memory.sync_holder(self.holder, keep)

    async def _run(self, p: _Probe, first: float) -> None:
        await asyncio.sleep(first)
        while True:
            ok, status = await self._probe(p)
            self.result(p, ok, status)
            await asyncio.sleep(p.delay(self._rng))

    async def _probe(self, p: _Probe) -> tuple[bool, int]:
        """One GET; (healthy, status). 2xx and 3xx are healthy; anything else, a refused, reset or
        silent peer, a garbage or endless status line within `timeout`, is not."""
        writer = None
        try:
            async with asyncio.timeout(p.cfg.timeout):
                if p.tls is None:
                    reader, writer = await asyncio.open_connection(p.host, p.port, limit=MAX_RESPONSE_HEAD)
                else:   # the same trust as the data plane's pool (a failed handshake is a failed probe)
                    from gateway.tls import client_context

                    reader, writer = await asyncio.open_connection(
                        p.host, p.port, limit=MAX_RESPONSE_HEAD, ssl=client_context(p.tls), server_hostname=p.host)
                writer.write(f"GET {p.cfg.path} HTTP/1.1\r\nHost: {p.host_header}\r\nUser-Agent: gateway-health\r\n"
                             "Connection: close\r\n\r\n".encode("latin-1"))
                line = await reader.readuntil(b"\n")
            parts = line.split(None, 2)
            if len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1].isdigit() and len(parts[1]) == 3:
                status = int(parts[1])
                return 200 <= status < 400, status
            return False, 0
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return False, 0
        finally:
            if writer is not None:
                writer.transport.abort()

    def result(self, p: _Probe, ok: bool, status: int) -> None:
        w = p.record.words
        w[W_CHECKS] += 1
        w[W_LAST_CHECK_MS] = int(time.time() * 1000)
        w[W_LAST_STATUS] = status
        if ok:
            w[W_FAIL_RUN] = 0
            w[W_OK_RUN] += 1
            if w[W_DOWN] and w[W_OK_RUN] >= p.cfg.healthy_threshold:
                self._set(p, False, status)
        else:
            w[W_FAILS] += 1
            w[W_OK_RUN] = 0
            w[W_FAIL_RUN] += 1
            if w[W_DOWN]:
                p.fails_down += 1
            elif w[W_FAIL_RUN] >= p.cfg.unhealthy_threshold:
                self._set(p, True, status)

    def _set(self, p: _Probe, down: bool, status: int) -> None:
        w = p.record.words
        w[W_DOWN] = 1 if down else 0
        w[W_CHANGES] += 1
        p.fails_down = 0
        self._gen[0] += 1
        event = "target_down" if down else "target_up"
        (log.warning if down else log.info)("health: service %s target %s is %s (last status %s)",
                                            p.service, p.url, "DOWN" if down else "UP", status or "none")
        if self._emit is not None:
            try:
                self._emit(event, service=p.service, target=p.url,
                           details={"by": "active", "path": p.cfg.path, "status": status or None})
            except Exception:  # noqa: BLE001
                log.exception("%s event failed", event)

    def close(self) -> None:
        self._closed = True
        for p in self.probes.values():
            if p.task is not None:
                p.task.cancel()
        self.probes.clear()
